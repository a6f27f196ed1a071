"""Start-up work that overlaps with other work: imports started in the background, and the
tensorboardX import without torch. The CLI's own start-up (forking the data encoder while JAX
loads) lives in ``embedlab.cli``; nothing else in the package plays such tricks.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable


def in_background(fn: Callable[[], object]) -> threading.Thread:
  """Runs ``fn`` on a daemon thread (an import, so it overlaps loading data and compiling);
  join the returned thread before relying on it."""
  thread = threading.Thread(target=fn, daemon=True)
  thread.start()
  return thread


def import_pyplot() -> None:
  """Imports matplotlib's pyplot, headless (~0.6 s), as the end-of-run plots will."""
  from embedlab.analysis import plots  # noqa: PLC0415

  plots.pyplot()


def import_tensorboardx() -> None:
  """Imports tensorboardX (~0.3 s) without importing torch."""
  # tensorboardX's writer imports torch when it is installed (1.2 s of CPU) only to name
  # torch.Tensor in type hints; embedlab logs Python floats, so torch stays out unless the
  # process has already imported it (then it costs nothing)
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it handles
  try:
    import tensorboardX  # noqa: F401, PLC0415
  except ImportError:  # pragma: no cover - a dependency; _writer reports it
    pass
  finally:
    if hide_torch and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]


