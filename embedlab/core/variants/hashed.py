"""The hashing trick: ``{"table": [exact_size + num_buckets, D]}``, no vocabulary needed.

Ids below ``exact_size`` (the most frequent, when ids are assigned by frequency) keep their own
row; every other id shares row ``exact_size + hash(id, seed) % num_buckets``
(``embedlab.core.hashing``). The rows are a plain table's, so row-sparse updates, ragged bags and
sharding by rows apply. A 2,000,000 x 64 table with 100k exact rows and 200k buckets takes 73.2
MiB instead of 488.3 MiB.

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.core.variants import hashed
  >>> v = hashed.make(1_000_000, 8, padding_id=0, num_buckets=50, exact_size=10)
  >>> p = v.init(jax.random.key(0))
  >>> p["table"].shape, v.lookup(p, jnp.array([3, 999_999])).shape
  ((60, 8), (2, 8))
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from embedlab.core import hashing
from embedlab.core import ids as ids_lib
from embedlab.core import tables
from embedlab.core.variants import contract

Array = jax.Array
Params = dict[str, Array]


def make(num_embeddings: int, features: int, *, padding_id: int | None = None,
         num_buckets: int, exact_size: int = 0, seed: int = 0) -> contract.TableVariant:
  """The hashing trick for ids ``0..num_embeddings-1`` (``hashing.MAX_RAW_ID`` for any raw id).

  ``padding_id`` keeps a row of its own (``exact_size`` grows to ``padding_id + 1`` if needed),
  so its row is padding only and the row-sparse step never updates it. ``rows(ids)`` are the
  hashed rows.
  """
  tables.check_size(num_embeddings, features)
  exact = exact_size if padding_id is None else max(exact_size, padding_id + 1)

  def to_rows(ids, oob):
    checked = ids_lib.normalize_ids(ids, num_embeddings, oob=oob, where="hashed.lookup")
    return hashing.hash_ints(checked.ids, num_buckets, seed, exact, jnp), checked.keep

  def init(key, *, init: Any = "normal", scale: float | None = None, dtype: Any = jnp.float32):
    contract.check_count(num_buckets, "num_buckets", "hashed.init")
    contract.check_count(exact_size, "exact_size", "hashed.init", minimum=0)
    return tables.init_table(key, exact + num_buckets, features, init=init,
                             padding_id=padding_id, scale=scale, dtype=dtype)

  return contract.row_table("hashed", padding_id=padding_id, init=init, to_rows=to_rows,
                            describe=functools.partial(describe, num_embeddings=num_embeddings))


def describe(params: Any, *, num_embeddings: int | None = None,
             **options: Any) -> contract.CompressedSummary:
  """``CompressedSummary`` of a hashed table (logical size ``num_embeddings``, default its rows)."""
  del options
  rows, features = tables.table_of(params, "describe").shape
  return contract.summarize("hashed", num_embeddings or rows, features, params)


def init_hashed_table(key: Array, num_buckets: int, features: int, *, exact_size: int = 0,
                      **kwargs) -> Params:
  """A plain table ``{"table": [exact_size + num_buckets, features]}`` for the hashing trick.

  ``kwargs`` go to ``embedlab.core.tables.init_table`` (``init``, ``padding_id``, ``dtype``, ...).

  Example:
    >>> import jax
    >>> from embedlab.core.variants import hashed
    >>> hashed.init_hashed_table(jax.random.key(0), 1000, 8, exact_size=100)["table"].shape
    (1100, 8)
  """
  return tables.init_table(key, exact_size + num_buckets, features, **kwargs)


def lookup_hashed(params: Params, ids: Any, *, num_buckets: int, exact_size: int = 0,
                  seed: int = 0, padding_id: int | None = None, oob: str = "error") -> Array:
  """Looks up raw integer ids (any non-negative int32, no vocabulary) through the hashing trick.

  Row of id ``i``: ``i`` if ``i < exact_size``, else ``exact_size + hash(i, seed) % num_buckets``
  (``embedlab.core.hashing.hash_ids`` computes the same rows in numpy). Many ids share a bucket
  row.

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
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.core.variants import hashed
    >>> p = hashed.init_hashed_table(jax.random.key(0), 50, 4, exact_size=10)
    >>> hashed.lookup_hashed(p, jnp.array([3, 10**9]), num_buckets=50, exact_size=10).shape
    (2, 4)
  """
  table = tables.table_of(params, "lookup_hashed")
  if table.shape[0] != exact_size + num_buckets:
    raise ValueError(f"lookup_hashed: the table has {table.shape[0]} rows, expected exact_size + "
                     f"num_buckets = {exact_size} + {num_buckets}; pass the sizes it was built "
                     "with.")
  checked = ids_lib.normalize_ids(ids, hashing.MAX_RAW_ID, oob=oob, padding_id=padding_id,
                                  where="lookup_hashed")
  rows = hashing.hash_ints(checked.ids, num_buckets, seed, exact_size, jnp)
  vecs = jnp.take(table, rows, axis=0, mode="clip")  # hashed rows are always in range
  return ids_lib.mask_rows(vecs, checked.keep)
