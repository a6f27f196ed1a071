"""Training on a device mesh: 8 simulated CPU devices, two processes, and checkpoints
moved between device counts.

JAX fixes its device count when it starts and this pytest process has one CPU device, so the
sharded runs happen in subprocesses (``XLA_FLAGS=--xla_force_host_platform_device_count=N``);
the single-device reference runs here, on the plain unsharded program. Every run writes its
results and final table to a directory the test compares numerically.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from embedlab.run import checkpoint as ckpt_lib
from embedlab import config as config_lib
from embedlab.run import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
# quickstart, smaller: 402 rows (padded to 404 over 4 shards, 408 over 8), 8 features
BASE = ["data.synthetic_train_size=640", "data.synthetic_eval_size=128", "train.num_steps=30",
        "train.eval_every=15", "train.log_every=15", "train.progress=false", "model.features=8",
        "train.eval_batch_size=64"]
SPARSE = ["optim.tables=sparse_lazy_adam"]
# subprocesses on 8 simulated devices, and two processes over loopback: minutes
pytestmark = pytest.mark.slow

RUNS = {  # name: extra overrides, on 8 devices
    "dense_8x1": ["mesh.data=8", "mesh.model=1"],
    "dense_4x2": ["mesh.data=4", "mesh.model=2"],
    "dense_1x8": ["mesh.data=1", "mesh.model=8"],
    "dense_4x2_rows_columns": ["mesh.data=4", "mesh.model=2", "mesh.table=rows_columns"],
    "sparse_8x1": SPARSE + ["mesh.data=8", "mesh.model=1"],
    "sparse_4x2_xla": SPARSE + ["mesh.data=4", "mesh.model=2", "mesh.lookup=xla"],
    "sparse_4x2_shard_map": SPARSE + ["mesh.data=4", "mesh.model=2", "mesh.lookup=shard_map"],
    "sparse_1x8_shard_map": SPARSE + ["mesh.data=1", "mesh.model=8", "mesh.lookup=shard_map"],
}
TIMEOUT = 240  # seconds per subprocess: a hung collective fails the test instead of CI

# Trains each run and records, per run: results.json, the final table and the table's shards.
TRAIN_SCRIPT = r'''
import json, pathlib, sys
import jax, numpy as np
from embedlab import config as config_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.run import placement
from embedlab.run import build as build_lib
from embedlab.run import train
from embedlab.data import cache as cache_lib

out, base, runs = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
assert len(jax.devices()) == 8, jax.devices()
record = {}
for name, extra in runs.items():
  cfg = config_lib.load_config("experiments/quickstart.py", base + extra)
  results = train.train(cfg, out / name, restart=True, echo=lambda s: None)
  # where train() put the state: each device holds 1/model of the table and of its slots
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  setup = build_lib.build(cfg, data, 30)
  state = build_lib.init_state(cfg, setup)
  mesh = placement.mesh_from_config(cfg.mesh)
  placed = meshes.place(state, meshes.state_shardings(state, mesh, table=cfg.mesh.table))
  table = placed.params["embed"]["table"]
  shards = sorted({tuple(s.data.shape) for s in table.addressable_shards})
  slots = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(placed)
           if meshes.is_table_leaf(path, leaf)
           and jax.tree_util.keystr(path).startswith(".opt_state")]
  slot_shards = sorted({tuple(s.data.shape) for leaf in slots for s in leaf.addressable_shards})
  # the saved checkpoint restores onto the same mesh split the same way
  ckpt = ckpt_lib.Checkpoints(out / name, read_only=True)
  step, restored, _ = ckpt.restore_latest(placed)
  ckpt.close()
  got = restored.params["embed"]["table"]
  assert got.sharding == table.sharding, (got.sharding, table.sharding)
  np.save(out / f"{name}.npy", np.asarray(got))
  mesh_shape = dict(mesh.shape)
  record[name] = {"results": results, "rows": int(table.shape[0]), "shards": shards,
                  "columns_over": mesh_shape["data"] if cfg.mesh.table == "rows_columns" else 1,
                  "slot_shards": slot_shards, "restored_step": int(step),
                  "model": cfg.mesh.model}
# the same run directory reopened on another mesh (1x8: 408 rows, saved with 402) resumes from
# its last checkpoint and evaluates the same parameters; as if it had stopped after that
# checkpoint (a finished run refuses another mesh: it would record a mesh it never trained on)
(out / "dense_4x2" / "results.json").unlink()
cfg = config_lib.load_config("experiments/quickstart.py", base + ["mesh.data=1", "mesh.model=8"])
record["resumed_1x8"] = train.train(cfg, out / "dense_4x2", echo=lambda s: None)
(out / "record.json").write_text(json.dumps(record))
print("OK trained", len(record))
'''

# Restores the checkpoint of a run made on 8 devices (mesh 4x2) on this process's devices.
RESTORE_SCRIPT = r'''
import json, pathlib, sys
import jax, numpy as np
from embedlab import config as config_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.run import placement
from embedlab.run import build as build_lib
from embedlab.run import train
from embedlab.data import cache as cache_lib

run, out, base, extra = (pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]),
                         json.loads(sys.argv[3]), json.loads(sys.argv[4]))
cfg = config_lib.load_config("experiments/quickstart.py", base + extra)
data = cache_lib.encode_splits(cfg.data, cfg.seed)
state = build_lib.init_state(cfg, build_lib.build(cfg, data, 30))
mesh = placement.mesh_from_config(cfg.mesh)
if mesh is not None:
  state = meshes.place(state, meshes.state_shardings(state, mesh))
ckpt = ckpt_lib.Checkpoints(run, read_only=True)
step, restored, meta = ckpt.restore_latest(state)
assert not ckpt.recovered, ckpt.recovered
ckpt.close()
table = restored.params["embed"]["table"]
assert table.sharding == state.params["embed"]["table"].sharding
np.save(out, np.asarray(table))
print("OK restored", len(jax.devices()), int(step), table.shape,
      sorted({tuple(s.data.shape) for s in table.addressable_shards}))
'''

# One of two processes (2 CPU devices each) of a distributed run over loopback.
PROCESS_SCRIPT = r'''
import faulthandler, json, pathlib, sys
faulthandler.dump_traceback_later(int(sys.argv[5]), exit=True)  # a hang shows where, then ends
from embedlab import config as config_lib
from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.run import placement

port, index, workdir = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
overrides = json.loads(sys.argv[4]) + [f"mesh.coordinator_address=localhost:{port}",
                                       "mesh.num_processes=2", f"mesh.process_id={index}"]
cfg = config_lib.load_config("experiments/quickstart.py", overrides)
assert placement.initialize_distributed(cfg.mesh)  # before any other JAX call
import jax
from embedlab.run import build as build_lib
from embedlab.run import train
assert jax.process_count() == 2 and len(jax.devices()) == 4, jax.devices()
results = train.train(cfg, workdir, restart=True, echo=lambda s: None)
print("RESULT " + json.dumps(results), flush=True)
'''


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return env


def _run(script, devices, *args):
  proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                        env=_env(devices), capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return proc.stdout


def _table(run_dir):
  ckpt = ckpt_lib.Checkpoints(run_dir, read_only=True)
  _, tree, _ = ckpt.read("latest")
  ckpt.close()
  return np.asarray(tree["params"]["embed"]["table"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The single-device runs (this process: the plain program), dense and sparse."""
  out = tmp_path_factory.mktemp("one_device")
  runs = {}
  for name, extra in (("dense", []), ("sparse", SPARSE)):
    cfg = config_lib.load_config(ROOT / "experiments/quickstart.py", BASE + extra)
    runs[name] = (train.train(cfg, out / name, echo=lambda s: None), _table(out / name))
  return runs


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
  out = tmp_path_factory.mktemp("eight_devices")
  assert "OK trained" in _run(TRAIN_SCRIPT, 8, out, json.dumps(BASE), json.dumps(RUNS))
  return out, json.loads((out / "record.json").read_text())


