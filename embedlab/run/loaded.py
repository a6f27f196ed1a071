"""A trained run, loaded in Python: ``load_run(path)`` then ``run.predict(texts)`` and
``run.embed(words)``, as Keras' ``load_model`` or ``torch.load`` give back a model to use.

Example, after ``embedlab train experiments/quickstart.py``::

  import embedlab as el
  run = el.load_run("runs/quickstart")
  run.predict(["t0_w1 t0_w2 s3"], k=2)          # [[("0", 0.98), ("1", 0.01)]]
  run.embed(["t0_w1", "s0"]).shape              # (2, 16)
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedlab import config as config_lib
from embedlab.data import cache as cache_lib
from embedlab.data import rows as rows_lib
from embedlab.data import splits as splits_lib
from embedlab.data import text as text_lib
from embedlab.models import classifiers as models_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.run import model_args, preflight, report
from embedlab.run import steps as steps_lib


class UnknownWordsError(KeyError):
  """``Run.embed`` was asked for words the run's vocabulary does not hold."""


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
  """A trained run: its config, model, best parameters, vocabulary and labels.

  Attributes:
    path: the run directory.
    config: the run's ``Config``.
    model: the ``models.Model`` (pure ``init`` / ``apply`` functions).
    params: the best checkpoint's parameters (a pytree of arrays).
    vocab: the run's ``text.Vocab`` (id order).
    label_names: the class names, index = class id.
    kept_buckets: with ``data.prune_buckets``, the n-gram buckets the table keeps; else None.
  """

  path: pathlib.Path
  config: config_lib.Config
  model: Any
  params: Any
  vocab: text_lib.Vocab
  label_names: tuple[str, ...]
  kept_buckets: np.ndarray | None = None

  def encode(self, texts: Sequence[str]) -> np.ndarray:
    """Ids ``int32[N, L]`` of ``texts``, tokenized and encoded as the run's training data was;
    a text given as bytes is read as UTF-8."""
    return cache_lib.encode_texts(self.config.data, self.vocab, _text_list(texts, "encode"),
                                  self.kept_buckets)

  @property
  def multilabel(self) -> bool:
    """Whether the run trained one sigmoid per label (``data.multilabel``, fastText's ``ova``)."""
    return self.config.data.multilabel

  def probabilities(self, texts: Sequence[str]) -> np.ndarray:
    """Class probabilities ``float32[N, num_classes]`` of ``texts``: a softmax over the classes
    (each row sums to 1), or for a multi-label run each label's own sigmoid."""
    logits = apply_model(self.model)(self.params, self.encode(_text_list(texts,
                                                                         "probabilities")))
    if self.multilabel:
      return np.asarray(jax.nn.sigmoid(logits.astype(jnp.float32)))
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def predict(self, texts: Sequence[str], *, k: int = 1,
              threshold: float = 0.0) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable labels of each text whose probability is at least ``threshold``,
    most probable first: one list of ``(label, probability)`` a text (fastText's
    ``predict(text, k, threshold)``). Probabilities are ``probabilities``': softmax, or a
    sigmoid per label for a multi-label run (so several labels may pass a threshold of 0.5)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"predict: k={k!r}; give a positive number of labels per text.")
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number))
        or not 0.0 <= threshold <= 1.0):
      raise ValueError(f"predict: threshold={threshold!r} must be a probability in [0, 1].")
    texts = _text_list(texts, "predict")
    out = []
    for row in self.probabilities(texts):
      order = np.argsort(-row, kind="stable")[:k]
      out.append([(self.label_names[i], float(row[i])) for i in order if row[i] >= threshold])
    return out

  def embed(self, words: Sequence[str]) -> np.ndarray:
    """The trained vectors ``float32[len(words), features]`` of words.

    Without character n-grams, a vocabulary word's vector is its row. With them
    (``data.minn``, ``data.maxn``), it is fastText's ``get_word_vector``: the mean of the word's
    row and its n-grams' rows, and a word never seen in training gets the mean of its n-grams'
    rows (``embedlab.data.cache.word_rows``).

    Raises:
      UnknownWordsError: naming the words the run has no vector for: outside the vocabulary
        without character n-grams (their vector would be ``<unk>``'s, which says nothing about
        them), or not one token as the run tokenizes.
    """
    if isinstance(words, str):
      raise TypeError("Run.embed takes a list of words; wrap one word in a list.")
    data = self.config.data
    found = [text_lib.tokenize_many([w], data.lowercase)[0] for w in words]
    tokens = [t[0] if len(t) == 1 else None for t in found]
    rows = cache_lib.word_rows(data, self.vocab, [t or "" for t in tokens], self.kept_buckets)
    unknown = [w for w, t, r in zip(words, tokens, rows) if t is None or not r.any()]
    if unknown:
      what = ("have no vector: each must be one token as the run tokenizes, with a character "
              f"n-gram of {data.minn}..{data.maxn} characters or in the vocabulary"
              if data.subwords else
              f"not in the run's vocabulary of {len(self.vocab):,} words (give single words as "
              "the run tokenized them)")
      raise UnknownWordsError(f"embed: {', '.join(map(repr, unknown[:10]))} {what}.")
    if not data.subwords:
      vectors = models_lib.materialize(self.model.embedder, self.params["embed"],
                                       len(self.vocab))
      return np.asarray(vectors)[rows[:, 0].astype(np.int64)]
    return np.asarray(self.model.embedder.bag(self.params["embed"], jnp.asarray(rows), "mean"),
                      np.float32)


@functools.lru_cache(maxsize=8)
def apply_model(model):
  return jax.jit(model.apply)


