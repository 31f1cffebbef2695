"""SQL text of duckquash macros (installed as the ``duckquash.sql`` package)."""
