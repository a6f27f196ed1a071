"""Fault injection on checkpoints: corrupt or truncated checkpoints are detected, reported and
replaced by the previous good one; a full disk or a failing writer during a save keeps the
previous checkpoint and stops with a clear message; writes are atomic."""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from embedlab.run import checkpoint as ckpt_lib
from embedlab.run import checkpoint_integrity
from embedlab import config as config_lib
from embedlab.run import resources
from embedlab.run import steps as steps_lib
from embedlab.run import train
from embedlab.config import Config

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = ["data.synthetic_train_size=320", "data.synthetic_eval_size=64",
        "data.synthetic_length=12", "data.max_len=16", "data.synthetic_words_per_topic=10",
        "data.synthetic_shared_words=30", "model.features=8", "model.dropout=0.3",
        "model.hidden=8", "train.batch_size=32", "train.num_epochs=2", "train.eval_every=7",
        "train.log_every=3", "train.checkpoint_every=4", "train.progress=false",
        "optim.learning_rate=0.05"]


def tiny() -> Config:
  return config_lib.apply_overrides(Config(name="tiny"), TINY)


def quiet(*_):
  pass


def _state(value: float):
  """A small train-state-like tree: params, optimizer slots, a step and a key."""
  return steps_lib.TrainState(jnp.array(int(value), jnp.int32),
                          {"embed": {"table": jnp.full((5, 3), value, jnp.float32)},
                           "out": {"w": jnp.arange(6.0).reshape(2, 3) * value}},
                          (jnp.full((5, 3), value / 2), jnp.zeros(2)),
                          jax.random.PRNGKey(int(value)))


def _assert_tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _files(step_dir: pathlib.Path, pattern: str = "**/*"):
  return sorted(p for p in step_dir.glob(pattern) if p.is_file())


def _truncate_array_data(d):
  for p in _files(d / "state", "**/d/*"):
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])


