"""Row-sparse training of embedding tables: gradients for the looked-up rows, not the table.

The gradient of ``jnp.take`` with respect to a ``[V, D]`` table is a dense ``[V, D]`` array, and
an optax optimizer then reads and writes every row of the table and of each of its slots on
every step. Here the step instead

  1. gathers the rows a batch uses into a small *local* table (``localize``), so the model
     code runs unchanged (``embedlab.bag`` / ``embedlab.lookup`` on ``localized.params``);
  2. differentiates the loss with respect to that local table: one gradient row per distinct
     id of the batch, duplicates already summed by the gather's transpose;
  3. hands ``(row_ids, row_grads)`` to a row-sparse optimizer, which reads and writes only
     those rows of the table and its slots, in place when the step donates them.

The step's cost then follows the batch, not the table (``benchmarks/step_scaling.py``).

A jitted train step, the pattern to copy (``table`` and ``opt_state`` are donated, so the
scatter into them happens in place and no second table-sized buffer is made):

  >>> import functools, jax, jax.numpy as jnp, embedlab as el
  >>> from embedlab.core import sparse
  >>> opt = sparse.sparse_lazy_adam(1e-2)
  >>> table = el.init_table(jax.random.key(0), 1000, 8, padding_id=0)["table"]
  >>> opt_state = opt.init(table)
  >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
  ... def train_step(table, opt_state, ids_BxL, labels_B):
  ...   local = sparse.localize(table, ids_BxL, padding_id=0)
  ...   def loss_fn(local_params):
  ...     pooled_BxD = el.bag(local_params, local.ids, mode="mean", padding_id=0)
  ...     return jnp.mean((pooled_BxD.sum(-1) - labels_B) ** 2)
  ...   loss, grads = jax.value_and_grad(loss_fn)(local.params)
  ...   table, opt_state = opt.update(table, opt_state, local.row_ids, grads["table"],
  ...                                 unique=True)
  ...   return table, opt_state, loss
  >>> ids = jnp.array([[3, 5, 3, 0], [7, 0, 0, 0]])
  >>> table, opt_state, loss = train_step(table, opt_state, ids, jnp.ones(2))
  >>> int(opt_state.count)
  1

Without ``localize``, any code that produces per-position row gradients can call ``update``
with duplicate ids (``unique=False``, the default): duplicates are summed per id inside ``jit``
with fixed shapes (a sort, a binary search and a ``segment_sum``; no recompiles).

How ``update`` reads and writes the table is chosen per shape (``choose_update_strategy``, as
``embedlab.core.pooling`` chooses how to pool): the touched rows gathered and scattered back
(``rows``), or, for a table with at most twice as many rows as ids handed to it, a read-only
check and one masked pass over the whole table and its slots with no sort (``dense``;
``localize`` then hands over the table itself). Both give the same numbers, up to float
rounding.

Ids outside ``0..V-1`` are ignored by ``update`` (``localize`` has checked the batch's ids
already; ``-1`` can mark "no row"); ``skip_ids`` (e.g. the padding id) and ``row_mask`` (a bool
``[V]`` array, True = trainable) name rows that never change: not their values, not their
slots, no weight decay.

A row whose gradient or new optimizer state would not be finite (finite gradients overflowing
when squared, say) is not written: it keeps its value and state, as the train step keeps every
parameter when the loss or a gradient is not finite. A weight whose new value would not be
finite (a huge learning rate) keeps its value; the rest of its row moves. (Checking whole rows
of new weights would evaluate the rule's direction a second time over the table:
``apply_rule``.)

Weight decay (all optimizers) is *decoupled* (AdamW-style) and *lazy*: a touched row moves by
``-lr * (step + weight_decay * row)``, an untouched row not at all, so a row's decay follows
how often it appears in batches. For SGD this is the same as L2 regularisation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import names
from embedlab.core.ids import check_ids, normalize_ids

Array = jax.Array
Schedule = Callable[[Array], Array]
ScalarOrSchedule = float | Schedule


class SparseOptimizer(NamedTuple):
  """A row-sparse optimizer for one table, shaped like an optax ``GradientTransformation``.

  ``init(table) -> state``;
  ``update(table, state, ids, row_grads, *, row_mask=None, skip_ids=(), unique=False,
  strategy="auto") -> (new_table, new_state)`` with ``ids`` int ``[N]`` and ``row_grads``
  ``[N, D]``; ``strategy`` is ``"rows"``, ``"dense"`` or ``"auto"`` (``choose_update_strategy``).

  ``add``, only where the update is linear in the gradient (``sparse_sgd`` without weight
  decay), takes the same arguments but scatter-adds each row gradient into its row as it comes:
  no sort, no dedup, no re-gathered rows. Duplicate ids are then summed in the table instead of
  before it: ``update``'s result up to float rounding. None for the other optimizers.
  """

  init: Callable[[Array], Any]
  update: Callable[..., tuple[Array, Any]]
  add: Callable[..., tuple[Array, Any]] | None = None
  # the per-row arithmetic, for other drivers of it (``embedlab.core.rowgrad.row_sparse``)
  rule: Rule | None = None
  learning_rate: ScalarOrSchedule | None = None
  weight_decay: float = 0.0


class SparseSgdState(NamedTuple):
  """State of ``sparse_sgd``: the number of updates done."""

  count: Array


class SparseAdagradState(NamedTuple):
  """State of ``sparse_adagrad``: update count and per-weight sums of squared gradients."""

  count: Array
  sum_of_squares: Array  # [V, D]


class SparseRowwiseAdagradState(NamedTuple):
  """State of ``sparse_rowwise_adagrad``: update count and one accumulator per row."""

  count: Array
  sum_of_squares: Array  # [V]


class SparseLazyAdamState(NamedTuple):
  """State of ``sparse_lazy_adam``: update count, first and second moments per weight."""

  count: Array
  mu: Array  # [V, D]
  nu: Array  # [V, D]


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
    >>> from embedlab.core.sparse import localize
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
    >>> from embedlab.core.sparse import sum_duplicates
    >>> u, g = sum_duplicates(jnp.array([3, 1, 3]), jnp.array([[1.], [2.], [4.]]), 5)
    >>> u.tolist(), g[:, 0].tolist()
    ([1, 3, 5], [2.0, 5.0, 0.0])
  """
  valid = (ids >= 0) & (ids < num_rows)
  ids = jnp.where(valid, ids, num_rows).astype(jnp.int32)
  row_grads = jnp.where(valid[:, None], row_grads, 0)
  slot_N, unique_N = _dedup(ids, num_rows)
  return unique_N, jax.ops.segment_sum(row_grads, slot_N, ids.shape[0])


