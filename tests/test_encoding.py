"""Tests for embedlab.data.encoding: padded id matrices, kept buckets, whole corpora on processes
(vs. tokenize + build_vocab + a reference encoding)."""

import sys

import numpy as np
import pytest

from embedlab.data import encoding, text
from test_ngrams import reference_ngrams

# ----------------------------------------------------------------------------- encode


def test_encode_values_truncation_and_padding():
  v = text.Vocab.from_words(["a", "b", "c"])
  got = encoding.encode([["a", "b", "zz", "c", "a"], [], ["c"]], v, max_len=4)
  np.testing.assert_array_equal(got, [[2, 3, 1, 4], [0, 0, 0, 0], [4, 0, 0, 0]])
  assert got.dtype == np.int32


def test_encode_matches_reference_with_ngrams():
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(30)]
  v = text.build_vocab([words[:20]])
  docs = [[words[j] for j in rng.integers(0, 30, size=rng.integers(0, 12))] for _ in range(50)]
  max_len, n, buckets = 8, 3, 101
  got = encoding.encode(docs, v, max_len=max_len, ngrams=n, num_buckets=buckets)
  assert got.shape == (50, max_len * n)
  for doc, row in zip(docs, got):
    word_ids = [v.id_of(t) for t in doc[:max_len]]
    word_ids += [0] * (max_len - len(word_ids))
    assert row[:max_len].tolist() == word_ids
    assert row[max_len:].tolist() == reference_ngrams(word_ids, n, buckets, len(v))


def test_seen_and_remap_buckets_match_a_reference():
  rng = np.random.default_rng(0)
  vocab, buckets, max_len = 30, 500, 5
  def rows(n):
    words = np.where(rng.random((n, max_len)) < 0.8, rng.integers(2, vocab, (n, max_len)), 0)
    grams = np.where(words > 0, vocab + rng.integers(0, buckets, (n, max_len)), 0)
    return np.concatenate([words, grams], 1).astype(np.int32)
  train, dev = rows(40), rows(20)
  kept = encoding.seen_buckets(train, max_len=max_len, vocab_size=vocab, num_buckets=buckets)
  assert kept.tolist() == sorted({int(x) for x in train[:, max_len:].ravel() if x >= vocab})
  for ids in (train, dev):
    got = encoding.remap_buckets(ids, kept, max_len=max_len, vocab_size=vocab, num_buckets=buckets)
    want = [[x if j < max_len or x < vocab else
             (vocab + kept.tolist().index(x) if x in kept else vocab + len(kept))
             for j, x in enumerate(row)] for row in ids.tolist()]
    assert got.tolist() == want and got.dtype == np.int32
  with pytest.raises(ValueError, match="beyond"):
    encoding.seen_buckets(train, max_len=max_len, vocab_size=vocab, num_buckets=10)
  with pytest.raises(ValueError, match="increasing n-gram ids"):
    encoding.remap_buckets(train, kept[::-1], max_len=max_len, vocab_size=vocab,
                           num_buckets=buckets)


def test_encode_needs_buckets_for_ngrams():
  v = text.Vocab.from_words(["a"])
  with pytest.raises(ValueError, match="num_buckets > 0"):
    encoding.encode([["a"]], v, max_len=3, ngrams=2)
  with pytest.raises(ValueError, match="max_len = 0"):
    encoding.encode([["a"]], v, max_len=0)


# ----------------------------------------------------------------------------- encode_corpus


def _random_corpus(seed: int, docs: int = 300) -> dict[str, list[str]]:
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(60)] + ["Caps", "it's", "x_y", "naïve"]
  def doc():
    picked = rng.choice(words, size=rng.integers(0, 20), p=None)
    return " ".join(f"{w}," if rng.random() < 0.1 else str(w) for w in picked)
  # dev holds words train never has (w60+ are rare), test is empty
  return {"train": [doc() for _ in range(docs)], "dev": [doc() + " zzz unseen" for _ in range(40)],
          "test": []}


