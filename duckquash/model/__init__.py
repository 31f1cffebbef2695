"""Models fitted inside DuckDB: formulas to SQL design columns, GLM families as SQL, IRLS with one
aggregate pass per iteration, the small linear algebra, and statsmodels-like results."""
