"""orbax's failures while saving and restoring: what they mean and what they leave behind.

* **Which error is which.** orbax and tensorstore wrap I/O errors in their own types, and a
  ``ValueError`` of tensorstore names its errno only in its text. ``errno_of`` finds the errno
  behind an error, ``is_format_failure`` tells an error that says a checkpoint's bytes are bad (a
  checksum that does not match, a file missing, truncated or not parseable) from one of the
  machine (memory, permissions, I/O) or of the caller, and ``corrupt_or_raise`` turns the first
  kind into ``CorruptCheckpointError`` and lets the others through as they are.
* **What a failed save leaves.** orbax logs every failed write thread's traceback at ERROR
  before the error reaches the caller, and leaves the save's ``<step>.orbax-checkpoint-tmp``
  directories behind (it cleans them up only when a manager is opened again, and then all of
  them, another writer's included). ``holding_orbax_errors`` holds those logs back while a save
  runs; ``remove_new_tmp_dirs`` removes the temporary directories that this save created, and
  only those, once orbax's writer threads have ended.
* **What a failed call leaves for later.** A read or write that fails in one of orbax's
  concurrent tasks leaves the others with errors nobody retrieves, and tensorstore operations
  that call back into orbax's closed event loop. Left alone they surface at some later garbage
  collection, long after the failure was reported in one line: an asyncio ERROR ("Task
  exception was never retrieved", with the whole tensorstore spec) and "Event loop is closed"
  tracebacks. ``discard_failed_tasks`` waits for them and collects them while their logs are
  held, then drops those logs.

Hand-written because orbax has neither: it reports a full disk as whatever its writer raised
(after logging each thread's traceback) and does not say whether a failed restore means bad
bytes, which is what decides between using the previous checkpoint and stopping the run.

Example:
  >>> import errno
  >>> errno_of(ValueError("[os_error_code='28'] writing tensorstore_spec ..."))
  28
  >>> is_format_failure(FileNotFoundError("state/_METADATA"))
  True
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
import sys
import threading
import time
from typing import Any, Callable, Iterator

from embedlab.run.checkpoint_integrity import CorruptCheckpointError

_TMP_MARK = ".orbax-checkpoint-tmp"
# An errno a tensorstore error names in its text (``[os_error_code='28']``).
_TENSORSTORE_ERRNO = re.compile(r"os_error_code=\W?(\d+)")
# Errors of the machine, not of a checkpoint's bytes: the files may be fine.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOMEM, errno.EMFILE,
                       errno.ENFILE, errno.EROFS, errno.ENOSPC, errno.EAGAIN, errno.EINTR,
                       errno.ETIMEDOUT, errno.EBUSY}
_ENVIRONMENT_STATUSES = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED",
                         "ABORTED", "DEADLINE_EXCEEDED", "UNAUTHENTICATED")


def _chain(error: BaseException | None) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def errno_of(error: BaseException) -> int | None:
  """The errno behind an error: an ``OSError``'s, or the one a tensorstore error names in its
  text (orbax and tensorstore wrap I/O errors in their own types); None if there is none.

  Example:
    >>> import errno
    >>> errno_of(RuntimeError("save failed")) is None
    True
    >>> errno_of(OSError(errno.EACCES, "Permission denied")) == errno.EACCES
    True
  """
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


def is_format_failure(error: BaseException) -> bool:
  """Whether an error while restoring says the checkpoint's bytes are bad (a checksum that does
  not match, a file missing, truncated or not parseable) rather than the machine (memory,
  permissions, I/O) or the caller (a target of another shape).

  Example:
    >>> import errno
    >>> is_format_failure(PermissionError(errno.EACCES, "Permission denied"))
    False
  """
  code = errno_of(error)
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


def first_line(error: BaseException) -> str:
  """``"Type: first line of the message"`` (at most 200 characters of it), for one-line reports.

  Example:
    >>> first_line(ValueError("bad bytes\\nmore detail"))
    'ValueError: bad bytes'
  """
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}"


def corrupt_or_raise(read: Callable[[int], Any], step: int) -> Any:
  """``read(step)``, its format failures raised as ``CorruptCheckpointError`` (the original as
  the cause, without its traceback), every other error as it is. What a failed read of bad
  bytes leaves for later is discarded (``discard_failed_tasks``).

  Example:
    >>> def read(step):
    ...   raise FileNotFoundError("meta/metadata")
    >>> corrupt_or_raise(read, 4)
    Traceback (most recent call last):
    ...
    embedlab.run.checkpoint_integrity.CorruptCheckpointError: step 4: FileNotFoundError: meta/metadata
  """
  with holding_orbax_errors() as held:
    try:
      found = read(step)
    except Exception as e:  # noqa: BLE001 - sorted here: bad bytes or not
      if not is_format_failure(e):
        held.release()
        raise
      failure = e
      if not isinstance(e, CorruptCheckpointError):
        failure = CorruptCheckpointError(f"step {step}: {first_line(e)}")
        failure.__cause__ = e
    else:
      held.release()
      return found
    discard_failed_tasks(held, failure.__cause__ or failure.__context__)
  raise failure


def discard_failed_tasks(held: HeldLogs, error: BaseException | None) -> None:
  """Collects what a failed orbax read or write leaves behind, while ``held`` holds back its
  logs, then drops those logs: the tasks whose errors nobody retrieved, and the tensorstore
  operations still in flight for orbax's closed event loop. ``error`` (and its causes) loses
  its traceback, whose frames hold the tasks; the caller reports the failure in its own words.
  """
  for link in _chain(error):
    link.__traceback__ = None
  _wait_for_pending_io()
  gc.collect()  # the tasks log their unretrieved errors now, held back
  held.records.clear()  # and the records, which hold the tasks, go with them
  gc.collect()


def _wait_for_pending_io(timeout: float = 10.0) -> None:
  """Waits (at most ``timeout`` seconds) for the tensorstore reads and writes still in flight:
  those a failed orbax call started and its closed event loop no longer awaits."""
  import tensorstore as ts  # noqa: PLC0415 - orbax's dependency, loaded by then

  deadline = time.monotonic() + timeout
  pending = [o for o in gc.get_objects() if isinstance(o, ts.Future) and not o.done()]
  for future in pending:
    try:
      future.exception(timeout=max(deadline - time.monotonic(), 0.0))
    except Exception:  # noqa: BLE001 - cancelled, or past the deadline: nothing to wait for
      pass


@contextlib.contextmanager
def _closed_loop_callbacks_ignored() -> Iterator[None]:
  """Drops the "Event loop is closed" errors of callbacks into an event loop that has ended
  (tensorstore futures of a failed orbax read, called back as they are collected); any other
  unraisable error is passed to the hook as it is."""
  hook = sys.unraisablehook

  def quiet(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      hook(unraisable)

  sys.unraisablehook = quiet
  try:
    yield
  finally:
    sys.unraisablehook = hook


def tmp_dirs(directory: pathlib.Path) -> set[str]:
  """The names of orbax's temporary directories in ``directory`` (none if it cannot be listed).

  Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "3.orbax-checkpoint-tmp").mkdir(); (d / "2").mkdir()
    >>> tmp_dirs(d)
    {'3.orbax-checkpoint-tmp'}
  """
  try:
    return {p.name for p in directory.iterdir() if _TMP_MARK in p.name}
  except OSError:
    return set()


def remove_new_tmp_dirs(directory: pathlib.Path, before: set[str], threads: set,
                        patience: float = 10.0, quiet: float = 0.3) -> list[str]:
  """Removes the temporary directories in ``directory`` that are not in ``before`` (those a
  failed save made, and only those); returns the ones it could not remove. orbax's writer
  threads may still be ending when the save's error arrives: the threads started since
  ``threads`` was taken are waited for, and removal is repeated until nothing new has appeared
  for ``quiet`` seconds (at most ``patience`` seconds in all).

  Example:
    >>> import tempfile, pathlib, threading
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "1.orbax-checkpoint-tmp").mkdir()
    >>> before, threads = tmp_dirs(d), set(threading.enumerate())
    >>> (d / "2.orbax-checkpoint-tmp").mkdir()
    >>> remove_new_tmp_dirs(d, before, threads, quiet=0.0), sorted(tmp_dirs(d))
    ([], ['1.orbax-checkpoint-tmp'])
  """
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
    left = sorted(tmp_dirs(directory) - before)
    for name in left:
      shutil.rmtree(directory / name, ignore_errors=True)
    left = sorted(tmp_dirs(directory) - before)
    now = time.monotonic()
    if left:
      calm_since = None
    elif calm_since is None:
      calm_since = now
    if (calm_since is not None and now - calm_since >= quiet) or now > deadline:
      return [str(directory / name) for name in left]
    time.sleep(0.05)


class HeldLogs(logging.Filter):
  """Holds back the records of a logger while installed (orbax logs every failed write thread's
  traceback at ERROR before the error reaches the caller).

  Example:
    >>> held = HeldLogs()
    >>> held.filter(logging.LogRecord("absl", logging.ERROR, "", 0, "write failed", None, None))
    False
    >>> len(held.records)
    1
  """

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
def holding_orbax_errors() -> Iterator[HeldLogs]:
  """Holds back orbax's ERROR logs while inside; ``release()`` the yielded ``HeldLogs`` to show
  them (a save that worked, or one that failed for a reason reported as it is). The "Event loop
  is closed" errors of tensorstore's callbacks into orbax's ended event loops are dropped.

  Example:
    >>> with holding_orbax_errors() as held:
    ...   logging.getLogger("absl").error("a write thread failed")
    >>> [r.getMessage() for r in held.records]
    ['a write thread failed']
  """
  held = HeldLogs()
  for name in _HELD_LOGGERS:
    logging.getLogger(name).addFilter(held)
  try:
    # a failed call's tensorstore operations may call back into orbax's closed loop at any
    # time from tensorstore's threads, the call still failing included
    with _closed_loop_callbacks_ignored():
      yield held
  finally:
    for name in _HELD_LOGGERS:
      logging.getLogger(name).removeFilter(held)
