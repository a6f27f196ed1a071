"""The integer and word hashes every hashed id shares: the hashing trick's rows, the pool rows of
hash embeddings, fastText's bucket of a word.

One integer hash (MurmurHash3's 32-bit finalizer applied twice, with the seed in between) runs in
numpy (``hash_ids``, for data pipelines) and under ``jit`` (``hash_ints`` with ``xp=jax.numpy``),
so both pick the same rows.

  >>> import embedlab.core.hashing as eh
  >>> eh.hash_ids([0, 1, 5, 123456789], 10, exact_size=2).tolist()[:2]
  [0, 1]
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

MAX_RAW_ID = 2**31 - 1  # raw ids for the hashing trick: int32, 0..2**31-2

_FNV_BASIS = 2166136261
_FNV_PRIME = 16777619
_GOLDEN = 0x9E3779B9


# ---------------------------------------------------------------- hashing

def _fmix32(x, xp):
  """MurmurHash3's 32-bit finalizer on uint32 arrays (numpy or jax.numpy); wraps mod 2**32."""
  x = x ^ (x >> 16)
  x = x * xp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * xp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _seed_mix(seed: int) -> int:
  with np.errstate(over="ignore"):
    s = np.asarray([(int(seed) * _GOLDEN + 1) & 0xFFFFFFFF], np.uint32)
    return int(_fmix32(s, np)[0])


def hash_int(x_u32: Any, seed: int, xp: Any) -> Any:
  """``fmix32(fmix32(x) ^ mix(seed))`` of ``uint32`` values: the integer hash used in numpy
  (``xp=numpy``) and under jit (``xp=jax.numpy``) alike; wraps mod ``2**32``.

  Example:
    >>> import numpy as np, embedlab.core.hashing as eh
    >>> eh.hash_int(np.array([1, 2], np.uint32), 0, np).tolist()
    [0, 4090287446]
  """
  return _fmix32(_fmix32(x_u32, xp) ^ xp.uint32(_seed_mix(seed)), xp)


def _fnv_fasttext(word: str, seed: int) -> int:
  # fastText's dictionary hash (FNV-1a over utf-8 bytes, each byte sign-extended as int8);
  # seed 0 gives exactly fastText's value.
  h = _FNV_BASIS ^ (_seed_mix(seed) if seed else 0)
  for b in word.encode("utf-8"):
    h ^= (b - 256 if b > 127 else b) & 0xFFFFFFFF
    h = (h * _FNV_PRIME) & 0xFFFFFFFF
  return h


