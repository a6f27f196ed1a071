"""Smaller embedding tables behind the plain table's contract.

Every variant is an ``init_*`` function returning a plain params pytree and a
``lookup_*(params, ids, *, padding_id=None, oob="error")`` returning ``Array[*ids.shape, D]``,
as ``embedlab.core.tables.lookup``: ids of any rank; positions holding ``padding_id`` come out as
zero vectors and send zero gradient to every parameter; ids go through the plain table's id path
(``embedlab.core.ids_lib.normalize_ids``: compared exactly in any integer dtype, then widened), so ids
outside the variant's logical vocabulary raise (``ValueError`` eagerly, ``JaxRuntimeError`` under
``jit``) and non-integer ids raise ``TypeError``; no variant clamps ids by itself. Static facts
(seed, combine mode, vocabulary size) are Python keyword arguments beside the params, never
arrays inside them.

==================  ===========================================  ==============================
variant             params                                       logical vocabulary
==================  ===========================================  ==============================
hashing trick       ``{"table": [exact_size + num_buckets, D]}``  any id ``0..2**31-2``
hash embeddings     ``{"pool": [B, D], "importance": [V, k]}``    ``V`` (rows of importance)
quotient-remainder  ``{"quotient": [ceil(V/m), D1],``             ``num_embeddings`` (default
                    `` "remainder": [m, D2]}``                    ``ceil(V/m) * m``)
factorized          ``{"table": [V, r], "projection": [r, D]}``   ``V``
quantized (8 bit)   ``{"q8": int8[V, D], "scale": f32[V]}``       ``V``
quantized (4 bit)   ``{"q4": uint8[V, D/2], "scale": f32[V]}``    ``V``
quantized (2 bit)   ``{"q2": uint8[V, D/4], "scale": f32[V]}``    ``V``
==================  ===========================================  ==============================

Sizes for a 2,000,000 x 64 float32 table (488.3 MiB; ``table_bytes`` of each, see the tests):
hashing trick with 100k exact + 200k buckets 73.2 MiB; hash embeddings with 250k pool vectors and
k=2, 76.3 MiB; quotient-remainder with m=1414 ("mult") 0.7 MiB; factorized with r=16, 122.1 MiB;
int8 129.7 MiB; 4-bit 68.7 MiB; 2-bit 38.1 MiB.

  >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
  >>> p = ec.init_qr_table(jax.random.key(0), 1000, 16, num_collisions=32)
  >>> ec.lookup_qr(p, jnp.array([[3, 999]]), num_embeddings=1000).shape
  (1, 2, 16)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import ids as ids_lib
from embedlab.core import pooling
from embedlab.core import tables

Array = jax.Array
Params = dict[str, Array]

COMBINE_MODES = ("mult", "add", "concat")
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


def _hash_int(x_u32, seed: int, xp):
  """``fmix32(fmix32(x) ^ mix(seed))``: the integer hash used in numpy and under jit alike."""
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
  function runs on the device in ``lookup_hashed``, so both agree. Ids above ``2**32`` are folded
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
    >>> import embedlab.core.compress as ec
    >>> ec.hash_ids([0, 1, 5, 123456789], 10, exact_size=2).tolist()[:2]
    [0, 1]
    >>> int(ec.hash_ids("the", 2_000_000))  # fastText's bucket for "the"
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
  return _hash_ints(arr.astype(np.uint64), num_buckets, seed, exact_size, np)


def _hash_ints(ids, num_buckets, seed, exact_size, xp):
  if xp is np:
    lo = (ids & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (ids >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
      x = lo ^ _fmix32(hi, np)
      h = _hash_int(x, seed, np)
    bucket = (h % np.uint32(num_buckets)).astype(np.int64) + exact_size
    return np.where(ids < np.uint64(exact_size), ids.astype(np.int64), bucket).astype(np.int32)
  h = _hash_int(ids.astype(jnp.uint32), seed, jnp)
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


def init_hashed_table(key: Array, num_buckets: int, features: int, *, exact_size: int = 0,
                      **kwargs) -> Params:
  """A plain table ``{"table": [exact_size + num_buckets, features]}`` for the hashing trick.

  ``kwargs`` go to ``embedlab.core.tables.init_table`` (``init``, ``padding_id``, ``dtype``, ...).

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> ec.init_hashed_table(jax.random.key(0), 1000, 8, exact_size=100)["table"].shape
    (1100, 8)
  """
  return tables.init_table(key, exact_size + num_buckets, features, **kwargs)


def lookup_hashed(params: Params, ids: Any, *, num_buckets: int, exact_size: int = 0,
                  seed: int = 0, padding_id: int | None = None, oob: str = "error") -> Array:
  """Looks up raw integer ids (any non-negative int32, no vocabulary) through the hashing trick.

  Row of id ``i``: ``i`` if ``i < exact_size``, else ``exact_size + hash(i, seed) % num_buckets``
  (``hash_ids`` computes the same rows in numpy). Many ids share a bucket row.

  Args:
    params: ``{"table": Array[exact_size + num_buckets, D]}``.
    ids: raw integer ids of any shape; negative ids raise (``oob="error"``).
    num_buckets, exact_size, seed: as in ``hash_ids``; the table must have
      ``exact_size + num_buckets`` rows.
    padding_id: a raw id; positions holding it give zero vectors and no gradient (its row is
      the row it maps to, shared with other ids when ``padding_id >= exact_size``).
    oob: ``"error"``, ``"clip"`` (negative ids become 0) or ``"zero"`` (negative ids give zero).

  Returns:
    ``Array[*ids.shape, D]``.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = ec.init_hashed_table(jax.random.key(0), 50, 4, exact_size=10)
    >>> ec.lookup_hashed(p, jnp.array([3, 10**9]), num_buckets=50, exact_size=10).shape
    (2, 4)
  """
  table = tables.table_of(params, "lookup_hashed")
  if table.shape[0] != exact_size + num_buckets:
    raise ValueError(f"lookup_hashed: the table has {table.shape[0]} rows, expected exact_size + "
                     f"num_buckets = {exact_size} + {num_buckets}; pass the sizes it was built "
                     "with.")
  checked = ids_lib.normalize_ids(ids, MAX_RAW_ID, oob=oob, padding_id=padding_id,
                                 where="lookup_hashed")
  rows = _hash_ints(checked.ids, num_buckets, seed, exact_size, jnp)
  vecs = jnp.take(table, rows, axis=0, mode="clip")  # hashed rows are always in range
  return ids_lib.mask_rows(vecs, checked.keep)


# ---------------------------------------------------------------- shared contract helpers

def _checked(ids: Any, rows: int, oob: str, where: str) -> tuple[Array, Array | None]:
  """(ids widened and safe to gather from ``rows`` rows, in-range mask or None): the shared id
  path, ``ids_lib.normalize_ids``."""
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, where=where)
  return checked.ids, checked.keep


# ---------------------------------------------------------------- hash embeddings

def init_hash_embedding(key: Array, num_embeddings: int, features: int, *, pool_size: int,
                        num_hashes: int = 2, padding_id: int | None = None,
                        dtype: Any = jnp.float32, scale: float | None = None) -> Params:
  """Hash embeddings (Svenstrup et al. 2017): ``k`` hashes into a shared pool, learned weights.

  Vector of id ``i``: ``sum_j importance[i, j] * pool[h_j(i)]``, ``h_j(i) = hash(i, seed + j) %
  pool_size``. Weights: ``pool_size * features + num_embeddings * num_hashes``.

  Args:
    key: a ``jax.random`` key.
    num_embeddings: the logical vocabulary ``V`` (rows of ``importance``).
    features: ``D``.
    pool_size: ``B``, shared component vectors.
    num_hashes: ``k``.
    padding_id: its importance row starts at zero (its vector is zero even without masking).
    dtype: the parameters' dtype.
    scale: pool stddev (default ``1/sqrt(k)``, so vectors have about unit variance).

  Returns:
    ``{"pool": Array[B, D], "importance": Array[V, k]}``; importance starts at 1.

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> p = ec.init_hash_embedding(jax.random.key(0), 10_000, 8, pool_size=500)
    >>> p["pool"].shape, p["importance"].shape
    ((500, 8), (10000, 2))
  """
  tables.check_size(num_embeddings, features)
  tables.check_size(pool_size, num_hashes)
  std = 1.0 / math.sqrt(num_hashes) if scale is None else scale
  pool = std * jax.random.normal(key, (pool_size, features), dtype)
  importance = jnp.ones((num_embeddings, num_hashes), dtype)
  if padding_id is not None:
    ids_lib.check_padding_id(padding_id, num_embeddings, "init_hash_embedding")
    importance = importance.at[padding_id].set(0)
  return {"pool": pool, "importance": importance}


def hash_embedding_buckets(ids: Any, num_hashes: int, pool_size: int, *, seed: int = 0) -> Array:
  """The pool rows ``h_j(ids)``: ``int32[*ids.shape, num_hashes]`` (works under ``jit``).

  Example:
    >>> import embedlab.core.compress as ec
    >>> ec.hash_embedding_buckets([1, 2], 2, 100).shape
    (2, 2)
  """
  ids = ids_lib.normalize_ids(ids, MAX_RAW_ID, where="hash_embedding_buckets").ids
  return _buckets(ids, num_hashes, pool_size, seed)


def _buckets(ids, num_hashes, pool_size, seed):
  ids = ids.astype(jnp.uint32)  # ids checked non-negative: no wrap-around
  cols = [_hash_int(ids, seed + j, jnp) % jnp.uint32(pool_size) for j in range(num_hashes)]
  return jnp.stack(cols, axis=-1).astype(jnp.int32)


def lookup_hash_embedding(params: Params, ids: Any, *, seed: int = 0,
                          padding_id: int | None = None, oob: str = "error") -> Array:
  """Looks up hash embeddings: ``sum_j importance[id, j] * pool[h_j(id)]``.

  Args:
    params: ``{"pool": Array[B, D], "importance": Array[V, k]}``.
    ids: integer ids of any shape in ``0..V-1``.
    seed: the hash seed (the same for every call on these params).
    padding_id: positions holding it give zero vectors and zero gradient to ``pool`` and to
      ``importance[padding_id]``.
    oob: as ``embedlab.lookup``.

  Returns:
    ``Array[*ids.shape, D]``.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = ec.init_hash_embedding(jax.random.key(0), 100, 4, pool_size=10, padding_id=0)
    >>> ec.lookup_hash_embedding(p, jnp.array([[0, 5]]), padding_id=0)[0, 0].tolist()
    [0.0, 0.0, 0.0, 0.0]
  """
  pool, importance = _entries(params, ("pool", "importance"), "lookup_hash_embedding")
  rows, k = importance.shape
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id,
                                 where="lookup_hash_embedding")
  buckets = _buckets(checked.ids, k, pool.shape[0], seed)
  w = jnp.take(importance, checked.ids, axis=0, mode="clip")  # [..., k]; ids in range
  vecs = jnp.einsum("...k,...kd->...d", w, jnp.take(pool, buckets, axis=0, mode="clip"))
  return ids_lib.mask_rows(vecs, checked.keep)


def _entries(params, names, where):
  if not isinstance(params, dict) or any(n not in params for n in names):
    got = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise TypeError(f"{where}: params must be a dict with entries {list(names)}, got {got}. "
                    "Build them with the matching init_* function.")
  return tuple(params[n] for n in names)


# ---------------------------------------------------------------- quotient-remainder

def init_qr_table(key: Array, num_embeddings: int, features: int, *, num_collisions: int,
                  combine: str = "mult", remainder_features: int | None = None,
                  dtype: Any = jnp.float32, scale: float | None = None) -> Params:
  """Quotient-remainder compositional embeddings (Shi et al. 2020).

  Id ``i`` combines ``quotient[i // m]`` and ``remainder[i % m]`` (``m = num_collisions``), each
  pair of ids sharing at most one of the two rows: ``"mult"`` (element-wise product),
  ``"add"``, or ``"concat"`` (``D = features + remainder_features``). Weights:
  ``(ceil(V/m) + m) * D`` instead of ``V * D``; ``m ~ sqrt(V)`` is smallest.

  Args:
    key: a ``jax.random`` key.
    num_embeddings: ``V``.
    features: columns of both tables (of the quotient table for ``"concat"``).
    num_collisions: ``m``.
    combine: ``"mult"``, ``"add"`` or ``"concat"``.
    remainder_features: columns of the remainder table for ``"concat"`` (default ``features``).
    dtype: the parameters' dtype.
    scale: stddev (default 1 for ``"add"``/``"concat"``; for ``"mult"`` the remainder table
      starts at ``1 + 0.1 N(0, 1)``, so products start near the quotient rows).

  Returns:
    ``{"quotient": Array[ceil(V/m), D1], "remainder": Array[m, D2]}``.

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> p = ec.init_qr_table(jax.random.key(0), 1_000_000, 64, num_collisions=1000)
    >>> p["quotient"].shape, p["remainder"].shape
    ((1000, 64), (1000, 64))
  """
  tables.check_size(num_embeddings, features)
  tables.check_size(num_collisions, remainder_features or features)
  _check_combine(combine, "init_qr_table")
  if combine != "concat" and remainder_features not in (None, features):
    raise ValueError(f"init_qr_table: remainder_features={remainder_features} needs "
                     f"combine='concat'; '{combine}' needs both tables {features} wide.")
  kq, kr = jax.random.split(key)
  std = 1.0 if scale is None else scale
  q = std * jax.random.normal(kq, (-(-num_embeddings // num_collisions), features), dtype)
  d2 = remainder_features or features
  r = jax.random.normal(kr, (num_collisions, d2), dtype)
  r = 1 + 0.1 * r if combine == "mult" else std * r
  return {"quotient": q, "remainder": r.astype(dtype)}


def _check_combine(combine, where):
  if combine not in COMBINE_MODES:
    raise ValueError(f"{where}: combine={combine!r} is not one of {', '.join(COMBINE_MODES)}.")


def lookup_qr(params: Params, ids: Any, *, combine: str = "mult",
              num_embeddings: int | None = None, padding_id: int | None = None,
              oob: str = "error") -> Array:
  """Looks up quotient-remainder embeddings: ``combine(quotient[i // m], remainder[i % m])``.

  Args:
    params: ``{"quotient": Array[Q, D1], "remainder": Array[m, D2]}``.
    ids: integer ids of any shape in ``0..num_embeddings-1``.
    combine: as at init.
    num_embeddings: the logical ``V`` for the range check (default ``Q * m``, which may accept a
      few ids past the real vocabulary).
    padding_id: positions holding it give zero vectors and send zero gradient to both tables
      (its quotient and remainder rows are shared with other ids, so they are not zeroed at
      init and still learn from those ids).
    oob: as ``embedlab.lookup``.

  Returns:
    ``Array[*ids.shape, D]`` (``D = D1 + D2`` for ``"concat"``).

  Example:
    >>> import jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = {"quotient": jnp.array([[1.0], [2.0]]), "remainder": jnp.array([[10.0], [20.0]])}
    >>> ec.lookup_qr(p, jnp.array([0, 1, 2, 3]), combine="add")[:, 0].tolist()
    [11.0, 21.0, 12.0, 22.0]
  """
  q, r = _entries(params, ("quotient", "remainder"), "lookup_qr")
  _check_combine(combine, "lookup_qr")
  m = r.shape[0]
  rows = q.shape[0] * m if num_embeddings is None else int(num_embeddings)
  if rows > q.shape[0] * m:
    raise ValueError(f"lookup_qr: num_embeddings={rows} needs {-(-rows // m)} quotient rows, "
                     f"the params have {q.shape[0]}.")
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id, where="lookup_qr")
  qv = jnp.take(q, checked.ids // m, axis=0, mode="clip")  # ids in range: checked or clamped
  rv = jnp.take(r, checked.ids % m, axis=0, mode="clip")
  if combine == "mult":
    vecs = qv * rv
  elif combine == "add":
    vecs = qv + rv
  else:
    vecs = jnp.concatenate([qv, rv.astype(qv.dtype)], axis=-1)
  return ids_lib.mask_rows(vecs, checked.keep)


# ---------------------------------------------------------------- factorized

def init_factorized_table(key: Array, num_embeddings: int, features: int, *, rank: int,
                          padding_id: int | None = None, dtype: Any = jnp.float32) -> Params:
  """ALBERT's factorized embedding: ``V x r`` table times an ``r x D`` projection.

  Weights: ``V * r + r * D``. The table starts ``N(0, 1)`` and the projection
  ``N(0, 1/r)``, so vectors start with about unit variance as ``init_table``'s ``normal``.

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> p = ec.init_factorized_table(jax.random.key(0), 30_000, 768, rank=128)
    >>> p["table"].shape, p["projection"].shape
    ((30000, 128), (128, 768))
  """
  tables.check_size(rank, features)
  kt, kp = jax.random.split(key)
  params = tables.init_table(kt, num_embeddings, rank, padding_id=padding_id, dtype=dtype)
  proj = jax.random.normal(kp, (rank, features), dtype) / math.sqrt(rank)
  return {"table": params["table"], "projection": proj.astype(dtype)}


def lookup_factorized(params: Params, ids: Any, *, padding_id: int | None = None,
                      oob: str = "error") -> Array:
  """Looks up ``table[ids] @ projection``: ``Array[*ids.shape, D]``.

  ``padding_id``: positions holding it give zero vectors and zero gradient to
  ``table[padding_id]`` and to ``projection`` (``init_factorized_table`` also zeroes that row).

  Example:
    >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = ec.init_factorized_table(jax.random.key(0), 100, 32, rank=4)
    >>> ec.lookup_factorized(p, jnp.zeros((2, 3), "int32")).shape
    (2, 3, 32)
  """
  table, proj = _entries(params, ("table", "projection"), "lookup_factorized")
  low = tables.lookup({"table": table}, ids, padding_id=padding_id, oob=oob)
  return low @ proj


# ---------------------------------------------------------------- quantized

def quantize(params: Params, bits: int = 8) -> Params:
  """Row-wise quantization of a plain table for inference, with one float32 scale per row.

  - ``bits=8`` and ``bits=4``: symmetric, ``scale = max|row| / qmax`` (``qmax`` 127 or 7) and
    ``q = round(x / scale)``.
  - ``bits=2``: four levels ``(-1.5, -0.5, 0.5, 1.5) * scale`` with ``scale = max|row| / 1.5``
    (a mid-rise quantizer: it has no zero level, so all four codes carry a value).

  Every element is off by at most ``scale / 2``. Sub-byte values are packed into ``uint8``:
  4-bit values two per byte (column ``2c`` in the low nibble, ``2c+1`` in the high one, each as
  ``q + 8`` in 0..15), 2-bit codes four per byte (column ``4c+j`` in bits ``2j, 2j+1``, as 0..3),
  so ``D`` must be a multiple of 2 (4 bits) or 4 (2 bits).

  Args:
    params: ``{"table": Array[V, D]}``.
    bits: 8, 4 or 2.

  Returns:
    ``{"q8": int8[V, D], "scale": float32[V]}``, ``{"q4": uint8[V, D/2], "scale": ...}`` or
    ``{"q2": uint8[V, D/4], "scale": ...}``.

  Example:
    >>> import jax.numpy as jnp, embedlab.core.compress as ec
    >>> q = ec.quantize({"table": jnp.array([[1.0, -0.5], [0.0, 0.0]])})
    >>> q["q8"].tolist(), q["scale"].tolist()[1]
    ([[127, -64], [0, 0]], 0.0)
    >>> q2 = ec.quantize({"table": jnp.array([[1.5, -0.6, 0.2, -1.5]])}, bits=2)
    >>> ec.dequantize(q2)["table"].tolist()
    [[1.5, -0.5, 0.5, -1.5]]
  """
  table = tables.table_of(params, "quantize").astype(jnp.float32)
  if bits not in _PER_BYTE:
    raise ValueError(f"quantize: bits={bits!r} is not supported; use 8, 4 or 2.")
  per_byte = _PER_BYTE[bits]
  if table.shape[1] % per_byte:
    raise ValueError(f"quantize: bits={bits} packs {per_byte} values per byte and needs a "
                     f"number of features divisible by {per_byte}, got {table.shape[1]}; use "
                     f"bits=8 or pad the table.")
  if bits == 8:
    scale = jnp.max(jnp.abs(table), axis=1) / 127
    q = jnp.round(table / jnp.where(scale == 0, 1, scale)[:, None])
    return {"q8": jnp.clip(q, -127, 127).astype(jnp.int8), "scale": scale}
  offset = _OFFSET[bits]  # code = level + offset, in 0 .. 2**bits - 1
  scale = jnp.max(jnp.abs(table), axis=1) / (2 ** bits - 1 - offset)
  unit = table / jnp.where(scale == 0, 1, scale)[:, None]
  level = jnp.round(unit) if bits == 4 else jnp.floor(unit) + 0.5  # 2 bits: mid-rise
  codes = jnp.clip(level + offset, 0, 2 ** bits - 1).astype(jnp.uint8)
  packed = codes[:, 0::per_byte]
  for j in range(1, per_byte):
    packed = packed | (codes[:, j::per_byte] << (bits * j))
  return {f"q{bits}": packed, "scale": scale}


_PER_BYTE = {8: 1, 4: 2, 2: 4}
_OFFSET = {4: 8, 2: 1.5}  # symmetric 4-bit levels -7..7 stored as 1..15; 2-bit -1.5..1.5 as 0..3


def _unpack(stored, bits):
  """The values of ``quantize``'s stored integers, in units of the row's scale (float32)."""
  if bits == 8:
    return stored.astype(jnp.float32)
  per_byte, mask = _PER_BYTE[bits], 2 ** bits - 1
  parts = [((stored >> (bits * j)) & mask).astype(jnp.float32) - _OFFSET[bits]
           for j in range(per_byte)]
  return jnp.stack(parts, axis=-1).reshape(*stored.shape[:-1], per_byte * stored.shape[-1])


def _quantized_parts(params, where):
  if isinstance(params, dict) and "scale" in params:
    for key, bits in (("q8", 8), ("q4", 4), ("q2", 2)):
      if key in params:
        return params[key], bits, params["scale"]
  raise TypeError(f"{where}: params must be quantize()'s output, a dict with 'q8', 'q4' or 'q2' "
                  f"and 'scale', got {sorted(params) if isinstance(params, dict) else params!r}.")


def dequantize(params: Params, dtype: Any = jnp.float32) -> Params:
  """The whole table back as ``{"table": Array[V, D]}`` of ``dtype``.

  Example:
    >>> import jax.numpy as jnp, embedlab.core.compress as ec
    >>> ec.dequantize(ec.quantize({"table": jnp.array([[1.0, -0.5]])}))["table"].tolist()
    [[1.0, -0.5039370059967041]]
  """
  stored, bits, scale = _quantized_parts(params, "dequantize")
  return {"table": (_unpack(stored, bits) * scale[:, None]).astype(dtype)}


def lookup_quantized(params: Params, ids: Any, *, padding_id: int | None = None,
                     oob: str = "error", dtype: Any = jnp.float32) -> Array:
  """Looks up rows of a quantized table and dequantizes only those: ``Array[*ids.shape, D]``.

  Not trainable (the stored values are integers): quantize a trained table for inference.
  ``padding_id`` positions give zero vectors.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el, embedlab.core.compress as ec
    >>> q = ec.quantize(el.init_table(jax.random.key(0), 100, 8), bits=4)
    >>> ec.lookup_quantized(q, jnp.array([[1, 2]])).shape
    (1, 2, 8)
  """
  stored, bits, scale = _quantized_parts(params, "lookup_quantized")
  rows = stored.shape[0]
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id,
                                 where="lookup_quantized")
  values = _unpack(jnp.take(stored, checked.ids, axis=0, mode="clip"), bits)  # ids in range
  vecs = (values * jnp.take(scale, checked.ids, mode="clip")[..., None]).astype(dtype)
  return ids_lib.mask_rows(vecs, checked.keep)


def quantization_error(params: Params, quantized: Params) -> float:
  """Max absolute difference between a float table and its quantized version.

  Example:
    >>> import jax, embedlab as el, embedlab.core.compress as ec
    >>> p = el.init_table(jax.random.key(0), 1000, 16)
    >>> ec.quantization_error(p, ec.quantize(p)) < 0.02
    True
  """
  table = tables.table_of(params, "quantization_error").astype(jnp.float32)
  return float(jnp.max(jnp.abs(dequantize(quantized)["table"] - table)))


QUANTIZE_NAMES = {"int8": 8, "int4": 4, "int2": 2}


def quantize_bits(name: str, where: str) -> int:
  """The bits of a ``--quantize`` name (``int8``, ``int4``, ``int2``); a clear error otherwise.

  Example:
    >>> import embedlab.core.compress as ec
    >>> ec.quantize_bits("int2", "eval")
    2
  """
  if name not in QUANTIZE_NAMES:
    raise ValueError(f"{where}: quantize={name!r} is not one of {', '.join(QUANTIZE_NAMES)}.")
  return QUANTIZE_NAMES[name]


def quantize_entries(params: Params, bits: int = 8) -> dict[str, Any]:
  """``quantize`` applied to every 2-D float entry of any variant's params (the plain table,
  a factorized table and its projection, a pool, ...); other entries are kept as they are.

  Returns ``{name: quantize({"table": entry}, bits) or entry}``; ``dequantize_entries`` inverts
  it. Row-wise scales: the error of each element is at most half its row's step.

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> p = ec.init_factorized_table(jax.random.key(0), 100, 8, rank=2)
    >>> q = ec.quantize_entries(p)
    >>> sorted(q["table"]), ec.dequantize_entries(q)["projection"].shape
    (['q8', 'scale'], (2, 8))
  """
  if not isinstance(params, dict):
    raise TypeError(f"quantize_entries: params must be a dict of arrays, got "
                    f"{type(params).__name__}.")
  out = {}
  for name, value in params.items():
    if jnp.ndim(value) == 2 and jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
      try:
        out[name] = quantize({"table": value}, bits)
      except ValueError as e:
        raise ValueError(f"quantize_entries: entry {name!r}: {e}") from None
    else:
      out[name] = value
  return out


def dequantize_entries(quantized: dict[str, Any], dtype: Any = jnp.float32) -> Params:
  """Inverse of ``quantize_entries``: float entries again (what ``lookup_quantized`` computes
  for the rows it reads), so a model runs unchanged on a quantized table."""
  return {name: dequantize(v, dtype)["table"] if isinstance(v, dict) else v
          for name, v in quantized.items()}


# ---------------------------------------------------------------- pooling

def bag_lookup(lookup_fn: Callable[..., Array], params: Params, ids: Any, *, mode: str = "mean",
               weights: Any = None, padding_id: int | None = None, oob: str = "error",
               **lookup_kwargs) -> Array:
  """Pools padded bags ``[B, L]`` of any variant: ``Array[B, D]``, the modes of ``el.bag``.

  ``lookup_fn`` is one of the ``lookup_*`` functions (``lookup_kwargs`` go to it). Positions
  holding ``padding_id`` are not part of a bag; an empty bag gives a zero vector. For the
  factorized table, ``bag_factorized`` pools the small ``V x r`` rows with ``embedlab.bag``
  first, which is cheaper. ``oob="zero"`` is not offered here (it would count out-of-range
  positions in a mean). Pooling is ``embedlab.core.pooling.pool_vectors``: float32 accumulation,
  and weights at padding positions are ignored even when NaN or inf.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = ec.init_qr_table(jax.random.key(0), 100, 4, num_collisions=10)
    >>> ec.bag_lookup(ec.lookup_qr, p, jnp.array([[1, 2, 0]]), mode="sum", padding_id=0).shape
    (1, 4)
  """
  if mode not in tables.BAG_MODES:
    raise ValueError(f"bag_lookup: mode={mode!r} is not one of {', '.join(tables.BAG_MODES)}.")
  if oob not in ("error", "clip"):
    raise ValueError(f"bag_lookup: oob={oob!r}; use 'error' or 'clip'.")
  if mode == "max" and weights is not None:
    raise ValueError("bag_lookup: mode='max' takes no weights; use 'sum' or 'mean'.")
  if len(np.shape(ids)) != 2:
    raise ValueError(f"bag_lookup: ids must be 2-D [batch, bag_len], got shape {np.shape(ids)}.")
  if weights is not None and np.shape(weights) != np.shape(ids):
    raise ValueError(f"bag_lookup: weights must have the shape of ids {np.shape(ids)}, got "
                     f"{np.shape(weights)}.")
  vecs = lookup_fn(params, ids, padding_id=padding_id, oob=oob, **lookup_kwargs)
  keep = ids_lib.padding_mask(ids, padding_id)  # exact in any id dtype
  return pooling.pool_vectors(vecs, keep, mode, weights=weights, dtype=vecs.dtype)


def bag_factorized(params: Params, ids: Any, *, mode: str = "mean", **bag_kwargs) -> Array:
  """``embedlab.bag`` over the ``V x r`` table, then the projection (exact for the linear modes
  ``sum``/``mean``/``sqrtn``; ``max`` goes through ``bag_lookup``). Takes ``el.bag``'s arguments
  (ragged ``segment_ids`` too).

  Example:
    >>> import jax, jax.numpy as jnp, embedlab.core.compress as ec
    >>> p = ec.init_factorized_table(jax.random.key(0), 100, 32, rank=4)
    >>> ec.bag_factorized(p, jnp.array([[1, 2], [3, 4]])).shape
    (2, 32)
  """
  table, proj = _entries(params, ("table", "projection"), "bag_factorized")
  if mode == "max":
    return bag_lookup(lookup_factorized, params, ids, mode="max", **bag_kwargs)
  return tables.bag({"table": table}, ids, mode=mode, **bag_kwargs) @ proj


# ---------------------------------------------------------------- sizes

def table_bytes(params: Any) -> int:
  """Bytes held by a params pytree (every variant, the plain table too).

  Example:
    >>> import jax, embedlab as el, embedlab.core.compress as ec
    >>> ec.table_bytes(el.init_table(jax.random.key(0), 1000, 16))
    64000
  """
  leaves = jax.tree_util.tree_leaves(params)  # arrays or jax.eval_shape's ShapeDtypeStructs
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))


@dataclasses.dataclass(frozen=True)
class CompressedSummary:
  """A compressed table against the plain float32 table of the same logical shape."""

  kind: str
  num_embeddings: int
  features: int
  weights: int
  bytes: int
  plain_bytes: int

  @property
  def ratio(self) -> float:
    return self.plain_bytes / self.bytes

  def __str__(self) -> str:
    return (f"{self.kind} embedding: {self.num_embeddings:,} ids x {self.features:,} features in "
            f"{self.weights:,} weights ({tables.human_bytes(self.bytes)}; a plain float32 table: "
            f"{tables.human_bytes(self.plain_bytes)}, {self.ratio:.1f}x larger)")


def describe_compressed(params: Params, *, num_embeddings: int | None = None,
                        combine: str = "mult") -> CompressedSummary:
  """Which variant ``params`` is, its logical size, weights and bytes.

  Args:
    params: any variant's params.
    num_embeddings: the logical vocabulary where the params do not fix it (the hashing trick:
      default its rows; quotient-remainder: default ``Q * m``).
    combine: for quotient-remainder params.

  Example:
    >>> import jax, embedlab.core.compress as ec
    >>> p = ec.init_factorized_table(jax.random.key(0), 2_000_000, 64, rank=16)
    >>> print(ec.describe_compressed(p))  # doctest: +NORMALIZE_WHITESPACE
    factorized embedding: 2,000,000 ids x 64 features in 32,001,024 weights (122.1 MiB;
    a plain float32 table: 488.3 MiB, 4.0x larger)
  """
  keys = set(params) if isinstance(params, dict) else set()
  if keys == {"pool", "importance"}:
    kind, v, d = "hash", params["importance"].shape[0], params["pool"].shape[1]
  elif keys == {"quotient", "remainder"}:
    q, r = params["quotient"], params["remainder"]
    kind, v = "quotient-remainder", q.shape[0] * r.shape[0]
    d = q.shape[1] + r.shape[1] if combine == "concat" else q.shape[1]
  elif keys == {"table", "projection"}:
    kind, v, d = "factorized", params["table"].shape[0], params["projection"].shape[1]
  elif keys in ({"q8", "scale"}, {"q4", "scale"}, {"q2", "scale"}):
    stored, bits, _ = _quantized_parts(params, "describe_compressed")
    kind, v = ("int8" if bits == 8 else f"{bits}-bit"), stored.shape[0]
    d = stored.shape[1] * _PER_BYTE[bits]
  elif keys == {"table"}:
    kind, (v, d) = "plain", params["table"].shape
  else:
    raise TypeError(f"describe_compressed: unknown params with entries {sorted(keys)}; expected "
                    "one of the init_* outputs of embedlab.core.compress or quantize().")
  v = int(num_embeddings or v)
  return CompressedSummary(kind, v, int(d), tables.num_params(params), table_bytes(params),
                           v * int(d) * 4)
