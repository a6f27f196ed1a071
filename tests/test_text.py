"""Tests for embedlab.data.text: tokenizer, vocabulary, hashed n-grams, encoding (vs. references)."""

import sys

import numpy as np
import pytest

from embedlab.data import text

# ----------------------------------------------------------------------------- tokenize


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", ["hello", ",", "world", "!"]),
    ("It's NOT bad... isn't it?", ["it's", "not", "bad", ".", ".", ".", "isn't", "it", "?"]),
    ("it 's a does n't ( director )", ["it", "'s", "a", "does", "n't", "(", "director", ")"]),
    ("'Star Wars' rocks", ["'", "star", "wars", "'", "rocks"]),
    ("line<br />break<br/>x<BR>y", ["line", "break", "x", "y"]),
    ("café naïve 10,000 $5", ["café", "naïve", "10", ",", "000", "$", "5"]),
    ("snake_case t2_w17", ["snake_case", "t2_w17"]),
    ("  \t\n ", []),
    ("", []),
])
def test_tokenize_cases(raw, expected):
  assert text.tokenize(raw) == expected


def test_tokenize_keeps_case_when_asked():
  assert text.tokenize("The CAT's <br />Hat", lowercase=False) == ["The", "CAT's", "Hat"]


def test_tokenize_many_matches_tokenize():
  texts = ["A b, c.", "", "<br />X y'z 'S", "Ünïcode — dash", "x" * 50]
  for lowercase in (True, False):
    assert text.tokenize_many(texts, lowercase) == [text.tokenize(t, lowercase) for t in texts]



def test_tokenize_many_matches_the_regex_on_random_unicode():
  # tokenize_many splits on whitespace first and skips the regex for word-only pieces; that
  # must give the regex's tokens exactly, whatever the characters (digits of other scripts,
  # combining marks, "_", odd spaces, apostrophes, punctuation).
  rng = np.random.default_rng(0)
  alphabet = list("aZ9_'’-.,!? \t\n\u00a0\u2003\u3000éß²½٣ǅ\u0301中文<br/>")
  alphabet += ["<br />", "'s", "n't"]
  texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(2000)]
  for lowercase in (True, False):
    assert text.tokenize_many(texts, lowercase) == [text.tokenize(t, lowercase) for t in texts]
    # and tokenize is the plain regex on the cleaned text
    for t in texts[:200]:
      cleaned = text._BR_RE.sub(" ", t)
      assert text.tokenize(t, lowercase) == text._TOKEN_RE.findall(
          cleaned.lower() if lowercase else cleaned)


# ----------------------------------------------------------------------------- vocab


def test_build_vocab_orders_by_frequency_then_token():
  docs = [["b", "a", "c", "b"], ["c", "d", "b", "a"]]  # b:3, a:2, c:2, d:1
  v = text.build_vocab(docs)
  assert v.tokens == ("<pad>", "<unk>", "b", "a", "c", "d")
  assert text.build_vocab(list(reversed(docs))).tokens == v.tokens  # order-independent
  assert text.PAD_ID == 0 and text.UNK_ID == 1


def test_build_vocab_min_freq_and_max_size():
  docs = [["b", "a", "c", "b"], ["c", "d", "b", "a"]]
  assert text.build_vocab(docs, min_freq=2).tokens == ("<pad>", "<unk>", "b", "a", "c")
  assert text.build_vocab(docs, max_size=4).tokens == ("<pad>", "<unk>", "b", "a")
  assert len(text.build_vocab(docs, max_size=2)) == 2
  with pytest.raises(ValueError, match="max_size = 1"):
    text.build_vocab(docs, max_size=1)


def test_build_vocab_ignores_special_tokens_in_input():
  v = text.build_vocab([["<pad>", "<unk>", "x", "<unk>"]])
  assert v.tokens == ("<pad>", "<unk>", "x")


def test_vocab_lookup_and_encode():
  v = text.Vocab(("<pad>", "<unk>", "the", "film"))
  assert len(v) == 4
  assert v.id_of("film") == 3 and v.id_of("zebra") == text.UNK_ID
  ids = v.encode(["the", "zebra", "film"])
  assert ids.dtype == np.int32 and ids.tolist() == [2, 1, 3]
  assert v.encode([]).shape == (0,)


def test_vocab_rejects_bad_tokens():
  with pytest.raises(ValueError, match="first two tokens"):
    text.Vocab(("a", "<unk>"))
  with pytest.raises(ValueError, match="duplicate tokens \\['x'\\]"):
    text.Vocab(("<pad>", "<unk>", "x", "x"))