class Rule(NamedTuple):
  """An optimizer's per-row arithmetic, in two parts: ``slots(grads [N, D], slot rows) -> new
  slot rows`` and ``direction(grads, new slot rows, count) -> step [N, D]``; the row then
  moves by ``-lr * (step + weight_decay * row)``. The step reads the *new* slots only, so the
  dense strategy can write each slot in place before the table reads it."""

  slots: Callable[[Array, tuple[Array, ...]], tuple[Array, ...]]
  direction: Callable[[Array, tuple[Array, ...], Array], Array]


UPDATE_STRATEGIES = ("rows", "dense")
# At most this many table rows per id handed to ``update``: the dense strategy on CPU
# (``python benchmarks/step_scaling.py --strategies``: dense 2-3x faster at 1, 0.6-1.3x the rows
# strategy's time at 2, 2-5x slower at 4).
DENSE_MAX_ROWS_PER_ID = 2.0


def choose_update_strategy(num_rows: int, num_ids: int, backend: str | None = None) -> str:
  """How a sparse optimizer's ``update`` reads and writes a table of ``num_rows`` rows for
  ``num_ids`` ids: ``"rows"`` or ``"dense"``.

  * ``rows``: (sum duplicate ids with a sort, then) gather the touched rows of each slot,
    apply the rule to them, scatter them back; the table itself gets its change scatter-added
    (gathered only for weight decay). The cost follows the ids.
  * ``dense``: scatter-add the gradients into a ``[V, D]`` zero array (or take them as they
    are, when ``localize`` hands over the table itself), mark the touched rows, and apply the
    rule to every row of the table and its slots, keeping the untouched ones (``where``): one
    read-only pass that finds the rows whose update would not be finite, then one pass that
    writes table and slots in place. No sort, no random row access; the cost follows the
    table.

  Both give the same numbers up to float rounding. On CPU ``dense`` is chosen when the table
  has at most ``DENSE_MAX_ROWS_PER_ID`` rows per id (streaming the whole table then costs no more than
  sorting, gathering and scattering the ids' rows; ``benchmarks/step_scaling.py
  --strategies``), ``rows`` otherwise and on other backends (not measured).

  Example:
    >>> from embedlab.core.sparse import choose_update_strategy
    >>> choose_update_strategy(32768, 16385, "cpu"), choose_update_strategy(1 << 22, 16385, "cpu")
    ('dense', 'rows')
  """
  backend = jax.default_backend() if backend is None else backend
  if backend == "cpu" and num_rows <= DENSE_MAX_ROWS_PER_ID * num_ids:
    return "dense"
  return "rows"