def _flip_array_bytes(d):
  for p in _files(d / "state", "**/d/*"):
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 3, len(b), max(len(b) // 7, 1)):
      b[i] ^= 0x5A
    p.write_bytes(bytes(b))


def _zero_every_file(d):
  for p in _files(d):
    p.write_bytes(b"")


def _garble_meta(d):
  (d / "meta" / "metadata").write_text('{"best_dev_accuracy": 0.5, "sk')


def _delete_meta(d):
  (d / "meta" / "metadata").unlink()


def _delete_state_metadata(d):
  (d / "state" / "_METADATA").unlink()


def _truncate_manifests(d):
  for p in _files(d / "state", "**/manifest.ocdbt"):
    p.write_bytes(p.read_bytes()[:10])


def _empty_step_dir(d):
  for p in _files(d):
    p.unlink()


def _rewrite_record(d, change):
  """Rewrites a step's JSON record through ``change(record)`` and seals it again with a valid
  record checksum, so that only the arrays' checksums can tell."""
  path = d / "meta" / "metadata"
  record = json.loads(path.read_text())
  record.pop("_embedlab_record_crc32")
  change(record)
  record["_embedlab_record_crc32"] = checkpoint_integrity.record_crc(record)
  path.write_text(json.dumps(record))


def _swap_arrays_keep_checksums(d):
  """Arrays that decode fine but are not the ones written: only the checksum can tell."""
  def change(record):
    arrays = record["_embedlab_arrays"]
    for path in arrays:
      arrays[path] = arrays[path][:-8] + "00000000"
  _rewrite_record(d, change)


def _arrays_in_the_wrong_leaves(d):
  """Two arrays of one shape and dtype read into each other's leaves (as if their files were
  swapped): every array matches some checksum, only the paths tell."""
  def change(record):
    arrays = record["_embedlab_arrays"]
    a, b = "params/embed/table", "opt_state/0"
    assert arrays[a].split(":")[0] == arrays[b].split(":")[0] and arrays[a] != arrays[b]
    arrays[a], arrays[b] = arrays[b], arrays[a]
  _rewrite_record(d, change)


def _edit_record(d):
  """The bookkeeping changed by hand (a better best step): the record's own checksum tells."""
  path = d / "meta" / "metadata"
  record = json.loads(path.read_text())
  record["best_step"] += 1
  path.write_text(json.dumps(record))


def _record_without_checksums(d):
  path = d / "meta" / "metadata"
  record = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
  path.write_text(json.dumps(record))


CORRUPTIONS = {"truncated array data": _truncate_array_data,
               "flipped bytes in array data": _flip_array_bytes,
               "every file zero bytes": _zero_every_file,
               "garbled JSON record": _garble_meta, "JSON record deleted": _delete_meta,
               "state metadata deleted": _delete_state_metadata,
               "truncated manifests": _truncate_manifests, "empty step directory": _empty_step_dir,
               "arrays not matching their checksums": _swap_arrays_keep_checksums,
               "arrays in the wrong leaves": _arrays_in_the_wrong_leaves,
               "JSON record edited": _edit_record,
               "JSON record without checksums": _record_without_checksums}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_is_reported_moved_aside_and_the_previous_used(
    tmp_path, caplog, kind):
  ckpt = ckpt_lib.Checkpoints(tmp_path, keep=3)
  for step in (4, 8, 12):
    ckpt.save_latest(step, _state(step), {"best_step": step})
  ckpt.close()
  CORRUPTIONS[kind](tmp_path / "checkpoints" / "latest" / "12")

  ckpt = ckpt_lib.Checkpoints(tmp_path, keep=3)
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    step, state, meta = ckpt.restore_latest(_state(0))
  assert step == 8 and meta == {"best_step": 8}
  _assert_tree_equal(state, _state(8))
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert "latest/12 is unreadable" in warned and "using step 8" in warned
  assert [r["step"] for r in ckpt.recovered] == [12]
  assert pathlib.Path(ckpt.recovered[0]["moved_to"]).is_dir()  # kept for a post-mortem
  # the resumed run writes step 12 again, and that one is read back
  ckpt.save_latest(12, _state(12), {"best_step": 12})
  assert ckpt.restore_latest(_state(0))[0] == 12
  ckpt.close()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_read_leaves_no_late_errors_behind(tmp_path, caplog, monkeypatch, kind):
  """The one-line report is all: orbax's failed tasks log nothing later ("Task exception was
  never retrieved") and tensorstore's late callbacks raise nothing into its closed loop."""
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  for step in (1, 2):
    ckpt.save_latest(step, _state(step), {"best_step": step})
  ckpt.close()
  CORRUPTIONS[kind](tmp_path / "checkpoints" / "latest" / "2")
  late = []
  monkeypatch.setattr(sys, "unraisablehook", late.append)
  reader = ckpt_lib.Checkpoints(tmp_path, read_only=True)
  caplog.clear()  # what orbax logs as it opens a directory with bad files is not in question
  with caplog.at_level(logging.DEBUG):
    for _ in range(3):
      assert reader.read("latest")[0] == 1
      with pytest.raises(ckpt_lib.CheckpointError, match="latest/2 is unreadable"):
        reader.read("latest", step=2)
      assert reader.restore_latest(_state(0))[0] == 1
    reader.close()
    del reader
    for _ in range(5):
      gc.collect()
      time.sleep(0.02)
  assert not [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.ERROR]
  assert not [repr(u.exc_value) for u in late]


@pytest.mark.parametrize("content", [b"", b"\x00{not json" * 5000], ids=["empty", "garbled"])
def test_orbax_step_metadata_that_cannot_be_parsed_is_one_short_warning(tmp_path, caplog,
                                                                         content):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  for step in (1, 2):
    ckpt.save_latest(step, _state(step), {"best_step": step})
  ckpt.close()
  bad = tmp_path / "checkpoints" / "latest" / "2" / "_CHECKPOINT_METADATA"
  bad.write_bytes(content)
  caplog.clear()
  with caplog.at_level(logging.DEBUG):
    reader = ckpt_lib.Checkpoints(tmp_path, read_only=True)
    step, _, meta = reader.read("latest")
    reader.close()
  assert step == 2 and meta == {"best_step": 2}  # embedlab does not need that file
  assert not [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.ERROR]
  notes = [r.getMessage() for r in caplog.records if "_CHECKPOINT_METADATA" in r.getMessage()]
  assert notes and all(f"orbax cannot read {bad}" in n and len(n) < 400 for n in notes)
  assert all("not json" not in n for n in notes)


def test_every_checkpoint_corrupt_means_none_and_a_read_error(tmp_path, caplog):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  for step in (1, 2):
    ckpt.save_latest(step, _state(step), {})
  for step in (1, 2):
    _zero_every_file(tmp_path / "checkpoints" / "latest" / str(step))
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    assert ckpt.restore_latest(_state(0)) is None
  assert "no readable checkpoint is left" in caplog.text
  ckpt.close()
  with pytest.raises(ckpt_lib.CheckpointError, match="holds no readable checkpoint"):
    ckpt_lib.Checkpoints(tmp_path, read_only=True).read("latest")


def test_read_only_fallback_reports_but_moves_nothing(tmp_path, caplog):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  for step in (1, 2):
    ckpt.save_latest(step, _state(step), {})
  ckpt.close()
  _truncate_array_data(tmp_path / "checkpoints" / "latest" / "2")
  reader = ckpt_lib.Checkpoints(tmp_path, read_only=True)
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    step, tree, _ = reader.read("latest")
  assert step == 1 and (tmp_path / "checkpoints" / "latest" / "2").is_dir()
  np.testing.assert_array_equal(tree["params"]["embed"]["table"], np.full((5, 3), 1.0))
  with pytest.raises(ckpt_lib.CheckpointError, match=r"latest/2 is unreadable"):
    reader.read("latest", step=2)


def test_corrupt_best_checkpoint_falls_back_to_none_not_to_garbage(tmp_path):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  ckpt.save_best(5, _state(5).params, {"dev_accuracy": 0.9})
  _flip_array_bytes(tmp_path / "checkpoints" / "best" / "5")
  _swap_arrays_keep_checksums(tmp_path / "checkpoints" / "best" / "5")
  assert ckpt.restore_best(_state(0).params) is None
  assert ckpt.recovered[0]["which"] == "best"
  ckpt.close()


def _enospc(*_, **__):
  raise OSError(errno.ENOSPC, "No space left on device")


async def _async_enospc(*_, **__):
  _enospc()


async def _tensorstore_enospc(*_, **__):
  # what tensorstore raises when an array file cannot be written (a ValueError naming the errno
  # in its text), as a real full disk does
  raise ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
                   '"/x/": Failed to write 380205 bytes to file 7: No space left on device '
                   "[os_error_code='28'] [tensorstore_spec='{}']")


