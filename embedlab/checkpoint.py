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
  Every checkpoint carries a CRC-32 of each array in its JSON record; a step whose files cannot
  be read or whose arrays do not match their checksums is reported (a warning naming the step
  and the reason), moved aside to ``checkpoints/corrupt/`` and the step before it is used. What
  was recovered is listed in ``Checkpoints.recovered``.
* **A full disk or a failing writer.** The save stops with ``CheckpointError`` naming the step,
  the directory, the reason and the fix; the half-written temporary directory is removed and the
  previous checkpoint is kept untouched.

Test-only fault injection (never set these in real runs): ``EMBEDLAB_FAULT_KILL_AT_SAVE=N``
makes the N-th checkpoint write of the process (latest and best counted together, from 1) kill
its own process with SIGKILL after all files are in the temporary directory and before the
rename that commits them; ``EMBEDLAB_FAULT_SLEEP_IN_SAVE=SECONDS`` sleeps at that same point in
every write, so a kill from outside lands inside a write more often. ``tests/test_reliability_*``
use them to prove that a kill while a checkpoint is being written loses nothing.
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import shutil
import signal
import time
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("embedlab")

_CHECKSUM_KEY = "_embedlab_crc32"
FAULT_KILL_AT_SAVE = "EMBEDLAB_FAULT_KILL_AT_SAVE"
FAULT_SLEEP_IN_SAVE = "EMBEDLAB_FAULT_SLEEP_IN_SAVE"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class _FaultInjectingPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """orbax's atomic-rename temporary directory with the test-only fault hooks before the rename
  that commits a step (used only when one of the ``EMBEDLAB_FAULT_*`` variables is set)."""

  commits = 0  # checkpoint writes of this process that reached the commit point

  async def finalize(self, *args, **kwargs):
    _FaultInjectingPath.commits += 1
    pause = float(os.environ.get(FAULT_SLEEP_IN_SAVE) or 0)
    if pause > 0:
      time.sleep(pause)
    if str(_FaultInjectingPath.commits) == os.environ.get(FAULT_KILL_AT_SAVE, "").strip():
      os.kill(os.getpid(), signal.SIGKILL)
    return await super().finalize(*args, **kwargs)


def _manager(directory: pathlib.Path, keep: int, read_only: bool) -> ocp.CheckpointManager:
  faults = any(os.environ.get(v) for v in (FAULT_KILL_AT_SAVE, FAULT_SLEEP_IN_SAVE))
  options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                         save_interval_steps=0 if read_only else 1,
                                         create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=not read_only,
                                         temporary_path_class=(_FaultInjectingPath
                                                               if faults else None))
  # arrays stored without zstd: float weights barely compress (SST-2's 37 MB table: 36 -> 33
  # MB) and compressing took 0.07-0.15 s of a 0.12-0.21 s save (0.05-0.06 s without)
  handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=False),
              "meta": ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory.absolute(), options=options, item_handlers=handlers)


def checksum(tree: Any) -> list[str]:
  """CRC-32 fingerprints of a pytree's arrays, ``"dtype[shape]:crc"`` sorted, so a tree and
  the same tree read back without its structure (as dicts) give the same list.

  Example:
    >>> import numpy as np
    >>> checksum({"b": np.zeros(2, np.int32), "a": np.ones(1, np.float32)})
    ['float32[1]:aca16a6a', 'int32[2]:6522df69']
  """
  out = []
  for leaf in jax.tree.leaves(tree):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      # split over several processes: every process gathers the whole array (a collective,
      # called by all of them in the same order) so all write and check the same checksums
      from jax.experimental import multihost_utils  # noqa: PLC0415
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    arr = np.ascontiguousarray(np.asarray(leaf))
    shape = ",".join(str(d) for d in arr.shape)
    out.append(f"{arr.dtype}[{shape}]:{zlib.crc32(arr.view(np.uint8).reshape(-1)):08x}")
  return sorted(out)


