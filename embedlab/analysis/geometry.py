"""The shape of a trained table (numpy): row-norm summaries, PCA, which class each row is used
with, and whether neighbours recover planted topics."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.analysis.neighbours import SKIP_TOKENS, nearest_neighbours, skip_mask
from embedlab.core import tables

_PADDING_ID = 0


@dataclasses.dataclass(frozen=True)
class EmbeddingSummary:
  """What a table looks like: its size, its row norms, and how much of it training moved.

  Norm statistics leave out the padding row (zero by construction).
  """

  rows: int
  features: int
  dtype: str
  nbytes: int
  norm_min: float
  norm_median: float
  norm_mean: float
  norm_max: float
  zero_rows: int
  updated_rows: int | None = None
  pretrained_rows: int | None = None
  words: int | None = None

  def __str__(self) -> str:
    rows = f"{self.rows:,} rows"
    if self.words is not None and self.words != self.rows:
      rows += f" ({self.words:,} words + {self.rows - self.words:,} n-gram buckets)"
    lines = [
        f"embedding table: {rows} x {self.features:,} features = "
        f"{self.rows * self.features:,} weights ({self.dtype}, "
        f"{tables.human_bytes(self.nbytes)})",
        f"row norms (padding row left out): min {self.norm_min:.3g}  median "
        f"{self.norm_median:.3g}  mean {self.norm_mean:.3g}  max {self.norm_max:.3g}; "
        f"{self.zero_rows:,} all-zero rows",
    ]
    if self.updated_rows is not None:
      lines.append(f"rows changed by training: {self.updated_rows:,} of {self.rows:,} "
                   f"({self.updated_rows / max(self.rows, 1):.1%}); the others were never "
                   f"updated (padding, ids unseen in training, frozen rows)")
    if self.pretrained_rows is not None:
      lines.append(f"rows from pretrained vectors: {self.pretrained_rows:,} of {self.rows:,}")
    return "\n".join(lines)


def row_norms(table: Any) -> np.ndarray:
  """The L2 norm of every row, ``float32[V]``.

  Example:
    >>> row_norms(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([5., 0.], dtype=float32)
  """
  return np.linalg.norm(np.asarray(table, np.float32), axis=1)


def summarize_table(table: Any, *, initial: Any = None, pretrained_rows: int | None = None,
                    words: int | None = None, padding_id: int | None = _PADDING_ID
                    ) -> EmbeddingSummary:
  """Rows x features = weights, bytes, row-norm statistics and rows changed since ``initial``.

  Args:
    table: ``[V, D]`` array.
    initial: the table before training, ``[V, D]``; a row counts as updated if any of its
      values differs.
    pretrained_rows: how many rows came from pretrained vectors (``results.json``'s
      ``pretrained_rows_found``), shown as given.
    words: how many rows are vocabulary words (the rest n-gram buckets), shown as given.
    padding_id: the row left out of the norm statistics, or None.

  Returns:
    An ``EmbeddingSummary`` (``print`` it).

  Example:
    >>> s = summarize_table(np.array([[0, 0], [3, 4], [1, 0]], np.float32),
    ...                     initial=np.array([[0, 0], [3, 4], [0, 0]], np.float32))
    >>> s.rows, s.norm_max, s.updated_rows
    (3, 5.0, 1)
  """
  array = np.asarray(table)
  if array.ndim != 2:
    raise ValueError(f"summarize_table: expected a [rows, features] table, got shape "
                     f"{array.shape}.")
  norms = row_norms(array)
  if padding_id is not None and array.shape[0] > 1:
    norms = np.delete(norms, padding_id)
  updated = None
  if initial is not None:
    initial = np.asarray(initial)
    if initial.shape != array.shape:
      raise ValueError(f"summarize_table: initial has shape {initial.shape} but the table "
                       f"{array.shape}; pass the table the run started from.")
    updated = int(np.any(initial != array, axis=1).sum())
  return EmbeddingSummary(
      rows=array.shape[0], features=array.shape[1], dtype=str(array.dtype), nbytes=array.nbytes,
      norm_min=float(norms.min()), norm_median=float(np.median(norms)),
      norm_mean=float(norms.mean()), norm_max=float(norms.max()),
      zero_rows=int((row_norms(array) == 0).sum()), updated_rows=updated,
      pretrained_rows=pretrained_rows, words=words)


def pca(points: Any, num_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Principal component projection of ``points`` (centred; SVD; signs fixed for stability).

  Args:
    points: ``[N, D]``.
    num_components: output dimensions.

  Returns:
    ``(coords float32[N, num_components], explained float64[num_components])``: the projected
    points and the fraction of the variance each component explains.

  Example:
    >>> coords, explained = pca(np.array([[0, 0], [2, 1], [4, 0]]), 1)
    >>> coords.round(2).ravel().tolist(), explained.round(2).tolist()
    ([-2.0, 0.0, 2.0], [0.92])
  """
  if (isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer))
      or num_components < 1):
    raise ValueError(f"pca: num_components must be a positive integer, got {num_components!r}.")
  x = np.asarray(points, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"pca: needs [N >= 2, D] points, got shape {x.shape}.")
  finite = np.isfinite(x).all(axis=1)
  if not finite.all():
    rows = np.flatnonzero(~finite)
    raise ValueError(f"pca: {len(rows):,} points hold NaN or infinite values (first: point "
                     f"{int(rows[0])}); drop or fix them first.")
  x = x - x.mean(0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  vt = vt[:num_components]
  vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(1)] < 0, -1, 1)[:, None]
  coords = x @ vt.T
  if coords.shape[1] < num_components:  # fewer features than components asked for
    coords = np.pad(coords, ((0, 0), (0, num_components - coords.shape[1])))
  total = (s ** 2).sum()
  explained = np.zeros(num_components)
  explained[:len(vt)] = (s[:len(vt)] ** 2) / total if total > 0 else 0
  return coords.astype(np.float32), explained


