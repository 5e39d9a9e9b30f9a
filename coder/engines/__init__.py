"""Who maps a run's batch worker (``coder.batches.BatchWorker``) over its pending batches: this process
(local), worker processes (processes) or Ray actors (ray). Engines only map: they import neither
``coder.run`` nor ``coder.predict``."""
