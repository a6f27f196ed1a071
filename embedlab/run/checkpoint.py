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
  and nothing is moved.
* **A full disk or a failing writer.** The save stops with one ``CheckpointError`` naming the
  step, the directory, the reason, the bytes the checkpoint needs and the bytes free there
  (``shutil.disk_usage``), and the fix; orbax's own error logs of that save are held back, the
  temporary directories that this save created (and only those) are removed and the previous
  checkpoint is kept untouched.

Example:
  >>> import tempfile, pathlib, jax.numpy as jnp
  >>> ckpt = Checkpoints(pathlib.Path(tempfile.mkdtemp()))
  >>> ckpt.save_latest(3, {"w": jnp.ones(2)}, {"best": 0.5})
  >>> step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(2)})
  >>> step, tree["w"].tolist(), meta
  (3, [1.0, 1.0], {'best': 0.5})
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import pathlib
import re
import shutil
import threading
import time
import zlib
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("embedlab")

# In the JSON record: ``{path: "dtype[shape]:crc"}`` of the arrays, and the CRC-32 of the record
# (the arrays' map included, this key left out).
_ARRAYS_KEY = "_embedlab_arrays"
_RECORD_KEY = "_embedlab_record_crc32"
# Checkpoints written before the record was covered: a sorted list of path-less fingerprints.
# They are still read (and checked as well as they can be).
_LEGACY_KEY = "_embedlab_crc32"
_TMP_MARK = ".orbax-checkpoint-tmp"
# An errno a tensorstore error names in its text (``[os_error_code='28']``).
_TENSORSTORE_ERRNO = re.compile(r"os_error_code=\W?(\d+)")
# Errors of the machine, not of a checkpoint's bytes: the files may be fine.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM, errno.EMFILE,
                       errno.ENFILE, errno.EROFS, errno.ENOSPC, errno.EAGAIN, errno.EINTR,
                       errno.ETIMEDOUT, errno.EBUSY}
_ENVIRONMENT_STATUSES = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED",
                         "ABORTED", "DEADLINE_EXCEEDED", "UNAUTHENTICATED")


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint fails its checksum or its files cannot be parsed: its bytes are bad."""


def _path_name(path) -> str:
  return "/".join(_key_name(k) for k in path)


def checksum(tree: Any) -> dict[str, str]:
  """CRC-32 fingerprints of a pytree's arrays by path: ``{path: "dtype[shape]:crc"}``.

  A path names dict keys, attribute names and sequence indices alike, so a ``TrainState`` and
  the same state read back as dicts give the same map; two arrays swapped between leaves do not.

  Example:
    >>> import numpy as np
    >>> checksum({"b": np.zeros(2, np.int32), "a": [np.ones(1, np.float32)]})
    {'a/0': 'float32[1]:aca16a6a', 'b': 'int32[2]:6522df69'}
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[_path_name(path)] = _fingerprint(leaf)
  return dict(sorted(out.items()))


def _fingerprint(leaf) -> str:
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    # split over several processes: every process gathers the whole array (a collective,
    # called by all of them in the same order) so all write and check the same checksums
    from jax.experimental import multihost_utils  # noqa: PLC0415
    leaf = multihost_utils.process_allgather(leaf, tiled=True)
  arr = np.ascontiguousarray(np.asarray(leaf))
  shape = ",".join(str(d) for d in arr.shape)
  return f"{arr.dtype}[{shape}]:{zlib.crc32(arr.view(np.uint8).reshape(-1)):08x}"


def _record_crc(record: dict) -> str:
  """CRC-32 of a JSON record in one canonical spelling (what orbax writes reads back equal)."""
  text = json.dumps(record, sort_keys=True, separators=(",", ":"))
  return f"{zlib.crc32(text.encode('utf-8')):08x}"


def _sealed(tree: Any, meta: dict) -> dict:
  """``meta`` with the checksums of ``tree``'s arrays and of itself."""
  reserved = {_ARRAYS_KEY, _RECORD_KEY, _LEGACY_KEY} & set(meta)
  if reserved:
    raise ValueError(f"checkpoint: the record may not hold the keys {sorted(reserved)}.")
  record = {**meta, _ARRAYS_KEY: checksum(tree)}
  return {**record, _RECORD_KEY: _record_crc(record)}


