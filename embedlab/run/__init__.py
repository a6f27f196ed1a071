"""Running experiments: build, steps, loop, checkpoints, run directory, summary, resources, loading a run."""

import importlib as _importlib


def __getattr__(name):
  """``embedlab.run.<module>`` without importing it first."""
  try:
    return _importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
