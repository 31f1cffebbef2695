"""Baselines for squashing: uniform and OSMAC weighted subsamples, and the evaluation protocol that
compares reduced tables with the full-data fit."""
