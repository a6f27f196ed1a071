"""The plain table: one row per id, ``{"table": [V, D]}`` (``embedlab.init_table``,
``embedlab.lookup``, ``embedlab.bag``) behind the variant contract.

The model for every other variant: a factory ``make`` built from ``contract.row_table`` and a
``describe``. Row-sparse updates, ragged bags, sharding by rows, pretrained vectors and
``max_norm`` all apply (``TABLES["plain"]``).

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.core.variants import plain
  >>> v = plain.make(100, 8, padding_id=0)
  >>> p = v.init(jax.random.key(0), scale=0.1)
  >>> v.bag(p, jnp.array([[1, 2, 0]]), "mean").shape, v.rows(jnp.array([5])).tolist()
  ((1, 8), [5])
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from embedlab.core import tables
from embedlab.core.variants import contract


def make(num_embeddings: int, features: int, *, padding_id: int | None = None
         ) -> contract.TableVariant:
  """The plain table of ``num_embeddings`` rows of ``features``; ``padding_id``'s row starts at
  zero. ``init`` takes ``embedlab.init_table``'s ``init`` (a name, a callable or a pretrained
  array) and ``scale``."""
  tables.check_size(num_embeddings, features)

  def init(key, *, init: Any = "normal", scale: float | None = None, dtype: Any = jnp.float32):
    return tables.init_table(key, num_embeddings, features, init=init, padding_id=padding_id,
                             scale=scale, dtype=dtype)

  return contract.row_table("plain", padding_id=padding_id, init=init,
                            describe=functools.partial(describe, num_embeddings=num_embeddings))


def describe(params: Any, *, num_embeddings: int | None = None,
             **options: Any) -> contract.CompressedSummary:
  """``CompressedSummary`` of a plain table (``options`` are other variants'; ignored)."""
  del options
  rows, features = tables.table_of(params, "describe").shape
  return contract.summarize("plain", num_embeddings or rows, features, params)
