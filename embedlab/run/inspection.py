"""A run directory's embedding, read back: its table (every id looked up through the run's
variant), tokens and labels, the table it started from, and the analysis, pictures and exports
of ``embedlab.analysis`` applied to it.

The module is ``inspection``, not ``inspect``: ``from embedlab.run import inspect`` would read
as the standard library's ``inspect`` in the importing module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from embedlab import config as config_lib
from embedlab.analysis import plots
from embedlab.analysis.exports import (
  EXPORT_FORMATS,
  export_npy,
  export_projector,
  export_word2vec,
)
from embedlab.analysis.geometry import (
  EmbeddingSummary,
  TopicCheck,
  class_association,
  pca,
  row_norms,
  spread_out,
  summarize_table,
  topic_neighbour_accuracy,
)
from embedlab.analysis.neighbours import SKIP_TOKENS, ids_of, skip_mask
from embedlab.data.atomic import atomic_write
from embedlab.core import tables
from embedlab.run import report

CHECKPOINTS = ("best", "latest")


_PADDING_ID = 0


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
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  table = _logical_table(cfg, embed, cache_lib.table_rows(cfg.data, len(vocab), kept))
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
  from embedlab.core import variants  # noqa: PLC0415
  if variants.TABLES.spec(cfg.model.table).one_row_per_id:
    return np.asarray(embed["table"])[:num_embeddings]
  from embedlab.models import classifiers as models  # noqa: PLC0415
  from embedlab.run import model_args  # noqa: PLC0415
  return models.materialize(model_args.make_embedder(cfg.model, num_embeddings), embed,
                            num_embeddings)


def word_vectors(emb: RunEmbedding, words: Sequence[str], *, chunk: int = 1024) -> np.ndarray:
  """fastText's word vectors ``float32[len(words), features]`` from a run's table: with
  character n-grams (``data.minn``) the mean of a word's row and its n-grams' rows, for words
  never seen in training the mean of their n-grams' rows; without them, a vocabulary word's row.

  Raises:
    neighbours.UnknownWordError: (a ``KeyError``) a word the run has no vector for.
  """
  from embedlab.analysis import neighbours as neighbours_lib  # noqa: PLC0415
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  from embedlab.data import text as text_lib  # noqa: PLC0415
  cfg = emb.config.data
  vocab = text_lib.Vocab(emb.tokens[:emb.num_words])
  kept = report.load_buckets(emb.run_dir, emb.config)
  out = np.zeros((len(words), emb.table.shape[1]), np.float32)
  for start in range(0, len(words), chunk):
    rows = cache_lib.word_rows(cfg, vocab, list(words[start:start + chunk]), kept)
    counts = (rows != _PADDING_ID).sum(axis=1)
    missing = [w for w, c in zip(words[start:start + chunk], counts) if c == 0]
    if missing:
      raise neighbours_lib.UnknownWordError(
          f"{missing[0]!r} has no vector in this run: it is not in its vocabulary"
          + (f" and has no character n-gram of {cfg.minn}..{cfg.maxn} characters"
             if cfg.subwords else " (the run has no character n-grams: data.minn = 0)") + ".")
    # the padding row is zero: sums over the padded rows, then divided by the real counts
    sums = np.asarray(emb.table, np.float32)[rows].sum(axis=1)
    out[start:start + len(rows)] = sums / counts[:, None]
  return out


def vocabulary_vectors(emb: RunEmbedding) -> np.ndarray:
  """The vocabulary words' vectors ``float32[num_words, features]`` that neighbours and analogies
  search: their rows (``emb.words``), or with character n-grams fastText's word vectors
  (``word_vectors``; ``<pad>`` and ``<unk>`` keep their rows)."""
  if not emb.config.data.subwords:
    return emb.words
  vectors = emb.words.copy()
  vectors[2:] = word_vectors(emb, emb.tokens[2:emb.num_words])
  return vectors


def word_neighbours(emb: RunEmbedding, words: Sequence[str], *, k: int = 10,
                    vectors: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
  """The ``k`` nearest vocabulary words by cosine of each of ``words`` (itself left out), over
  ``vocabulary_vectors``; with character n-grams, words never seen in training too (fastText's
  ``get_nearest_neighbors``).

  Raises:
    neighbours.UnknownWordError: a word the run has no vector for.
  """
  from embedlab.analysis import neighbours as neighbours_lib  # noqa: PLC0415
  words = neighbours_lib.word_list(words, "word_neighbours")
  tokens = emb.tokens[:emb.num_words]
  table = vocabulary_vectors(emb) if vectors is None else vectors
  if not emb.config.data.subwords:
    return neighbours_lib.neighbours(table, tokens, list(words), k=k)
  index = {t: i for i, t in enumerate(tokens)}
  queries = [w.lower() if emb.config.data.lowercase else w for w in words]
  found, scores = neighbours_lib.nearest_neighbours(
      table, word_vectors(emb, queries), k=k, skip=skip_mask(tokens, SKIP_TOKENS),
      exclude_ids=[[index.get(q, -1)] for q in queries])
  return [[(tokens[j], round(float(s), 4)) for j, s in zip(row_ids, row_scores)]
          for row_ids, row_scores in zip(found, scores)]


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
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  from embedlab.run import build as build_lib  # noqa: PLC0415
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  _, steps = build_lib.total_steps(cfg, len(data.train_labels))
  embed = build_lib.build(cfg, data, steps).params["embed"]
  return _logical_table(cfg, embed, data.num_embeddings)


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
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  from embedlab.data import synthetic as synthetic_lib  # noqa: PLC0415
  cfg = emb.config
  rows = emb.table.shape[0]
  if cfg.data.source == "synthetic":
    truth = synthetic_lib.synthetic_word_topics(cfg.data)
    groups = np.array([truth.get(t, -1) for t in emb.tokens], np.int64)
    names = tuple(f"topic {t}" for t in range(cfg.data.synthetic_topics)) + ("shared word",)
    return groups, names
  if data is None:
    data = cache_lib.encode_splits(cfg.data, cfg.seed)
  labels = data.train_labels
  if labels.ndim == 2:  # multi-hot: each row's first label (in label order)
    labels = labels.argmax(axis=1).astype(np.int32)
  groups, _ = class_association(data.train_ids, labels, rows, len(emb.label_names))
  names = tuple(f"class {n}" for n in emb.label_names) + ("rare (< 5 uses)",)
  return groups, names


def plot_embedding(emb: RunEmbedding, path: str | os.PathLike, *, words: Sequence[str] = (),
                   top: int = 500, num_labels: int = 24, data: Any = None) -> plots.Picture:
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
    The ``plots.Picture`` (its ``series`` hold the points as drawn, per group).

  Example, after ``embedlab train experiments/quickstart.py``::
    pic = plot_embedding(load_embedding("runs/quickstart"), "e.png")
    {name: len(points) for name, points in pic.series.items()}
    {'shared word': 200, 'topic 0': 50, 'topic 1': 50, 'topic 2': 50, 'topic 3': 50}
  """
  if words:
    ids = ids_of(emb.tokens[:emb.num_words], list(dict.fromkeys(words)), "plot_embedding")
  else:
    skip = skip_mask(emb.tokens[:emb.num_words], SKIP_TOKENS)
    ids = np.nonzero(~skip)[0][:top]
  groups, names = word_groups(emb, data)
  groups = groups[ids]
  coords, explained = pca(emb.words[ids], 2)
  if words:
    labelled = np.arange(len(ids))[:num_labels]
  else:
    labelled = spread_out(coords, groups, num_labels)
  colour = ("planted topic" if emb.config.data.source == "synthetic" else
            "the class each word is used most in")
  title = (f"{emb.config.name} ({emb.checkpoint} step {emb.step}): {len(ids)} words, PCA of "
           f"{emb.table.shape[1]} features ({explained.sum():.0%} of variance)\n"
           f"colour: {colour}")
  return plots.plot_projection(coords, [emb.tokens[i] for i in ids], groups, names, path,
                                labelled=labelled, title=title)


