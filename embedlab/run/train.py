"""Training: ``TrainState``, a jitted ``train_step``, evaluation, and ``train(config, workdir)``.

The train state holds data only, ``TrainState(step, params, opt_state, rng)``; the step is a
pure function jitted once with donated buffers. Metrics come back as sums plus a count so
averages are exact. The step key is ``fold_in(rng, step)`` and batch ``k`` of epoch ``e`` is
fixed by ``(seed, e)``, so a run resumed from a checkpoint ends bitwise equal to one that was
never interrupted (on CPU).

A non-finite loss or gradient never reaches the parameters: the step keeps the old state for
that batch and counts it; the run then stops naming the step (or, with
``train.skip_nonfinite=true``, goes on and reports how many batches were skipped).
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from embedlab import config as config_lib
from embedlab.core import compress as compress_lib
from embedlab.core import sharding, tables
from embedlab.data import datasets as data_lib
from embedlab.run import build as build_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.run import preflight, report
from embedlab.run import steps as steps_lib


def train(cfg: config_lib.Config, workdir: str | pathlib.Path, *, restart: bool = False,
          progress: bool | None = None, echo: Callable[[str], None] = print) -> dict:
  """Trains, evaluates and saves one experiment in ``workdir``; resumes if it holds a run.

  Returns the results dict also written to ``workdir/results.json``.
  """
  clock = report.PhaseClock()
  try:
    return _train(cfg, workdir, restart, progress, echo, clock)
  finally:
    clock.close()


def _train(cfg, workdir, restart, progress, echo, clock) -> dict:
  workdir = pathlib.Path(workdir)
  # the data first: its tokenizing processes fork before JAX's backends start their threads
  data = data_lib.encode_splits(cfg.data, cfg.seed)
  clock.lap("data")
  if preflight.finished(workdir, cfg, restart):
    results = json.loads((workdir / "results.json").read_text())
    echo(f"{workdir} holds this run, preflight.finished at step {results.get('steps')}: nothing to train "
         f"(its results follow). To train it again, pass --restart (deletes that run) or "
         f"choose another --workdir.")
    return results
  # everything that can refuse the run comes before its directory is written
  preflight.fingerprint = preflight.fingerprint(cfg, data)  # reads and hashes the data files: once a run
  preflight.check_same_data(preflight.own_dir(workdir), data, preflight.fingerprint, echo)
  mesh = sharding.mesh_from_config(cfg.mesh)
  if mesh is not None:
    build_lib.check_batch_splits(cfg, mesh)
  per_epoch, steps = build_lib.total_steps(cfg, len(data.train_labels))
  setup = build_lib.build(cfg, data, steps)
  if mesh is None:
    preflight.check_compiled_step_fits(cfg, data, setup, per_epoch, steps)
  run = preflight.open_run_dir(workdir, cfg, restart, echo)
  try:
    run.save_vocab(data.vocab, data.label_names, data.kept_buckets, preflight.fingerprint)
    return _loop(run, workdir, cfg, data, mesh, setup, per_epoch, steps, progress, echo, clock)
  finally:
    run.close()


def _loop(run, workdir, cfg, data, mesh, setup, per_epoch, steps, progress, echo, clock) -> dict:
  """Restores the latest checkpoint if there is one, trains to ``steps``, evaluates, saves."""
  checkpoints = ckpt_lib.Checkpoints(workdir, cfg.train.keep_checkpoints)
  state, meta = build_lib.init_state(cfg, setup), {"best_dev_accuracy": -1.0, "best_step": -1,
                                         "skipped_nonfinite": 0, "train_seconds": 0.0}
  shardings = None
  if mesh is not None:
    shardings = sharding.state_shardings(state, mesh, table=cfg.mesh.table,
                                         dense=cfg.mesh.dense)
    state = sharding.place(state, shardings)
  restored = checkpoints.restore_latest(state)
  pending = None
  if restored is not None:
    _, state, meta = restored
    pending = meta.pop("pending_sums", None)
    echo(f"resuming {run.path} from step {int(state.step)}")
  run.truncate_metrics(int(state.step))
  echo(report.summary_text(cfg, data, setup, mesh))
  step = int(state.step)
  clock.lap("setup")
  single_fn, multi_fn, eval_step, put = steps_lib.compile_steps(cfg, setup, mesh, shardings)
  every_ckpt = cfg.train.checkpoint_every or cfg.train.eval_every
  bar = report.progress_bar(steps, step, cfg.train.progress if progress is None else progress)
  acc, best = steps_lib.zero_sums(), None
  if pending is not None:  # the running sums of a log period a stop cut short
    acc = {k: np.asarray(pending[k], dtype=v.dtype) for k, v in acc.items()}
  prior_seconds, loop_start = meta["train_seconds"], time.perf_counter()
  boundaries = (cfg.train.log_every, cfg.train.eval_every, every_ckpt, per_epoch)
  lengths = data.train_lengths if cfg.data.bucket_by_length else None
  pack = build_lib.ragged_packer(cfg, data, per_epoch, steps, lengths, mesh, echo)
  blocks = _host_blocks(cfg, data, step, steps, per_epoch, boundaries, lengths, pack)
  stop = StopSignals()
  try:
    with stop:
      for block, ids, labels in blocks:
        step_fn = single_fn if block == 1 else multi_fn
        state, acc = step_fn(state, acc, put(ids, batch_axis=1), put(labels, batch_axis=1))
        if "first_dispatch" not in clock.seconds:  # compilation + one block of steps
          clock.lap("first_dispatch", wait_for=acc)
        bar.update(block)
        step += block
        save = step % every_ckpt == 0 or step == steps
        if step % cfg.train.log_every == 0 or save:
          meta["skipped_nonfinite"] += _check_finite(acc, cfg, step)
          run.log_train(step, acc, bar)
          acc = steps_lib.zero_sums()
        if step % cfg.train.eval_every == 0 or step == steps:
          best = _evaluate_dev(run, eval_step, state, data, cfg, meta, step, mesh) or best
        if save or stop.signal is not None:
          meta["train_seconds"] = prior_seconds + time.perf_counter() - loop_start
          # a stop between logs keeps the log period's running sums, so the resumed run logs
          # what an uninterrupted one would
          meta["pending_sums"] = {k: float(v) for k, v in jax.device_get(acc).items()}
          best = _save_checkpoints(checkpoints, step, state, meta, best)
        if stop.signal is not None:
          raise Stopped(stop.signal, step, run.path)
    clock.lap("train_loop", wait_for=state)
    results = _finish(run, cfg, setup, data, eval_step, state, checkpoints, meta, steps, clock,
                      mesh, best)
  finally:  # also when the run stops on an error: the last checkpoint is kept
    bar.close()
    checkpoints.close()
  return results


def _save_checkpoints(checkpoints, step, state, meta, best):
  """Saves the best params found since the last save (if any), then the latest state."""
  if best is not None and not best.saved:
    checkpoints.save_best(best.step, best.params, {"dev_accuracy": best.dev_accuracy})
    best = best._replace(saved=True)
  checkpoints.save_latest(step, state, meta)
  return best


class Stopped(Exception):
  """Training stopped on SIGTERM or SIGINT, after saving a checkpoint at ``step``."""

  def __init__(self, signum: int, step: int, path: pathlib.Path):
    self.signum, self.step = signum, step
    name = signal.Signals(signum).name
    super().__init__(f"stopped by {name} at step {step}; a checkpoint of that step is saved in "
                     f"{path}: run the same command to resume.")


class StopSignals:
  """Within ``with``, SIGTERM and SIGINT (preemption, a time limit, Ctrl-C) set ``signal``
  instead of killing the process, so the loop can save a checkpoint at the next step boundary
  and stop. A second signal acts at once, as usual. Only the main thread can install signal
  handlers; elsewhere this does nothing."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # asked twice: give the signal its usual effect
      self._restore()
      signal.raise_signal(signum)
      return
    self.signal = signum
    print(f"embedlab: {signal.Signals(signum).name} received; saving a checkpoint at the end of "
          f"this step, then stopping (send it again to stop at once).", file=sys.stderr,
          flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()
    return False


def _host_blocks(cfg, data, step, steps, per_epoch, boundaries, lengths, pack) -> Iterator:
  """``(block, ids, labels)``: the host arrays of each block of ``block`` batches from ``step``
  on, ids packed by ``pack``. A block never crosses a log / eval / checkpoint / epoch boundary,
  so there are a few block sizes only."""
  order_epoch, order = -1, None
  while step < steps:
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:
      order = data_lib.batch_indices(len(data.train_labels), cfg.train.batch_size,
                                     seed=cfg.seed, epoch=epoch, lengths=lengths)
      order_epoch = epoch
    block = min([cfg.train.steps_per_dispatch, steps - step] +
                [b - step % b for b in boundaries])
    rows = order[index:index + block]
    yield block, pack(data.train_ids[rows]), data.train_labels[rows]
    step += block




def _check_finite(acc, cfg, step) -> int:
  bad = int(acc["nonfinite"])
  if bad and not cfg.train.skip_nonfinite:
    first = int(acc["first_nonfinite"])
    raise steps_lib.NonFiniteError(
        f"train: the loss, a gradient or the update was NaN/inf at step {first} ({bad} batch(es) "
        f"up to step {step}); those updates were not applied and the last good checkpoint is kept. Lower "
        f"optim.learning_rate, set optim.clip_norm, or --set train.skip_nonfinite=true to skip "
        f"such batches.")
  return bad


class _Best(NamedTuple):
  """The best dev evaluation so far: its parameters (a host copy) and whether they are saved."""

  step: int
  params: Any
  dev_accuracy: float
  saved: bool


def _evaluate_dev(run, eval_step, state, data, cfg, meta, step, mesh) -> _Best | None:
  """Evaluates on dev; returns a new ``_Best`` when the parameters improve on the best so far.

  The best parameters are written with the next resumable checkpoint (right after this
  evaluation when ``checkpoint_every`` is ``eval_every``, the default), never later: a run that
  dies before it replays the steps since that checkpoint and finds the same best again. A run
  that saves rarely (the fastText experiments: once, at the end) holds them on the host instead
  of writing each improvement (35 MB and ~0.2 s a write on SST-2).
  """
  dev = steps_lib.evaluate(eval_step, state.params, data.dev_ids, data.dev_labels,
                 cfg.train.eval_batch_size)
  run.log_eval(step, "dev", dev)
  best = (meta["best_dev_accuracy"], -meta.get("best_dev_loss", math.inf))
  if (dev["accuracy"], -dev["loss"]) > best:  # ties in accuracy go to the lower loss
    meta["best_dev_accuracy"], meta["best_step"] = dev["accuracy"], step
    meta["best_dev_loss"] = dev["loss"]
    # the state's buffers are donated to the next step: keep a copy, on the host when there is
    # no mesh (no device memory held), else on the devices, sharded as the state
    copy = jax.device_get if mesh is None else functools.partial(jax.tree.map, jnp.copy)
    return _Best(step, copy(state.params), dev["accuracy"], saved=False)
  return None


def _finish(run, cfg, setup, data, eval_step, state, checkpoints, meta, steps, clock,
            mesh=None, best=None):
  if best is not None:  # found in this process (and saved with the last checkpoint)
    params = best.params if mesh is not None else jax.device_put(best.params)
  else:  # found before a resume, or never (no dev improvement): the saved one, or the last
    restored = checkpoints.restore_best(state.params)
    params = restored[1] if restored is not None else state.params
  results = {"experiment": cfg.name, "steps": steps, "best_step": meta["best_step"],
             "dev_accuracy": meta["best_dev_accuracy"],
             "train_seconds": round(meta["train_seconds"], 3),
             "num_params": tables.num_params(state.params),
             "num_embeddings": int(data.num_embeddings), "features": cfg.model.features,
             "table": cfg.model.table,
             "embedding_bytes": compress_lib.table_bytes(state.params["embed"]),
             "skipped_nonfinite": meta["skipped_nonfinite"],
             "skipped_rows": dict(getattr(data, "skipped", {}) or {}),
             "pretrained_rows_found": setup.pretrained_found,
             "checkpoint_recoveries": list(checkpoints.recovered),
             "table_update": cfg.optim.tables,
             "table_update_path": build_lib.update_path(setup, mesh)}
  if mesh is not None:
    results["mesh"] = {"data": mesh.shape["data"], "model": mesh.shape["model"],
                       "processes": jax.process_count(), "lookup": steps_lib.lookup_path(cfg.mesh),
                       "table_rows": int(state.params["embed"]["table"].shape[0])
                       if "table" in state.params["embed"] else None}
    started = json.loads((run.path / "config.json").read_text()).get("mesh", {})
    if (started.get("data"), started.get("model")) != (cfg.mesh.data, cfg.mesh.model):
      # resumed on another mesh: say where the run started
      results["mesh"]["started_on"] = {"data": started.get("data"), "model": started.get("model")}
  if data.test_ids is not None:
    test = steps_lib.evaluate(eval_step, params, data.test_ids, data.test_labels, cfg.train.eval_batch_size)
    run.log_eval(steps, "test", test)
    results["test_accuracy"] = test["accuracy"]
    results["test_loss"] = test["loss"]
  clock.lap("test")
  results["timings"] = clock.rounded()
  run.write_results(results)
  return results
