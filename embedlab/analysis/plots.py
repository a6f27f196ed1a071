"""Pictures of tables and runs with matplotlib (headless): a 2-D projection of words, row-norm
histograms, loss and accuracy curves. Each returns a ``Picture`` holding the data it drew, read
back from the figure, so tests check what is shown, not pixels."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping, Sequence


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


def pyplot():
  import matplotlib  # noqa: PLC0415 - imported when drawing, never at import time
  matplotlib.use("Agg")  # headless: no display needed
  import matplotlib.pyplot as plt  # noqa: PLC0415
  return plt


def drawn(fig) -> dict:
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


def save_figure(fig, plt, path) -> pathlib.Path:
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
  plt = pyplot()
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
  series = drawn(fig)
  return Picture(save_figure(fig, plt, path), series, tuple(labels))


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
  plt = pyplot()
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
  series = drawn(fig)
  return Picture(save_figure(fig, plt, path), series)


def _curves(events: Sequence[dict], metric: str) -> tuple[list, list]:
  """``(train, dev)`` ``(step, value)`` points of one run's metric events."""
  train = [(e["step"], e[metric]) for e in events if e["event"] == "train" and metric in e]
  dev = [(e["step"], e[metric]) for e in events if e.get("split") == "dev"]
  return train, dev


def plot_metric(runs: Mapping[str, Sequence[dict]], metric: str,
                path: str | pathlib.Path) -> Picture:
  """One metric (``loss`` or ``accuracy``) of one or several runs: training and dev curves.

  Args:
    runs: run name -> its metric events (``metrics.jsonl`` lines: ``{"event": "train", "step",
      "loss", "accuracy"}`` and ``{"event": "eval", "split": "dev", ...}``).
    metric: the event key to draw.
    path: the PNG to write.

  Returns:
    A ``Picture``; ``series["<run> train"]`` and ``series["<run> dev"]`` hold ``[n, 2]`` points.

  Example:
    >>> import tempfile, pathlib
    >>> events = [{"event": "train", "step": 1, "loss": 0.9}, {"event": "train", "step": 2,
    ...            "loss": 0.5}, {"event": "eval", "split": "dev", "step": 2, "loss": 0.6}]
    >>> pic = plot_metric({"run": events}, "loss", pathlib.Path(tempfile.mkdtemp()) / "l.png")
    >>> pic.series["run train"].tolist(), pic.series["run dev"].tolist()
    ([[1.0, 0.9], [2.0, 0.5]], [[2.0, 0.6]])
  """
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for name, events in runs.items():
    train, dev = _curves(events, metric)
    if train:
      ax.plot(*zip(*train), label=f"{name} train", alpha=0.8)
    if dev:
      ax.plot(*zip(*dev), marker="o", label=f"{name} dev")
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  series = drawn(fig)
  return Picture(save_figure(fig, plt, path), series)


def plot_training_curves(runs: Mapping[str, Sequence[dict]], path: str | pathlib.Path) -> Picture:
  """Loss (training and dev) and dev accuracy of one or several runs, in two panels side by side.

  Args:
    runs: run name -> its metric events (as ``plot_metric``).
    path: the PNG to write.

  Returns:
    A ``Picture``; ``series["loss: <run> train"]``, ``series["loss: <run> dev"]`` and
    ``series["dev accuracy: <run>"]`` hold ``[events, 2]`` (step, value) points.
  """
  plt = pyplot()
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
  colours = plt.get_cmap("tab10")
  for i, (name, events) in enumerate(runs.items()):
    colour = colours(i % 10)
    train, dev = _curves(events, "loss")
    if train:
      loss_ax.plot(*zip(*train), color=colour, alpha=0.6, label=f"{name} train")
    if dev:
      loss_ax.plot(*zip(*dev), color=colour, marker="o", markersize=3, linestyle="--",
                   label=f"{name} dev")
      acc_ax.plot(*zip(*_curves(events, "accuracy")[1]), color=colour, marker="o", markersize=3,
                  label=name)
  for ax, title in ((loss_ax, "loss"), (acc_ax, "dev accuracy")):
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  series = drawn(fig)
  return Picture(save_figure(fig, plt, path), series)
