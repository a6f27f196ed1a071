"""Checkpoints of a run with orbax-checkpoint: the latest few for resuming, the best for testing.

``checkpoints/latest/<step>/`` holds the whole ``TrainState`` plus a JSON record of the run's
bookkeeping (best dev accuracy so far, skipped batches); ``checkpoints/best/<step>/`` holds the
parameters with the best dev accuracy.

What survives what:

* **A kill at any moment** (SIGKILL, out of memory, preemption). orbax writes each step into
  ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only when every file is written,
  so a step directory is complete or absent; a leftover temporary directory is removed when the
  run is opened again. Old steps are deleted only after a newer one is committed.
* **A corrupt or truncated checkpoint** (a bad disk, a copy cut short, a file edited by hand).
  The JSON record of every checkpoint carries a CRC-32 of each array *with its pytree path*
  (``params/embed/table``) and a CRC-32 of the record itself, so an edited record, a changed
  array or arrays read into the wrong leaves are all caught. A step that fails its checksum or
  whose files cannot be parsed (missing, truncated, garbled) is reported (a warning naming the
  step and the reason), moved aside to ``checkpoints/corrupt/`` and the step before it is used.
  What was recovered is listed in ``Checkpoints.recovered``. Any other error while restoring
  (out of memory, a permission or I/O error, a checkpoint of another model) is raised as it is
  and nothing is moved. orbax's own ERROR about such a step's ``_CHECKPOINT_METADATA`` (with
  the whole file's content) becomes one WARNING naming the file.
* **A full disk or a failing writer.** The save stops with one ``CheckpointError`` naming the
  step, the directory, the reason, the bytes the checkpoint needs and the bytes free there
  (``shutil.disk_usage``), and the fix; orbax's own error logs of that save are held back, the
  temporary directories that this save created (and only those) are removed and the previous
  checkpoint is kept untouched.

This module holds the ``Checkpoints`` of one run directory (saving, finding the newest sound
step, moving corrupt ones aside); its parts live beside it: ``checkpoint_integrity`` (the
checksums that seal a step, and the checkpoint errors), ``checkpoint_failures`` (what orbax's
errors mean, its logs held back, a failed save's temporary directories removed) and
``checkpoint_restore`` (reading one step into the target's shapes). Hand-written around orbax
because orbax neither checks what it reads nor reports a failed write in one line, and a resumed
run must tell bad bytes (use the step before) from a broken machine (stop).

Example:
  >>> import tempfile, pathlib, jax.numpy as jnp
  >>> ckpt = Checkpoints(pathlib.Path(tempfile.mkdtemp()))
  >>> ckpt.save_latest(3, {"w": jnp.ones(2)}, {"best": 0.5})
  >>> step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(2)})
  >>> step, tree["w"].tolist(), meta
  (3, [1.0, 1.0], {'best': 0.5})
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import threading
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from embedlab.run.checkpoint_failures import (corrupt_or_raise, discard_failed_tasks, errno_of,
                                              first_line, holding_orbax_errors,
                                              remove_new_tmp_dirs, tmp_dirs)
from embedlab.run.checkpoint_integrity import CheckpointError, CorruptCheckpointError, seal
from embedlab.run.checkpoint_restore import (as_stored, check_step, read_verified, resize_rows,
                                             restore_args, stored_abstract)

__all__ = ["CheckpointError", "Checkpoints", "CorruptCheckpointError"]

log = logging.getLogger("embedlab")


def _not_read_only_notice(record: logging.LogRecord) -> bool:
  """Drops orbax's "Given directory is read only" warning: a run opened for reading (eval,
  predict, ``load_run``) is read-only on purpose, so nothing there is to be warned about."""
  return not str(record.msg).startswith("Given directory is read only")


def _metadata_notice(record: logging.LogRecord) -> bool:
  """Turns orbax's ERROR about a step's ``_CHECKPOINT_METADATA`` that cannot be read or parsed
  (it logs the whole file's content, and goes on without it) into one WARNING naming the file
  and the reason. embedlab does not read that file: it checks a step's arrays and record when
  it reads the step, and reports a corrupt one then."""
  msg = str(record.msg)
  if msg.startswith(("Failed to json parse Metadata file", "Failed to read Metadata file")):
    args = record.args if isinstance(record.args, tuple) else ()
    path, error = (args[0], args[-1]) if len(args) >= 2 else ("a step's metadata file", "")
    reason = first_line(error) if isinstance(error, BaseException) else str(error)[:200]
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    record.msg, record.args = ("checkpoint: orbax cannot read %s (%s) and goes on without it; "
                               "the step's arrays and record are checked when it is read."), (
                                   path, reason)
  return True


logging.getLogger("absl").addFilter(_not_read_only_notice)
logging.getLogger("absl").addFilter(_metadata_notice)


def _manager(directory: pathlib.Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                         save_interval_steps=0 if read_only else 1,
                                         create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=not read_only)
  # arrays stored without zstd: float weights barely compress (SST-2's 37 MB table: 36 -> 33
  # MB) and compressing took 0.07-0.15 s of a 0.12-0.21 s save (0.05-0.06 s without)
  handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=False),
              "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=handlers)


def _tree_bytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
                 for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


class Checkpoints:
  """The checkpoints of one run directory.

  Attributes:
    recovered: one dict per corrupt checkpoint met while restoring (``which``, ``step``,
      ``reason``, ``moved_to``), for reports; empty when every checkpoint was sound.

  Example:
    >>> import tempfile, pathlib, jax.numpy as jnp
    >>> ckpt = Checkpoints(pathlib.Path(tempfile.mkdtemp()))
    >>> ckpt.save_latest(3, {"w": jnp.ones(2)}, {"best": 0.5})
    >>> ckpt.restore_latest({"w": jnp.zeros(2)})[0]
    3
  """

  def __init__(self, run_dir: pathlib.Path, keep: int = 2, *, read_only: bool = False):
    """``read_only`` opens a run's checkpoints for reading (eval, predict, inspect): nothing
    is created, cleaned up or moved aside, so a run still training is never disturbed."""
    self.root = pathlib.Path(run_dir) / "checkpoints"
    self.read_only = read_only
    self.latest = _manager(self.root / "latest", keep, read_only)
    self.best = _manager(self.root / "best", 1, read_only)
    self.recovered: list[dict[str, Any]] = []

  def save_latest(self, step: int, state: Any, meta: dict) -> None:
    """Writes ``state`` and ``meta`` (JSON) as step ``step`` of the latest checkpoints."""
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    """Writes ``params`` and ``meta`` (JSON) as the best checkpoint (one is kept)."""
    self._save(self.best, step, params, meta)

  def _save(self, manager, step, tree, meta):
    step = int(step)
    directory = pathlib.Path(str(manager.directory))
    before, threads = tmp_dirs(directory), set(threading.enumerate())
    with holding_orbax_errors() as held:
      try:
        if step in manager.all_steps():
          # left by an earlier attempt that died before its next checkpoint (the run replays
          # the same steps to the same values), or moved on from: the new write replaces it
          manager.delete(step)
        record = seal(tree, meta)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree),
                                                   meta=ocp.args.JsonSave(record)), force=True)
        manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - orbax wraps I/O errors in its own types
        code = errno_of(e)
        if code is None:
          held.release()
          raise
        try:  # let writes still in flight end before removing what they wrote
          manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the first error is the one reported
          pass
        left = remove_new_tmp_dirs(directory, before, threads)
        manager.reload()
        discard_failed_tasks(held, e)
        raise CheckpointError(self._write_failure(manager, directory, step, code, e,
                                                  _tree_bytes(tree), left)) from None
      held.release()  # a save that worked: whatever orbax logged is shown

  @staticmethod
  def _write_failure(manager, directory, step, code, error, needed, left) -> str:
    from embedlab.run.resources import human  # noqa: PLC0415 - a formatting helper only
    try:
      free = shutil.disk_usage(directory).free
      space = f"{human(free)} ({free:,} bytes) are free there"
    except OSError:
      space = "the free space there is unknown"
    reason = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
      what, fix = f"the disk is full ({reason})", "Free disk space"
    elif code == errno.EFBIG:
      what, fix = f"a file is over the size limit ({reason}; see ulimit -f)", "Raise the limit"
    else:
      what, fix = f"{reason} (errno {code})", "Fix the directory"
      first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
      what += f": {type(error).__name__}: {first}" if first else ""
    kept = manager.latest_step()
    cleaned = ("Nothing half-written is left" if not left else
               f"Could not remove the half-written {', '.join(left)} (remove it by hand)")
    return (f"checkpoint: could not write step {step} to {directory}: {what}. The checkpoint "
            f"needs about {human(needed)} ({needed:,} bytes); {space}. {cleaned}; the previous "
            "checkpoint is kept"
            + (f" (step {kept})" if kept is not None else " (there is none)")
            + f". {fix} or choose another --workdir, then run the same command again to resume.")

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest sound checkpoint, or None if there is none.

    A corrupt newest checkpoint (fails its checksum, or its files cannot be parsed) is
    reported, moved aside and the one before it is used; any other error is raised.
    """
    return self._restore(self.latest, "latest", target)

  def restore_best(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, params, meta)`` of the best checkpoint, or None if there is none."""
    return self._restore(self.best, "best", target)

  def _restore(self, manager, which, target):
    """Restores into ``target``'s shapes and shardings (arrays split over another mesh, or
    another number of devices, are re-split as they are read). A table saved with more or
    fewer zero padding rows (padded for another ``mesh.model``) is read as saved, checked,
    then cut or padded to the target's rows."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

    def read(step):
      check_step(manager, step, abstract)
      stored = as_stored(manager, step, abstract)
      args = ocp.args.Composite(state=restore_args(stored), meta=ocp.args.JsonRestore())
      state, meta = read_verified(manager, step, args)
      return resize_rows(state, abstract, step), meta

    return self._newest_readable(manager, which, read)

  def _newest_readable(self, manager, which, read, steps=None):
    bad = []
    found = None
    for step in steps if steps is not None else sorted(manager.all_steps(), reverse=True):
      try:
        found = (step,) + corrupt_or_raise(read, step)
        break
      except CorruptCheckpointError as e:  # only bad bytes mean: try the older one
        reason = first_line(e.__cause__ or e)
        bad.append((step, reason))
        log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one.",
                    manager.directory, step, reason)
    for step, reason in bad:
      moved = None if self.read_only else self._move_aside(manager, which, step)
      self.recovered.append({"which": which, "step": step, "reason": reason,
                             "moved_to": None if moved is None else str(moved)})
    if bad:
      log.warning("checkpoint: %s", self._recovery_note(which, bad, found))
      if not self.read_only:
        manager.reload()
    return found

  def _recovery_note(self, which, bad, found):
    steps = ", ".join(str(s) for s, _ in bad)
    kept = f"using step {found[0]}" if found else "no readable checkpoint is left"
    where = "" if self.read_only else f"; moved aside to {self.root / 'corrupt'}"
    return f"{which} checkpoint step(s) {steps} unreadable{where}; {kept}."

  def _move_aside(self, manager, which, step) -> pathlib.Path | None:
    source = pathlib.Path(str(manager.directory)) / str(step)
    target = self.root / "corrupt" / f"{which}-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
      target.parent.mkdir(parents=True, exist_ok=True)
      os.replace(source, target)
      return target
    except OSError as e:
      log.warning("checkpoint: could not move %s aside (%s); deleting it.", source, e)
      shutil.rmtree(source, ignore_errors=True)
      return None

  def read(self, which: str = "latest", step: int | None = None) -> tuple[int, Any, dict]:
    """``(step, tree, meta)`` of a checkpoint read without a target (state fields as a dict of
    arrays), for inspection and tests. ``which`` is ``latest`` or ``best``; without ``step``,
    the newest sound one (a corrupt newer one is reported as by ``restore_latest``).

    Raises:
      CheckpointError: no checkpoint, or the one asked for is corrupt.
    """
    if which not in ("latest", "best"):
      raise ValueError(f"checkpoint.read: which={which!r} is not 'latest' or 'best'.")
    manager = {"latest": self.latest, "best": self.best}[which]
    # a run trained over several devices is read onto this process's first device
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def load(step):
      check_step(manager, step, None)
      abstract = stored_abstract(manager, step, local)
      return read_verified(manager, step, ocp.args.Composite(
          state=restore_args(abstract), meta=ocp.args.JsonRestore()))

    if step is not None:
      try:
        return (step,) + corrupt_or_raise(load, step)
      except CorruptCheckpointError as e:
        raise CheckpointError(f"checkpoint: {manager.directory}/{step} is unreadable "
                              f"({first_line(e.__cause__ or e)}); read another step "
                              f"(there are {list(manager.all_steps())}).") from e
    found = self._newest_readable(manager, which, load)
    if found is None:
      raise CheckpointError(f"checkpoint: {manager.directory} holds no readable checkpoint.")
    return found

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self.latest.close()
    self.best.close()
