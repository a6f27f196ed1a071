"""Running experiments: build, steps, loop, checkpoints, run directory, summary, resources, loading a run."""
