"""Who runs the batches of a `coder predict` run: this process (local) or Ray actors (ray)."""