class _Usage(NamedTuple):
  total: int
  used: int
  free: int


@pytest.mark.parametrize("where", ["array writer", "JSON writer", "commit rename"])
def test_full_disk_during_save_is_one_message_and_leaves_nothing_behind(tmp_path, monkeypatch,
                                                                        caplog, where):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  ckpt.save_latest(4, _state(4), {"best_step": 4})
  latest = tmp_path / "checkpoints" / "latest"
  # a temporary directory this save did not make (another writer's) is left alone
  (latest / "99.orbax-checkpoint-tmp").mkdir()
  if where == "commit rename":
    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", _async_enospc)
  elif where == "JSON writer":
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", _async_enospc)
  else:
    from orbax.checkpoint._src.serialization import serialization
    monkeypatch.setattr(serialization, "async_serialize_from_host", _tensorstore_enospc)
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage", lambda _: _Usage(10**9, 10**9 - 4096, 4096))
  gc.collect()  # unretrieved task errors of earlier tests are logged now, not below
  with caplog.at_level(logging.DEBUG):
    with pytest.raises(ckpt_lib.CheckpointError) as e:
      ckpt.save_latest(8, _state(8), {"best_step": 8})
  msg = str(e.value)
  needed = sum(np.asarray(x).nbytes for x in jax.tree.leaves(_state(8)))
  assert f"could not write step 8 to {latest}: the disk is full (No space left on device)" in msg
  assert f"needs about {resources.human(needed)} ({needed:,} bytes)" in msg
  assert "4.0 KiB (4,096 bytes) are free there" in msg
  assert "previous checkpoint is kept (step 4)" in msg
  assert "Free disk space or choose another --workdir" in msg
  assert len(msg.splitlines()) == 1 and e.value.__cause__ is None and e.value.__suppress_context__
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # orbax's held back
  monkeypatch.undo()
  assert sorted(p.name for p in latest.iterdir()) == ["4", "99.orbax-checkpoint-tmp"]
  again = ckpt_lib.Checkpoints(tmp_path)
  step, state, meta = again.restore_latest(_state(0))
  assert step == 4 and meta == {"best_step": 4}
  _assert_tree_equal(state, _state(4))
  again.close()


FILE_SIZE_LIMIT = """
import resource, signal, sys, pathlib
import jax.numpy as jnp
from embedlab.run import checkpoint
ckpt = checkpoint.Checkpoints(pathlib.Path(sys.argv[1]))
ckpt.save_latest(1, {"w": jnp.ones(10)}, {"best_step": 1})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
  ckpt.save_latest(2, {"w": jnp.ones(100_000)}, {"best_step": 2})
except checkpoint.CheckpointError as e:
  print("ERROR:", e)
"""


