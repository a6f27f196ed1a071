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
import numpy as np

from embedlab import config as config_lib
from embedlab.data import datasets as data_lib
from embedlab.models import classifiers as models_lib
from embedlab.run import report
from embedlab.data import text as text_lib


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
    """Ids ``int32[N, L]`` of ``texts``, tokenized and encoded as the run's training data was."""
    return data_lib.encode_texts(self.config.data, self.vocab, texts, self.kept_buckets)

  def probabilities(self, texts: Sequence[str]) -> np.ndarray:
    """Class probabilities ``float32[N, num_classes]`` of ``texts``."""
    if isinstance(texts, str):
      raise TypeError("Run.probabilities takes a list of texts; wrap one text in a list.")
    logits = _apply(self.model)(self.params, self.encode(texts))
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def predict(self, texts: Sequence[str], *, k: int = 1,
              threshold: float = 0.0) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable labels of each text whose probability is at least ``threshold``,
    most probable first: one list of ``(label, probability)`` a text (fastText's
    ``predict(text, k, threshold)``)."""
    if not isinstance(k, int) or k < 1:
      raise ValueError(f"predict: k={k!r}; give a positive number of labels per text.")
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"predict: threshold={threshold!r} must be a probability in [0, 1].")
    out = []
    for row in self.probabilities(texts):
      order = np.argsort(-row, kind="stable")[:k]
      out.append([(self.label_names[i], float(row[i])) for i in order if row[i] >= threshold])
    return out

  def embed(self, words: Sequence[str]) -> np.ndarray:
    """The trained vectors ``float32[len(words), features]`` of vocabulary words.

    Raises:
      UnknownWordsError: naming the words the vocabulary does not hold (their vector would
        be ``<unk>``'s, which says nothing about them).
    """
    if isinstance(words, str):
      raise TypeError("Run.embed takes a list of words; wrap one word in a list.")
    data = self.config.data
    found = [text_lib.tokenize_many([w], data.lowercase)[0] for w in words]
    ids = [self.vocab.id_of(t[0]) if len(t) == 1 else text_lib.UNK_ID for t in found]
    unknown = [w for w, i in zip(words, ids) if i == text_lib.UNK_ID]
    if unknown:
      raise UnknownWordsError(f"embed: {', '.join(map(repr, unknown[:10]))} not in the run's "
                              f"vocabulary of {len(self.vocab):,} words (give single words as "
                              f"the run tokenized them).")
    vectors = models_lib.materialize(self.model.embedder, self.params["embed"],
                                     len(self.vocab))
    return np.asarray(vectors)[np.asarray(ids, np.int64)]


@functools.lru_cache(maxsize=8)
def _apply(model):
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
  from embedlab.run import train  # noqa: PLC0415 - the runner's restore, shared with eval
  model, params = train.restore_for_eval(path, cfg, vocab, label_names, kept)
  return Run(path, cfg, model, params, vocab, tuple(label_names), kept)
