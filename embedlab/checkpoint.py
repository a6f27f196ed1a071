"""Checkpoints of a run with orbax-checkpoint: the latest few for resuming, the best for testing.

``checkpoints/latest/<step>/`` holds the whole ``TrainState`` plus a JSON record of the run's
bookkeeping (best dev accuracy so far, skipped batches); ``checkpoints/best/<step>/`` holds the
parameters with the best dev accuracy. orbax writes each step to a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("embedlab")


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


def _manager(directory: pathlib.Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                         save_interval_steps=0 if read_only else 1,
                                         create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(directory.absolute(), options=options,
                               item_names=("state", "meta"))


class Checkpoints:
  """The checkpoints of one run directory.

  Example:
    >>> import tempfile, pathlib, jax.numpy as jnp
    >>> ckpt = Checkpoints(pathlib.Path(tempfile.mkdtemp()))
    >>> ckpt.save_latest(3, {"w": jnp.ones(2)}, {"best": 0.5})
    >>> ckpt.restore_latest({"w": jnp.zeros(2)})[0]
    3
  """

  def __init__(self, run_dir: pathlib.Path, keep: int = 2, *, read_only: bool = False):
    """``read_only`` opens a run's checkpoints for reading (eval, predict, inspect): nothing
    is created or cleaned up, so a run still training is never disturbed."""
    root = pathlib.Path(run_dir) / "checkpoints"
    self.latest = _manager(root / "latest", keep, read_only)
    self.best = _manager(root / "best", 1, read_only)

  def save_latest(self, step: int, state: Any, meta: dict) -> None:
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    self._save(self.best, step, params, meta)

  def _save(self, manager, step, tree, meta):
    try:
      manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                      meta=ocp.args.JsonSave(meta)), force=True)
      manager.wait_until_finished()
    except OSError as e:
      raise CheckpointError(f"checkpoint: could not write step {step} to {manager.directory} "
                            f"({e.strerror or e}); the previous checkpoint is kept. Free disk "
                            f"space or choose another --workdir.") from e

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest readable checkpoint, or None if there is none.

    A corrupt or truncated newest checkpoint is reported and the one before it is used.
    """
    return self._restore(self.latest, target)

  def restore_best(self, target: Any) -> tuple[int, Any, dict] | None:
    return self._restore(self.best, target)

  def _restore(self, manager, target):
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return step, out["state"], dict(out["meta"])
      except Exception as e:  # noqa: BLE001 - any failure to read means: try the older one
        log.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one.",
                    manager.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
    return None

  def read(self, which: str = "latest", step: int | None = None) -> tuple[int, Any, dict]:
    """``(step, tree, meta)`` of a checkpoint read without a target (state fields as a dict of
    arrays), for inspection and tests. ``which`` is ``latest`` or ``best``."""
    manager = {"latest": self.latest, "best": self.best}[which]
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"checkpoint: {manager.directory} holds no checkpoint.")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        meta=ocp.args.JsonRestore()))
    return step, out["state"], dict(out["meta"])

  def close(self) -> None:
    self.latest.close()
    self.best.close()
