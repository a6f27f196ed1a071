"""ALBERT's factorized embedding: a ``V x r`` table times an ``r x D`` projection,
``{"table": [V, r], "projection": [r, D]}``.

The ``V x r`` rows are a plain table's, so row-sparse updates (the projection is updated densely),
sharding by rows and ragged bags apply; ``sum``/``mean``/``sqrtn`` bags pool the small rows and
project once (exact: the projection is linear), ``max`` pools the projected vectors. Weights:
``V * r + r * D``: a 2,000,000 x 64 table with r=16 takes 122.1 MiB instead of 488.3 MiB.

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.core.variants import factorized
  >>> v = factorized.make(100, 32, padding_id=0, rank=4)
  >>> p = v.init(jax.random.key(0))
  >>> p["table"].shape, v.bag(p, jnp.array([[1, 2], [3, 0]]), "mean").shape
  ((100, 4), (2, 32))
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from embedlab.core import tables
from embedlab.core.variants import TABLES
from embedlab.core.variants import contract

Array = jax.Array
Params = dict[str, Array]
ENTRIES = ("table", "projection")


def make(num_embeddings: int, features: int, *, padding_id: int | None = None,
         rank: int) -> contract.TableVariant:
  """A factorized table of ``num_embeddings`` ids, ``rank`` columns projected to ``features``.

  ``init`` draws the ``V x r`` table as ``embedlab.init_table`` (``init``, ``scale``; the
  padding row zero) and the projection ``N(0, 1/r)`` from ``fold_in(key, 1)``, so vectors start
  with about the table's scale.
  """
  tables.check_size(num_embeddings, features)

  def init(key, *, init: Any = "normal", scale: float | None = None, dtype: Any = jnp.float32):
    contract.check_count(rank, "rank", "factorized.init")  # at init: a model may be built
    # before its sizes are set
    table = tables.init_table(key, num_embeddings, rank, init=init, padding_id=padding_id,
                              scale=scale, dtype=dtype)["table"]
    proj = jax.random.normal(jax.random.fold_in(key, 1), (rank, features), dtype)
    return {"table": table, "projection": (proj / math.sqrt(rank)).astype(dtype)}

  def project(params, x):
    # the row-sparse step passes the params without their table: only the projection is read
    proj = contract.entries_of(params, ("projection",), "factorized")[0]
    return x @ proj.astype(x.dtype)

  return contract.row_table("factorized", padding_id=padding_id, init=init, project=project,
                            pooled_modes=TABLES["factorized"].pooled_modes,
                            describe=functools.partial(describe, num_embeddings=num_embeddings))


def describe(params: Any, *, num_embeddings: int | None = None,
             **options: Any) -> contract.CompressedSummary:
  """``CompressedSummary`` of factorized params."""
  del options
  table, proj = contract.entries_of(params, ENTRIES, "describe")
  return contract.summarize("factorized", num_embeddings or table.shape[0], proj.shape[1],
                            params)


def _of(params: Any, padding_id: int | None, where: str) -> contract.TableVariant:
  """The variant the shapes of ``params`` describe."""
  table, proj = contract.entries_of(params, ENTRIES, where)
  return make(table.shape[0], proj.shape[1], padding_id=padding_id, rank=table.shape[1])


def init_factorized_table(key: Array, num_embeddings: int, features: int, *, rank: int,
                          padding_id: int | None = None, dtype: Any = jnp.float32) -> Params:
  """``make(...).init(key, dtype=dtype)``: the table ``N(0, 1)`` (``padding_id``'s row zero) and
  the projection ``N(0, 1/r)``, so vectors start with about unit variance as ``init_table``'s
  ``normal``.

  Example:
    >>> import jax
    >>> from embedlab.core.variants import factorized
    >>> p = factorized.init_factorized_table(jax.random.key(0), 30_000, 768, rank=128)
    >>> [x.shape for x in p.values()]
    [(30000, 128), (128, 768)]
  """
  return make(num_embeddings, features, padding_id=padding_id, rank=rank).init(key, dtype=dtype)


def lookup_factorized(params: Params, ids: Any, *, padding_id: int | None = None,
                      oob: str = "error") -> Array:
  """Looks up ``table[ids] @ projection``: ``Array[*ids.shape, D]``.

  ``padding_id``: positions holding it give zero vectors and zero gradient to
  ``table[padding_id]`` and to ``projection`` (``init_factorized_table`` also zeroes that row).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.core.variants import factorized
    >>> p = factorized.init_factorized_table(jax.random.key(0), 100, 32, rank=4)
    >>> factorized.lookup_factorized(p, jnp.zeros((2, 3), "int32")).shape
    (2, 3, 32)
  """
  return _of(params, padding_id, "lookup_factorized").lookup(params, ids, oob=oob)


def bag_factorized(params: Params, ids: Any, *, mode: str = "mean",
                   padding_id: int | None = None, **bag_kwargs) -> Array:
  """``embedlab.bag`` over the ``V x r`` table, then the projection (exact for the linear modes
  ``sum``/``mean``/``sqrtn``; ``max`` pools the projected vectors). Takes ``el.bag``'s
  arguments (ragged ``segment_ids`` too).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.core.variants import factorized
    >>> p = factorized.init_factorized_table(jax.random.key(0), 100, 32, rank=4)
    >>> factorized.bag_factorized(p, jnp.array([[1, 2], [3, 4]])).shape
    (2, 32)
  """
  return _of(params, padding_id, "bag_factorized").bag(params, ids, mode, **bag_kwargs)