def _sparse_optimizer(name: str, learning_rate: ScalarOrSchedule,
                      init_slots: Callable[[Array], tuple[Array, ...]], rule: Rule,
                      state_type: type, weight_decay: float = 0.0) -> SparseOptimizer:
  """Builds ``(init, update)`` from a per-row rule: the shared dedup / gather / scatter."""

  def init(table):
    if getattr(table, "ndim", None) != 2:
      raise ValueError(f"{name}.init: expected the table Array[V, D], got "
                       f"{getattr(table, 'shape', type(table).__name__)}.")
    return state_type(jnp.zeros([], jnp.int32), *init_slots(table))

  def update(table, state, ids, row_grads, *, row_mask=None, skip_ids=(), unique=False,
             strategy="auto"):
    rows = table.shape[0]
    ids, grads = _kept(name, "update", table, ids, row_grads, row_mask, skip_ids)
    if strategy == "auto":
      strategy = choose_update_strategy(rows, ids.shape[0])
    if strategy not in UPDATE_STRATEGIES:
      raise ValueError(f"{name}.update: strategy={strategy!r} is not 'auto' or one of "
                       f"{', '.join(UPDATE_STRATEGIES)}.")
    lr = _learning_rate(learning_rate, state.count, table.dtype)
    count = state.count + 1
    slots = tuple(state[1:])
    if strategy == "dense":
      table, slots = _dense_update(table, slots, ids, grads, rule, count, lr, weight_decay)
      return table, state_type(count, *slots)
    if not unique:
      ids, grads = sum_duplicates(ids, grads, rows)
    slot_rows = tuple(jnp.take(s, ids, axis=0, mode="clip") for s in slots)
    table_rows = jnp.take(table, ids, axis=0, mode="clip") if weight_decay else None
    change, keep, slot_rows = apply_rule(rule, grads, slot_rows, count, lr, weight_decay,
                                         table_rows)
    # -lr * step scatter-added into the rows (distinct here; V and beyond dropped): one random
    # read of the table fewer than gathering the rows and setting w - lr * step, with the same
    # sum up to the rounding of a multiply-add that XLA may fuse in one and not the other. A
    # weight whose change would not be finite gets none; a row whose state would not be
    # finite gets its old slot rows back
    change = jnp.where(keep & jnp.isfinite(change), change, 0)
    table = table.at[ids].add(change, mode="drop")
    slots = tuple(s.at[ids].set(r, mode="drop") for s, r in zip(slots, slot_rows))
    return table, state_type(count, *slots)

  return SparseOptimizer(init, update, rule=rule, learning_rate=learning_rate,
                         weight_decay=weight_decay)