def plot_norms(emb: RunEmbedding, path: str | os.PathLike, *,
               initial: Any = None) -> plots.Picture:
  """A histogram of a run's row norms (the padding row left out), with the initial ones.

  Args:
    emb: from ``load_embedding``.
    path: the PNG to write.
    initial: the initial table (``initial_table``), drawn as a second histogram if given.

  Returns:
    The ``plots.Picture``; ``series["trained"]`` holds the bar heights (they sum to rows - 1).

  Example, after ``embedlab train experiments/quickstart.py``::
    emb = load_embedding("runs/quickstart")
    int(plot_norms(emb, "norms.png").series["trained"].sum())
    401
  """
  keep = np.arange(emb.table.shape[0]) != _PADDING_ID
  before = None if initial is None else row_norms(initial)[keep]
  return plots.plot_norms(row_norms(emb.table)[keep], path, initial=before,
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
  from embedlab.data import synthetic as synthetic_lib  # noqa: PLC0415
  emb = load_embedding(run_dir, checkpoint)
  if emb.config.data.source != "synthetic":
    raise ValueError(f"record_planted_structure: {run_dir} trained on data.source = "
                     f"{emb.config.data.source!r}; only synthetic data has a planted structure.")
  check = topic_neighbour_accuracy(emb.words, emb.tokens[:emb.num_words],
                                   synthetic_lib.synthetic_word_topics(emb.config.data), k=k)
  picture = plot_embedding(emb, emb.run_dir / "plots" / "embedding.png").path
  results_file = emb.run_dir / "results.json"
  results = _read_results(emb.run_dir)
  results.update(planted_topic_neighbour_accuracy=check.accuracy,
                 planted_topic_neighbour_chance=round(check.chance, 6),
                 planted_topic_neighbour_k=check.k)
  atomic_write(results_file, json.dumps(results, indent=2) + "\n")
  return check, picture


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
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  data = None if emb.config.data.source == "synthetic" else cache_lib.encode_splits(
      emb.config.data, emb.config.seed)
  groups, names = word_groups(emb, data)
  if data is None:
    data = cache_lib.encode_splits(emb.config.data, emb.config.seed)
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
  (``float32`` per row); read it back with ``embedlab.core.quantize.lookup_quantized``:
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
  from embedlab.core import quantize as quantize_lib  # noqa: PLC0415
  from embedlab.core.variants import contract  # noqa: PLC0415
  bits = quantize_lib.quantize_bits(quantize, "export")
  emb = load_embedding(run_dir, checkpoint)
  quantized = quantize_lib.quantize_entries(emb.embed, bits)
  arrays, errors = {}, []
  for name, value in quantized.items():
    if isinstance(value, dict):
      for part, array in value.items():
        arrays[f"{name}_{part}"] = np.asarray(array)
      errors.append(quantize_lib.quantization_error({"table": emb.embed[name]}, value))
    else:
      arrays[name] = np.asarray(value)
  path = pathlib.Path(out)
  if path.suffix != ".npz":
    path = path.with_name(path.name + ".npz")
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, **arrays)
  tokens_path = path.with_suffix(".tokens.txt")
  tokens_path.write_text("".join(t + "\n" for t in emb.tokens), encoding="utf-8")
  before, after = contract.table_bytes(emb.embed), sum(a.nbytes for a in arrays.values())
  info = (f"{quantize}: {tables.human_bytes(before)} -> {tables.human_bytes(after)} "
          f"({before / after:.1f}x smaller); largest absolute error {max(errors, default=0):.4g}; "
          f"accuracy with it: embedlab eval {run_dir} --quantize {quantize}")
  return [path, tokens_path], info