def _verify(step: int, tree: Any, record: dict) -> dict:
  """The record without its checksums; raises ``CorruptCheckpointError`` when the record or
  an array (by path) does not match what was written."""
  record = dict(record)
  if _RECORD_KEY in record:
    crc = record.pop(_RECORD_KEY)
    if _record_crc(record) != crc:
      raise CorruptCheckpointError(f"step {step}: its JSON record does not match the checksum "
                                   "written with it (the record was changed)")
    expected, got = record.pop(_ARRAYS_KEY, {}), checksum(tree)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [p for p in expected if p in got and got[p] != expected[p]]
    if missing or extra or wrong:
      what = (f"arrays {wrong[:3]} do not match their checksums" if wrong else
              f"arrays at {missing[:3]} are missing, at {extra[:3]} unexpected")
      raise CorruptCheckpointError(f"step {step}: {what} (corrupted files)")
    return record
  if _LEGACY_KEY in record:
    expected = record.pop(_LEGACY_KEY)
    if sorted(_fingerprint(x) for x in jax.tree.leaves(tree)) != sorted(expected):
      raise CorruptCheckpointError(f"step {step}: the arrays read back do not match the "
                                   "checksums written with them (corrupted files)")
    return record
  raise CorruptCheckpointError(f"step {step}: its JSON record holds no checksum")


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


def _chain(error: BaseException | None) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _errno_of(error: BaseException) -> int | None:
  """The errno behind an error: an ``OSError``'s, or the one a tensorstore error names in its
  text (orbax and tensorstore wrap I/O errors in their own types); None if there is none."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno is not None:
      return e.errno
    found = _TENSORSTORE_ERRNO.search(str(e)) if isinstance(e, ValueError) else None
    if found:
      return int(found.group(1))
  for e in _chain(error):  # a wrapper that kept only the text
    if os.strerror(errno.ENOSPC) in str(e):
      return errno.ENOSPC
  return None


def _is_format_failure(error: BaseException) -> bool:
  """Whether an error while restoring says the checkpoint's bytes are bad (a checksum that does
  not match, a file missing, truncated or not parseable) rather than the machine (memory,
  permissions, I/O) or the caller (a target of another shape)."""
  code = _errno_of(error)
  if code is not None and code != errno.ENOENT:
    return False
  for e in _chain(error):
    if isinstance(e, (MemoryError, KeyboardInterrupt)):
      return False
  for e in _chain(error):
    if isinstance(e, (CorruptCheckpointError, json.JSONDecodeError, FileNotFoundError)):
      return True
    text = str(e)
    if isinstance(e, ValueError) and "tensorstore_spec" in text:  # tensorstore's read errors
      return not text.startswith(_ENVIRONMENT_STATUSES)
  return False


def _tmp_dirs(directory: pathlib.Path) -> set[str]:
  try:
    return {p.name for p in directory.iterdir() if _TMP_MARK in p.name}
  except OSError:
    return set()


def _remove_new_tmp_dirs(directory: pathlib.Path, before: set[str], threads: set,
                         patience: float = 10.0, quiet: float = 0.3) -> list[str]:
  """Removes the temporary directories in ``directory`` that are not in ``before`` (those a
  failed save made, and only those); returns the ones it could not remove. orbax's writer
  threads may still be ending when the save's error arrives: the threads started since
  ``threads`` was taken are waited for, and removal is repeated until nothing new has appeared
  for ``quiet`` seconds (at most ``patience`` seconds in all)."""
  deadline = time.monotonic() + patience
  for thread in set(threading.enumerate()) - threads:
    if thread is threading.current_thread():
      continue
    try:
      thread.join(max(0.0, deadline - time.monotonic()))
    except RuntimeError:  # created but not started yet: the wait below covers what it writes
      pass
  calm_since = None
  while True:
    left = sorted(_tmp_dirs(directory) - before)
    for name in left:
      shutil.rmtree(directory / name, ignore_errors=True)
    left = sorted(_tmp_dirs(directory) - before)
    now = time.monotonic()
    if left:
      calm_since = None
    elif calm_since is None:
      calm_since = now
    if (calm_since is not None and now - calm_since >= quiet) or now > deadline:
      return [str(directory / name) for name in left]
    time.sleep(0.05)


def _tree_bytes(tree: Any) -> int:
  return int(sum(np.dtype(x.dtype).itemsize * int(np.prod(np.shape(x)))
                 for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


class _HeldLogs(logging.Filter):
  """Holds back the records of a logger while installed (orbax logs every failed write thread's
  traceback at ERROR before the error reaches the caller)."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []
    self.releasing = False

  def filter(self, record):
    if record.levelno >= logging.ERROR and not self.releasing:
      self.records.append(record)
      return False
    return True

  def release(self):
    """Logs what was held (the save failed for a reason reported as it is)."""
    self.releasing = True
    for record in self.records:
      logging.getLogger(record.name).handle(record)
    self.records = []


_HELD_LOGGERS = ("absl", "asyncio")  # orbax's logs, and its write tasks' unretrieved errors


