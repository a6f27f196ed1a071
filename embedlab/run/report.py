"""The run directory and what a run reports: config snapshot, vocabulary, metrics.jsonl,
TensorBoard events, progress bar, plots, results, summaries and comparison tables.

A run directory holds::

  config.json      the resolved config (never rewritten after the run starts)
  vocab.txt        one token per line, line number = id (0 = <pad>, 1 = <unk>)
  labels.json      label names, index = class id
  metrics.jsonl    one JSON object per log / eval event
  tensorboard/     TensorBoard event files
  checkpoints/     orbax checkpoints (latest/ and best/)
  plots/           loss.png and accuracy.png (embedding.png, norms.png, curves.png from
                   ``embedlab inspect --plots``; embedding.png after a synthetic run)
  results.json     dev_accuracy, test_accuracy, train_seconds, steps, num_params, ...
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Sequence

import numpy as np

from embedlab import config as config_lib
from embedlab.analysis import plots
from embedlab.core import tables
from embedlab.data.atomic import atomic_write
from embedlab.run import startup
from embedlab.run.rundir import (
  RunDirError,  # noqa: F401 - raised by RunDir
  acquire_lock,
  delete_run,
  run_dir_state,
)


class RunDir:
  """A run directory, locked while this process trains in it.

  Create it only once the run is known to start (config valid, data found, memory check
  passed): ``run_dir_state`` checks the same things without writing. With ``restart``, the
  entries embedlab wrote there (``RUN_ENTRIES``) are deleted first; other files are kept.
  """

  def __init__(self, path: pathlib.Path, cfg: config_lib.Config, *, restart: bool = False,
               echo=print):
    self.path = path = pathlib.Path(path)
    self.cfg = cfg
    state = run_dir_state(path, cfg, restart=restart)
    path.mkdir(parents=True, exist_ok=True)
    self._lock = acquire_lock(path)
    config_file = path / "config.json"
    if state == "restart":
      echo(f"--restart: deleting the run in {path}: {delete_run(path)}")
    if state in ("new", "restart"):
      for name in ("metrics.jsonl", "results.json"):  # left by a start that never saved
        (path / name).unlink(missing_ok=True)
      atomic_write(config_file, config_lib.to_json(cfg) + "\n")
    self.metrics_file = path / "metrics.jsonl"
    self._tb = None
    # tensorboardX (and matplotlib for the end-of-run plots) take ~0.3 s and ~0.6 s to import:
    # start that now, in the background, so it overlaps with loading data and compiling
    self._tb_import = startup.in_background(startup.import_tensorboardx)
    if cfg.train.plots:
      startup.in_background(startup.import_pyplot)
    self._last_log = (None, time.perf_counter())

  def close(self) -> None:
    """Closes the TensorBoard writer and releases the directory's lock."""
    if self._tb:
      self._tb.close()
      self._tb = None
    if self._lock is not None:
      self._lock.close()  # closing the file releases the lock
      self._lock = None

  def save_vocab(self, vocab, label_names, kept_buckets=None, fingerprint=None) -> None:
    """The vocabulary, the class names and, with ``data.prune_buckets``, the kept buckets
    (``buckets.npy``): what ``predict`` needs to encode new texts as training did; and
    ``fingerprint`` (``rundir.data_fingerprint``) as ``data.json``."""
    if fingerprint is not None:
      atomic_write(self.path / "data.json", json.dumps(fingerprint, indent=2) + "\n")
    vocab.save(self.path / "vocab.txt")
    atomic_write(self.path / "labels.json", json.dumps(list(label_names)) + "\n")
    if kept_buckets is not None:
      tmp = self.path / "buckets.npy.tmp"
      with open(tmp, "wb") as f:
        np.save(f, np.asarray(kept_buckets, dtype=np.int32))
      tmp.replace(self.path / "buckets.npy")

  def truncate_metrics(self, step: int) -> None:
    """Drops events after ``step`` (left by a run that died after its last checkpoint)."""
    if not self.metrics_file.exists():
      return
    kept = []
    for line in self.metrics_file.read_text().splitlines():
      try:
        event = json.loads(line)
      except json.JSONDecodeError:  # a line torn by a crash (or a full disk) mid-write
        continue
      if event["step"] <= step:
        kept.append(line)
    atomic_write(self.metrics_file, "".join(line + "\n" for line in kept))

  def _event(self, record: dict) -> None:
    with self.metrics_file.open("a") as f:
      f.write(json.dumps(record) + "\n")
    writer = self._writer()
    if writer is not None:
      prefix = record["event"] if record["event"] == "train" else record["split"]
      for key in ("loss", "accuracy", "examples_per_second"):
        if key in record:
          writer.add_scalar(f"{prefix}/{key}", record[key], record["step"])
      writer.flush()

  def _writer(self):
    if self._tb is None:
      self._tb_import.join()
      try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional at import time
      except ImportError:  # pragma: no cover - tensorboardX is a dependency
        self._tb = False
        return None
      self._tb = SummaryWriter(str(self.path / "tensorboard"))
    return self._tb or None

  def log_train(self, step: int, sums: dict, bar=None) -> None:
    count = max(float(sums["count"]), 1.0)
    record = {"event": "train", "step": step, "loss": float(sums["loss"]) / count,
              "accuracy": float(sums["correct"]) / count}
    last_step, last_time = self._last_log
    now = time.perf_counter()
    if last_step is not None and step > last_step:
      record["examples_per_second"] = round(count / max(now - last_time, 1e-9), 1)
    self._last_log = (step, now)
    self._event(record)
    if bar is not None and hasattr(bar, "set_postfix"):
      bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}",
                      ex_s=record.get("examples_per_second", "-"), refresh=False)

  def log_eval(self, step: int, split: str, metrics: dict) -> None:
    self._event({"event": "eval", "split": split, "step": step,
                 "loss": metrics["loss"], "accuracy": metrics["accuracy"],
                 **{k: v for k, v in metrics.items() if k.startswith(("precision_", "recall_"))}})

  def write_results(self, results: dict) -> None:
    atomic_write(self.path / "results.json", json.dumps(results, indent=2) + "\n")
    if self.cfg.train.plots:
      plot_runs([self.path], self.path / "plots")
    if self._tb:
      self._tb.close()
      self._tb = None


