"""SQL text of the duckquash macros (installed as the ``duckquash.macros`` package)."""