def class_association(ids: Any, labels: Any, num_rows: int, num_classes: int, *,
                      min_count: int = 5, padding_id: int | None = _PADDING_ID
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The class each row (word) is most associated with in labelled data.

  A row's class is ``argmax_c count(row, c) / tokens(c)``: its rate of use in each class's
  documents, so a large class does not claim every frequent word.

  Args:
    ids: ``int[N, L]`` encoded documents (e.g. ``EncodedData.train_ids``).
    labels: ``int[N]`` their classes.
    num_rows: the table's rows.
    num_classes: the number of classes.
    min_count: rows used fewer times get class ``-1``.
    padding_id: the id not counted.

  Returns:
    ``(classes int64[num_rows], counts int64[num_rows, num_classes])``.

  Example:
    >>> classes, counts = class_association([[1, 2, 0], [1, 3, 3]], [0, 1], 4, 2, min_count=1)
    >>> classes.tolist(), counts[3].tolist()
    ([-1, 0, 0, 1], [0, 2])
  """
  ids = np.asarray(ids, np.int64)
  labels = np.asarray(labels, np.int64)
  flat_labels = np.broadcast_to(labels.reshape(-1, *([1] * (ids.ndim - 1))), ids.shape).ravel()
  flat_ids = ids.ravel()
  keep = flat_ids != padding_id if padding_id is not None else np.ones(flat_ids.shape, bool)
  counts = np.bincount(flat_ids[keep] * num_classes + flat_labels[keep],
                       minlength=num_rows * num_classes).reshape(num_rows, num_classes)
  rates = counts / np.maximum(counts.sum(0, keepdims=True), 1)
  classes = rates.argmax(1)
  classes[counts.sum(1) < max(min_count, 1)] = -1
  return classes, counts


@dataclasses.dataclass(frozen=True)
class TopicCheck:
  """How well a table recovered planted topics: the share of each topic word's ``k`` nearest
  neighbours that have its topic, and the same share for random neighbours (chance)."""

  accuracy: float
  chance: float
  k: int
  num_words: int

  def __str__(self) -> str:
    return (f"{self.accuracy:.1%} of the {self.k} nearest neighbours of the {self.num_words} "
            f"topic words share their planted topic (chance {self.chance:.1%})")


def topic_neighbour_accuracy(table: Any, tokens: Sequence[str], word_topics: Mapping[str, int],
                             *, k: int = 5, skip: Sequence[str] = SKIP_TOKENS) -> TopicCheck:
  """Does the geometry of the table match known topics? Precision at ``k`` of the neighbours.

  Every row except ``skip`` is a candidate neighbour (topic-less words too, which never
  count as a match). Chance is the expected precision of ``k`` candidates drawn at random:
  for a word of topic t, (other words of t) / (other candidates), averaged.

  Args:
    table: ``[V, D]``.
    tokens: ``V`` tokens.
    word_topics: word -> topic (``>= 0``; ``-1`` = no topic), e.g.
      ``data.synthetic_word_topics(cfg.data)``.
    k: neighbours per topic word.
    skip: tokens that are never neighbours.

  Returns:
    A ``TopicCheck``.

  Example:
    >>> t = np.array([[0, 0], [1, 0], [1, .1], [0, 1], [.1, 1]], np.float32)
    >>> check = topic_neighbour_accuracy(t, ["<pad>", "a", "b", "c", "d"],
    ...                                  {"a": 0, "b": 0, "c": 1, "d": 1}, k=1)
    >>> check.accuracy, round(check.chance, 3)
    (1.0, 0.333)
  """
  skipped = skip_mask(tokens, skip)
  topic = np.array([word_topics.get(t, -1) for t in tokens], np.int64)
  topic[skipped] = -1
  queries = np.nonzero(topic >= 0)[0]
  if len(queries) == 0:
    raise ValueError("topic_neighbour_accuracy: no token of the table has a topic in "
                     "word_topics; pass the table's own tokens.")
  found, _ = nearest_neighbours(table, np.asarray(table)[queries], k=k, skip=skipped,
                                exclude_ids=queries[:, None])
  accuracy = float((topic[found] == topic[queries][:, None]).mean())
  candidates = int((~skipped).sum())
  per_topic = np.bincount(topic[queries])
  chance = float(np.mean((per_topic[topic[queries]] - 1) / max(candidates - 1, 1)))
  return TopicCheck(accuracy, chance, found.shape[1], len(queries))


def spread_out(coords: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
  """Indices of ``count`` points to label, far from each other (greedy farthest-point
  sampling), taking each group in turn so every group gets names."""
  order = sorted(set(groups.tolist()), key=lambda g: (g < 0, g))
  members = {g: np.nonzero(groups == g)[0] for g in order}
  nearest = np.full(len(coords), np.inf)  # distance of each point to the nearest chosen one
  centre = coords.mean(0)
  chosen: list[int] = []
  while len(chosen) < min(count, len(coords)):
    for g in order:
      free = members[g][~np.isin(members[g], chosen)]
      if len(free) == 0 or len(chosen) >= count:
        continue
      far = nearest[free] if chosen else np.linalg.norm(coords[free] - centre, axis=1)
      pick = int(free[np.argmax(far)])
      chosen.append(pick)
      nearest = np.minimum(nearest, np.linalg.norm(coords - coords[pick], axis=1))
  return np.array(chosen, np.int64)