def test_vocab_save_load_round_trip(tmp_path):
  # \x85 and \u2028 would be line breaks for str.splitlines(); the file format must not care.
  v = text.Vocab.from_words(["the", "café", "'s", "a\x85b", "c\u2028d", "", "."])
  path = tmp_path / "vocab.txt"
  v.save(path)
  assert text.Vocab.load(path) == v
  assert path.read_bytes().decode("utf-8").split("\n")[:3] == ["<pad>", "<unk>", "the"]
  with pytest.raises(ValueError, match="line break"):
    text.Vocab.from_words(["a\nb"]).save(tmp_path / "bad.txt")
  (tmp_path / "cut.txt").write_text("<pad>\n<unk>\nx", encoding="utf-8")
  with pytest.raises(ValueError, match="does not end with a newline"):
    text.Vocab.load(tmp_path / "cut.txt")


# ----------------------------------------------------------------------------- n-grams


def _reference_ngrams(row, n, num_buckets, offset):
  """Pure-python fastText hashing, block layout as documented in ngram_ids_batch."""
  length = len(row)
  words = []
  for w in row:
    if w == 0:
      break
    words.append(int(w))
  out = []
  for k in range(2, n + 1):
    block = [0] * length
    for i in range(len(words) - k + 1):
      h = words[i]
      for j in range(1, k):
        h = (h * 116049371 + words[i + j]) % 2**64
      block[i] = offset + h % num_buckets
    out += block
  return out


def _random_padded(rng, num_docs, length, vocab_size):
  ids = rng.integers(1, vocab_size, size=(num_docs, length))
  lengths = rng.integers(0, length + 1, size=num_docs)
  ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return ids.astype(np.int32)


# power-of-two bucket counts take the uint32 path (only the hash's low bits matter)
@pytest.mark.parametrize("n, num_buckets, dtype", [
    (2, 7, np.int32), (3, 1000, np.int32), (4, 2_000_003, np.int32), (2, 262144, np.int32),
    (3, 1 << 20, np.int64), (2, 1 << 30, np.int32), (2, 1, np.int32)])
def test_ngram_ids_batch_matches_reference(n, num_buckets, dtype):
  rng = np.random.default_rng(n)
  # Large ids make the uint64 products wrap around: the reference must agree on that too.
  ids = _random_padded(rng, 40, 9, 2**31 - 1).astype(dtype)
  offset = 12345
  got = text.ngram_ids_batch(ids, n, num_buckets, offset)
  assert got.dtype == np.int32 and got.shape == (40, (n - 1) * 9)
  expected = np.array([_reference_ngrams(r, n, num_buckets, offset) for r in ids])
  np.testing.assert_array_equal(got, expected)
  nonpad = got[got != 0]
  assert nonpad.min() >= offset and nonpad.max() < offset + num_buckets


def test_ngram_ids_single_row_and_padding():
  row = [5, 7, 9, 0, 0]
  got = text.ngram_ids(row, 3, num_buckets=1000, offset=50)
  ref = [x for x in _reference_ngrams(row, 3, 1000, 50) if x]
  assert got.tolist() == ref and len(ref) == 3  # two bigrams, one trigram; pads form none
  assert text.ngram_ids([4, 0, 0], 2, 10, 50).tolist() == []
  # The same bigram hashes to the same id wherever it occurs.
  same = text.ngram_ids([3, 4, 3, 4], 2, 97, 10)
  assert same[0] == same[2]


def test_ngram_ids_batch_rejects_bad_arguments():
  ids = np.ones((2, 3), np.int32)
  with pytest.raises(ValueError, match="word ids must be >= 0"):
    text.ngram_ids_batch(-ids, 2, 10, 5)
  with pytest.raises(ValueError, match="offset = 0"):
    text.ngram_ids_batch(ids, 2, 10, 0)
  with pytest.raises(ValueError, match="n >= 2"):
    text.ngram_ids_batch(ids, 1, 10, 5)
  with pytest.raises(ValueError, match="int32"):
    text.ngram_ids_batch(ids, 2, 2**31, 5)


# ----------------------------------------------------------------------------- encode


