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

import dataclasses
import json
import math
import pathlib
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np

from embedlab import config as config_lib
from embedlab.core import tables
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
      _atomic_write(config_file, config_lib.to_json(cfg) + "\n")
    self.metrics_file = path / "metrics.jsonl"
    self._tb = None
    # tensorboardX (and matplotlib for the end-of-run plots) take ~0.3 s and ~0.6 s to import:
    # start that now, in the background, so it overlaps with loading data and compiling
    self._tb_import = threading.Thread(target=_import_tensorboardx, daemon=True)
    self._tb_import.start()
    if cfg.train.plots:
      threading.Thread(target=_pyplot, daemon=True).start()
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
      _atomic_write(self.path / "data.json", json.dumps(fingerprint, indent=2) + "\n")
    vocab.save(self.path / "vocab.txt")
    _atomic_write(self.path / "labels.json", json.dumps(list(label_names)) + "\n")
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
    _atomic_write(self.metrics_file, "".join(line + "\n" for line in kept))

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
                 "loss": metrics["loss"], "accuracy": metrics["accuracy"]})

  def write_results(self, results: dict) -> None:
    _atomic_write(self.path / "results.json", json.dumps(results, indent=2) + "\n")
    if self.cfg.train.plots:
      plot_runs([self.path], self.path / "plots")
    if self._tb:
      self._tb.close()
      self._tb = None


def _import_tensorboardx() -> None:
  # tensorboardX's writer imports torch when it is installed (1.2 s of CPU) only to name
  # torch.Tensor in type hints; embedlab logs Python floats, so torch stays out unless the
  # process has already imported it (then it costs nothing)
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which it handles
  try:
    import tensorboardX  # noqa: F401, PLC0415
  except ImportError:  # pragma: no cover - a dependency; _writer reports it
    pass
  finally:
    if hide_torch and sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  tmp.replace(path)


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


