"""Host data (numpy, no JAX): text, sources, synthetic data, encoded cache, batches, pretrained vectors."""

import importlib as _importlib


def __getattr__(name):
  """``embedlab.data.<module>`` without importing it first."""
  try:
    return _importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
