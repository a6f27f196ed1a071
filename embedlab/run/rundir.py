"""The run directory's bookkeeping, without JAX: whether a config may train there (new,
resume, finished, restart), its lock, and what ``--restart`` deletes.

The checks write nothing, so ``embedlab train`` runs them before it forks the data encoder and
imports JAX, and a run directory is created only once the run is known to start.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pathlib
import shutil
from typing import Sequence

from embedlab import config as config_lib


class RunDirError(RuntimeError):
  """The run directory cannot be used for this run."""


# what embedlab writes in a run directory: ``--restart`` deletes these and nothing else
RUN_ENTRIES = ("config.json", "vocab.txt", "labels.json", "buckets.npy", "data.json", "metrics.jsonl",
               "results.json", "tensorboard", "checkpoints", "plots")
LOCK_FILE = ".embedlab.lock"


def run_dir_state(path: pathlib.Path, cfg: config_lib.Config, *, restart: bool = False,
                  check_lock: bool = True) -> str:
  """What training ``cfg`` in ``path`` would do, checked without writing anything.

  Returns:
    ``"new"`` (no run there yet), ``"resume"`` (the same config, not finished), ``"finished"``
    (the same config, ``results.json`` written), or ``"restart"`` (``restart`` and an embedlab
    run is there to delete).

  Raises:
    RunDirError: another process trains there; the directory holds a different config (a run
      that saved a checkpoint, or a finished one on another device mesh); or ``restart`` and the
      directory holds files but no embedlab run.
  """
  path = pathlib.Path(path)
  holder = lock_holder(path) if check_lock else None
  if holder is not None:
    raise RunDirError(f"{path} is in use: process {holder} is training there (its lock is "
                      f"{path / LOCK_FILE}); wait for it to end, stop it, or choose another "
                      f"--workdir.")
  config_file = path / "config.json"
  old = _read_run_config(config_file)
  if restart:
    if old is None and path.is_dir() and any(path.iterdir()):
      theirs = sorted(p.name for p in path.iterdir())
      raise RunDirError(f"--restart: {path} holds no embedlab run (no readable config.json; it "
                        f"holds {_names(theirs)}), so nothing there is deleted; choose another "
                        f"--workdir.")
    return "restart" if old is not None else "new"
  if old is None:
    if config_file.exists():
      raise RunDirError(f"{config_file} is not an embedlab run config; choose another "
                        f"--workdir (nothing there is changed).")
    return "new"
  new = json.loads(config_lib.to_json(cfg))
  finished = (path / "results.json").exists()
  if not finished:
    # the mesh may change on resuming (the checkpoint is read onto any number of devices)
    old, new = ({k: v for k, v in d.items() if k != "mesh"} for d in (old, new))
  if new != old:
    if not finished and not has_checkpoint(path):  # a start that stopped before its first save
      return "new"
    diff = config_diff(old, new)
    what = "a finished run" if finished else "a run"
    raise RunDirError(
        f"{path} holds {what} of a different config ({diff}); nothing was changed. Choose "
        f"another --workdir for this config, or pass --restart to delete that run "
        f"({_names(run_entries(path))}) and train this config there.")
  return "finished" if finished else "resume"


def lock_holder(path: pathlib.Path) -> int | None:
  """The pid of the process training in run directory ``path``, or None."""
  lock = pathlib.Path(path) / LOCK_FILE
  if not lock.exists():
    return None
  try:
    with open(lock, "r+") as f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        text = f.read().strip()
        return int(text) if text.isdigit() else -1
      fcntl.flock(f, fcntl.LOCK_UN)
  except OSError:
    return None
  return None


def _read_run_config(config_file: pathlib.Path) -> dict | None:
  """The stored config as a dict, or None where there is none or it is not embedlab's."""
  try:
    stored = json.loads(config_file.read_text())
    config_lib.from_dict(stored)
  except (OSError, ValueError, TypeError, KeyError):
    return None
  return stored


def has_checkpoint(path: pathlib.Path) -> bool:
  root = path / "checkpoints"
  return root.is_dir() and any(p.name.isdigit() for d in root.iterdir() if d.is_dir()
                               for p in d.iterdir())


def run_entries(path: pathlib.Path) -> list[str]:
  return [name + ("/" if (path / name).is_dir() else "") for name in RUN_ENTRIES
          if (path / name).exists()]


def _names(names: Sequence[str], most: int = 8) -> str:
  shown = ", ".join(names[:most])
  return shown + (f" and {len(names) - most} more" if len(names) > most else "") or "nothing"


def acquire_lock(path: pathlib.Path):
  """An open file holding an exclusive lock on ``path``'s lock file, with this pid in it."""
  f = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held until RunDir.close
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "?"
    f.close()
    raise RunDirError(f"{path} is in use: process {holder} is training there; wait for it to "
                      f"end, stop it, or choose another --workdir.") from None
  f.seek(0)
  f.truncate()
  f.write(f"{os.getpid()}\n")
  f.flush()
  return f


def config_diff(old: dict, new: dict, prefix: str = "") -> str:
  diffs = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      inner = config_diff(a, b, prefix + key + ".")
      if inner:
        diffs.append(inner)
    elif a != b:
      diffs.append(f"{prefix}{key}: {a!r} there, {b!r} now")
  return "; ".join(diffs)


def data_fingerprint(files: Sequence[pathlib.Path], vocab_tokens: Sequence[str],
                     label_names: Sequence[str]) -> dict:
  """What a run was trained on (``data.json``): each data file's path, bytes and sha256, and
  the sha256 of the vocabulary and of the labels."""
  def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()

  return {"files": [{"path": str(p), "bytes": p.stat().st_size, "sha256": digest(p)}
                    for p in files if p.is_file()],
          "vocab_sha256": hashlib.sha256("\n".join(vocab_tokens).encode()).hexdigest(),
          "vocab_size": len(vocab_tokens),
          "labels": list(label_names)}


def changed_files(old: dict, new: dict) -> list[str]:
  """The data files whose bytes differ between two ``data_fingerprint``s."""
  before = {f["path"]: f["sha256"] for f in old.get("files", [])}
  return [f["path"] for f in new.get("files", []) if before.get(f["path"]) != f["sha256"]]


def delete_run(path: pathlib.Path) -> str:
  """Deletes the entries embedlab wrote in run directory ``path`` (``RUN_ENTRIES``) and
  returns their names; any other file there is kept."""
  gone = run_entries(path)
  for name in RUN_ENTRIES:
    target = path / name
    if target.is_dir() and not target.is_symlink():
      shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
      target.unlink()
  return _names(gone)