def load_run(run_dir: pathlib.Path):
  """``(config, vocab, label_names)`` of a run directory."""
  from embedlab.data import text  # noqa: PLC0415
  run_dir = pathlib.Path(run_dir)
  config_file = run_dir / "config.json"
  if not config_file.exists():
    raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); train one with "
                            f"embedlab train EXPERIMENT --workdir {run_dir}.")
  cfg = config_lib.from_dict(json.loads(config_file.read_text()))
  vocab = text.Vocab.load(run_dir / "vocab.txt")
  labels = tuple(json.loads((run_dir / "labels.json").read_text()))
  return cfg, vocab, labels


def load_buckets(run_dir: pathlib.Path, cfg: config_lib.Config) -> np.ndarray | None:
  """The n-gram buckets a run with ``data.prune_buckets`` kept (``buckets.npy``), else None."""
  if not cfg.data.pruned:
    return None
  path = pathlib.Path(run_dir) / "buckets.npy"
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"{run_dir}: the run prunes n-gram buckets (data.prune_buckets) but "
                            f"{path.name} cannot be read ({e}); train the run again with "
                            f"--restart.") from None


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
  path = pathlib.Path(run_dir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# JAX's own timings of each compilation: tracing, lowering to MLIR, XLA (or a cache read)
_COMPILE_EVENTS = frozenset(("/jax/core/compile/jaxpr_trace_duration",
                             "/jax/core/compile/jaxpr_to_mlir_module_duration",
                             "/jax/core/compile/backend_compile_duration"))


class PhaseClock:
  """Wall seconds per phase of a run (data, setup, first dispatch = compilation + one block,
  train loop, test), for ``results.json``'s ``timings``; and ``compile`` (not a phase: it falls
  inside setup, first dispatch and test): the seconds JAX spent tracing, lowering and
  compiling (or reading compiled programs from the persistent cache) until ``rounded()``."""

  def __init__(self):
    import jax  # noqa: PLC0415
    self.seconds: dict[str, float] = {}
    self._last = time.perf_counter()
    self._compile = 0.0
    self._listening = True
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **_) -> None:
    if self._listening and event in _COMPILE_EVENTS:
      self._compile += duration

  def close(self) -> None:
    """Stops counting compilations (idempotent)."""
    if self._listening:
      import jax  # noqa: PLC0415
      self._listening = False
      jax.monitoring.unregister_event_duration_listener(self._on_event)

  def lap(self, name: str, wait_for: Any = None) -> None:
    if wait_for is not None:
      import jax  # noqa: PLC0415
      jax.block_until_ready(wait_for)
    now = time.perf_counter()
    self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
    self._last = now

  def rounded(self) -> dict[str, float]:
    self.close()
    return {**{f"{k}_seconds": round(v, 3) for k, v in self.seconds.items()},
            "compile_seconds": round(self._compile, 3)}