@contextlib.contextmanager
def _holding_orbax_errors() -> Iterator[_HeldLogs]:
  held = _HeldLogs()
  for name in _HELD_LOGGERS:
    logging.getLogger(name).addFilter(held)
  try:
    yield held
  finally:
    for name in _HELD_LOGGERS:
      logging.getLogger(name).removeFilter(held)


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
    before, threads = _tmp_dirs(directory), set(threading.enumerate())
    with _holding_orbax_errors() as held:
      try:
        if step in manager.all_steps():
          # left by an earlier attempt that died before its next checkpoint (the run replays
          # the same steps to the same values), or moved on from: the new write replaces it
          manager.delete(step)
        record = _sealed(tree, meta)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(tree),
                                                   meta=ocp.args.JsonSave(record)), force=True)
        manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001 - orbax wraps I/O errors in its own types
        code = _errno_of(e)
        if code is None:
          held.release()
          raise
        try:  # let writes still in flight end before removing what they wrote
          manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the first error is the one reported
          pass
        left = _remove_new_tmp_dirs(directory, before, threads)
        manager.reload()
        gc.collect()  # the failed write's tasks log their unretrieved errors now, held back
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
      _check_step(manager, step, abstract)
      stored = _as_stored(manager, step, abstract)
      args = ocp.args.Composite(state=_restore_args(stored), meta=ocp.args.JsonRestore())
      state, meta = _read_verified(manager, step, args)
      return _resize_rows(state, abstract, step), meta

    return self._newest_readable(manager, which, read)

  def _newest_readable(self, manager, which, read, steps=None):
    bad = []
    found = None
    for step in steps if steps is not None else sorted(manager.all_steps(), reverse=True):
      try:
        found = (step,) + _corrupt_or_raise(read, step)
        break
      except CorruptCheckpointError as e:  # only bad bytes mean: try the older one
        reason = _first_line(e.__cause__ or e)
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
      _check_step(manager, step, None)
      abstract = _stored_abstract(manager, step, local)
      return _read_verified(manager, step, ocp.args.Composite(
          state=_restore_args(abstract), meta=ocp.args.JsonRestore()))

    if step is not None:
      try:
        return (step,) + _corrupt_or_raise(load, step)
      except CorruptCheckpointError as e:
        raise CheckpointError(f"checkpoint: {manager.directory}/{step} is unreadable "
                              f"({_first_line(e.__cause__ or e)}); read another step "
                              f"(there are {list(manager.all_steps())}).") from e
    found = self._newest_readable(manager, which, load)
    if found is None:
      raise CheckpointError(f"checkpoint: {manager.directory} holds no readable checkpoint.")
    return found

  def close(self) -> None:
    """Waits for pending writes and releases the managers."""
    self.latest.close()
    self.best.close()


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _corrupt_or_raise(read, step):
  """``read(step)``, its format failures raised as ``CorruptCheckpointError`` (the original as
  the cause), every other error as it is."""
  try:
    return read(step)
  except CorruptCheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - sorted here: bad bytes or not
    if _is_format_failure(e):
      raise CorruptCheckpointError(f"step {step}: {_first_line(e)}") from e
    raise


def _check_step(manager, step, abstract) -> None:
  """Checks that a step's files are there and that its arrays are the ones ``abstract`` asks
  for (by path; None: any). Missing files are corruption; other arrays mean another model."""
  directory = pathlib.Path(str(manager.directory)) / str(step)
  for name in ("meta/metadata", "state/_METADATA"):
    if not (directory / name).is_file():
      raise CorruptCheckpointError(f"step {step}: {name} is missing")
  try:
    stored = set(ocp.tree.to_flat_dict(_stored_tree(manager, step)))
  except Exception as e:  # noqa: BLE001 - sorted by _corrupt_or_raise
    if _is_format_failure(e) or isinstance(e, ValueError):
      raise CorruptCheckpointError(f"step {step}: state/_METADATA cannot be parsed "
                                   f"({_first_line(e)})") from e
    raise
  if abstract is None:
    return
  wanted = {tuple(_key_name(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  if stored != wanted:
    show = lambda paths: ", ".join("/".join(p) for p in sorted(paths)[:3]) or "none"  # noqa: E731
    raise CheckpointError(
        f"checkpoint: {directory} holds other arrays than this run's state (only in the "
        f"checkpoint: {show(stored - wanted)}; only in the run: {show(wanted - stored)}): it "
        "was written by another model or optimizer config. Train in a new --workdir, or start "
        "this one over (--restart); nothing was moved.")


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
  """``(tree, meta)`` of one step, the record and the arrays checked against their checksums."""
  out = manager.restore(step, args=args)
  return out["state"], _verify(step, out["state"], dict(out["meta"]))
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