def _dense_update(table, slots, ids, grads, rule, count, lr, weight_decay):
  """The ``dense`` strategy: the rule on every row, the untouched rows kept as they were.

  Duplicate ids are summed by the scatter-add in the order of ``ids`` (as ``sum_duplicates``),
  so the numbers are the ``rows`` strategy's. When ``ids`` are ``localize``'s ``"table"``
  row ids (each row's own id or ``V``, found at run time), the gradients are taken as they
  are: no zeroed ``[V, D]`` array, no scatter (a ``lax.cond``; ``embedlab.row_sparse`` knows
  it from the ``RowGrad`` and needs none). The rows are then updated by ``apply_rule``'s
  masked passes, in place.
  """
  rows = table.shape[0]

  def scattered():
    return (jnp.zeros_like(table).at[ids].add(grads, mode="drop"),
            jnp.zeros((rows,), bool).at[ids].set(True, mode="drop"))

  if ids.shape[0] == rows:
    # ``localize``'s "table" strategy hands over each row's own id or V: then the gradients
    # are already in place (an untouched row's gradient is never read: the row is kept), and
    # neither a zeroed [V, D] array nor a scatter is needed
    own = ids < rows
    in_place = jnp.all(own == (ids == jnp.arange(rows)))
    grads_VxD, touched_V = jax.lax.cond(in_place, lambda: (grads, own), scattered)
  else:
    grads_VxD, touched_V = scattered()
  change, keep, slots = apply_rule(rule, grads_VxD, slots, count, lr, weight_decay,
                                   table if weight_decay else None, touched_V,
                                   whole_table=True)
  new = table + change
  return jnp.where(keep & jnp.isfinite(new), new, table), slots


def apply_rule(rule: Rule, grads: Array, slots: tuple[Array, ...], count: Array,
               learning_rate: Array, weight_decay: float = 0.0, table: Array | None = None,
               touched: Array | None = None, *,
               whole_table: bool = False) -> tuple[Array, Array, tuple[Array, ...]]:
  """One step of an optimizer's rule on rows: the change of each weight and the new slots.

  The arithmetic every driver of a ``Rule`` shares: the optimizers' ``update`` (on the touched
  rows gathered, or on the whole table) and ``embedlab.row_sparse`` (on a ``RowGrad``). Row
  ``i`` of ``grads``, of each slot and of ``table`` belong together; which table rows they
  are is the caller's business (it gathered them, and scatters the results back).

  A row whose gradient or new state is not finite (finite gradients overflowing, e.g. squared)
  keeps its slots, and ``keep`` is False on it: the caller leaves its weights as they are. A weight
  whose new value would not be finite is the caller's to keep (``isfinite`` of the change, or
  of the new weight, where it has the table); ``keep`` and that test fuse in one pass.

  Args:
    rule: the optimizer's ``Rule`` (``SparseOptimizer.rule``).
    grads: ``[N, D]`` gradient rows.
    slots: the optimizer's slot rows, each ``[N, ...]``.
    count: the update count, this update included.
    learning_rate: the learning rate, a scalar array of the table's dtype.
    weight_decay: decoupled: the step is ``-lr * (direction + weight_decay * row)``.
    table: ``[N, D]`` table rows; needed only with weight decay.
    touched: bool ``[N]``, the rows to update (None: all); the others keep their slots.
    whole_table: the rows are a whole table (``N = V``, most of them touched): the state is
      then checked in a pass of its own that writes only a row mask (its inputs behind an
      ``optimization_barrier``, so XLA does not store new slots for the next pass to read), and
      the slots are written in place before the step reads them, so no array is read after
      it has been overwritten and XLA copies none. XLA:CPU cannot reduce a row and use the
      result in one fusion: checking each row's new weights too would evaluate the rule's
      direction twice (``benchmarks/step_scaling.py`` at 2^14 rows).

  Returns:
    ``(change, keep, slots)``: ``change`` ``[N, D]`` = ``-lr * (direction + weight_decay *
    row)`` in ``grads``' (or ``table``'s) dtype, not masked; ``keep`` bool ``[N, D]``, True
    where the row is touched and its gradient and new state finite; ``slots`` the new slot
    rows on those rows, the old ones elsewhere.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse import apply_rule, sparse_rowwise_adagrad
    >>> rule = sparse_rowwise_adagrad(1.0).rule
    >>> grads = jnp.array([[3.0, 4.0], [1e30, 0.0]])  # row 1's mean square overflows
    >>> change, keep, (acc,) = apply_rule(rule, grads, (jnp.zeros(2),), jnp.array(1),
    ...                                   jnp.array(1.0))
    >>> keep[:, 0].tolist(), acc.tolist()
    ([True, False], [12.5, 0.0])
    >>> [round(x, 3) for x in change[0].tolist()]
    [-0.849, -1.131]
  """
  rows = grads.shape[0]
  dtype = table.dtype if table is not None else grads.dtype
  grads = grads.astype(dtype)
  ok = jnp.ones((rows,), bool) if touched is None else touched
  # the rows' check: its own pass over the gradients and the slot arithmetic alone (cheap: no
  # direction)
  checked_grads, checked_slots = ((grads, slots) if not whole_table else
                                  jax.lax.optimization_barrier((grads, slots)))
  ok = ok & _finite_rows(checked_grads, *rule.slots(checked_grads, checked_slots))
  keep = jnp.broadcast_to(ok[:, None], grads.shape)
  if whole_table:  # one bool array the update passes read, not a broadcast in each of them
    keep = jax.lax.optimization_barrier(keep)

  def kept(new, old):
    return jnp.where(keep if old.ndim == 2 else ok.reshape((rows,) + (1,) * (old.ndim - 1)),
                     new.astype(old.dtype), old)

  slots = tuple(kept(n, o) for n, o in zip(rule.slots(grads, slots), slots))
  step = rule.direction(grads, slots, count)
  if weight_decay:
    step = step + weight_decay * table
  return ((-learning_rate) * step).astype(dtype), keep, slots


