"""Hash embeddings (Svenstrup et al. 2017): ``k`` hashes of each id into a shared pool, mixed by
learned per-id weights: ``{"pool": [B, D], "importance": [V, k]}``.

Vector of id ``i``: ``sum_j importance[i, j] * pool[h_j(i)]``, ``h_j(i) = hash(i, seed + j) %
pool_size`` (``embedlab.core.hashing``). The pool is shared by every id, so there are no rows to
update sparsely or to shard; bags pool the looked-up vectors. A 2,000,000 x 64 table with 250k
pool vectors and k=2 takes 76.3 MiB instead of 488.3 MiB.

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.core.variants import hash_embedding
  >>> v = hash_embedding.make(10_000, 8, padding_id=0, pool_size=500)
  >>> v.bag(v.init(jax.random.key(0)), jnp.array([[1, 2, 0]]), "mean").shape, v.rows
  ((1, 8), None)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from embedlab.core import hashing
from embedlab.core import ids as ids_lib
from embedlab.core import tables
from embedlab.core.variants import TABLES
from embedlab.core.variants import contract

Array = jax.Array
Params = dict[str, Array]


def make(num_embeddings: int, features: int, *, padding_id: int | None = None, pool_size: int,
         num_hashes: int = 2, seed: int = 0) -> contract.TableVariant:
  """Hash embeddings of ``num_embeddings`` ids: ``pool_size`` shared vectors, ``num_hashes``
  per id. ``init``'s ``scale`` is the vectors' stddev at init (the pool's is
  ``scale / sqrt(num_hashes)``); its ``init`` name is not used (the pool starts normal)."""
  tables.check_size(num_embeddings, features)

  def init(key, *, init: Any = "normal", scale: float | None = None, dtype: Any = jnp.float32):
    del init  # the pool starts normal, the importance weights at 1
    contract.check_count(pool_size, "pool_size", "hash_embedding.init")
    contract.check_count(num_hashes, "num_hashes", "hash_embedding.init")
    pool_scale = None if scale is None else scale / math.sqrt(num_hashes)
    return init_hash_embedding(key, num_embeddings, features, pool_size=pool_size,
                               num_hashes=num_hashes, padding_id=padding_id, dtype=dtype,
                               scale=pool_scale)

  return contract.shared_table("hash_embedding", padding_id=padding_id, init=init,
                               read=functools.partial(lookup_hash_embedding, seed=seed),
                               describe=functools.partial(describe,
                                                          num_embeddings=num_embeddings))


def describe(params: Any, *, num_embeddings: int | None = None,
             **options: Any) -> contract.CompressedSummary:
  """``CompressedSummary`` of hash-embedding params."""
  del options
  pool, importance = contract.entries_of(params, ("pool", "importance"), "describe")
  return contract.summarize(TABLES["hash_embedding"].title, num_embeddings or importance.shape[0],
                            pool.shape[1], params)


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
    >>> import jax
    >>> from embedlab.core.variants import hash_embedding as he
    >>> p = he.init_hash_embedding(jax.random.key(0), 10_000, 8, pool_size=500)
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
    >>> from embedlab.core.variants import hash_embedding as he
    >>> he.hash_embedding_buckets([1, 2], 2, 100).shape
    (2, 2)
  """
  ids = ids_lib.normalize_ids(ids, hashing.MAX_RAW_ID, where="hash_embedding_buckets").ids
  return _buckets(ids, num_hashes, pool_size, seed)


def _buckets(ids, num_hashes, pool_size, seed):
  ids = ids.astype(jnp.uint32)  # ids checked non-negative: no wrap-around
  cols = [hashing.hash_int(ids, seed + j, jnp) % jnp.uint32(pool_size) for j in range(num_hashes)]
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
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.core.variants import hash_embedding as he
    >>> p = he.init_hash_embedding(jax.random.key(0), 100, 4, pool_size=10, padding_id=0)
    >>> he.lookup_hash_embedding(p, jnp.array([[0, 5]]), padding_id=0)[0, 0].tolist()
    [0.0, 0.0, 0.0, 0.0]
  """
  pool, importance = contract.entries_of(params, ("pool", "importance"),
                                        "lookup_hash_embedding")
  rows, k = importance.shape
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id,
                                 where="lookup_hash_embedding")
  buckets = _buckets(checked.ids, k, pool.shape[0], seed)
  w = jnp.take(importance, checked.ids, axis=0, mode="clip")  # [..., k]; ids in range
  vecs = jnp.einsum("...k,...kd->...d", w, jnp.take(pool, buckets, axis=0, mode="clip"))
  return ids_lib.mask_rows(vecs, checked.keep)
