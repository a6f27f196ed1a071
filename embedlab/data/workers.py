"""Host work on forked processes, for the data pipeline (pure Python and numpy, no JAX).

Forked workers inherit the function and its inputs (nothing is pickled on the way in, only the
results on the way back), so they start in milliseconds. Forking is used only where it is safe:
Linux, and neither JAX's backends nor its distributed client started yet (a fork of a process
whose XLA or gRPC threads run can deadlock, and JAX warns about it). ``embedlab train``
encodes its data before it starts them; elsewhere (a notebook that already ran JAX) the work
runs in this process.
"""

from __future__ import annotations

import multiprocessing
import sys
from typing import Any, Callable, Sequence

_PAYLOAD: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def can_fork() -> bool:
  """True where ``fork_map`` would fork: on Linux (macOS system frameworks are not fork-safe),
  with neither JAX's backends nor its distributed client (gRPC threads) started."""
  if not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods():
    return False
  bridge = sys.modules.get("jax._src.xla_bridge")
  started = getattr(bridge, "backends_are_initialized", None)
  if started is not None and started():
    return False
  return not distributed_client_running()


def distributed_client_running() -> bool:
  """Whether JAX's distributed client (its gRPC threads) runs, without importing JAX."""
  distributed = sys.modules.get("jax._src.distributed")
  return getattr(getattr(distributed, "global_state", None), "client", None) is not None


def fork_map(fn: Callable[[Any], Any], items: Sequence[Any], processes: int) -> list[Any]:
  """``[fn(item) for item in items]``, on up to ``processes`` forked processes when
  ``can_fork()`` (and there are two items or more), else in this process.

  An exception raised by ``fn`` is raised here, with its type and message.
  """
  global _PAYLOAD
  processes = min(processes, len(items))
  if processes < 2 or not can_fork():
    return [fn(item) for item in items]
  _PAYLOAD = (fn, items)
  try:
    with multiprocessing.get_context("fork").Pool(processes) as pool:
      return pool.map(_call, range(len(items)), chunksize=1)
  finally:
    _PAYLOAD = None


def _call(i: int) -> Any:
  fn, items = _PAYLOAD
  return fn(items[i])
