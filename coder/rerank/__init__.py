"""The fitted combination of candidate sources: calibrated scores and per-system cuts."""
