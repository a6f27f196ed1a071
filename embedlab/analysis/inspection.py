"""Looking inside a trained embedding table: summary, neighbours, analogies, projection, exports.

Every function here works on a plain ``table`` (``np.ndarray[V, D]``, row ``i`` = id ``i``) and
its ``tokens`` (``V`` strings), so it serves any table; ``load_embedding(run_dir)`` gets both
from a run directory, and the ``*_run`` helpers add what the run's data knows (the planted topic
of each synthetic word, the class each word is most associated with, word counts).

Similarity is cosine, computed on the host in numpy as one batched matrix product
``unit_queries @ table.T`` divided by the row norms, then ``argpartition``: no Python loop over rows, and no
compilation per query shape (``jax.lax.top_k`` would compile for every new number of queries).
On the 100,000-word GloVe 6B 50d table (2-core CPU) one word's neighbours take about 20 ms, an
analogy about 25 ms, 100 words at once about 0.2 s.

  >>> import numpy as np
  >>> table = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
  >>> tokens = ["<pad>", "a", "b", "c", "d"]
  >>> neighbours(table, tokens, ["a"], k=2)
  [[('b', 0.9939), ('c', 0.0)]]

The module is ``inspection``, not ``inspect``: ``from embedlab import inspect`` would shadow the
standard library's ``inspect`` in the importing module, and tools that put ``embedlab/`` on
``sys.path`` (running a file in it as a script) would shadow it for everything.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab import config as config_lib
from embedlab.core import tables
from embedlab.data import vectors as pretrained_lib
from embedlab.run import report

SKIP_TOKENS = ("<pad>", "<unk>")  # rows that are never a neighbour: padding, unknown word
EXPORT_FORMATS = ("word2vec", "projector", "npy")
CHECKPOINTS = ("best", "latest")
_PADDING_ID = 0
_SCORES_PER_BLOCK = 1 << 24  # queries x rows scored at once (64 MiB of float32)


# ----------------------------------------------------------------------------- the run's table


class UnknownWordError(KeyError):
  """A query word is not in the table's tokens."""

  def __str__(self) -> str:  # KeyError's own str() would quote the message
    return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True, eq=False)
class RunEmbedding:
  """The embedding table of a run directory, with its tokens.

  Attributes:
    run_dir: the run directory.
    config: the run's ``Config``.
    tokens: one token per row: the vocabulary (id order), then ``<bucket i>`` for hashed n-gram
      bucket rows.
    num_words: how many rows are vocabulary words (the rest are n-gram buckets).
    label_names: the class names.
    table: ``np.ndarray[rows, features]``: row ``i`` is id ``i``'s vector; for a plain table
      as stored in the checkpoint, for the smaller variants (``model.table``) every id looked
      up through them.
    step: the checkpoint's step.
    checkpoint: ``best`` or ``latest``.
    embed: the stored ``params["embed"]`` (``{"table": ...}``, or a variant's entries).
  """

  run_dir: pathlib.Path
  config: config_lib.Config
  tokens: tuple[str, ...]
  num_words: int
  label_names: tuple[str, ...]
  table: np.ndarray
  step: int
  checkpoint: str
  embed: Any = None

  @property
  def words(self) -> np.ndarray:
    """The vocabulary rows, ``float32[num_words, features]``."""
    return np.asarray(self.table[:self.num_words], np.float32)


