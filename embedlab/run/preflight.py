"""Checks before a run writes anything: a finished run, a run directory holding other data, a step
that does not fit in memory. Each refuses with a message naming the fix."""

from __future__ import annotations

import json
import pathlib

import jax

from embedlab.data import batches as batch_lib
from embedlab.data import paths as paths_lib
from embedlab.run import build as build_lib
from embedlab.run import report, resources, rundir
from embedlab.run import steps as steps_lib


def fingerprint(cfg, data) -> dict:
  files = ([paths_lib.resolve(getattr(cfg.data, s)) for s in ("train", "dev", "test")
            if getattr(cfg.data, s)] if cfg.data.source == "files" else [])
  return rundir.data_fingerprint(files, data.vocab.tokens, data.label_names)


def check_compiled_step_fits(cfg, data, setup, per_epoch, steps) -> None:
  """The second memory gate, from XLA's own count of the compiled train step (shapes only,
  nothing allocated), where the fast estimate comes within half of the budget; far from it
  (the usual case) the extra compilation is skipped."""
  available, _ = resources.available_bytes()
  if available is None or setup.memory_estimate["total"] < resources.HEADROOM * available / 2:
    return
  state = jax.eval_shape(lambda: build_lib.init_state(cfg, setup))
  single, multi, _, _ = steps_lib.compile_steps(cfg, setup, None, None)
  block = min(cfg.train.steps_per_dispatch, steps)
  lengths = data.train_lengths if cfg.data.bucket_by_length else None
  pack = build_lib.ragged_packer(cfg, data, per_epoch, steps, lengths, None, lambda _: None)
  rows = batch_lib.batch_indices(len(data.train_labels), cfg.train.batch_size, seed=cfg.seed,
                                 epoch=0, lengths=lengths)[:block]
  resources.check_step_fits(single if block == 1 else multi, state, steps_lib.zero_sums(),
                            pack(data.train_ids[rows]), data.train_labels[rows],
                            available=available)


def check_same_data(path: pathlib.Path, data, fingerprint: dict, echo) -> None:
  """Refuses to resume a run whose vocabulary or labels differ from the data's now (a changed
  train file would give trained rows to other words); a start that never saved may change."""
  if not (path / "vocab.txt").exists() or not rundir.has_checkpoint(path):
    return
  _, vocab, label_names = report.load_run(path)
  changes = data_changes(vocab, label_names, data)
  recorded = path / "data.json"
  if not changes and recorded.exists():
    files = rundir.changed_files(json.loads(recorded.read_text()), fingerprint)
    if files:
      echo(f"note: {', '.join(files)} changed since {path} started, but give the same "
           f"vocabulary and labels: resuming.")
  if changes:
    raise rundir.RunDirError(
        f"{path} holds a run trained on other data: {changes}. Its checkpoints fit its own "
        f"vocabulary and labels; resuming would give trained rows to other words. Train the "
        f"new data with another --workdir, or pass --restart to delete that run.")


def data_changes(vocab, label_names, data) -> str:
  """What differs between a run's vocabulary and labels and those of ``data`` ('' if none)."""
  changes = []
  if tuple(vocab.tokens) != tuple(data.vocab.tokens):
    known = set(vocab.tokens)
    new = [t for t in data.vocab.tokens if t not in known][:3]
    changes.append(f"vocabulary of {len(vocab):,} words there, {len(data.vocab):,} now"
                   + (f" (new: {', '.join(new)})" if new else ""))
  if tuple(label_names) != tuple(data.label_names):
    changes.append(f"labels {list(label_names)} there, {list(data.label_names)} now")
  return "; ".join(changes)


def own_dir(workdir: pathlib.Path) -> pathlib.Path:
  """This process's run directory: ``workdir`` on process 0, ``WORKDIR.process<i>`` (its logs)
  on the others; checkpoints are shared in ``workdir``."""
  index = jax.process_index()
  return workdir if index == 0 else workdir.with_name(f"{workdir.name}.process{index}")


def finished(workdir: pathlib.Path, cfg, restart: bool) -> bool:
  """Whether ``workdir`` holds this config's finished run (then nothing is trained or written).
  Raises ``RunDirError`` where the run cannot start there (see ``rundir.run_dir_state``)."""
  own = rundir.run_dir_state(own_dir(workdir), cfg, restart=restart)
  if jax.process_index() == 0:
    return own == "finished"
  # process 0's directory holds the results (and its lock)
  return rundir.run_dir_state(workdir, cfg, restart=restart, check_lock=False) == "finished"


def open_run_dir(workdir, cfg, restart, echo):
  """The run directory (``own_dir``), created now; with several processes, once every one has
  created its own."""
  run = report.RunDir(own_dir(workdir), cfg, restart=restart, echo=echo)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415 - several processes only
    multihost_utils.sync_global_devices("embedlab run directory ready")
  return run
