"""Analysis over arrays (numpy + matplotlib): neighbours, geometry, plots, exports."""

import importlib as _importlib


def __getattr__(name):
  """``embedlab.analysis.<module>`` without importing it first."""
  try:
    return _importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
