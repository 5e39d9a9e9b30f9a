"""Reading note dumps in batches, quarantining bad rows, claiming a run's outputs (checks and lock), writing parts atomically, the run manifest."""