def load_embedding(run_dir: str | os.PathLike, checkpoint: str = "best") -> RunEmbedding:
  """Reads the embedding table (``params["embed"]["table"]``) of a run's checkpoint.

  Args:
    run_dir: a run directory written by ``embedlab train``.
    checkpoint: ``best`` (best dev accuracy, what ``eval`` and ``predict`` use) or ``latest``.

  Returns:
    A ``RunEmbedding``.

  Example, after ``embedlab train experiments/quickstart.py``::
    emb = load_embedding("runs/quickstart")
    emb.table.shape, emb.tokens[:3]
    ((402, 16), ('<pad>', '<unk>', 's0'))
  """
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"load_embedding: checkpoint={checkpoint!r}; use one of "
                     f"{', '.join(CHECKPOINTS)}.")
  run_dir = pathlib.Path(run_dir)
  cfg, vocab, label_names = report.load_run(run_dir)
  if not (run_dir / "checkpoints" / checkpoint).is_dir():
    raise FileNotFoundError(f"{run_dir} holds no {checkpoint} checkpoint; train it first "
                            f"(embedlab train EXPERIMENT --workdir {run_dir}).")
  from embedlab.run import checkpoint as ckpt_lib  # noqa: PLC0415 - orbax only when reading runs
  checkpoints = ckpt_lib.Checkpoints(run_dir, read_only=True)
  try:
    step, tree, _ = checkpoints.read(checkpoint)
  except ckpt_lib.CheckpointError as e:
    raise FileNotFoundError(f"{e} Train the run first (embedlab train EXPERIMENT --workdir "
                            f"{run_dir}).") from None
  finally:
    checkpoints.close()
  params = tree["params"] if checkpoint == "latest" else tree
  embed = {k: np.asarray(v) for k, v in params["embed"].items()}
  kept = report.load_buckets(run_dir, cfg)
  from embedlab.data import datasets as data_lib  # noqa: PLC0415
  table = _logical_table(cfg, embed, data_lib.table_rows(cfg.data, len(vocab), kept))
  num_words = len(vocab)
  if table.shape[0] < num_words:
    raise ValueError(f"{run_dir}: the table has {table.shape[0]} rows but vocab.txt holds "
                     f"{num_words} tokens; the run directory is inconsistent (train it again "
                     f"with --restart).")
  if kept is None:
    buckets = tuple(f"<bucket {i}>" for i in range(table.shape[0] - num_words))
  else:  # data.prune_buckets: the kept buckets, then the row all the others share
    buckets = tuple(f"<bucket {int(i) - num_words}>" for i in kept) + ("<other buckets>",)
  tokens = tuple(vocab.tokens) + buckets
  return RunEmbedding(run_dir, cfg, tokens, num_words, tuple(label_names), table, int(step),
                      checkpoint, embed)


def _logical_table(cfg: config_lib.Config, embed: Any, num_embeddings: int) -> np.ndarray:
  """The ``[V, D]`` vectors of every id: the stored table (without the zero rows a run on
  several devices appends, ``mesh.model``), or a variant's lookups."""
  if cfg.model.table == "plain":
    return np.asarray(embed["table"])[:num_embeddings]
  from embedlab.models import classifiers as models  # noqa: PLC0415
  return models.materialize(models.make_embedder(cfg.model, num_embeddings), embed,
                            num_embeddings)


def initial_table(cfg: config_lib.Config) -> np.ndarray:
  """The table a run of ``cfg`` started from, rebuilt exactly as ``train`` builds it.

  Args:
    cfg: the run's config (``report.load_run(run_dir)[0]``).

  Returns:
    ``np.ndarray[rows, features]``: the initial table (pretrained rows included).

  Example (from the repository root)::
    from embedlab import config
    cfg = config.load_config("experiments/quickstart.py", [])
    initial_table(cfg).shape
    (402, 16)
  """
  # imported here: train may come to import this module to report on a finished run
  from embedlab.data import datasets as data_lib  # noqa: PLC0415
  from embedlab.run import build as build_lib  # noqa: PLC0415
  data = data_lib.encode_splits(cfg.data, cfg.seed)
  _, steps = build_lib.total_steps(cfg, len(data.train_labels))
  embed = build_lib.build(cfg, data, steps).params["embed"]
  return _logical_table(cfg, embed, data.num_embeddings)


# ----------------------------------------------------------------------------- summary


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


def summarize_run(emb: RunEmbedding, *, initial: Any = None) -> EmbeddingSummary:
  """``summarize_table`` of a run's table, against its rebuilt initial table (``initial_table``).

  Args:
    emb: from ``load_embedding``.
    initial: the initial table, if already at hand (else it is rebuilt from the config).

  Returns:
    An ``EmbeddingSummary`` with ``updated_rows`` and ``pretrained_rows`` filled in.

  Example, after ``embedlab train experiments/quickstart.py``::
    print(summarize_run(load_embedding("runs/quickstart")))
    embedding table: 402 rows x 16 features = 6,432 weights (float32, 25.1 KiB)
    ...
  """
  if initial is None:
    initial = initial_table(emb.config)
  results = _read_results(emb.run_dir)
  pretrained = results.get("pretrained_rows_found", 0 if not emb.config.model.pretrained else None)
  return summarize_table(emb.table, initial=initial, pretrained_rows=pretrained,
                         words=emb.num_words)


def _read_results(run_dir: pathlib.Path) -> dict:
  path = pathlib.Path(run_dir) / "results.json"
  return json.loads(path.read_text()) if path.exists() else {}