def _assert_same_run(got, want, got_table, want_table, what):
  for key in ("dev_accuracy", "test_accuracy", "best_step", "steps"):
    assert got[key] == want[key], (what, key, got[key], want[key])
  assert abs(got["test_loss"] - want["test_loss"]) < 1e-4, (what, got["test_loss"],
                                                              want["test_loss"])
  rows = want_table.shape[0]
  np.testing.assert_allclose(got_table[:rows], want_table, rtol=1e-4, atol=1e-5, err_msg=what)
  assert not np.any(got_table[rows:]), f"{what}: the padding rows moved"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_mesh_run_matches_one_device(reference, eight, name):
  out, record = eight
  want, want_table = reference["sparse" if name.startswith("sparse") else "dense"]
  got = record[name]
  _assert_same_run(got["results"], want, np.load(out / f"{name}.npy"), want_table, name)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_device_holds_one_model_th_of_the_table(eight, name):
  _, record = eight
  got = record[name]
  model = got["model"]
  assert got["rows"] == -(-402 // model) * model  # padded to a multiple of model
  shard = [got["rows"] // model, 8 // got["columns_over"]]
  assert got["shards"] == [shard], got["shards"]
  # Adam's and lazy Adam's mu and nu: split like the table
  assert got["slot_shards"] == [shard], got["slot_shards"]
  assert got["restored_step"] == 30


def test_run_resumes_on_another_mesh(eight):
  _, record = eight
  resumed, first = record["resumed_1x8"], record["dense_4x2"]["results"]
  assert resumed["mesh"]["model"] == 8 and resumed["mesh"]["table_rows"] == 408
  assert resumed["mesh"]["started_on"] == {"data": 4, "model": 2}
  for key in ("dev_accuracy", "test_accuracy", "best_step"):
    assert resumed[key] == first[key], key
  assert abs(resumed["test_loss"] - first["test_loss"]) < 1e-6
  # restored, not trained again: the training time is the one saved in the checkpoint
  assert resumed["train_seconds"] == first["train_seconds"]


@pytest.mark.parametrize("devices,extra", [(1, []), (4, ["mesh.data=1", "mesh.model=4"]),
                                           (4, ["mesh.data=2", "mesh.model=2"])])
def test_checkpoint_from_8_devices_restores_on_fewer(eight, tmp_path, devices, extra):
  out, _ = eight
  saved = np.load(out / "sparse_4x2_shard_map.npy")  # 402 rows: padded for model=2, none
  target = tmp_path / "restored.npy"
  printed = _run(RESTORE_SCRIPT, devices, out / "sparse_4x2_shard_map", target,
                 json.dumps(BASE + SPARSE), json.dumps(extra))
  assert f"OK restored {devices} 30" in printed, printed
  got = np.load(target)
  model = 4 if "mesh.model=4" in extra else (2 if extra else 1)
  assert got.shape == (-(-402 // model) * model, 8)
  np.testing.assert_array_equal(got[:402], saved[:402])
  assert not np.any(got[402:])


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("extra", [["mesh.model=2"], SPARSE + ["mesh.model=2"]],
                         ids=["dense", "sparse"])
def test_two_processes_match_one(reference, tmp_path, extra):
  """Two processes on this machine, 2 CPU devices each, CPU collectives over loopback."""
  port, workdir = _free_port(), tmp_path / "run"
  logs = [(tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in range(2)]
  procs = []
  for i, (out, err) in enumerate(logs):  # files, not pipes: a full pipe would stall a rank
    with out.open("w") as stdout, err.open("w") as stderr:
      procs.append(subprocess.Popen(
          [sys.executable, "-c", PROCESS_SCRIPT, str(port), str(i), str(workdir),
           json.dumps(BASE + extra), str(TIMEOUT - 30)], cwd=ROOT, env=_env(2), stdout=stdout,
          stderr=stderr))
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT)
  finally:
    for p in procs:  # SIGKILL: JAX's preemption notifier catches SIGTERM
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = [(out.read_text(), err.read_text()) for out, err in logs]
  for p, (stdout, stderr) in zip(procs, outputs):
    assert p.returncode == 0, stdout[-2000:] + stderr[-5000:]
  results = [json.loads(line.split(" ", 1)[1]) for stdout, _ in outputs
             for line in stdout.splitlines() if line.startswith("RESULT ")]
  assert len(results) == 2 and results[0]["test_loss"] == results[1]["test_loss"]
  want, want_table = reference["sparse" if extra[0] == SPARSE[0] else "dense"]
  _assert_same_run(results[0], want, _table(workdir), want_table, f"two processes {extra}")
  # process 0 writes the run directory, process 1 only its own logs beside it
  assert json.loads((workdir / "results.json").read_text())["test_loss"] == \
      results[0]["test_loss"]
  assert (tmp_path / "run.process1" / "metrics.jsonl").exists()


# Smaller tables (model.table) on a mesh: a factorized table trained row-sparse with its rows
# split over "model", and a quotient-remainder table (no row table: replicated), against one
# device.
VARIANT_RUNS = {
    "factorized_sparse": SPARSE + ["model.table=factorized", "model.table_rank=4"],
    "qr_dense": ["model.table=qr", "model.table_collisions=7"],
}
VARIANT_SCRIPT = r'''
import json, pathlib, sys
import jax, numpy as np
from embedlab import config as config_lib
from embedlab.run import build as build_lib
from embedlab.run import train

out, base, runs = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
record = {}
for name, extra in runs.items():
  cfg = config_lib.load_config("experiments/quickstart.py",
                               base + extra + ["mesh.data=4", "mesh.model=2",
                                               "mesh.lookup=shard_map"])
  record[name] = train.train(cfg, out / name, restart=True, echo=lambda s: None)
(out / "record.json").write_text(json.dumps(record))
print("OK variants", len(record))
'''


def test_smaller_tables_on_a_mesh_match_one_device(tmp_path):
  assert "OK variants" in _run(VARIANT_SCRIPT, 8, tmp_path, json.dumps(BASE),
                               json.dumps(VARIANT_RUNS))
  record = json.loads((tmp_path / "record.json").read_text())
  for name, extra in VARIANT_RUNS.items():
    cfg = config_lib.load_config(ROOT / "experiments/quickstart.py", BASE + extra)
    want = train.train(cfg, tmp_path / f"one_{name}", echo=lambda s: None)
    got = record[name]
    assert got["mesh"]["model"] == 2 and got["table"] == cfg.model.table
    for key in ("dev_accuracy", "test_accuracy", "best_step"):
      assert got[key] == want[key], (name, key, got[key], want[key])
    assert abs(got["test_loss"] - want["test_loss"]) < 1e-4, name
    assert want["test_accuracy"] > 0.5, want  # it learned (4 topics: chance 0.25)


def test_multilabel_on_a_mesh_matches_one_device(tmp_path):
  # multi-hot labels split over "data" with their batch; one sigmoid per label, dense and
  # row-sparse, against the same runs on one device
  from test_multilabel import _write_multilabel  # noqa: PLC0415 - the multi-label test data
  for split, n, seed in (("train", 320, 0), ("dev", 96, 1), ("test", 96, 2)):
    _write_multilabel(tmp_path / f"{split}.txt", n, seed)
  base = ["data.source=files", f"data.train={tmp_path / 'train.txt'}",
          f"data.dev={tmp_path / 'dev.txt'}", f"data.test={tmp_path / 'test.txt'}",
          "data.multilabel=true", "data.max_len=16", "model.features=16", "train.batch_size=32",
          "train.num_epochs=3", "train.eval_every=10", "train.log_every=10", "train.eval_k=2",
          "train.progress=false", "train.plots=false", "data.workers=1",
          "optim.learning_rate=0.3"]
  runs = {"dense": [], "sparse": ["optim.tables=sparse_adagrad"]}
  assert "OK variants" in _run(VARIANT_SCRIPT, 8, tmp_path, json.dumps(base), json.dumps(runs))
  record = json.loads((tmp_path / "record.json").read_text())
  for name, extra in runs.items():
    cfg = config_lib.load_config(ROOT / "experiments/quickstart.py", base + extra)
    want = train.train(cfg, tmp_path / f"one_{name}", echo=lambda s: None)
    got = record[name]
    assert got["mesh"]["model"] == 2, got["mesh"]
    for key in ("dev_accuracy", "test_accuracy", "best_step", "test_recall_at_2"):
      assert got[key] == want[key], (name, key, got[key], want[key])
    assert abs(got["test_loss"] - want["test_loss"]) < 1e-4, name
    assert want["test_accuracy"] > 0.6, want  # it learned
