"""Pure JAX: tables, pooling, table variants, row-sparse and dense optimizer helpers, sharding. No config, no files."""

import importlib as _importlib


def __getattr__(name):
  """``embedlab.core.<module>`` without importing it first."""
  try:
    return _importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