class _NoBar:
  def update(self, n=1):
    pass

  def set_postfix(self, **kwargs):
    pass

  def close(self):
    pass


def progress_bar(total: int, initial: int, enabled: bool):
  """A tqdm bar over training steps (step, loss, accuracy, examples/s), or a silent stand-in."""
  if not enabled:
    return _NoBar()
  from tqdm.auto import tqdm  # noqa: PLC0415
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


def compare_table(run_dirs: list[pathlib.Path]) -> str:
  """A text table of the results of several runs."""
  columns = ("run", "dev_accuracy", "test_accuracy", "steps", "train_seconds", "num_params")
  rows = []
  for run_dir in run_dirs:
    path = pathlib.Path(run_dir) / "results.json"
    if not path.exists():
      raise FileNotFoundError(f"{run_dir} has no results.json (an unfinished run?).")
    results = json.loads(path.read_text())
    rows.append([str(run_dir)] + [_fmt(results.get(c)) for c in columns[1:]])
  return _table(columns, rows)


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4f}" if value <= 1 else f"{value:.1f}"
  if isinstance(value, int):
    return f"{value:,}"
  return "-" if value is None else str(value)


def _table(header, rows) -> str:
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


_human_bytes = tables.human_bytes


def _buckets_text(cfg: config_lib.Config, data) -> str:
  if not cfg.data.hashed or not cfg.data.num_buckets:
    return ""
  what = "n-gram" if not cfg.data.subwords else (
      f"{'word and ' if cfg.data.ngrams > 1 else ''}character {cfg.data.minn}-{cfg.data.maxn}-gram")
  kept = getattr(data, "kept_buckets", None)
  if kept is None:
    return f" + {cfg.data.num_buckets:,} hashed {what} buckets"
  return (f" + {len(kept):,} of {cfg.data.num_buckets:,} hashed {what} buckets (those train "
          f"uses) + 1 row for the rest")