def test_a_real_failing_array_write_is_one_message_and_no_temporary_directory(tmp_path):
  """tensorstore itself fails to write (a file size limit, which needs no privileges, in place
  of a full disk): one line, no orbax tracebacks, nothing half-written left."""
  script = tmp_path / "limit.py"
  script.write_text(FILE_SIZE_LIMIT)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  assert out.stdout.startswith("ERROR: checkpoint: could not write step 2"), out
  assert "File too large" in out.stdout and "ulimit -f" in out.stdout
  assert "(400,000 bytes)" in out.stdout and "previous checkpoint is kept (step 1)" in out.stdout
  assert "Traceback" not in out.stderr and "ERROR:absl" not in out.stderr, out.stderr[-3000:]
  latest = tmp_path / "run" / "checkpoints" / "latest"
  assert sorted(p.name for p in latest.iterdir()) == ["1"]


def test_a_save_that_fails_for_another_reason_is_not_disguised(tmp_path):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  with pytest.raises(TypeError):
    ckpt.save_latest(1, {"w": object()}, {})


# ------------------------------------------------------------- errors that are not corruption


def _memory_error(*_, **__):
  raise MemoryError("out of memory while reading")


def _permission_denied(*_, **__):
  raise ValueError("PERMISSION_DENIED: Error reading \"w/.zarray\" in OCDBT database: "
                   "Permission denied [os_error_code='13'] [tensorstore_spec='{}']")


def _io_error(*_, **__):
  raise OSError(errno.EIO, "Input/output error")


def _unreadable_config(*_, **__):
  raise RuntimeError("the run's settings cannot be read")


@pytest.mark.parametrize("raise_", [_memory_error, _permission_denied, _io_error,
                                    _unreadable_config],
                         ids=["memory", "permission", "io", "other"])
@pytest.mark.parametrize("which", ["restore", "read"])
def test_errors_that_are_not_corruption_are_raised_and_nothing_is_moved(tmp_path, monkeypatch,
                                                                        raise_, which):
  ckpt = ckpt_lib.Checkpoints(tmp_path, keep=3)
  for step in (4, 8):
    ckpt.save_latest(step, _state(step), {"best_step": step})
  monkeypatch.setattr(ocp.CheckpointManager, "restore", raise_)
  with pytest.raises(Exception) as e:
    ckpt.restore_latest(_state(0)) if which == "restore" else ckpt.read("latest")
  assert type(e.value).__name__ in ("MemoryError", "ValueError", "OSError", "RuntimeError")
  assert not isinstance(e.value, ckpt_lib.CheckpointError)
  assert ckpt.recovered == []
  monkeypatch.undo()
  latest = tmp_path / "checkpoints" / "latest"
  assert sorted(p.name for p in latest.iterdir()) == ["4", "8"]
  assert not (tmp_path / "checkpoints" / "corrupt").exists()
  assert ckpt.restore_latest(_state(0))[0] == 8
  ckpt.close()


def test_a_checkpoint_of_another_model_is_an_error_not_corruption(tmp_path):
  ckpt = ckpt_lib.Checkpoints(tmp_path)
  ckpt.save_latest(4, _state(4), {"best_step": 4})
  other = _state(0)._replace(params={"embed": {"table": jnp.zeros((5, 3))},
                                     "hidden": {"w": jnp.zeros((3, 3))}})
  with pytest.raises(ckpt_lib.CheckpointError, match=r"other arrays than this run's state \(only "
                     r"in the checkpoint: params/out/w; only in the run: params/hidden/w\).*"
                     r"--workdir.*nothing was moved"):
    ckpt.restore_latest(other)
  assert ckpt.recovered == [] and (tmp_path / "checkpoints" / "latest" / "4").is_dir()
  ckpt.close()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  run = tmp_path_factory.mktemp("straight") / "run"
  train.train(tiny(), run, echo=quiet)
  return run


def _final(run):
  ckpt = ckpt_lib.Checkpoints(run, read_only=True)
  out = ckpt.read("latest")
  ckpt.close()
  return out


