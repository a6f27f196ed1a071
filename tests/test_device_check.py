"""The device check's smoke mode (``benchmarks/device_check.py --smoke``): it runs on CPU, every
contract check passes against its numpy reference, and every section reports finite numbers.

One subprocess (two simulated CPU devices, so the sharding checks split a table) shared by the
tests; PyTorch left out (``--no-torch``), as in CI.
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SECTIONS = ("contracts", "gather", "bag", "sparse_step", "e2e")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             EMBEDLAB_COMPILE_CACHE="off", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"),
                         "--out", str(out), "--smoke", "--no-torch"],
                        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
  return proc, out


def _numbers(node):
  if isinstance(node, dict):
    for v in node.values():
      yield from _numbers(v)
  elif isinstance(node, list):
    for v in node:
      yield from _numbers(v)
  elif isinstance(node, float):
    yield node


def test_smoke_runs_every_section_and_ends_with_one_json_line(smoke):
  proc, out = smoke
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  last = json.loads(proc.stdout.strip().splitlines()[-1])
  assert last["device_check"] == "smoke" and last["backend"] == "cpu" and last["devices"] == 2
  assert last["sections"] == {name: "ok" for name in SECTIONS}
  result = json.loads((out / "device_check.json").read_text())
  assert set(result["sections"]) == set(SECTIONS)
  log = (out / "device_check.log").read_text()
  assert log.strip().splitlines()[-1] == proc.stdout.strip().splitlines()[-1]


def test_every_contract_check_passes_with_a_measured_error(smoke):
  _, out = smoke
  contracts = json.loads((out / "device_check.json").read_text())["sections"]["contracts"]
  checks = contracts["checks"]
  failed = [c for c in checks if not c["passed"]]
  assert not failed, failed
  names = " | ".join(c["name"] for c in checks)
  for part in ("lookup: gradient", "bag ragged max", "bag padded sqrtn weighted",
               "strategy scan", "attend", "compress hashed", "compress hash_embedding",
               "compress qr (concat)", "compress factorized", "compress int2",
               "sparse sparse_lazy_adam: two steps, slot 1", "sparse_rowwise_adagrad",
               "sparse_sgd.add", "localize: row gradients", "sharding (2 device(s), model=2)",
               "sharded_sparse_update", "bad id raises (jit"):
    assert part in names, part
  compared = [c for c in checks if c["max_abs_err"] is not None]
  assert len(compared) >= 40
  assert all(0 <= c["max_abs_err"] <= c["tol"] for c in compared)


def test_figures_are_finite_and_torch_is_reported_missing(smoke):
  _, out = smoke
  result = json.loads((out / "device_check.json").read_text())
  sections = result["sections"]
  numbers = list(_numbers({k: sections[k] for k in SECTIONS}))
  assert numbers and all(math.isfinite(x) for x in numbers)
  for dtype in ("float32", "bfloat16"):
    gather = sections["gather"]["results"][dtype]
    assert gather["lookup_gbs"] > 0 and gather["copy_gbs"] > 0
    assert gather["torch_index_select_gbs"] is None
  assert sections["gather"]["torch"] == "n/a: --no-torch"
  for name in ("fwd", "dense", "sparse"):
    assert sections["bag"]["results"][name]["jax_ms"] > 0
  step = sections["sparse_step"]
  assert set(step["results"]) == {"sparse_sgd", "sparse_rowwise_adagrad", "sparse_lazy_adam"}
  assert all(len(by) == 3 for by in step["results"].values())
  assert all(r > 0 for r in step["ratio_large_small"].values())
  run = sections["e2e"]["experiments"]["quickstart"]["runs"][0]
  assert run["returncode"] == 0 and 0 <= run["test_accuracy"] <= 1 and run["seconds"] > 0
  # goals with a missing side are None, never a guess
  assert result["goals"]["lookup >= torch index_select"] is None
  assert result["goals"]["step t(2^12) / t(2^8) <= 1.5"] in (True, False)
