"""Front-ends: the command line, the SQL entry point (``CALL squash(...)``), and the embedded demo."""