def _reference_corpus(splits, **kw):
  tokens = {k: text.tokenize_many(v, lowercase=kw["lowercase"]) for k, v in splits.items()}
  if kw.get("eos"):
    tokens = {k: [t + [text.EOS_TOKEN] for t in v] for k, v in tokens.items()}
  vocab = text.build_vocab(tokens["train"], min_freq=kw["min_freq"], max_size=kw["max_size"])
  return vocab, {k: encoding.encode(t, vocab, max_len=kw["max_len"], ngrams=kw["ngrams"],
                                num_buckets=kw["num_buckets"]) for k, t in tokens.items()}


@pytest.mark.parametrize("kw", [
    dict(lowercase=True, min_freq=1, max_size=0, max_len=8, ngrams=1, num_buckets=0),
    dict(lowercase=False, min_freq=3, max_size=30, max_len=25, ngrams=3, num_buckets=64),
    dict(lowercase=True, min_freq=2, max_size=0, max_len=5, ngrams=2, num_buckets=1000),
    dict(lowercase=True, min_freq=1, max_size=0, max_len=21, ngrams=2, num_buckets=50, eos=True),
])
def test_encode_corpus_is_tokenize_vocab_encode(kw):
  splits = _random_corpus(0)
  vocab, ids = _reference_corpus(splits, **kw)
  for workers in (1, 3):  # under 1 MB of text: workers > 1 stays in this process, same result
    got_vocab, got = encoding.encode_corpus(splits, workers=workers, **kw)
    assert got_vocab.tokens == vocab.tokens
    assert sorted(got) == sorted(ids)
    for name in ids:
      np.testing.assert_array_equal(got[name], ids[name])
      assert got[name].dtype == np.int32


def test_encode_corpus_does_not_fork_once_jax_runs(monkeypatch):
  import jax  # noqa: PLC0415
  from jax._src import distributed, xla_bridge  # noqa: PLC0415
  from embedlab.data import workers as _fork  # noqa: PLC0415
  jax.devices()
  assert not _fork.can_fork()
  # nor with a distributed client's threads (before the backends start, in a multi-host run)
  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  assert _fork.can_fork() == sys.platform.startswith("linux")
  monkeypatch.setattr(distributed.global_state, "client", object())
  assert not _fork.can_fork()
  # and then the work runs in this process, with the same result
  calls = []
  assert _fork.fork_map(lambda x: calls.append(x) or x * 2, [1, 2, 3], 3) == [2, 4, 6]
  assert calls == [1, 2, 3]


def test_encode_corpus_forked_workers_give_the_same_ids(tmp_path):
  # a fresh interpreter, where JAX's backends have not started: the workers really fork
  script = tmp_path / "forked.py"
  script.write_text("""
import numpy as np
from embedlab.data import encoding
import test_encoding as t
encoding._MIN_FORK_CHARS = 0
import multiprocessing.pool
calls = []
Pool = multiprocessing.pool.Pool
class Spy(Pool):  # counts the process pools encode_corpus starts
  def __init__(self, processes, *a, **k):
    calls.append(processes)
    super().__init__(processes, *a, **k)
multiprocessing.pool.Pool = Spy
kw = dict(lowercase=True, min_freq=2, max_size=40, max_len=6, ngrams=2, num_buckets=97, eos=True)
splits = t._random_corpus(1, docs=5000)
vocab, ids = t._reference_corpus(splits, **kw)
for workers in (2, 3):
  got_vocab, got = encoding.encode_corpus(splits, workers=workers, **kw)
  assert got_vocab.tokens == vocab.tokens
  for name in ids:
    np.testing.assert_array_equal(got[name], ids[name])
assert calls == [2, 3], calls
print("forked ok")
""")
  import os, pathlib, subprocess, sys  # noqa: E401, PLC0415
  here = pathlib.Path(__file__).resolve().parent
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]))
  done = subprocess.run([sys.executable, str(script)], cwd=here.parent, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "forked ok" in done.stdout


def test_encode_corpus_errors():
  with pytest.raises(ValueError, match="no split 'train'"):
    encoding.encode_corpus({"test": ["a"]}, max_len=3)
  with pytest.raises(ValueError, match="workers = 0"):
    encoding.encode_corpus({"train": ["a"]}, max_len=3, workers=0)
  with pytest.raises(ValueError, match="num_buckets > 0"):
    encoding.encode_corpus({"train": ["a"]}, max_len=3, ngrams=2)
