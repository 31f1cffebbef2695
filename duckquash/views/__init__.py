"""Materialised squashed views: stored integer moments, incremental refresh, closed-form updates and
exact linear models answered from the stored moments."""
