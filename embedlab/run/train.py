"""``train(config, workdir)``: one experiment trained, evaluated and saved, top to bottom.

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

import dataclasses
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
from embedlab.core.variants import contract as variants_lib
from embedlab.core import meshes
from embedlab.core import tables
from embedlab.data import batches as batch_lib
from embedlab.data import cache as cache_lib
from embedlab.run import build as build_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.run import placement, preflight, report
from embedlab.run import steps as steps_lib


@dataclasses.dataclass(frozen=True)
class Job:
  """What one training run works with, fixed before its first step."""

  cfg: config_lib.Config
  data: cache_lib.EncodedData
  setup: build_lib.Setup
  mesh: Any  # a jax.sharding.Mesh, or None (one device)
  per_epoch: int
  steps: int
  echo: Callable[[str], None]
  clock: report.PhaseClock


@dataclasses.dataclass
class Progress:
  """What the run has done so far; saved with each checkpoint (its ``meta``) and restored."""

  best_dev_accuracy: float = -1.0
  best_step: int = -1
  skipped_nonfinite: int = 0
  train_seconds: float = 0.0
  best_dev_loss: float = math.inf
  pending_sums: dict | None = None  # the running sums of a log period a stop cut short

  @classmethod
  def from_meta(cls, meta: dict) -> Progress:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in known})

  def to_meta(self) -> dict:
    meta = dataclasses.asdict(self)
    if not math.isfinite(meta["best_dev_loss"]):
      del meta["best_dev_loss"]
    if meta["pending_sums"] is None:
      del meta["pending_sums"]
    return meta


def train(cfg: config_lib.Config, workdir: str | pathlib.Path, *, restart: bool = False,
          progress: bool | None = None, echo: Callable[[str], None] = print) -> dict:
  """Trains, evaluates and saves one experiment in ``workdir``; resumes if it holds a run.

  Top to bottom: encode the data; stop if ``workdir`` holds this run finished; check everything
  that can refuse the run (its data against the run directory's, the mesh, memory); build the
  model and optimizers; then, in the run directory, restore the latest checkpoint, train to the
  last step (evaluating on dev and saving checkpoints on the way), and evaluate the best
  parameters on test.

  Returns the results dict also written to ``workdir/results.json``.
  """
  workdir = pathlib.Path(workdir)
  clock = report.PhaseClock()
  try:
    # the data first: its tokenizing processes fork before JAX's backends start their threads
    data = cache_lib.encode_splits(cfg.data, cfg.seed)
    clock.lap("data")
    if preflight.finished(workdir, cfg, restart):
      results = json.loads((workdir / "results.json").read_text())
      echo(f"{workdir} holds this run, finished at step {results.get('steps')}: nothing to "
           f"train (its results follow). To train it again, pass --restart (deletes that run) "
           f"or choose another --workdir.")
      return results
    # everything that can refuse the run comes before its directory is written
    fingerprint = preflight.fingerprint(cfg, data)  # reads and hashes the data files: once
    preflight.check_same_data(preflight.own_dir(workdir), data, fingerprint, echo)
    mesh = placement.mesh_from_config(cfg.mesh)
    if mesh is not None:
      build_lib.check_batch_splits(cfg, mesh)
    per_epoch, steps = build_lib.total_steps(cfg, len(data.train_labels))
    setup = build_lib.build(cfg, data, steps)
    if mesh is None:
      preflight.check_compiled_step_fits(cfg, data, setup, per_epoch, steps)
    job = Job(cfg, data, setup, mesh, per_epoch, steps, echo, clock)
    run = preflight.open_run_dir(workdir, cfg, restart, echo)
    try:
      run.save_vocab(data.vocab, data.label_names, data.kept_buckets, fingerprint)
      return _train_and_evaluate(job, run, workdir, progress)
    finally:
      run.close()
  finally:
    clock.close()


def _train_and_evaluate(job: Job, run: report.RunDir, workdir: pathlib.Path,
                        progress: bool | None) -> dict:
  """Restores the latest checkpoint if there is one, trains to ``job.steps``, evaluates, saves."""
  cfg, data = job.cfg, job.data
  checkpoints = ckpt_lib.Checkpoints(workdir, cfg.train.keep_checkpoints)
  # restore
  state, done = build_lib.init_state(cfg, job.setup), Progress()
  shardings = None
  if job.mesh is not None:
    shardings = meshes.state_shardings(state, job.mesh, table=cfg.mesh.table,
                                       dense=cfg.mesh.dense)
    state = meshes.place(state, shardings)
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    _, state, meta = restored
    done = Progress.from_meta(meta)
    job.echo(f"resuming {run.path} from step {int(state.step)}")
  run.truncate_metrics(int(state.step))
  job.echo(report.summary_text(cfg, data, job.setup, job.mesh))
  job.clock.lap("setup")
  # compile
  single_fn, multi_fn, eval_step, put = steps_lib.compile_steps(cfg, job.setup, job.mesh,
                                                                shardings)
  every_ckpt = cfg.train.checkpoint_every or cfg.train.eval_every
  step = int(state.step)
  bar = report.progress_bar(job.steps, step, cfg.train.progress if progress is None else progress)
  acc, best = steps_lib.zero_sums(), None
  if done.pending_sums is not None:
    acc = {k: np.asarray(done.pending_sums[k], dtype=v.dtype) for k, v in acc.items()}
  prior_seconds, loop_start = done.train_seconds, time.perf_counter()
  stop = StopSignals()
  try:
    # train
    with stop:
      for block, ids, labels in _host_blocks(job, step, every_ckpt):
        step_fn = single_fn if block == 1 else multi_fn
        state, acc = step_fn(state, acc, put(ids, batch_axis=1), put(labels, batch_axis=1))
        if "first_dispatch" not in job.clock.seconds:  # compilation + one block of steps
          job.clock.lap("first_dispatch", wait_for=acc)
        bar.update(block)
        step += block
        save = step % every_ckpt == 0 or step == job.steps
        if step % cfg.train.log_every == 0 or save:
          done.skipped_nonfinite += _check_finite(acc, cfg, step)
          run.log_train(step, acc, bar)
          acc = steps_lib.zero_sums()
        # evaluate
        if step % cfg.train.eval_every == 0 or step == job.steps:
          best = _evaluate_dev(job, run, eval_step, state, done, step) or best
        # checkpoint
        if save or stop.signal is not None:
          done.train_seconds = prior_seconds + time.perf_counter() - loop_start
          # a stop between logs keeps the log period's running sums, so the resumed run logs
          # what an uninterrupted one would
          done.pending_sums = {k: float(v) for k, v in jax.device_get(acc).items()}
          best = _save_checkpoints(checkpoints, step, state, done, best)
        if stop.signal is not None:
          raise Stopped(stop.signal, step, run.path)
    job.clock.lap("train_loop", wait_for=state)
    # finish
    results = _finish(job, run, eval_step, state, checkpoints, done, best)
  finally:  # also when the run stops on an error: the last checkpoint is kept
    bar.close()
    checkpoints.close()
  return results


def _save_checkpoints(checkpoints, step, state, done: Progress, best):
  """Saves the best params found since the last save (if any), then the latest state."""
  if best is not None and not best.saved:
    checkpoints.save_best(best.step, best.params, {"dev_accuracy": best.dev_accuracy})
    best = best._replace(saved=True)
  checkpoints.save_latest(step, state, done.to_meta())
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


def _host_blocks(job: Job, step: int, every_ckpt: int) -> Iterator:
  """``(block, ids, labels)``: the host arrays of each block of ``block`` batches from ``step``
  on, ids packed for the step (ragged when ``train.ragged_batches``). A block never crosses a
  log / eval / checkpoint / epoch boundary, so there are a few block sizes only."""
  cfg, data, per_epoch, steps = job.cfg, job.data, job.per_epoch, job.steps
  boundaries = (cfg.train.log_every, cfg.train.eval_every, every_ckpt, per_epoch)
  lengths = data.train_lengths if cfg.data.bucket_by_length else None
  pack = build_lib.ragged_packer(cfg, data, per_epoch, steps, lengths, job.mesh, job.echo)
  order_epoch, order = -1, None
  while step < steps:
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:
      order = batch_lib.batch_indices(len(data.train_labels), cfg.train.batch_size,
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


def _evaluate_dev(job: Job, run, eval_step, state, done: Progress, step: int) -> _Best | None:
  """Evaluates on dev; returns a new ``_Best`` when the parameters improve on the best so far.

  The best parameters are written with the next resumable checkpoint (right after this
  evaluation when ``checkpoint_every`` is ``eval_every``, the default), never later: a run that
  dies before it replays the steps since that checkpoint and finds the same best again. A run
  that saves rarely (the fastText experiments: once, at the end) holds them on the host instead
  of writing each improvement (35 MB and ~0.2 s a write on SST-2).
  """
  dev = steps_lib.evaluate(eval_step, state.params, job.data.dev_ids, job.data.dev_labels,
                           job.cfg.train.eval_batch_size)
  run.log_eval(step, "dev", dev)
  # ties in accuracy go to the lower loss
  if (dev["accuracy"], -dev["loss"]) > (done.best_dev_accuracy, -done.best_dev_loss):
    done.best_dev_accuracy, done.best_step = dev["accuracy"], step
    done.best_dev_loss = dev["loss"]
    # the state's buffers are donated to the next step: keep a copy, on the host when there is
    # no mesh (no device memory held), else on the devices, sharded as the state
    copy = jax.device_get if job.mesh is None else functools.partial(jax.tree.map, jnp.copy)
    return _Best(step, copy(state.params), dev["accuracy"], saved=False)
  return None


_RANKING = ("precision_at_", "recall_at_")  # multi-label evaluation metrics


def _finish(job: Job, run, eval_step, state, checkpoints, done: Progress, best) -> dict:
  """The best parameters evaluated on test; the results written and returned."""
  cfg, data, setup, mesh, steps = job.cfg, job.data, job.setup, job.mesh, job.steps
  if best is not None:  # found in this process (and saved with the last checkpoint)
    params = best.params if mesh is not None else jax.device_put(best.params)
  else:  # found before a resume, or never (no dev improvement): the saved one, or the last
    restored = checkpoints.restore_best(state.params)
    params = restored[1] if restored is not None else state.params
  results = {"experiment": cfg.name, "steps": steps, "best_step": done.best_step,
             "dev_accuracy": done.best_dev_accuracy,
             "train_seconds": round(done.train_seconds, 3),
             "num_params": tables.num_params(state.params),
             "num_embeddings": int(data.num_embeddings), "features": cfg.model.features,
             "table": cfg.model.table,
             "embedding_bytes": variants_lib.table_bytes(state.params["embed"]),
             "skipped_nonfinite": done.skipped_nonfinite,
             "skipped_rows": dict(getattr(data, "skipped", {}) or {}),
             "pretrained_rows_found": setup.pretrained_found,
             "checkpoint_recoveries": list(checkpoints.recovered),
             "table_update": cfg.optim.tables,
             "table_update_path": build_lib.update_path(setup, mesh)}
  if mesh is not None:
    results["mesh"] = {"data": mesh.shape["data"], "model": mesh.shape["model"],
                       "processes": jax.process_count(),
                       "lookup": steps_lib.lookup_path(cfg.mesh),
                       "table_rows": int(state.params["embed"]["table"].shape[0])
                       if "table" in state.params["embed"] else None}
    started = json.loads((run.path / "config.json").read_text()).get("mesh", {})
    if (started.get("data"), started.get("model")) != (cfg.mesh.data, cfg.mesh.model):
      # resumed on another mesh: say where the run started
      results["mesh"]["started_on"] = {"data": started.get("data"), "model": started.get("model")}
  if data.dev_ids is not None and data.dev_labels.ndim == 2:
    # multi-label: precision and recall at 1 and k of the parameters kept (dev_accuracy is P@1)
    dev = steps_lib.evaluate(eval_step, params, data.dev_ids, data.dev_labels,
                             cfg.train.eval_batch_size)
    results.update({f"dev_{k}": v for k, v in dev.items() if k.startswith(_RANKING)})
  if data.test_ids is not None:
    test = steps_lib.evaluate(eval_step, params, data.test_ids, data.test_labels,
                              cfg.train.eval_batch_size)
    run.log_eval(steps, "test", test)
    results["test_accuracy"] = test["accuracy"]
    results["test_loss"] = test["loss"]
    results.update({f"test_{k}": v for k, v in test.items() if k.startswith(_RANKING)})
  job.clock.lap("test")
  results["timings"] = job.clock.rounded()
  run.write_results(results)
  return results
