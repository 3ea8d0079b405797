"""The divergence guard: a run whose loss becomes NaN/inf or keeps growing says so, and stops."""
