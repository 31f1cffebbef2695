"""The database boundary: resolving sources, writing outputs whole or not at all, transactions,
temporary objects and progress bars over running queries."""