def plot_runs(run_dirs: list[pathlib.Path], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """Writes ``loss.png`` and ``accuracy.png`` (training and dev curves) for one or more runs."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for metric in ("loss", "accuracy"):
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for run_dir in run_dirs:
      events = read_metrics(run_dir)
      name = pathlib.Path(run_dir).name
      train = [(e["step"], e[metric]) for e in events if e["event"] == "train"]
      dev = [(e["step"], e[metric]) for e in events if e.get("split") == "dev"]
      if train:
        ax.plot(*zip(*train), label=f"{name} train", alpha=0.8)
      if dev:
        ax.plot(*zip(*dev), marker="o", label=f"{name} dev")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{metric}.png"
    fig.savefig(path)
    plt.close(fig)
    written.append(path)
  return written


@dataclasses.dataclass(frozen=True, eq=False)
class Picture:
  """A PNG written by one of the ``plot_*`` functions, with the data it shows.

  Attributes:
    path: the PNG.
    series: every drawn series, read back from the figure's artists after drawing: scatter
      points ``[n, 2]``, line points ``[n, 2]`` and histogram bar heights ``[bins]``, keyed by
      their legend label (prefixed ``"<panel title>: "`` when the figure has several panels).
    labels: the texts written beside points.
  """

  path: pathlib.Path
  series: dict
  labels: tuple[str, ...] = ()


def _pyplot():
  import matplotlib  # noqa: PLC0415 - imported when drawing, never at import time
  matplotlib.use("Agg")  # headless: no display needed
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def _drawn(fig) -> dict:
  """What the figure shows, read from its artists (tests check this, not pixels)."""
  import numpy as np  # noqa: PLC0415
  axes = fig.get_axes()
  series = {}
  for ax in axes:
    prefix = f"{ax.get_title()}: " if len(axes) > 1 else ""
    for artist in ax.collections:
      series[prefix + artist.get_label()] = np.asarray(artist.get_offsets(), float)
    for line in ax.get_lines():
      series[prefix + line.get_label()] = np.asarray(line.get_xydata(), float)
    for container in ax.containers:
      label = container.get_label()
      if label.startswith("_") and len(container):  # hist() labels its first bar instead
        label = container[0].get_label()
      series[prefix + label] = np.array([p.get_height() for p in container])
  return series


def _save(fig, plt, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_projection(coords, words: Sequence[str], groups, group_names: Sequence[str],
                    path: str | pathlib.Path, *, labelled=(), title: str = "",
                    dpi: int = 100) -> Picture:
  """A scatter plot of 2-D points (e.g. a PCA of word vectors), one colour per group.

  Args:
    coords: ``[N, 2]`` points.
    words: ``N`` words, written beside the ``labelled`` points.
    groups: ``int[N]``; group ``g`` is drawn in colour ``g`` and named ``group_names[g]``;
      group ``-1`` (``group_names[-1]``) in grey, underneath.
    group_names: the groups' names (legend), the name of group ``-1`` last.
    path: the PNG to write.
    labelled: indices of the points to write words beside.
    title: the figure's title.
    dpi: resolution (the figure is 7 x 6 inches).

  Returns:
    A ``Picture``; ``series[group_names[g]]`` holds the points of group ``g`` as drawn.

  Example:
    >>> import numpy as np, tempfile, os
    >>> pic = plot_projection(np.array([[0, 0], [1, 1], [2, 0]]), ["a", "b", "c"], [0, 1, -1],
    ...                       ["x", "y", "none"], os.path.join(tempfile.mkdtemp(), "p.png"),
    ...                       labelled=[0])
    >>> {k: len(v) for k, v in pic.series.items()}, pic.labels
    ({'none': 1, 'x': 1, 'y': 1}, ('a',))
  """
  import numpy as np  # noqa: PLC0415
  plt = _pyplot()
  coords = np.asarray(coords, float)
  groups = np.asarray(groups)
  if coords.ndim != 2 or coords.shape[1] != 2 or not len(coords) == len(groups) == len(words):
    raise ValueError(f"plot_projection: coords {coords.shape}, {len(words)} words and "
                     f"{len(groups)} groups must describe the same N points as [N, 2], N, N.")
  fig, ax = plt.subplots(figsize=(7, 6), dpi=dpi)
  colours = plt.get_cmap("tab10")
  for g in sorted(set(groups.tolist()), key=lambda g: (g >= 0, g)):
    at = groups == g
    style = (dict(color="0.6", s=10, alpha=0.5) if g < 0 else
             dict(color=colours(g % 10), s=16, alpha=0.85))
    ax.scatter(coords[at, 0], coords[at, 1], label=group_names[g], linewidths=0, **style)
  labels = []
  for i in np.asarray(labelled, int).tolist():
    ax.annotate(words[i], coords[i], fontsize=7, alpha=0.9, xytext=(2, 2),
                textcoords="offset points")
    labels.append(words[i])
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("component 1")
  ax.set_ylabel("component 2")
  ax.grid(alpha=0.2)
  ax.legend(fontsize=8, markerscale=1.5, loc="best")
  series = _drawn(fig)
  return Picture(_save(fig, plt, path), series, tuple(labels))


def plot_norms(norms, path: str | pathlib.Path, *, initial=None, bins: int = 50,
               title: str = "row norms") -> Picture:
  """A histogram of row norms, with the initial table's norms behind it if given.

  Args:
    norms: ``[N]`` row norms.
    path: the PNG to write.
    initial: ``[N]`` norms before training, or None.
    bins: number of bins (shared by both histograms).
    title: the figure's title.

  Returns:
    A ``Picture``; ``series["trained"]`` (and ``series["initial"]``) hold the bar heights,
    which sum to ``N``.

  Example:
    >>> import numpy as np, tempfile, os
    >>> pic = plot_norms(np.array([1.0, 2, 2, 3]), os.path.join(tempfile.mkdtemp(), "n.png"))
    >>> int(pic.series["trained"].sum())
    4
  """
  import numpy as np  # noqa: PLC0415
  plt = _pyplot()
  norms = np.asarray(norms, float)
  values = norms if initial is None else np.concatenate([norms, np.asarray(initial, float)])
  edges = np.histogram_bin_edges(values, bins=bins)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  if initial is not None:
    ax.hist(np.asarray(initial, float), bins=edges, color="0.7", alpha=0.7, label="initial")
  ax.hist(norms, bins=edges, color="tab:blue", alpha=0.7, label="trained")
  ax.set_xlabel("L2 norm of a row")
  ax.set_ylabel("rows")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  series = _drawn(fig)
  return Picture(_save(fig, plt, path), series)


def plot_training_curves(run_dirs: Sequence[pathlib.Path], path: str | pathlib.Path) -> Picture:
  """Loss (training and dev) and dev accuracy of one or several runs, in two panels side by side.

  Args:
    run_dirs: run directories (each run's name is its directory's name).
    path: the PNG to write.

  Returns:
    A ``Picture``; ``series["loss: <run> train"]``, ``series["loss: <run> dev"]`` and
    ``series["dev accuracy: <run>"]`` hold ``[events, 2]`` (step, value) points.
  """
  plt = _pyplot()
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
  colours = plt.get_cmap("tab10")
  for i, run_dir in enumerate(run_dirs):
    events = read_metrics(run_dir)
    if not events:
      raise FileNotFoundError(f"plot_training_curves: {run_dir} has no metrics.jsonl events; "
                              f"is it a run directory (embedlab train ... --workdir {run_dir})?")
    name, colour = pathlib.Path(run_dir).name, colours(i % 10)
    train = [(e["step"], e["loss"]) for e in events if e["event"] == "train"]
    dev = [e for e in events if e.get("split") == "dev"]
    if train:
      loss_ax.plot(*zip(*train), color=colour, alpha=0.6, label=f"{name} train")
    if dev:
      loss_ax.plot([e["step"] for e in dev], [e["loss"] for e in dev], color=colour,
                   marker="o", markersize=3, linestyle="--", label=f"{name} dev")
      acc_ax.plot([e["step"] for e in dev], [e["accuracy"] for e in dev], color=colour,
                  marker="o", markersize=3, label=name)
  for ax, title in ((loss_ax, "loss"), (acc_ax, "dev accuracy")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  series = _drawn(fig)
  return Picture(_save(fig, plt, path), series)


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
  if cfg.data.ngrams < 2 or not cfg.data.num_buckets:
    return ""
  kept = getattr(data, "kept_buckets", None)
  if kept is None:
    return f" + {cfg.data.num_buckets:,} hashed n-gram buckets"
  return (f" + {len(kept):,} of {cfg.data.num_buckets:,} hashed n-gram buckets (those train "
          f"uses) + 1 row for the rest")


def summary_text(cfg: config_lib.Config, data, setup, mesh=None) -> str:
  """What the model looks like: each table's rows x features = weights, its bytes with optimizer
  slots and its update path, the other parameters, and the shapes at each stage for one batch."""
  import jax  # noqa: PLC0415

  from embedlab.core import compress  # noqa: PLC0415
  from embedlab.models import classifiers as models_lib  # noqa: PLC0415
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
  if cfg.model.table == "plain":
    rows, features = embed["table"].shape
    head = (f"embedding table embed/table: {rows:,} rows x {features:,} features = "
            f"{rows * features:,} weights ({embed['table'].dtype}, "
            f"{_human_bytes(compress.table_bytes(embed))}")
  else:
    s = models_lib.table_summary(cfg.model, embed, data.num_embeddings)
    head = (f"embedding embed ({s.kind}: {parts}, {next(iter(embed.values())).dtype}): "
            f"{s.num_embeddings:,} ids x {s.features:,} features in {s.weights:,} weights "
            f"({_human_bytes(s.bytes)}, {s.ratio:.1f}x smaller than a plain float32 table of "
            f"{_human_bytes(s.plain_bytes)}")
  lines = [
      f"experiment {cfg.name}: model {cfg.model.name}, {len(data.label_names)} classes, "
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
