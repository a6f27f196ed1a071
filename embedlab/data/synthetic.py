"""Synthetic data with a planted topic structure (``data.source = "synthetic"``): each class is
a topic with its own words, so which words carry a class is known (``synthetic_word_topics``).

Example:
  >>> from embedlab.data.options import DataConfig
  >>> s = synthetic_splits(DataConfig(synthetic_train_size=3, synthetic_eval_size=2), seed=1)
  >>> sorted(s), [len(s[k]) for k in sorted(s)]
  (['dev', 'test', 'train'], [2, 2, 3])
"""

from __future__ import annotations

import numpy as np

from embedlab.data import rows
from embedlab.data.options import DataConfig


def _synthetic_vocab(cfg: DataConfig) -> list[str]:
  words = [f"t{t}_w{j}" for t in range(cfg.synthetic_topics)
           for j in range(cfg.synthetic_words_per_topic)]
  return words + [f"s{j}" for j in range(cfg.synthetic_shared_words)]


def synthetic_word_topics(cfg: DataConfig) -> dict[str, int]:
  """The planted truth of ``synthetic_splits``: each word's topic (= class), -1 for shared words.

  Example:
    >>> truth = synthetic_word_topics(DataConfig(synthetic_topics=2, synthetic_words_per_topic=3,
    ...                                          synthetic_shared_words=2))
    >>> truth
    {'t0_w0': 0, 't0_w1': 0, 't0_w2': 0, 't1_w0': 1, 't1_w1': 1, 't1_w2': 1, 's0': -1, 's1': -1}
  """
  per = cfg.synthetic_words_per_topic
  return {w: (i // per if i < cfg.synthetic_topics * per else -1)
          for i, w in enumerate(_synthetic_vocab(cfg))}


# Of a document's tokens, about this share come from its own topic's words, this share from the
# other topics' words (so single words are evidence, not proof), and the rest from shared words.
_OWN_TOPIC_SHARE = 0.35
_OTHER_TOPIC_SHARE = 0.10


def synthetic_splits(cfg: DataConfig, seed: int) -> dict[str, rows.Split]:
  """Generates train / dev / test documents with a planted topic structure.

  Each class is a latent topic with ``synthetic_words_per_topic`` words ``t{topic}_w{j}``; there
  are ``synthetic_shared_words`` shared words ``s{j}`` with Zipf frequencies. A document of
  class c has ``synthetic_length // 2 .. synthetic_length * 3 // 2`` tokens: about 35% drawn
  uniformly from topic c's words, 10% from the other topics' words, the rest shared words.
  A bag-of-words model reaches ~95%+ accuracy, but needs to learn which words carry the topic.

  Args:
    cfg: sizes come from the ``synthetic_*`` fields.
    seed: the same seed gives the same documents; each split has its own random stream.

  Returns:
    ``{"train", "dev", "test"}`` splits; labels are topic ids.

  Example:
    >>> s = synthetic_splits(DataConfig(synthetic_train_size=3, synthetic_eval_size=2), seed=1)
    >>> len(s["train"]), len(s["dev"]), s["train"].labels.dtype
    (3, 2, dtype('int32'))
  """
  topics, per = cfg.synthetic_topics, cfg.synthetic_words_per_topic
  num_shared = cfg.synthetic_shared_words
  words = np.array(_synthetic_vocab(cfg), dtype=object)
  shared_p = 1.0 / np.arange(1, num_shared + 1)
  shared_p /= shared_p.sum() if num_shared else 1.0
  sizes = {"train": cfg.synthetic_train_size, "dev": cfg.synthetic_eval_size,
           "test": cfg.synthetic_eval_size}
  out = {}
  for stream, (name, size) in enumerate(sizes.items()):
    rng = np.random.default_rng([seed, stream])
    labels = rng.integers(0, topics, size=size).astype(np.int32)
    low = max(1, cfg.synthetic_length // 2)
    lengths = rng.integers(low, max(low, cfg.synthetic_length * 3 // 2) + 1, size=size)
    label_of_token = np.repeat(labels, lengths)
    total = len(label_of_token)
    u = rng.random(total)
    topic = label_of_token
    if topics > 1:
      other = (u >= _OWN_TOPIC_SHARE) & (u < _OWN_TOPIC_SHARE + _OTHER_TOPIC_SHARE)
      shift = rng.integers(1, topics, size=total)
      topic = np.where(other, (label_of_token + shift) % topics, label_of_token)
    idx = topic * per + rng.integers(0, per, size=total)
    if num_shared:  # without shared words the rest comes from the document's own topic
      shared = u >= _OWN_TOPIC_SHARE + _OTHER_TOPIC_SHARE
      idx = np.where(shared, topics * per + rng.choice(num_shared, size=total, p=shared_p), idx)
    tokens = words[idx]
    ends = np.cumsum(lengths)
    texts = tuple(" ".join(tokens[e - n:e]) for e, n in zip(ends, lengths))
    out[name] = rows.Split(texts, labels, f"synthetic[{name}, seed={seed}]")
  return out
