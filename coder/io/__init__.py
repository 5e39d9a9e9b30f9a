"""Reading note dumps in batches, quarantining bad rows, writing parts atomically, the run manifest."""
