"""Likelihood-based data squashing (LDS, Madigan et al.) and its iterated form (ILDS): squash for a
stated GLM by clustering rows on their likelihood profiles, in DuckDB."""