def _finite_rows(*arrays: Array) -> Array:
  """bool ``[N]``: row ``i`` of every array (``[N, ...]``) is finite.

  Arrays of one shape share one reduction: their ``isfinite`` masks and-ed, then the minimum
  over each row as uint8 (XLA:CPU's row reduction of a bool ``all`` is about twice as slow).
  """
  rows = arrays[0].shape[0]
  masks: dict[tuple[int, ...], Array] = {}
  for a in arrays:
    finite = jnp.isfinite(a)
    masks[a.shape] = finite if a.shape not in masks else masks[a.shape] & finite
  ok = jnp.ones((rows,), bool)
  for shape, mask in masks.items():
    width = math.prod(shape[1:])
    if width:
      mask = mask.reshape(rows, width)
      ok = ok & (jnp.min(mask.astype(jnp.uint8), axis=1) > 0 if width > 1 else mask[:, 0])
  return ok


def _kept(name, method, table, ids, row_grads, row_mask, skip_ids) -> tuple[Array, Array]:
  """``(ids, grads)`` checked; ids not to update (out of range, in ``skip_ids``, masked off by
  ``row_mask``) replaced by ``V``, which the scatter drops."""
  rows, features = table.shape
  ids = jnp.asarray(ids)
  if ids.ndim != 1 or row_grads.shape != (ids.shape[0], features):
    raise ValueError(f"{name}.{method}: ids must be 1-D [N] and row_grads [N, {features}], got "
                     f"ids {ids.shape} and row_grads {row_grads.shape}. Flatten the batch's "
                     f"ids with ids.reshape(-1) and its gradients with .reshape(-1, D).")
  if row_mask is not None and np.shape(row_mask) != (rows,):
    raise ValueError(f"{name}.{method}: row_mask must be a bool array of shape ({rows},) "
                     f"(True = trainable), got {np.shape(row_mask)}.")
  keep = (ids >= 0) & (ids < rows)
  for skip in np.atleast_1d(np.asarray(skip_ids, dtype=np.int64)):
    keep = keep & (ids != int(skip))
  if row_mask is not None:
    keep = keep & jnp.take(jnp.asarray(row_mask), ids, mode="clip")
  return jnp.where(keep, ids, rows).astype(jnp.int32), row_grads.astype(table.dtype)