def summary_text(cfg: config_lib.Config, data, setup, mesh=None) -> str:
  """What the model looks like: each table's rows x features = weights, its bytes with optimizer
  slots and its update path, the other parameters, and the shapes at each stage for one batch."""
  import jax  # noqa: PLC0415

  from embedlab.core import variants  # noqa: PLC0415
  from embedlab.core.variants import contract  # noqa: PLC0415
  from embedlab.models import classifiers as models_lib  # noqa: PLC0415
  from embedlab.run import model_args  # noqa: PLC0415
  from embedlab.run import steps as steps_lib  # noqa: PLC0415

  embed = setup.params["embed"]
  embed_weights = sum(math.prod(x.shape) for x in jax.tree.leaves(embed))
  if setup.table_optimizer is None:
    state = jax.eval_shape(setup.optimizer.init, setup.params)
    # optax slots mirror the params: those of the embedding's shapes
    shapes = {tuple(x.shape) for x in jax.tree.leaves(embed)}
    slot_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)
                     if tuple(x.shape) in shapes)
    path = f"dense optax {cfg.optim.name}"
  else:
    table = steps_lib.split_table(setup.params)[0]
    state = jax.eval_shape(setup.table_optimizer.init, table)
    slot_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    path = f"row-sparse {cfg.optim.tables}"
    if steps_lib.scatter_adds(setup.model, setup.table_optimizer, mesh):
      path += ", each occurrence's gradient scatter-added"
  if setup.frozen:
    path += " (frozen)"
  other = sum(math.prod(x.shape) for k, v in setup.params.items() if k != "embed"
              for x in jax.tree.leaves(v))
  parts = ", ".join(f"{name} {'x'.join(map(str, x.shape))}" for name, x in sorted(embed.items()))
  if variants.TABLES.spec(cfg.model.table).one_row_per_id:
    rows, features = embed["table"].shape
    head = (f"embedding table embed/table: {rows:,} rows x {features:,} features = "
            f"{rows * features:,} weights ({embed['table'].dtype}, "
            f"{_human_bytes(contract.table_bytes(embed))}")
  else:
    s = models_lib.table_summary(model_args.make_embedder(cfg.model, data.num_embeddings), embed)
    head = (f"embedding embed ({s.kind}: {parts}, {next(iter(embed.values())).dtype}): "
            f"{s.num_embeddings:,} ids x {s.features:,} features in {s.weights:,} weights "
            f"({_human_bytes(s.bytes)}, {s.ratio:.1f}x smaller than a plain float32 table of "
            f"{_human_bytes(s.plain_bytes)}")
  lines = [
      f"experiment {cfg.name}: model {cfg.model.name}, {len(data.label_names)} classes"
      + (" (multi-label: one sigmoid each)" if cfg.data.multilabel else "") + ", "
      f"train/dev/test = {len(data.train_labels):,}/{len(data.dev_labels):,}/"
      f"{0 if data.test_labels is None else len(data.test_labels):,}",
      head + f"; + optimizer slots {_human_bytes(slot_bytes)}); updates: {path}",
      f"  ids: {len(data.vocab):,} vocabulary (0 = <pad>, 1 = <unk>)"
      + _buckets_text(cfg, data)
      + (f"; {setup.pretrained_found:,} from {cfg.model.pretrained} "
         f"({cfg.model.pretrained_mode})" if cfg.model.pretrained else ""),
      f"other parameters: {other:,} weights; total {embed_weights + other:,}",
      "shapes for one batch:",
  ]
  stages = setup.model.stages(cfg.train.batch_size, data.train_ids.shape[1])
  lines += [f"  {name:<32} {shape}" for name, shape in stages]
  return "\n".join(lines)


def _runs_events(run_dirs: Sequence[pathlib.Path], where: str) -> dict[str, list[dict]]:
  runs = {}
  for run_dir in run_dirs:
    events = read_metrics(run_dir)
    if not events:
      raise FileNotFoundError(f"{where}: {run_dir} has no metrics.jsonl events; is it a run "
                              f"directory (embedlab train ... --workdir {run_dir})?")
    runs[pathlib.Path(run_dir).name] = events
  return runs


def plot_runs(run_dirs: Sequence[pathlib.Path], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Writes ``loss.png`` and ``accuracy.png`` (training and dev curves) for one or more runs."""
  runs = {pathlib.Path(d).name: read_metrics(d) for d in run_dirs}
  return [plots.plot_metric(runs, metric, pathlib.Path(out_dir) / f"{metric}.png").path
          for metric in ("loss", "accuracy")]


def plot_training_curves(run_dirs: Sequence[pathlib.Path], path: str | pathlib.Path):
  """``analysis.plots.plot_training_curves`` of run directories (each named by its directory)."""
  return plots.plot_training_curves(_runs_events(run_dirs, "plot_training_curves"), path)