# ----------------------------------------------------------------------------- neighbours


def unit_rows(table: Any) -> np.ndarray:
  """Rows scaled to unit L2 norm, ``float32[V, D]``; all-zero rows stay zero (cosine 0).

  Example:
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
  """
  array = np.asarray(table, np.float32)
  norms = np.linalg.norm(array, axis=-1, keepdims=True)
  return array / np.where(norms > 0, norms, 1).astype(np.float32)


def nearest_neighbours(table: Any, queries: Any, *, k: int = 10, skip: Any = None,
                       exclude_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` rows most cosine-similar to each query vector, best first.

  One matrix product per block of queries (blocks keep queries x rows under 16M scores),
  divided by the row norms, then ``argpartition`` for the top ``k``; ties go to the lower id.

  Args:
    table: ``[V, D]`` rows to search.
    queries: ``[Q, D]`` (or ``[D]``) query vectors.
    k: neighbours per query (at most the number of rows that may be returned).
    skip: ``bool[V]``: rows never returned (padding, unknown word, ...).
    exclude_ids: ``int[Q, m]``: rows not returned for that query (the query word itself);
      ``-1`` entries are ignored.

  Returns:
    ``(ids int64[Q, k], scores float32[Q, k])``, scores in ``[-1, 1]``; all-zero rows score 0.

  Example:
    >>> t = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    >>> ids, scores = nearest_neighbours(t, t[:1], k=2, exclude_ids=[[0]])
    >>> ids.tolist(), scores.round(2)
    ([[1, 2]], array([[0.8, 0. ]], dtype=float32))
  """
  array = np.asarray(table, np.float32)
  if array.ndim != 2:
    raise ValueError(f"nearest_neighbours: table must be [rows, features], got {array.shape}.")
  q = unit_rows(np.atleast_2d(queries))
  if q.ndim != 2 or q.shape[1] != array.shape[1]:
    raise ValueError(f"nearest_neighbours: queries have shape {np.shape(queries)} but the table "
                     f"has {array.shape[1]} features; pass [Q, {array.shape[1]}] vectors.")
  rows = array.shape[0]
  # dividing the [Q, V] scores by the norms is cheaper than normalizing the [V, D] table
  norms = np.sqrt(np.einsum("vd,vd->v", array, array))
  inverse = np.divide(1, norms, out=np.zeros_like(norms), where=norms > 0)
  skipped = np.zeros(0, np.int64)
  if skip is not None:
    skip = np.asarray(skip, bool)
    if skip.shape != (rows,):
      raise ValueError(f"nearest_neighbours: skip has shape {skip.shape}, expected ({rows},).")
    skipped = np.nonzero(skip)[0]
  excluded = (np.full((len(q), 0), -1, np.int64) if exclude_ids is None
              else np.asarray(exclude_ids, np.int64).reshape(len(q), -1))
  k = min(int(k), rows - len(skipped) - excluded.shape[1])
  if k < 1:
    raise ValueError("nearest_neighbours: no rows are left to return; skip fewer rows or ask "
                     "for k >= 1.")
  block = max(1, _SCORES_PER_BLOCK // max(rows, 1))
  out_ids = np.empty((len(q), k), np.int64)
  out_scores = np.empty((len(q), k), np.float32)
  for start in range(0, len(q), block):
    scores = q[start:start + block] @ array.T
    scores *= inverse
    scores[:, skipped] = -np.inf
    ex = excluded[start:start + block]
    r, c = np.nonzero(ex >= 0)
    scores[r, ex[r, c]] = -np.inf
    top = np.argpartition(scores, rows - k, axis=1)[:, rows - k:]
    top_scores = np.take_along_axis(scores, top, 1)
    kth = top_scores.min(1, keepdims=True)
    tied = (scores == kth).sum(1) > (top_scores == kth).sum(1)
    for r in np.nonzero(tied)[0]:  # rows tied at the k-th score: argpartition picks any of them
      candidates = np.nonzero(scores[r] >= kth[r])[0]
      top[r] = candidates[np.lexsort((candidates, -scores[r, candidates]))[:k]]
      top_scores[r] = scores[r, top[r]]
    order = np.lexsort((top, -top_scores), axis=1)
    out_ids[start:start + block] = np.take_along_axis(top, order, 1)
    out_scores[start:start + block] = np.take_along_axis(top_scores, order, 1)
  return out_ids, out_scores


def _positions(tokens: Sequence[str], token: str) -> list[int]:
  """Every row of ``token`` (``list.index`` scans in C: fast on 100k+ tokens)."""
  found, i = [], -1
  while True:
    try:
      i = tokens.index(token, i + 1)
    except ValueError:
      return found
    found.append(i)


def _ids_of(tokens: Sequence[str], words: Sequence[str], where: str) -> np.ndarray:
  tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
  if len(words) > 32:
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
      index.setdefault(t, i)
    ids = [index.get(w, -1) for w in words]
  else:
    ids = [tokens.index(w) if w in tokens else -1 for w in words]
  if -1 in ids:
    word = words[ids.index(-1)]
    close = difflib.get_close_matches(word, tokens[:200_000], n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
        " (the vocabulary is built on the training split, lower-cased when data.lowercase)."
    raise UnknownWordError(f"{where}: {word!r} is not in the vocabulary of {len(tokens):,} "
                           f"tokens{hint}")
  return np.array(ids, np.int64)


def _skip_mask(tokens: Sequence[str], skip: Sequence[str]) -> np.ndarray:
  tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
  mask = np.zeros(len(tokens), bool)
  for token in set(skip):
    mask[_positions(tokens, token)] = True
  return mask


def neighbours(table: Any, tokens: Sequence[str], words: Sequence[str], *, k: int = 10,
               skip: Sequence[str] = SKIP_TOKENS) -> list[list[tuple[str, float]]]:
  """The ``k`` nearest words by cosine similarity of each of ``words`` (itself left out).

  Args:
    table: ``[V, D]``.
    tokens: ``V`` tokens, index = row.
    words: the query words.
    k: neighbours per word.
    skip: tokens never returned.

  Returns:
    One list per query word of ``(word, cosine)`` pairs, best first, cosine rounded to 4 places.

  Raises:
    UnknownWordError: (a ``KeyError``) a word is not in ``tokens``; the message suggests close
      ones.

  Example:
    >>> t = np.array([[0, 0], [1, 0], [1, 0.2], [0, 1]], np.float32)
    >>> neighbours(t, ["<pad>", "cat", "dog", "car"], ["cat", "car"], k=1)
    [[('dog', 0.9806)], [('dog', 0.1961)]]
  """
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"neighbours: {len(tokens)} tokens for a table of {np.shape(table)[0]} "
                     f"rows; pass one token per row.")
  ids = _ids_of(tokens, list(words), "neighbours")
  found, scores = nearest_neighbours(table, np.asarray(table)[ids], k=k,
                                     skip=_skip_mask(tokens, skip), exclude_ids=ids[:, None])
  return [[(tokens[j], round(float(s), 4)) for j, s in zip(row_ids, row_scores)]
          for row_ids, row_scores in zip(found, scores)]


def analogy(table: Any, tokens: Sequence[str], a: str, b: str, c: str, *, k: int = 10,
            skip: Sequence[str] = SKIP_TOKENS) -> list[tuple[str, float]]:
  """Words nearest to ``a - b + c`` ("king - man + woman"), the three inputs left out.

  The vectors are unit-normalized first (3CosAdd, as word2vec's ``compute-accuracy`` and
  gensim's ``most_similar(positive=[a, c], negative=[b])``).

  Args:
    table: ``[V, D]``.
    tokens: ``V`` tokens, index = row.
    a, b, c: the words of ``a - b + c``.
    k: how many answers.
    skip: tokens never returned.

  Returns:
    ``(word, cosine)`` pairs, best first.

  Example:
    >>> t = np.array([[0, 0], [1, 1], [1, 0], [0, 1], [-1, 1], [0.1, 1]], np.float32)
    >>> analogy(t, ["<pad>", "king", "man", "woman", "x", "queen"], "king", "man", "woman", k=1)
    [('queen', 0.9639)]
  """
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"analogy: {len(tokens)} tokens for a table of {np.shape(table)[0]} rows; "
                     f"pass one token per row.")
  ids = _ids_of(tokens, [a, b, c], "analogy")
  unit = unit_rows(np.asarray(table)[ids])
  query = unit[0] - unit[1] + unit[2]
  found, scores = nearest_neighbours(table, query[None], k=k, skip=_skip_mask(tokens, skip),
                                     exclude_ids=ids[None])
  return [(tokens[j], round(float(s), 4)) for j, s in zip(found[0], scores[0])]


# ----------------------------------------------------------------------------- structure


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
  x = np.asarray(points, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"pca: needs [N >= 2, D] points, got shape {x.shape}.")
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
  skip_mask = _skip_mask(tokens, skip)
  topic = np.array([word_topics.get(t, -1) for t in tokens], np.int64)
  topic[skip_mask] = -1
  queries = np.nonzero(topic >= 0)[0]
  if len(queries) == 0:
    raise ValueError("topic_neighbour_accuracy: no token of the table has a topic in "
                     "word_topics; pass the table's own tokens.")
  found, _ = nearest_neighbours(table, np.asarray(table)[queries], k=k, skip=skip_mask,
                                exclude_ids=queries[:, None])
  accuracy = float((topic[found] == topic[queries][:, None]).mean())
  candidates = int((~skip_mask).sum())
  per_topic = np.bincount(topic[queries])
  chance = float(np.mean((per_topic[topic[queries]] - 1) / max(candidates - 1, 1)))
  return TopicCheck(accuracy, chance, found.shape[1], len(queries))


def word_groups(emb: RunEmbedding, data: Any = None) -> tuple[np.ndarray, tuple[str, ...]]:
  """What the data knows about each row, for colouring pictures.

  Synthetic data: the planted topic of each word (``-1`` for shared words). Other data: the
  class each word is most associated with in the training split (``class_association``;
  ``-1`` for words used fewer than 5 times).

  Args:
    emb: from ``load_embedding``.
    data: the run's ``EncodedData`` if at hand (else encoded from the config, cached).

  Returns:
    ``(groups int64[rows], names)``: ``names[g]`` describes group ``g``; ``names[-1]`` is the
    description of group ``-1``.

  Example, after ``embedlab train experiments/quickstart.py``::
    groups, names = word_groups(load_embedding("runs/quickstart"))
    names
    ('topic 0', 'topic 1', 'topic 2', 'topic 3', 'shared word')
  """
  from embedlab.data import datasets as data_lib  # noqa: PLC0415
  cfg = emb.config
  rows = emb.table.shape[0]
  if cfg.data.source == "synthetic":
    truth = data_lib.synthetic_word_topics(cfg.data)
    groups = np.array([truth.get(t, -1) for t in emb.tokens], np.int64)
    names = tuple(f"topic {t}" for t in range(cfg.data.synthetic_topics)) + ("shared word",)
    return groups, names
  if data is None:
    data = data_lib.encode_splits(cfg.data, cfg.seed)
  groups, _ = class_association(data.train_ids, data.train_labels, rows, len(emb.label_names))
  names = tuple(f"class {n}" for n in emb.label_names) + ("rare (< 5 uses)",)
  return groups, names


# ----------------------------------------------------------------------------- pictures


def plot_embedding(emb: RunEmbedding, path: str | os.PathLike, *, words: Sequence[str] = (),
                   top: int = 500, num_labels: int = 24, data: Any = None) -> report.Picture:
  """A 2-D PCA projection of a run's most frequent (or selected) words, coloured by group.

  Args:
    emb: from ``load_embedding``.
    path: the PNG to write.
    words: the words to show; empty = the ``top`` most frequent words (the vocabulary is in
      frequency order).
    top: how many words when ``words`` is empty.
    num_labels: how many points get their word written beside them: the first of ``words``,
      else the words farthest from the centre, taking each group in turn.
    data: the run's ``EncodedData`` if at hand.

  Returns:
    The ``report.Picture`` (its ``series`` hold the points as drawn, per group).

  Example, after ``embedlab train experiments/quickstart.py``::
    pic = plot_embedding(load_embedding("runs/quickstart"), "e.png")
    {name: len(points) for name, points in pic.series.items()}
    {'shared word': 200, 'topic 0': 50, 'topic 1': 50, 'topic 2': 50, 'topic 3': 50}
  """
  if words:
    ids = _ids_of(emb.tokens[:emb.num_words], list(dict.fromkeys(words)), "plot_embedding")
  else:
    skip = _skip_mask(emb.tokens[:emb.num_words], SKIP_TOKENS)
    ids = np.nonzero(~skip)[0][:top]
  groups, names = word_groups(emb, data)
  groups = groups[ids]
  coords, explained = pca(emb.words[ids], 2)
  if words:
    labelled = np.arange(len(ids))[:num_labels]
  else:
    labelled = _spread_out(coords, groups, num_labels)
  colour = ("planted topic" if emb.config.data.source == "synthetic" else
            "the class each word is used most in")
  title = (f"{emb.config.name} ({emb.checkpoint} step {emb.step}): {len(ids)} words, PCA of "
           f"{emb.table.shape[1]} features ({explained.sum():.0%} of variance)\n"
           f"colour: {colour}")
  return report.plot_projection(coords, [emb.tokens[i] for i in ids], groups, names, path,
                                labelled=labelled, title=title)


def _spread_out(coords: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
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


def plot_norms(emb: RunEmbedding, path: str | os.PathLike, *,
               initial: Any = None) -> report.Picture:
  """A histogram of a run's row norms (the padding row left out), with the initial ones.

  Args:
    emb: from ``load_embedding``.
    path: the PNG to write.
    initial: the initial table (``initial_table``), drawn as a second histogram if given.

  Returns:
    The ``report.Picture``; ``series["trained"]`` holds the bar heights (they sum to rows - 1).

  Example, after ``embedlab train experiments/quickstart.py``::
    emb = load_embedding("runs/quickstart")
    int(plot_norms(emb, "norms.png").series["trained"].sum())
    401
  """
  keep = np.arange(emb.table.shape[0]) != _PADDING_ID
  before = None if initial is None else row_norms(initial)[keep]
  return report.plot_norms(row_norms(emb.table)[keep], path, initial=before,
                           title=f"{emb.config.name}: row norms of {keep.sum():,} rows "
                                 f"({emb.checkpoint} step {emb.step})")


def record_planted_structure(run_dir: str | os.PathLike, *, k: int = 5,
                             checkpoint: str = "best") -> tuple[TopicCheck, pathlib.Path]:
  """For a run on synthetic data: checks the table against the planted topics, draws it, and
  adds ``planted_topic_neighbour_accuracy`` / ``_chance`` / ``_k`` to ``results.json``.

  Args:
    run_dir: a finished run directory with ``data.source = "synthetic"``.
    k: neighbours per topic word.
    checkpoint: ``best`` or ``latest``.

  Returns:
    ``(check, picture_path)``; the picture is ``plots/embedding.png`` in the run directory.

  Example, after ``embedlab train experiments/quickstart.py``::
    check, picture = record_planted_structure("runs/quickstart")
    check.accuracy, round(check.chance, 3)
    (1.0, 0.123)
  """
  from embedlab.data import datasets as data_lib  # noqa: PLC0415
  emb = load_embedding(run_dir, checkpoint)
  if emb.config.data.source != "synthetic":
    raise ValueError(f"record_planted_structure: {run_dir} trained on data.source = "
                     f"{emb.config.data.source!r}; only synthetic data has a planted structure.")
  check = topic_neighbour_accuracy(emb.words, emb.tokens[:emb.num_words],
                                   data_lib.synthetic_word_topics(emb.config.data), k=k)
  picture = plot_embedding(emb, emb.run_dir / "plots" / "embedding.png").path
  results_file = emb.run_dir / "results.json"
  results = _read_results(emb.run_dir)
  results.update(planted_topic_neighbour_accuracy=check.accuracy,
                 planted_topic_neighbour_chance=round(check.chance, 6),
                 planted_topic_neighbour_k=check.k)
  report._atomic_write(results_file, json.dumps(results, indent=2) + "\n")
  return check, picture


# ----------------------------------------------------------------------------- exports


def _check_same_length(table, tokens, where):
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"{where}: {len(tokens)} tokens for a table of {np.shape(table)[0]} rows; "
                     f"pass one token per row.")


def export_word2vec(path: str | os.PathLike, table: Any, tokens: Sequence[str], *,
                    skip: Sequence[str] = ("<pad>",)) -> int:
  """Writes word2vec text (``count dim`` header; gzip if ``path`` ends in ``.gz``).

  gensim reads it (``KeyedVectors.load_word2vec_format(path)``) and so does ``load_vectors``,
  so ``--set model.pretrained=/abs/path`` starts another experiment's table from it.

  Args:
    path: the output file.
    table: ``[V, D]``.
    tokens: ``V`` tokens.
    skip: tokens left out (the all-zero padding row by default).

  Returns:
    The number of vectors written.

  Example:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "v.txt")
    >>> export_word2vec(path, np.eye(3, dtype=np.float32), ["<pad>", "a", "b"])
    2
  """
  _check_same_length(table, tokens, "export_word2vec")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  return pretrained_lib.save_vectors(path, {"table": np.asarray(table)}, list(tokens),
                                     skip_special=list(skip))


def export_projector(out_dir: str | os.PathLike, table: Any, tokens: Sequence[str], *,
                     metadata: Mapping[str, Sequence[Any]] | None = None,
                     skip: Sequence[str] = ("<pad>",),
                     tensor_name: str = "embed/table") -> list[pathlib.Path]:
  """Writes the TensorBoard Embedding Projector's files into ``out_dir``.

  ``tensors.tsv`` (one row of tab-separated values per word, no header), ``metadata.tsv``
  (a header ``word<TAB>column...`` then one line per row of ``tensors.tsv``, same order),
  ``projector_config.pbtxt`` (for ``tensorboard --logdir out_dir``) and
  ``projector_config.json`` (for the standalone projector, projector.tensorflow.org).

  Args:
    out_dir: the directory (created).
    table: ``[V, D]``.
    tokens: ``V`` tokens.
    metadata: extra columns, each ``V`` values (e.g. ``{"topic": [...]}``).
    skip: tokens left out.
    tensor_name: the name the projector shows.

  Returns:
    The paths written.

  Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> paths = export_projector(out, np.eye(3, dtype=np.float32), ["<pad>", "a", "b"],
    ...                          metadata={"topic": [-1, 0, 1]})
    >>> open(os.path.join(out, "metadata.tsv")).read().splitlines()
    ['word\\ttopic', 'a\\t0', 'b\\t1']
  """
  _check_same_length(table, tokens, "export_projector")
  metadata = dict(metadata or {})
  for name, column in metadata.items():
    if len(column) != len(tokens):
      raise ValueError(f"export_projector: metadata column {name!r} has {len(column)} values "
                       f"for {len(tokens)} tokens; give one value per row.")
  keep = np.nonzero(~_skip_mask(tokens, skip))[0]
  header = ["word"] + list(metadata)
  lines = ["\t".join(header)]
  for i in keep.tolist():
    cells = [tokens[i]] + [str(metadata[name][i]) for name in metadata]
    for cell in cells:
      if "\t" in cell or "\n" in cell or "\r" in cell:
        raise ValueError(f"export_projector: row {i} ({tokens[i]!r}) has the value {cell!r}, "
                         f"which holds a tab or line break that TSV cannot represent; rename it.")
    lines.append("\t".join(cells))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  values = np.asarray(table, np.float32)[keep]
  paths = [out / "tensors.tsv", out / "metadata.tsv", out / "projector_config.pbtxt",
           out / "projector_config.json"]
  with open(paths[0], "w", encoding="utf-8", newline="\n") as f:
    np.savetxt(f, values, fmt="%.9g", delimiter="\t")
  paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
  paths[2].write_text(f'embeddings {{\n  tensor_name: "{tensor_name}"\n  tensor_path: '
                      f'"tensors.tsv"\n  metadata_path: "metadata.tsv"\n}}\n')
  paths[3].write_text(json.dumps({"embeddings": [{
      "tensorName": tensor_name, "tensorShape": list(values.shape),
      "tensorPath": "tensors.tsv", "metadataPath": "metadata.tsv"}]}, indent=2) + "\n")
  return paths


def export_npy(path: str | os.PathLike, table: Any, tokens: Sequence[str]) -> list[pathlib.Path]:
  """Writes the whole table as ``.npy`` (row = id) and its tokens beside it, one per line.

  Args:
    path: the ``.npy`` file (the suffix is added if missing); the tokens go to
      ``<path without .npy>.tokens.txt``.
    table: ``[V, D]``.
    tokens: ``V`` tokens.

  Returns:
    ``[npy_path, tokens_path]``.

  Example:
    >>> import tempfile
    >>> npy, _ = export_npy(os.path.join(tempfile.mkdtemp(), "t"), np.eye(2), ["<pad>", "a"])
    >>> np.load(npy).shape
    (2, 2)
  """
  _check_same_length(table, tokens, "export_npy")
  bad = [t for t in tokens if "\n" in t or "\r" in t]
  if bad:
    raise ValueError(f"export_npy: tokens {bad[:3]} contain a line break; they cannot be "
                     f"written one per line.")
  path = pathlib.Path(path)
  if path.suffix != ".npy":
    path = path.with_name(path.name + ".npy")
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, np.asarray(table))
  tokens_path = path.with_suffix(".tokens.txt")
  tokens_path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  return [path, tokens_path]


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike, *,
               checkpoint: str = "best") -> list[pathlib.Path]:
  """Exports a run's table: ``word2vec`` (a file), ``projector`` (a directory) or ``npy``.

  ``word2vec`` and ``projector`` hold the vocabulary rows (not ``<pad>``, not n-gram buckets);
  the projector's metadata adds each word's id, training count and topic (synthetic data) or
  most associated class. ``npy`` holds every row.

  Args:
    run_dir: a run directory.
    fmt: one of ``EXPORT_FORMATS``.
    out: the output file (word2vec, npy) or directory (projector).
    checkpoint: ``best`` or ``latest``.

  Returns:
    The paths written.

  Example, after ``embedlab train experiments/quickstart.py``::
    export_run("runs/quickstart", "word2vec", "vectors.txt")
    [PosixPath('vectors.txt')]
  """
  if fmt not in EXPORT_FORMATS:
    raise ValueError(f"export: unknown format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
  emb = load_embedding(run_dir, checkpoint)
  words, tokens = emb.words, emb.tokens[:emb.num_words]
  if fmt == "word2vec":
    export_word2vec(out, words, tokens)
    return [pathlib.Path(out)]
  if fmt == "npy":
    return export_npy(out, emb.table, emb.tokens)
  from embedlab.data import datasets as data_lib  # noqa: PLC0415
  data = None if emb.config.data.source == "synthetic" else data_lib.encode_splits(
      emb.config.data, emb.config.seed)
  groups, names = word_groups(emb, data)
  if data is None:
    data = data_lib.encode_splits(emb.config.data, emb.config.seed)
  counts = np.bincount(np.asarray(data.train_ids).ravel(), minlength=emb.table.shape[0])
  column = "topic" if emb.config.data.source == "synthetic" else "class"
  metadata = {"id": list(range(emb.num_words)),
              "count": counts[:emb.num_words].tolist(),
              column: [names[g] for g in groups[:emb.num_words]]}
  return export_projector(out, words, tokens, metadata=metadata)


def export_quantized(run_dir: str | os.PathLike, out: str | os.PathLike, quantize: str = "int8",
                     *, checkpoint: str = "best") -> tuple[list[pathlib.Path], str]:
  """Writes a run's stored embedding quantized row-wise to ``.npz``, its tokens beside it.

  Every 2-D entry ``NAME`` of ``params["embed"]`` (``table`` for a plain table) becomes
  ``NAME_q8`` (``int8``), ``NAME_q4`` (two 4-bit values per ``uint8``) or ``NAME_q2`` (four
  2-bit codes per ``uint8``) and ``NAME_scale``
  (``float32`` per row); read it back with ``embedlab.core.compress.lookup_quantized``:
  ``q = np.load(path); lookup_quantized({"q8": q["table_q8"], "scale": q["table_scale"]}, ids)``.

  Args:
    run_dir: a run directory.
    out: the ``.npz`` file (the suffix is added if missing); tokens go to ``<out>.tokens.txt``.
    quantize: ``int8``, ``int4`` or ``int2``.
    checkpoint: ``best`` or ``latest``.

  Returns:
    ``([npz_path, tokens_path], a line with the bytes before and after and the largest error)``.

  Example, after ``embedlab train experiments/quickstart.py``::
    export_quantized("runs/quickstart", "table_int8", "int8")
  """
  from embedlab.core import compress  # noqa: PLC0415
  bits = compress.quantize_bits(quantize, "export")
  emb = load_embedding(run_dir, checkpoint)
  quantized = compress.quantize_entries(emb.embed, bits)
  arrays, errors = {}, []
  for name, value in quantized.items():
    if isinstance(value, dict):
      for part, array in value.items():
        arrays[f"{name}_{part}"] = np.asarray(array)
      errors.append(compress.quantization_error({"table": emb.embed[name]}, value))
    else:
      arrays[name] = np.asarray(value)
  path = pathlib.Path(out)
  if path.suffix != ".npz":
    path = path.with_name(path.name + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  tokens_path = path.with_suffix(".tokens.txt")
  tokens_path.write_text("".join(t + "\n" for t in emb.tokens), encoding="utf-8")
  before, after = compress.table_bytes(emb.embed), sum(a.nbytes for a in arrays.values())
  info = (f"{quantize}: {tables.human_bytes(before)} -> {tables.human_bytes(after)} "
          f"({before / after:.1f}x smaller); largest absolute error {max(errors, default=0):.4g}; "
          f"accuracy with it: embedlab eval {run_dir} --quantize {quantize}")
  return [path, tokens_path], info