def test_encode_values_truncation_and_padding():
  v = text.Vocab.from_words(["a", "b", "c"])
  got = text.encode([["a", "b", "zz", "c", "a"], [], ["c"]], v, max_len=4)
  np.testing.assert_array_equal(got, [[2, 3, 1, 4], [0, 0, 0, 0], [4, 0, 0, 0]])
  assert got.dtype == np.int32


def test_encode_matches_reference_with_ngrams():
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(30)]
  v = text.build_vocab([words[:20]])
  docs = [[words[j] for j in rng.integers(0, 30, size=rng.integers(0, 12))] for _ in range(50)]
  max_len, n, buckets = 8, 3, 101
  got = text.encode(docs, v, max_len=max_len, ngrams=n, num_buckets=buckets)
  assert got.shape == (50, max_len * n)
  for doc, row in zip(docs, got):
    word_ids = [v.id_of(t) for t in doc[:max_len]]
    word_ids += [0] * (max_len - len(word_ids))
    assert row[:max_len].tolist() == word_ids
    assert row[max_len:].tolist() == _reference_ngrams(word_ids, n, buckets, len(v))



def test_seen_and_remap_buckets_match_a_reference():
  rng = np.random.default_rng(0)
  vocab, buckets, max_len = 30, 500, 5
  def rows(n):
    words = np.where(rng.random((n, max_len)) < 0.8, rng.integers(2, vocab, (n, max_len)), 0)
    grams = np.where(words > 0, vocab + rng.integers(0, buckets, (n, max_len)), 0)
    return np.concatenate([words, grams], 1).astype(np.int32)
  train, dev = rows(40), rows(20)
  kept = text.seen_buckets(train, max_len=max_len, vocab_size=vocab, num_buckets=buckets)
  assert kept.tolist() == sorted({int(x) for x in train[:, max_len:].ravel() if x >= vocab})
  for ids in (train, dev):
    got = text.remap_buckets(ids, kept, max_len=max_len, vocab_size=vocab, num_buckets=buckets)
    want = [[x if j < max_len or x < vocab else
             (vocab + kept.tolist().index(x) if x in kept else vocab + len(kept))
             for j, x in enumerate(row)] for row in ids.tolist()]
    assert got.tolist() == want and got.dtype == np.int32
  with pytest.raises(ValueError, match="beyond"):
    text.seen_buckets(train, max_len=max_len, vocab_size=vocab, num_buckets=10)
  with pytest.raises(ValueError, match="increasing n-gram ids"):
    text.remap_buckets(train, kept[::-1], max_len=max_len, vocab_size=vocab, num_buckets=buckets)


def test_encode_needs_buckets_for_ngrams():
  v = text.Vocab.from_words(["a"])
  with pytest.raises(ValueError, match="num_buckets > 0"):
    text.encode([["a"]], v, max_len=3, ngrams=2)
  with pytest.raises(ValueError, match="max_len = 0"):
    text.encode([["a"]], v, max_len=0)


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
  return vocab, {k: text.encode(t, vocab, max_len=kw["max_len"], ngrams=kw["ngrams"],
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
    got_vocab, got = text.encode_corpus(splits, workers=workers, **kw)
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
from embedlab.data import text
import test_text as t
text._MIN_FORK_CHARS = 0
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
  got_vocab, got = text.encode_corpus(splits, workers=workers, **kw)
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
    text.encode_corpus({"test": ["a"]}, max_len=3)
  with pytest.raises(ValueError, match="workers = 0"):
    text.encode_corpus({"train": ["a"]}, max_len=3, workers=0)
  with pytest.raises(ValueError, match="num_buckets > 0"):
    text.encode_corpus({"train": ["a"]}, max_len=3, ngrams=2)


def test_ngram_ids_batch_threads_and_out_give_the_same_ids():
  rng = np.random.default_rng(3)
  words = rng.integers(0, 50, size=(5000, 7)).astype(np.int32)
  words[rng.random(words.shape) < 0.2] = 0
  ref = text.ngram_ids_batch(words, 3, 64, 50)
  np.testing.assert_array_equal(text.ngram_ids_batch(words, 3, 64, 50, threads=3), ref)
  out = np.full((5000, 3 * 7), -5, np.int32)
  got = text.ngram_ids_batch(words, 3, 64, 50, threads=2, out=out[:, 7:])
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(out[:, 7:], ref)  # written in place, stale values cleared
  assert (out[:, :7] == -5).all()
  with pytest.raises(ValueError, match="out must be int32"):
    text.ngram_ids_batch(words, 3, 64, 50, out=np.zeros((5000, 14), np.int64))
