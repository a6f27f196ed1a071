"""Gathering the rows a batch touches: a small local table the model uses unchanged.

The first part of a row-sparse train step (``embedlab.core.sparse``): ``localize`` gathers the
distinct rows of a batch into a *local* table, so the model code runs unchanged
(``embedlab.bag`` / ``embedlab.lookup`` on ``localized.params``), and the gradient with respect
to that local table is one row per distinct id of the batch, duplicates already summed by the
gather's transpose, ready for a row-sparse optimizer's ``update(..., unique=True)``.

Code that produces per-position row gradients instead sums duplicate ids with
``sum_duplicates`` (what ``update(..., unique=False)`` does): inside ``jit`` with fixed shapes
(a sort, a binary search and a ``segment_sum``; no recompiles). Both find duplicates with one
hand-written dedup (``_dedup``): ``jnp.unique(..., return_inverse=True)`` gives the same ids
about twice as slowly on CPU.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core.ids import check_ids, normalize_ids
from embedlab.core.sparse_rules import choose_update_strategy

Array = jax.Array


class Localized(NamedTuple):
  """A batch's rows gathered into a small table (see ``localize``).

  Attributes:
    params: ``{"table": Array[R, D]}``, R = ids.size (+1 with a padding id), or the table
      itself (R = V, ``localize``'s ``"table"`` strategy): the model's table for this batch.
    ids: ids into ``params["table"]``, the shape of the batch's ids; padding stays
      ``padding_id``.
    row_ids: int32 ``[R]``, the global row of each local row; ``V`` (out of range, so ignored by
      ``update``) for local rows that stand for no table row. Distinct otherwise.
  """

  params: dict[str, Array]
  ids: Array
  row_ids: Array


def localize(table: Any, ids: Any, *, padding_id: int | None = 0,
             oob: str = "error", gather: Callable[[Array, Array], Array] | None = None,
             strategy: str = "auto") -> Localized:
  """Gathers the distinct rows of a batch into a local table the model can use unchanged.

  The model calls ``bag(localized.params, localized.ids, padding_id=padding_id)`` (or
  ``lookup``) exactly as it would on the full table and gets the same numbers; the gradient
  with respect to ``localized.params["table"]`` is then one row per distinct id, duplicates
  summed (by the gather's transpose, in the same order as the dense gradient), ready for
  ``optimizer.update(table, state, localized.row_ids, grads, unique=True)``.

  Args:
    table: ``Array[V, D]`` or params ``{"table": Array[V, D]}``.
    ids: int ids of any shape; checked against the table (as ``lookup``'s ``oob="error"``).
    padding_id: the padding id the model passes to ``bag``/``lookup`` (its row is never
      updated), or None. Must be at most ``ids.size``; 0, the convention, always is.
    oob: ``"error"`` checks the ids (as ``lookup``); ``"clip"`` skips the check (and its host
      callback under ``jit``) for ids already validated, e.g. a whole dataset checked once.
    gather: ``gather(table, row_ids) -> rows`` reading the distinct rows (out-of-range ids
      give zero rows); default ``jnp.take``. A table split over devices passes
      ``functools.partial(embedlab.core.sharding.sharded_take, mesh=mesh)``.
    strategy: ``"rows"`` gathers the batch's distinct rows (found with a sort) into a table of
      ``ids.size`` rows, plus one for the padding id; ``"table"`` uses the table itself as the
      local table (``ids`` unchanged, ``row_ids`` the touched rows' own ids, ``V`` for the
      others): no sort, no gather, for a table not much larger than that local table.
      ``"auto"`` (default): ``"table"`` on CPU when the table has at most
      ``DENSE_MAX_ROWS_PER_ID`` rows per id of the batch and no ``gather`` is given (the
      optimizer's ``update`` then takes its ``dense`` strategy too), ``"rows"`` otherwise.

  Returns:
    ``Localized(params, ids, row_ids)``. Fixed shapes: one compilation per batch shape.

  Example:
    >>> import jax.numpy as jnp, embedlab as el
    >>> from embedlab.core.localize import localize
    >>> table = jnp.arange(12.0).reshape(6, 2)
    >>> local = localize(table, jnp.array([[4, 2, 4, 0]]), strategy="rows")
    >>> el.lookup(local.params, local.ids, padding_id=0).tolist()
    [[[8.0, 9.0], [4.0, 5.0], [8.0, 9.0], [0.0, 0.0]]]
    >>> local.row_ids.tolist()  # 6 (= V, out of range): no table row
    [6, 2, 4, 6, 6]
    >>> localize(table, jnp.array([[4, 2, 4, 0]]), strategy="table").row_ids.tolist()
    [6, 6, 2, 6, 4, 6]
  """
  if isinstance(table, dict):
    if "table" not in table:
      raise TypeError("localize: params must be a dict with a 'table' entry (as returned by "
                      "init_table), or the table array itself.")
    table = table["table"]
  if table.ndim != 2:
    raise ValueError(f"localize: the table must be 2-D [num_embeddings, features], "
                     f"got shape {table.shape}.")
  rows, features = table.shape
  if oob == "error":
    ids = check_ids(ids, rows, where="localize")
  elif oob == "clip":
    ids = normalize_ids(ids, rows, oob="clip", where="localize").ids  # exact in any dtype
  else:
    raise ValueError(f"localize: oob={oob!r} is not one of error, clip.")
  n = math.prod(ids.shape)
  if padding_id is not None:
    if isinstance(padding_id, bool) or not isinstance(padding_id, (int, np.integer)):
      raise TypeError(f"localize: padding_id must be an int or None, got {padding_id!r}.")
    if not 0 <= padding_id <= min(n, rows - 1):
      raise ValueError(f"localize: padding_id {padding_id} must be in 0..{min(n, rows - 1)} "
                       f"(within the table of {rows} rows and at most the {n} ids of the "
                       f"batch, since it stays the padding id of the local table). Use padding "
                       f"id 0, or a larger batch.")
  flat = ids.reshape(-1).astype(jnp.int32)
  real = jnp.ones_like(flat, bool) if padding_id is None else flat != padding_id
  key = jnp.where(real, flat, rows)
  if strategy == "auto":
    strategy = ("table" if gather is None and choose_update_strategy(rows, n + 1) == "dense"
                else "rows")
  if strategy == "table":
    touched = jnp.zeros((rows,), bool).at[key].set(True, mode="drop")
    row_ids = jnp.where(touched, jnp.arange(rows, dtype=jnp.int32), rows)
    return Localized({"table": table}, ids, row_ids)
  if strategy != "rows":
    raise ValueError(f"localize: strategy={strategy!r} is not 'auto', 'rows' or 'table'.")
  first_pos, unique_ids = _dedup(key, rows)
  if gather is None:
    local_table = jnp.take(table, unique_ids, axis=0, mode="fill", fill_value=0)
  else:
    local_table = gather(table, unique_ids)
  local_ids = first_pos
  row_ids = unique_ids
  if padding_id is not None:
    p = int(padding_id)
    local_table = jnp.concatenate(
        [local_table[:p], jnp.zeros((1, features), table.dtype), local_table[p:]])
    row_ids = jnp.concatenate([row_ids[:p], jnp.full((1,), rows, jnp.int32), row_ids[p:]])
    local_ids = jnp.where(real, first_pos + (first_pos >= p), p)
  return Localized({"table": local_table}, local_ids.reshape(ids.shape), row_ids)


def _dedup(ids_N: Array, rows: int) -> tuple[Array, Array]:
  """Finds duplicates with fixed shapes: ``(slot_N, unique_N)``.

  ``slot_N[i]`` is where ``ids_N[i]``'s first copy sits in sorted order; ``unique_N[slot]``
  holds the id at each such slot and ``rows`` (out of range) at every other one. A single-key
  sort plus a binary search: on CPU about 2x faster than ``jnp.unique(..., return_inverse=True)``
  and a two-operand (id, position) sort, whose multi-operand comparator is slow in XLA.
  """
  sorted_N = jnp.sort(ids_N)
  first = jnp.concatenate([jnp.ones((1,), bool), sorted_N[1:] != sorted_N[:-1]])
  unique_N = jnp.where(first & (sorted_N < rows), sorted_N, rows).astype(jnp.int32)
  slot_N = jnp.searchsorted(sorted_N, ids_N, side="left", method="scan").astype(jnp.int32)
  return slot_N, unique_N


def sum_duplicates(ids: Array, row_grads: Array, num_rows: int) -> tuple[Array, Array]:
  """Sums the gradients of duplicate ids, inside ``jit`` with fixed shapes.

  Args:
    ids: int ``[N]``; ids outside ``0..num_rows-1`` are dropped.
    row_grads: ``[N, D]``.
    num_rows: rows of the table (V).

  Returns:
    ``(unique_ids [N], summed [N, D])``: each id in range appears once in ``unique_ids`` with
    its summed gradient (added in the order of ``ids``, as the dense gradient adds them); the
    other entries hold ``num_rows`` (out of range) and zeros.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.localize import sum_duplicates
    >>> u, g = sum_duplicates(jnp.array([3, 1, 3]), jnp.array([[1.], [2.], [4.]]), 5)
    >>> u.tolist(), g[:, 0].tolist()
    ([1, 3, 5], [2.0, 5.0, 0.0])
  """
  valid = (ids >= 0) & (ids < num_rows)
  ids = jnp.where(valid, ids, num_rows).astype(jnp.int32)
  row_grads = jnp.where(valid[:, None], row_grads, 0)
  slot_N, unique_N = _dedup(ids, num_rows)
  return unique_N, jax.ops.segment_sum(row_grads, slot_N, ids.shape[0])
