"""Tests for embedlab.data.ngrams' word n-grams: fastText's hashing vs. a pure-python reference.

The character n-grams (subwords) are checked against fastText itself in test_subwords.py.
"""

import numpy as np
import pytest

from embedlab.data import ngrams

# ----------------------------------------------------------------------------- word n-grams


def reference_ngrams(row, n, num_buckets, offset):
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
  got = ngrams.ngram_ids_batch(ids, n, num_buckets, offset)
  assert got.dtype == np.int32 and got.shape == (40, (n - 1) * 9)
  expected = np.array([reference_ngrams(r, n, num_buckets, offset) for r in ids])
  np.testing.assert_array_equal(got, expected)
  nonpad = got[got != 0]
  assert nonpad.min() >= offset and nonpad.max() < offset + num_buckets


def test_ngram_ids_single_row_and_padding():
  row = [5, 7, 9, 0, 0]
  got = ngrams.ngram_ids(row, 3, num_buckets=1000, offset=50)
  ref = [x for x in reference_ngrams(row, 3, 1000, 50) if x]
  assert got.tolist() == ref and len(ref) == 3  # two bigrams, one trigram; pads form none
  assert ngrams.ngram_ids([4, 0, 0], 2, 10, 50).tolist() == []
  # The same bigram hashes to the same id wherever it occurs.
  same = ngrams.ngram_ids([3, 4, 3, 4], 2, 97, 10)
  assert same[0] == same[2]


def test_ngram_ids_batch_rejects_bad_arguments():
  ids = np.ones((2, 3), np.int32)
  with pytest.raises(ValueError, match="word ids must be >= 0"):
    ngrams.ngram_ids_batch(-ids, 2, 10, 5)
  with pytest.raises(ValueError, match="offset = 0"):
    ngrams.ngram_ids_batch(ids, 2, 10, 0)
  with pytest.raises(ValueError, match="n >= 2"):
    ngrams.ngram_ids_batch(ids, 1, 10, 5)
  with pytest.raises(ValueError, match="int32"):
    ngrams.ngram_ids_batch(ids, 2, 2**31, 5)


def test_ngram_ids_batch_threads_and_out_give_the_same_ids():
  rng = np.random.default_rng(3)
  words = rng.integers(0, 50, size=(5000, 7)).astype(np.int32)
  words[rng.random(words.shape) < 0.2] = 0
  ref = ngrams.ngram_ids_batch(words, 3, 64, 50)
  np.testing.assert_array_equal(ngrams.ngram_ids_batch(words, 3, 64, 50, threads=3), ref)
  out = np.full((5000, 3 * 7), -5, np.int32)
  got = ngrams.ngram_ids_batch(words, 3, 64, 50, threads=2, out=out[:, 7:])
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(out[:, 7:], ref)  # written in place, stale values cleared
  assert (out[:, :7] == -5).all()
  with pytest.raises(ValueError, match="out must be int32"):
    ngrams.ngram_ids_batch(words, 3, 64, 50, out=np.zeros((5000, 14), np.int64))
