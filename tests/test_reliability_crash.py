"""Fault injection: real training runs killed with SIGKILL and resumed lose nothing.

Each chain starts ``embedlab train`` (through ``tests/checkpoint_faults.py``, which runs the
command with test-only hooks around orbax's commit, outside the library) on a tiny synthetic
experiment in one run directory, kills it with SIGKILL (after a seeded random delay once it is
training, or from inside a checkpoint write through the ``EMBEDLAB_FAULT_KILL_AT_SAVE`` hook),
starts the same command again, kills it again, ... and finally lets it finish. The final
parameters and optimizer state (the latest checkpoint), the best checkpoint, ``metrics.jsonl``
and ``results.json`` must equal those of an uninterrupted run bitwise: the data order and the
random keys (dropout) are restored too, or they would differ.

The figures (kill points survived, kills inside a checkpoint write) are printed at the end of
``test_killed_runs_resume_bitwise_equal`` (``pytest -s`` shows them).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

import checkpoint_faults as faults
from embedlab.run import checkpoint as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parent.parent

# 256 examples / batch 16 = 16 steps per epoch, 3 epochs = 48 steps; a checkpoint every 2 steps
# (25 writes), dev evaluation every 6, dropout so the random keys matter.
EXPERIMENT = '''"""Tiny experiment for the fault-injection tests (tests/test_reliability_crash.py)."""
from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config():
  return Config(
      name="tiny_crash", seed=3,
      data=DataConfig(synthetic_train_size=256, synthetic_eval_size=64, synthetic_length=12,
                      max_len=16, synthetic_words_per_topic=10, synthetic_shared_words=30),
      model=ModelConfig(features=8, hidden=8, dropout=0.3),
      optim=OptimConfig(learning_rate=0.05),
      train=TrainConfig(batch_size=16, num_epochs=3, eval_every=6, log_every=3,
                        checkpoint_every=2, progress=False))
'''
STEPS = 48
# a chain's kill plan: "save:N" = killed by the hook at its N-th checkpoint write (the files are
# written, the commit rename is not done); "t" = SIGKILL from outside after a random delay once
# the run has written a new checkpoint; "term" / "int" = SIGTERM (preemption, a time limit) /
# SIGINT (Ctrl-C) the same way: the run saves a checkpoint at the step boundary and stops.
# Two chains run side by side: 26 stops in all.
PLANS = [
    ["save:1", "t", "term", "save:2", "t", "save:1", "int", "t", "save:2", "t", "save:1", "t",
     "save:1"],
    ["t", "save:2", "term", "save:1", "t", "save:2", "t", "term", "save:1", "t", "save:1", "t",
     "save:1"],
]
SIGNALS = {"t": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def _env(tmp_path: pathlib.Path, **extra) -> dict[str, str]:
  env = dict(os.environ)
  env.update(EMBEDLAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO),
             JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONHASHSEED="0")
  for key in (faults.KILL_AT_SAVE, faults.SLEEP_IN_SAVE):
    env.pop(key, None)
  env.update(extra)
  return env


def _start(tmp_path, experiment, workdir, log, **extra) -> subprocess.Popen:
  # every run goes through the fault hooks' launcher; they act only when their variable is set
  return subprocess.Popen(
      [sys.executable, faults.__file__, "train", str(experiment), "--workdir", str(workdir),
       "--no-progress"], cwd=tmp_path, env=_env(tmp_path, **extra),
      stdout=log, stderr=subprocess.STDOUT)


def _latest_steps(workdir: pathlib.Path) -> list[int]:
  d = workdir / "checkpoints" / "latest"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _tmp_dirs(workdir: pathlib.Path) -> list[str]:
  root = workdir / "checkpoints"
  return sorted(p.name for p in root.glob("*/*.orbax-checkpoint-tmp*")) if root.is_dir() else []


class Chain:
  """One run directory driven through a kill plan, one attempt at a time (``poll`` advances it
  without blocking, so two chains run side by side)."""

  def __init__(self, tmp_path, name, plan, seed):
    self.tmp_path, self.name, self.plan = tmp_path, name, list(plan)
    self.workdir = tmp_path / name
    self.rng = np.random.default_rng(seed)
    self.kills: list[dict] = []
    self.proc = None
    self.attempts = 0
    self.done = False

  def _launch(self):
    self.attempts += 1
    self.kind = self.plan.pop(0) if self.plan else "finish"
    extra = {}
    if self.kind.startswith("save:"):
      extra[faults.KILL_AT_SAVE] = self.kind.split(":")[1]
    elif self.kind in SIGNALS:
      extra[faults.SLEEP_IN_SAVE] = "0.02"  # wider write windows for outside kills
    self.log = open(self.tmp_path / f"{self.name}.{self.attempts}.log", "wb")  # noqa: SIM115
    self.start_steps = _latest_steps(self.workdir)
    self.proc = _start(self.tmp_path, self.tmp_path / "tiny_crash.py", self.workdir, self.log,
                       **extra)
    self.deadline = None  # set once the run has written a new checkpoint
    self.delay = float(self.rng.uniform(0.0, 0.8))

  def poll(self) -> None:
    if self.done:
      return
    if self.proc is None:
      self._launch()
      return
    code = self.proc.poll()
    if code is None and self.kind in SIGNALS:
      if self.deadline is None and _latest_steps(self.workdir) != self.start_steps:
        self.deadline = time.monotonic() + self.delay
      if self.deadline is not None and time.monotonic() >= self.deadline:
        self.proc.send_signal(SIGNALS[self.kind])
        code = self.proc.wait()
    if code is None:
      return
    self.log.close()
    output = (self.tmp_path / f"{self.name}.{self.attempts}.log").read_text()
    if code in (-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM, 128 + signal.SIGINT):
      # SIGTERM / SIGINT in the train loop: a checkpoint of the step it stopped at, then exit
      # 128 + the signal; outside the loop (start-up, the final evaluation) they act as usual
      graceful = "a checkpoint of that step is saved" in output
      assert graceful or self.kind != "term" or code != 128 + signal.SIGTERM, output[-3000:]
      self.kills.append({"kind": self.kind, "latest_steps": _latest_steps(self.workdir),
                         "in_write": bool(_tmp_dirs(self.workdir)), "graceful": graceful,
                         "finished": (self.workdir / "results.json").exists()})
    else:
      assert code == 0, f"{self.name} attempt {self.attempts} ({self.kind}) exited {code}:\n" \
                        f"{output[-3000:]}"
      # a planned kill that never came (the run finished first) still counts as no kill
      self.done = not self.plan
    self.proc = None


def _params_and_state(workdir):
  ckpt = ckpt_lib.Checkpoints(workdir, read_only=True)
  latest = ckpt.read("latest")
  best = ckpt.read("best")
  ckpt.close()
  return latest, best


def _metrics(workdir):
  keep = ("event", "split", "step", "loss", "accuracy")
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k in keep} for line in lines]


def _results(workdir):
  skip = ("train_seconds", "timings")
  return {k: v for k, v in json.loads((workdir / "results.json").read_text()).items()
          if k not in skip}


def _assert_same_run(a: pathlib.Path, b: pathlib.Path):
  (step_a, state_a, meta_a), (best_a, params_a, _) = _params_and_state(a)
  (step_b, state_b, meta_b), (best_b, params_b, _) = _params_and_state(b)
  assert step_a == step_b == STEPS and best_a == best_b
  for tree_a, tree_b in ((state_a, state_b), (params_a, params_b)):
    leaves_a, leaves_b = jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)
    assert len(leaves_a) == len(leaves_b) and leaves_a
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # params, slots, rng, step
  meta_a.pop("train_seconds"), meta_b.pop("train_seconds")
  assert meta_a == meta_b
  assert _metrics(a) == _metrics(b)  # every train log and dev / test evaluation, in order
  assert _results(a) == _results(b)


def test_killed_runs_resume_bitwise_equal(tmp_path):
  (tmp_path / "tiny_crash.py").write_text(EXPERIMENT)
  start = time.monotonic()
  with open(tmp_path / "straight.log", "wb") as log:
    straight = _start(tmp_path, tmp_path / "tiny_crash.py", tmp_path / "straight", log)
    chains = [Chain(tmp_path, f"chain{i}", plan, seed=i) for i, plan in enumerate(PLANS)]
    while not all(c.done for c in chains):
      for chain in chains:
        chain.poll()
      time.sleep(0.01)
    assert straight.wait() == 0, (tmp_path / "straight.log").read_text()[-3000:]
  kills = [k for c in chains for k in c.kills]
  for chain in chains:
    _assert_same_run(tmp_path / "straight", chain.workdir)
    assert not _tmp_dirs(chain.workdir)
  in_write = sum(k["in_write"] for k in kills)
  by_hook = sum(k["kind"].startswith("save:") for k in kills)
  print(f"\nkill points survived: {len(kills)} ({by_hook} by the in-save hook, "
        f"{sum(k['graceful'] for k in kills)} by SIGTERM / SIGINT saving at the step, "
        f"{len(kills) - by_hook - sum(k['graceful'] for k in kills)} by SIGKILL from outside at "
        f"random times; {in_write} left a half-written "
        f"checkpoint behind); every resumed run ended bitwise equal to the uninterrupted one "
        f"({time.monotonic() - start:.0f} s)")
  for chain in chains:
    print(f"  {chain.name}: " + "; ".join(
        f"{k['kind']} -> steps {k['latest_steps']}{' (mid-write)' if k['in_write'] else ''}"
        f"{' (after the results)' if k['finished'] else ''}" for k in chain.kills))
  assert len(kills) >= 20
  assert by_hook >= 8 and in_write >= by_hook  # each hook kill leaves a half-written write
  assert sum(k["graceful"] for k in kills) >= 3  # SIGTERM / SIGINT saved at the step and exited