def _os_error(error: BaseException) -> OSError | None:
  """The ``OSError`` behind an error (orbax and tensorstore may wrap it), or None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError):
      return error
    error = error.__cause__ or error.__context__
  return None


class Checkpoints:
  """The checkpoints of one run directory.

  Attributes:
    recovered: one dict per unreadable checkpoint met while restoring (``which``, ``step``,
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
    try:
      if step in manager.all_steps():
        # left by an earlier attempt that died before its next checkpoint (the run replays
        # the same steps to the same values), or moved on from: the new write replaces it
        manager.delete(step)
      record = {**meta, _CHECKSUM_KEY: checksum(tree)}
      manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree),
                                                 meta=ocp.args.JsonSave(record)), force=True)
      manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax wraps I/O errors in its own types
      cause = _os_error(e)
      if cause is None:
        raise
      try:  # let writes still in flight end before removing what they wrote
        manager.wait_until_finished()
      except Exception:  # noqa: BLE001 - the first error is the one reported
        pass
      shutil.rmtree(pathlib.Path(str(manager.directory)) / f"{step}.orbax-checkpoint-tmp",
                    ignore_errors=True)
      full = cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
      raise CheckpointError(
          f"checkpoint: could not write step {step} to {manager.directory} "
          f"({cause.strerror or cause}); the previous checkpoint is kept"
          + (f" (step {manager.latest_step()})" if manager.latest_step() is not None else "")
          + ". " + ("The disk is full: free" if full else "Free") + " disk space or choose "
          "another --workdir, then run the same command again to resume.") from e

  def restore_latest(self, target: Any) -> tuple[int, Any, dict] | None:
    """``(step, state, meta)`` of the newest readable checkpoint, or None if there is none.

    A corrupt or truncated newest checkpoint is reported, moved aside and the one before it
    is used.
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
      stored = _as_stored(manager, step, abstract)
      args = ocp.args.Composite(state=_restore_args(stored), meta=ocp.args.JsonRestore())
      state, meta = _read_verified(manager, step, args)
      return _resize_rows(state, abstract, step), meta

    return self._newest_readable(manager, which, read)

  def _newest_readable(self, manager, which, args, steps=None):
    bad = []
    found = None
    for step in steps if steps is not None else sorted(manager.all_steps(), reverse=True):
      try:
        found = (step,) + (args(step) if callable(args) else _read_verified(manager, step, args))
        break
      except Exception as e:  # noqa: BLE001 - any failure to read means: try the older one
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e) else ''}"
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
    the newest readable one (an unreadable newer one is reported as by ``restore_latest``).

    Raises:
      CheckpointError: no checkpoint, or the one asked for is unreadable or fails its checksum.
    """
    if which not in ("latest", "best"):
      raise ValueError(f"checkpoint.read: which={which!r} is not 'latest' or 'best'.")
    manager = {"latest": self.latest, "best": self.best}[which]
    # a run trained over several devices is read onto this process's first device
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def load(step):
      abstract = _stored_abstract(manager, step, local)
      return _read_verified(manager, step, ocp.args.Composite(
          state=_restore_args(abstract), meta=ocp.args.JsonRestore()))

    if step is not None:
      try:
        return (step,) + load(step)
      except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint: {manager.directory}/{step} is unreadable "
                              f"({type(e).__name__}: {e}); read another step "
                              f"(there are {list(manager.all_steps())}).") from e
    found = self._newest_readable(manager, which, load)
    if found is None:
      raise CheckpointError(f"checkpoint: {manager.directory} holds no readable checkpoint.")
    return found

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self.latest.close()
    self.best.close()


def _restore_args(abstract: Any) -> Any:
  """Orbax's arguments to read a tree of ``jax.ShapeDtypeStruct`` (shapes, dtypes, shardings)."""
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def _stored_tree(manager, step) -> Any:
  """The metadata tree of one step's arrays (shapes and dtypes, as stored)."""
  directory = pathlib.Path(str(manager.directory)) / str(step) / "state"
  return ocp.PyTreeCheckpointHandler().metadata(directory).tree


def _stored_abstract(manager, step, sharding) -> Any:
  """The tree of one step as stored, each array placed by ``sharding``."""
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                      _stored_tree(manager, step))


def _read_verified(manager, step, args) -> tuple[Any, dict]:
  """``(tree, meta)`` of one step, its arrays checked against the checksums saved with it."""
  out = manager.restore(step, args=args)
  meta = dict(out["meta"])
  expected = meta.pop(_CHECKSUM_KEY, None)
  if expected is not None and checksum(out["state"]) != sorted(expected):
    raise CheckpointError(f"step {step}: the arrays read back do not match the checksums "
                          "written with them (corrupted files)")
  return out["state"], meta


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _as_stored(manager, step, abstract):
  """``abstract`` with the stored shape of every array whose rows (first axis) differ from the
  checkpoint's, sharded on the target's mesh where the stored rows divide, else replicated."""
  try:
    stored = ocp.tree.to_flat_dict(_stored_tree(manager, step))
  except Exception:  # noqa: BLE001 - no metadata: restore as asked, errors are reported then
    return abstract

  def one(path, want):
    have = getattr(stored.get(tuple(_key_name(k) for k in path)), "shape", None)
    if (not isinstance(want, jax.ShapeDtypeStruct) or have is None or not want.shape
        or tuple(have) == want.shape or tuple(have[1:]) != want.shape[1:]):
      return want
    sh = want.sharding
    if isinstance(sh, jax.sharding.NamedSharding) and sh.spec and sh.spec[0] is not None:
      axes = sh.spec[0] if isinstance(sh.spec[0], tuple) else (sh.spec[0],)
      if have[0] % int(np.prod([sh.mesh.shape[a] for a in axes])):
        sh = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(tuple(have), want.dtype, sharding=sh)

  return jax.tree_util.tree_map_with_path(one, abstract)


def _resize_rows(tree, abstract, step):
  """Cuts or pads (with zeros) the first axis of arrays read with another row count to the
  target's, on the target's sharding; the rows cut must be zero (padding)."""

  def one(x, want):
    if not isinstance(want, jax.ShapeDtypeStruct) or x.shape == want.shape:
      return x
    rows = want.shape[0]
    if x.shape[0] > rows and bool(jax.numpy.any(x[rows:] != 0)):
      raise CheckpointError(f"step {step}: an array of shape {x.shape} does not fit the "
                            f"target's {want.shape} (its rows beyond {rows} are not padding); "
                            f"the checkpoint is from another vocabulary")

    def resize(x):
      if x.shape[0] > rows:
        return x[:rows]
      pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
      return jax.numpy.pad(x, pad)

    return jax.jit(resize, out_shardings=want.sharding)(x)

  return jax.tree.map(one, tree, abstract)