def hash_ids(tokens: Any, num_buckets: int, *, seed: int = 0, exact_size: int = 0,
             vocab: Mapping[str, int] | None = None) -> np.ndarray:
  """Maps words or integer ids to rows of a table of ``exact_size + num_buckets`` rows (numpy).

  The hashing trick: no vocabulary is needed. Integer ids below ``exact_size`` (the most frequent
  words, when ids are assigned by frequency) keep their own row; every other id goes to row
  ``exact_size + hash(id, seed) % num_buckets``. Words (``str``) found in ``vocab`` take their
  vocabulary id (which must be below ``exact_size``, default ``len(vocab)``); others go to
  ``exact_size + fnv(word) % num_buckets``, where ``fnv`` is fastText's hash (for ``seed=0``,
  ``exact_size=nwords`` and ``num_buckets=bucket`` this is fastText's row for the word).

  The integer hash is MurmurHash3's finalizer applied twice with the seed in between; the same
  function runs on the device in ``hashed`` lookups (``hash_ints``), so both agree. Ids above ``2**32`` are folded
  (low 32 bits xor a hash of the high bits).

  Args:
    tokens: a ``str``, a nested sequence / array of ``str``, or integer ids of any shape
      (non-negative).
    num_buckets: hash buckets after the exact rows (positive).
    seed: selects an independent hash function.
    exact_size: ids (or vocabulary ids) below it map to themselves.
    vocab: for words: ``{word: id}`` of the exact vocabulary.

  Returns:
    ``np.ndarray`` of ``int32`` row ids of ``tokens``' shape, in ``0..exact_size+num_buckets-1``.

  Example:
    >>> import embedlab.core.hashing as eh
    >>> eh.hash_ids([0, 1, 5, 123456789], 10, exact_size=2).tolist()[:2]
    [0, 1]
    >>> int(eh.hash_ids("the", 2_000_000))  # fastText's bucket for "the"
    861980
  """
  if isinstance(num_buckets, bool) or not isinstance(num_buckets, (int, np.integer)) \
      or num_buckets <= 0:
    raise ValueError(f"hash_ids: num_buckets must be a positive integer, got {num_buckets!r}.")
  if vocab is not None and exact_size == 0:
    exact_size = len(vocab)
  if exact_size < 0 or exact_size + num_buckets > MAX_RAW_ID:
    raise ValueError(f"hash_ids: exact_size + num_buckets must be in 1..{MAX_RAW_ID}, got "
                     f"{exact_size} + {num_buckets}.")
  arr = np.asarray(tokens)
  if arr.dtype.kind in "USO":
    if not all(isinstance(t, str) for t in arr.flat):
      raise TypeError(f"hash_ids: tokens must be str words or integer ids, got {tokens!r}.")
    return _hash_words(arr, num_buckets, seed, exact_size, vocab)
  if arr.dtype.kind not in "iu":
    raise TypeError(f"hash_ids: tokens must be str words or integer ids, got dtype {arr.dtype}. "
                    "Convert ids with .astype('int64'); floats are never silently truncated.")
  if arr.size and arr.min() < 0:
    position = np.unravel_index(int(np.argmax(arr < 0)), arr.shape)
    raise ValueError(f"hash_ids: id {int(arr[position])} at position {tuple(map(int, position))} "
                     "is negative; raw ids must be >= 0.")
  return hash_ints(arr.astype(np.uint64), num_buckets, seed, exact_size, np)


def hash_ints(ids: Any, num_buckets: int, seed: int, exact_size: int, xp: Any) -> Any:
  """Rows of non-negative integer ids: ``id`` below ``exact_size``, else
  ``exact_size + hash(id, seed) % num_buckets`` (``int32``, ``ids``' shape).

  ``xp`` is ``numpy`` (``uint64`` ids, 64-bit ids folded) or ``jax.numpy`` (checked ``int32``
  ids, works under ``jit``); both give the same rows for the same ids.

  Example:
    >>> import numpy as np, embedlab.core.hashing as eh
    >>> eh.hash_ints(np.array([3, 7], np.uint64), 10, 0, 5, np).tolist()
    [3, 6]
  """
  if xp is np:
    lo = (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (ids >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
      x = lo ^ _fmix32(hi, np)
      h = hash_int(x, seed, np)
    bucket = (h % np.uint32(num_buckets)).astype(np.int64) + exact_size
    return np.where(ids < np.uint64(exact_size), ids.astype(np.int64), bucket).astype(np.int32)
  h = hash_int(ids.astype(jnp.uint32), seed, jnp)
  bucket = (h % jnp.uint32(num_buckets)).astype(jnp.int32) + exact_size
  return jnp.where(ids < exact_size, ids, bucket).astype(jnp.int32)


def _hash_words(arr, num_buckets, seed, exact_size, vocab):
  out = np.empty(arr.shape, np.int32)
  for index, word in np.ndenumerate(arr):
    word = str(word)
    if vocab is not None and word in vocab:
      row = int(vocab[word])
      if not 0 <= row < exact_size:
        raise ValueError(f"hash_ids: vocab id {row} of {word!r} is outside the exact rows "
                         f"0..{exact_size - 1}; pass exact_size >= the vocabulary size.")
      out[index] = row
    else:
      out[index] = exact_size + _fnv_fasttext(word, seed) % num_buckets
  return out