def _metrics(run):
  keep = ("event", "split", "step", "loss", "accuracy")
  return [{k: v for k, v in json.loads(line).items() if k in keep}
          for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_as(straight_dir, run):
  (sa, ta, _), (sb, tb, _) = _final(straight_dir), _final(run)
  assert sa == sb == 20
  _assert_tree_equal(ta, tb)
  assert _metrics(straight_dir) == _metrics(run)


def test_full_disk_then_a_corrupt_checkpoint_and_the_rerun_still_ends_bitwise(
    tmp_path, monkeypatch, caplog, straight):
  """The disk fills up during a save (the run stops clearly), then the newest checkpoint left
  is found corrupt: the rerun reports it, resumes from the one before, and ends bitwise equal
  to an uninterrupted run."""
  real_save = ocp.handlers.JsonCheckpointHandler._save_fn
  calls = {"n": 0}

  async def filling_disk(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] >= 4:  # latest 4, best 7, latest 8 fit; then the disk is full
      _enospc()
    return await real_save(self, *args, **kwargs)

  monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", filling_disk)
  with pytest.raises(ckpt_lib.CheckpointError,
                     match=r"could not write step \d+ .*No space left on device.*previous "
                           r"checkpoint is kept \(step 8\).*--workdir"):
    train.train(tiny(), tmp_path / "run", echo=quiet)
  monkeypatch.undo()
  assert _final(tmp_path / "run")[0] == 8
  _truncate_array_data(tmp_path / "run" / "checkpoints" / "latest" / "8")
  messages = []
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    train.train(tiny(), tmp_path / "run", echo=messages.append)
  assert "latest/8 is unreadable" in caplog.text
  assert any("resuming" in m and "from step 4" in m for m in messages)
  _assert_same_as(straight, tmp_path / "run")


def test_a_run_whose_restore_fails_for_another_reason_stops_and_keeps_its_checkpoints(
    tmp_path, monkeypatch, straight):
  """Out of memory while restoring is not corruption: the run stops with that error instead of
  moving every good checkpoint aside and training again from step 0."""
  run = tmp_path / "run"
  shutil.copytree(straight, run)
  (run / "results.json").unlink()  # stopped after its last checkpoint: the rerun restores it
  files = lambda: sorted(str(p.relative_to(run)) for p in run.rglob("*"))  # noqa: E731
  before = files()
  monkeypatch.setattr(ocp.CheckpointManager, "restore", _memory_error)
  with pytest.raises(MemoryError):
    train.train(tiny(), run, echo=quiet)
  monkeypatch.undo()
  assert files() == before
  _assert_same_as(straight, run)


def test_checkpoints_are_stored_uncompressed_and_older_compressed_ones_still_read(tmp_path):
  # arrays are written without zstd (float weights barely compress; compressing was most of a
  # save's time). Runs saved before, through orbax's StandardSave with its default zstd, must
  # still resume and read: one such checkpoint is written here as the older code wrote it.
  rng = np.random.default_rng(0)
  big = jnp.asarray(rng.normal(size=(2000, 64)).astype(np.float32))
  state = _state(3)._replace(params={"embed": {"table": big}, "out": {"w": jnp.ones((2, 3))}})
  new = ckpt_lib.Checkpoints(tmp_path / "new")
  new.save_latest(5, state, {"best_step": 5})
  new.close()
  stored = sum(p.stat().st_size for p in _files(tmp_path / "new" / "checkpoints" / "latest" / "5"))
  assert stored > big.size * 4  # every byte of the table is there

  old_dir = tmp_path / "old" / "checkpoints" / "latest"
  old = ocp.CheckpointManager(old_dir, options=ocp.CheckpointManagerOptions(
      max_to_keep=2, enable_async_checkpointing=False), item_names=("state", "meta"))
  # the older record: a sorted list of the arrays' fingerprints, without paths
  record = {"best_step": 5,
            "_embedlab_crc32": sorted(checkpoint_integrity.fingerprint(x) for x in jax.tree.leaves(state))}
  old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(record)))
  old.wait_until_finished()
  old.close()
  compressed = sum(p.stat().st_size for p in _files(old_dir / "5"))
  assert compressed < stored  # it was compressed: this test reads the older format
  for run in ("new", "old"):
    ckpt = ckpt_lib.Checkpoints(tmp_path / run, keep=2)
    step, restored, meta = ckpt.restore_latest(_state(0)._replace(params=state.params))
    assert step == 5 and meta == {"best_step": 5}
    _assert_tree_equal(restored, state)
    _, tree, _ = ckpt.read("latest")
    np.testing.assert_array_equal(np.asarray(tree["params"]["embed"]["table"]), np.asarray(big))
    ckpt.close()