def _learning_rate(learning_rate, count, dtype) -> Array:
  lr = learning_rate(count) if callable(learning_rate) else learning_rate
  return jnp.asarray(lr, dtype)


def sparse_sgd(learning_rate: ScalarOrSchedule, *, weight_decay: float = 0.0) -> SparseOptimizer:
  """Row-sparse SGD: ``row <- row - lr * (g + weight_decay * row)`` on touched rows.

  With ``weight_decay=0`` the table equals ``optax.sgd``'s after any number of steps (bit for
  bit: the duplicate gradients are added in the dense gradient's order). It then also has
  ``add``: each row gradient scatter-added into its row as it comes (duplicates summed in the
  table, so ``update``'s result up to float rounding), for gradients taken per occurrence, as
  the bag model's train step takes them (``embedlab.run.train``; fastText's update).

  Args:
    learning_rate: a float or an optax schedule ``count -> lr``.
    weight_decay: decoupled and lazy (touched rows only); for SGD the same as L2.

  Returns:
    A ``SparseOptimizer`` with ``SparseSgdState(count)``: no slots.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse import sparse_sgd
    >>> opt = sparse_sgd(0.5)
    >>> table, state = opt.update(jnp.ones((3, 2)), opt.init(jnp.ones((3, 2))),
    ...                           jnp.array([2, 2]), jnp.ones((2, 2)))
    >>> table.tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    >>> table, state = opt.add(table, state, jnp.array([0, 0, 5]), jnp.ones((3, 2)))
    >>> table.tolist(), int(state.count)  # id 5 is out of range: no row
    ([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], 2)
  """

  rule = Rule(lambda g, slots: (), lambda g, slots, count: g)

  def add(table, state, ids, row_grads, *, row_mask=None, skip_ids=()):
    ids, grads = _kept("sparse_sgd", "add", table, ids, row_grads, row_mask, skip_ids)
    lr = _learning_rate(learning_rate, state.count, table.dtype)
    change = (-lr) * grads
    change = jnp.where(jnp.isfinite(change), change, 0)  # an overflow is not written
    return table.at[ids].add(change, mode="drop"), SparseSgdState(state.count + 1)

  opt = _sparse_optimizer("sparse_sgd", learning_rate, lambda table: (), rule, SparseSgdState,
                          weight_decay)
  return opt if weight_decay else opt._replace(add=add)


def sparse_adagrad(learning_rate: ScalarOrSchedule, *, initial_accumulator_value: float = 0.1,
                   eps: float = 1e-7, weight_decay: float = 0.0) -> SparseOptimizer:
  """Row-sparse element-wise Adagrad, ``optax.adagrad``'s rule on the touched rows.

  On touched rows: ``acc <- acc + g**2``; ``row <- row - lr * (g * rsqrt(acc + eps) +
  weight_decay * row)`` (``rsqrt`` taken as 0 where ``acc`` is 0, as optax does). Untouched
  rows and their accumulators do not change; since a zero gradient leaves Adagrad's
  accumulator as it is, the touched rows match dense ``optax.adagrad`` exactly in
  exact arithmetic. Defaults are optax's.

  Args:
    learning_rate: a float or an optax schedule ``count -> lr``.
    initial_accumulator_value: the accumulators' start (optax: 0.1; PyTorch: 0).
    eps: added inside the square root, as optax.
    weight_decay: decoupled and lazy (touched rows only).

  Returns:
    A ``SparseOptimizer`` with ``SparseAdagradState(count, sum_of_squares [V, D])``.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse import sparse_adagrad
    >>> opt = sparse_adagrad(1.0, initial_accumulator_value=0.0, eps=0.0)
    >>> table, state = opt.update(jnp.zeros((3, 1)), opt.init(jnp.zeros((3, 1))),
    ...                           jnp.array([1]), jnp.array([[-2.0]]))
    >>> table[:, 0].tolist(), state.sum_of_squares[:, 0].tolist()
    ([0.0, 1.0, 0.0], [0.0, 4.0, 0.0])
  """

  def init_slots(table):
    return (jnp.full_like(table, initial_accumulator_value),)

  def direction(g, slots, count):
    acc, = slots
    return jnp.where(acc > 0, jax.lax.rsqrt(acc + eps), 0.0) * g

  rule = Rule(lambda g, slots: (slots[0] + g * g,), direction)

  return _sparse_optimizer("sparse_adagrad", learning_rate, init_slots, rule,
                           SparseAdagradState, weight_decay)