def load_run(path: str | pathlib.Path) -> Run:
  """Loads a trained run directory (``runs/<experiment>``): config, model, the best
  checkpoint's parameters, vocabulary and labels.

  Raises:
    FileNotFoundError: ``path`` is not a run directory, or holds no best checkpoint yet.
  """
  path = pathlib.Path(path)
  cfg, vocab, label_names = report.load_run(path)
  kept = report.load_buckets(path, cfg)
  model, params = restore_for_eval(path, cfg, vocab, label_names, kept)
  return Run(path, cfg, model, params, vocab, tuple(label_names), kept)


def _text_list(texts: Any, where: str) -> list[str]:
  """``texts`` as a list of strings (bytes read as UTF-8); a single string, or an item that is
  not text, is an error naming it."""
  if isinstance(texts, (str, bytes)):
    raise TypeError(f"Run.{where} takes a list of texts; wrap one text in a list.")
  out = []
  for i, text in enumerate(texts):
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"Run.{where}: text {i} is bytes that are not UTF-8 (0x{text[e.start]:02x} "
                         f"at byte {e.start + 1}); decode it to a string first.") from None
    if not isinstance(text, str):
      raise TypeError(f"Run.{where}: text {i} is {text!r} ({type(text).__name__}); texts must be "
                      "strings.")
    out.append(text)
  return out


def predict(run_dir: str | pathlib.Path, texts: list[str]) -> list[dict]:
  """Labels and probabilities for raw texts, with the best parameters of a finished run
  (``embedlab.load_run(run_dir).predict`` gives the top ``k`` labels)."""
  run = load_run(run_dir)
  return [{"text": t, "label": run.label_names[int(p.argmax())],
           "probabilities": {n: round(float(q), 4) for n, q in zip(run.label_names, p)}}
          for t, p in zip(texts, run.probabilities(texts))]


def evaluate_run(run_dir: str | pathlib.Path, split: str = "test", *,
                 quantize: str | None = None) -> dict[str, float]:
  """Re-evaluates the best parameters of a run on one of its data splits.

  ``quantize`` (``"int8"``, ``"int4"`` or ``"int2"``) evaluates with the embedding quantized
  row-wise (``embedlab.core.quantize.quantize_entries``), as ``embedlab export --quantize`` writes it;
  the result then also holds the embedding's bytes before and after.
  """
  run_dir = pathlib.Path(run_dir)
  cfg, vocab, label_names = report.load_run(run_dir)
  kept = report.load_buckets(run_dir, cfg)
  model, params = restore_for_eval(run_dir, cfg, vocab, label_names, kept)
  extra = {}
  if quantize is not None:
    from embedlab.core import quantize as quantize_lib  # noqa: PLC0415
    from embedlab.core.variants import contract  # noqa: PLC0415
    quantized = quantize_lib.quantize_entries(params["embed"],
                                              quantize_lib.quantize_bits(quantize, "eval"))
    extra = {"quantize": quantize, "embedding_bytes": contract.table_bytes(params["embed"]),
             "quantized_bytes": contract.table_bytes(quantized)}
    params = {**params, "embed": quantize_lib.dequantize_entries(quantized)}
  ids, labels = split_for_run(cfg, vocab, label_names, kept, split)
  eval_step = jax.jit(steps_lib.make_eval_step(model, cfg.train.eval_k))
  result = steps_lib.evaluate(eval_step, params, ids, labels, cfg.train.eval_batch_size)
  return {**result, **extra}


def split_for_run(cfg, vocab, label_names, kept, split: str):
  """``(ids, labels)`` of a data split encoded with the run's own vocabulary and labels, so an
  evaluation reads the ids and classes the run was trained with, whatever the files hold now."""
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  if not preflight.data_changes(vocab, label_names, data):  # the usual case: the cached encoding
    ids, labels = {"train": (data.train_ids, data.train_labels),
                   "dev": (data.dev_ids, data.dev_labels),
                   "test": (data.test_ids, data.test_labels)}[split]
    if ids is None:
      raise ValueError(f"eval: the run's data has no {split!r} split.")
    return ids, labels
  splits, names = splits_lib.load_splits(cfg.data, cfg.seed)
  if split not in splits:
    raise ValueError(f"eval: the run's data has no {split!r} split.")
  rows = splits[split]
  index = {name: i for i, name in enumerate(label_names)}
  used = (np.flatnonzero(rows.labels.any(axis=0)) if rows.labels.ndim == 2 else rows.labels)
  unknown = sorted({names[int(i)] for i in used} - set(index))
  if unknown:
    raise rows_lib.DataError(f"eval: the {split} split has labels the run never trained on "
                             f"({', '.join(unknown[:5])}); its classes are {list(label_names)}.")
  if rows.labels.ndim == 2:  # multi-hot: the columns in the run's label order
    labels = np.zeros((len(rows.labels), len(label_names)), np.float32)
    labels[:, [index[n] for n in names]] = rows.labels
  else:
    labels = np.asarray([index[names[int(i)]] for i in rows.labels], np.int32)
  return cache_lib.encode_texts(cfg.data, vocab, rows.texts, kept), labels


def restore_for_eval(run_dir, cfg, vocab, label_names, kept_buckets):
  num_embeddings = cache_lib.table_rows(cfg.data, len(vocab), kept_buckets)
  model = model_args.make_model(cfg.model, num_embeddings, len(label_names))
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target)
  checkpoints = ckpt_lib.Checkpoints(run_dir, read_only=True)
  restored = checkpoints.restore_best(target) or None
  checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"{run_dir} holds no best checkpoint; train it first "
                            f"(embedlab train EXPERIMENT --workdir {run_dir}).")
  return model, restored[1]