def sparse_rowwise_adagrad(learning_rate: ScalarOrSchedule, *,
                           initial_accumulator_value: float = 0.0, eps: float = 1e-8,
                           weight_decay: float = 0.0) -> SparseOptimizer:
  """Row-wise Adagrad as fbgemm / TorchRec's ``EXACT_ROWWISE_ADAGRAD``: one accumulator a row.

  On touched rows: ``acc <- acc + mean(g**2 over features)``;
  ``row <- row - lr * (g / (sqrt(acc) + eps) + weight_decay * row)`` (fbgemm's ``DECOUPLE``
  weight decay mode). The slot is ``[V]``, not ``[V, D]``: 1/D of element-wise Adagrad's.

  Args:
    learning_rate: a float or an optax schedule ``count -> lr``.
    initial_accumulator_value: the accumulators' start (fbgemm: 0).
    eps: added to the square root, as fbgemm.
    weight_decay: decoupled and lazy (touched rows only).

  Returns:
    A ``SparseOptimizer`` with ``SparseRowwiseAdagradState(count, sum_of_squares [V])``.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse import sparse_rowwise_adagrad
    >>> opt = sparse_rowwise_adagrad(1.0, eps=0.0)
    >>> table, state = opt.update(jnp.zeros((2, 2)), opt.init(jnp.zeros((2, 2))),
    ...                           jnp.array([1]), jnp.array([[3.0, 4.0]]))
    >>> state.sum_of_squares.tolist()
    [0.0, 12.5]
  """

  def init_slots(table):
    return (jnp.full(table.shape[:1], initial_accumulator_value, table.dtype),)

  def direction(g, slots, count):
    acc, = slots
    return g / (jnp.sqrt(acc) + eps)[:, None]

  rule = Rule(lambda g, slots: (slots[0] + jnp.mean(g * g, axis=1),), direction)

  return _sparse_optimizer("sparse_rowwise_adagrad", learning_rate, init_slots, rule,
                           SparseRowwiseAdagradState, weight_decay)


def sparse_lazy_adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8, *, weight_decay: float = 0.0) -> SparseOptimizer:
  """Lazy Adam: PyTorch's ``SparseAdam`` / TensorFlow's ``LazyAdam`` rule on touched rows.

  With ``t`` the number of updates so far including this one (the *global* step), on each
  touched row (its gradient ``g`` summed over the batch's duplicates):

    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g**2
    row <- row - lr * (sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps) + weight_decay * row)

  How it differs from dense Adam (``optax.adam``): dense Adam decays ``m`` and ``v`` of every
  row every step (an untouched row has ``g = 0`` but still moves, by its decaying momentum);
  lazy Adam leaves untouched rows, ``m`` and ``v`` as they are, so a row's moments are
  an average over the steps it was touched. ``eps`` is added to ``sqrt(v)`` before the bias
  correction (PyTorch's and TensorFlow's "epsilon hat"), where optax adds it to ``sqrt(v_hat)``:
  equal to ``optax.adam(eps=eps / sqrt(1 - b2**t))``; with ``eps=0``, and every row touched
  every step, the two are the same.

  Bias correction uses the global step, not a per-row count, as PyTorch and TensorFlow do:
  users port models and learning rates between them, it needs no per-row counter slot, and a
  per-row count would only change rows' first few updates. The consequence: a row first
  touched late (``t`` large, its ``m`` and ``v`` still near 0) gets a step of about
  ``lr * (1 - b1) / sqrt(1 - b2)`` (3.2 ``lr`` with the defaults) on that first touch.

  Args:
    learning_rate: a float or an optax schedule ``count -> lr``.
    b1, b2, eps: as ``optax.adam`` (see above for ``eps``'s placement).
    weight_decay: decoupled (AdamW-style) and lazy (touched rows only).

  Returns:
    A ``SparseOptimizer`` with ``SparseLazyAdamState(count, mu [V, D], nu [V, D])``.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse import sparse_lazy_adam
    >>> opt = sparse_lazy_adam(0.1, eps=0.0)
    >>> table, state = opt.update(jnp.zeros((3, 1)), opt.init(jnp.zeros((3, 1))),
    ...                           jnp.array([2]), jnp.array([[5.0]]))
    >>> [round(x, 4) for x in table[:, 0].tolist()]
    [0.0, 0.0, -0.1]
  """

  def init_slots(table):
    return jnp.zeros_like(table), jnp.zeros_like(table)

  def moments(g, slots):
    m, v = slots
    return b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g

  def direction(g, slots, count):
    m, v = slots
    t = count.astype(jnp.float32)
    scale = (jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)).astype(g.dtype)
    return scale * m / (jnp.sqrt(v) + eps)

  rule = Rule(moments, direction)

  return _sparse_optimizer("sparse_lazy_adam", learning_rate, init_slots, rule,
                           SparseLazyAdamState, weight_decay)


SPARSE_OPTIMIZERS: dict[str, Callable[..., SparseOptimizer]] = {
    "sparse_sgd": sparse_sgd,
    "sparse_adagrad": sparse_adagrad,
    "sparse_rowwise_adagrad": sparse_rowwise_adagrad,
    "sparse_lazy_adam": sparse_lazy_adam,
}

assert tuple(SPARSE_OPTIMIZERS) == tuple(names.TABLE_OPTIMIZERS), "see embedlab.core.names"


def _check_name(name: str, where: str) -> None:
  if name not in SPARSE_OPTIMIZERS:
    raise ValueError(f"{where}: unknown sparse optimizer {name!r}; use one of "
                     f"{', '.join(sorted(SPARSE_OPTIMIZERS))}.")


def get_sparse_optimizer(name: str, learning_rate: ScalarOrSchedule,
                         **kwargs: Any) -> SparseOptimizer:
  """Builds a sparse optimizer by name (``SPARSE_OPTIMIZERS``), e.g. from a config.

  Example:
    >>> from embedlab.core.sparse import get_sparse_optimizer
    >>> import jax.numpy as jnp
    >>> type(get_sparse_optimizer("sparse_rowwise_adagrad", 0.1).init(jnp.ones((4, 2)))).__name__
    'SparseRowwiseAdagradState'
    >>> get_sparse_optimizer("adam", 0.1)
    Traceback (most recent call last):
    ...
    ValueError: get_sparse_optimizer: unknown sparse optimizer 'adam'; use one of sparse_adagrad, sparse_lazy_adam, sparse_rowwise_adagrad, sparse_sgd.
  """
  _check_name(name, "get_sparse_optimizer")
  return SPARSE_OPTIMIZERS[name](learning_rate, **kwargs)


def slot_bytes(optimizer_name: str, table_shape: tuple[int, int], dtype: Any = jnp.float32) -> int:
  """Bytes of an optimizer's slots for a table (the step count's 4 bytes included).

  Add the table's own bytes for the total a table costs in training.

  Example:
    >>> from embedlab.core.sparse import slot_bytes
    >>> slot_bytes("sparse_lazy_adam", (1000, 64)), slot_bytes("sparse_rowwise_adagrad", (1000, 64))
    (512004, 4004)
  """
  name = optimizer_name
  _check_name(name, "slot_bytes")
  rows, features = (int(d) for d in table_shape)
  full, per_row = names.TABLE_OPTIMIZERS[name]  # slots per weight, per row
  return (full * rows * features + per_row * rows) * jnp.dtype(dtype).itemsize + 4
