"""The per-row arithmetic of the row-sparse optimizers, and how an update reads and writes a table.

Each optimizer of ``embedlab.core.sparse`` is a ``Rule`` (new slot rows from gradient rows, then
a step from them) driven over a table by this module: ``apply_rule`` is the arithmetic every
driver shares (the optimizers' ``update``, and ``embedlab.row_sparse`` on a ``RowGrad``);
``rows_update`` and ``dense_update`` are the two ways ``update`` applies it to a table.

How ``update`` reads and writes the table is chosen per shape (``choose_update_strategy``, as
``embedlab.core.pooling`` chooses how to pool): the touched rows gathered and scattered back
(``rows``), or, for a table with at most twice as many rows as ids handed to it, a read-only
check and one masked pass over the whole table and its slots with no sort (``dense``;
``embedlab.core.localize.localize`` then hands over the table itself). Both give the same
numbers, up to float rounding. Optax has no row-sparse update, hence the hand-written passes.

A row whose gradient or new optimizer state would not be finite (finite gradients overflowing
when squared, say) is not written: it keeps its value and state, as the train step keeps every
parameter when the loss or a gradient is not finite (lazy Adam on float32/float64 tables
tests the squared gradients instead of its new moments: the same rows, plus those with |g| above
1.8e19 in float32, and the check reads the gradients alone). A weight whose new value would not be
finite (a huge learning rate) keeps its value; the rest of its row moves. (Checking whole rows
of new weights would evaluate the rule's direction a second time over the table:
``apply_rule``.)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Rule(NamedTuple):
  """An optimizer's per-row arithmetic, in two parts: ``slots(grads [N, D], slot rows) -> new
  slot rows`` and ``direction(grads, new slot rows, count) -> step [N, D]``; the row then
  moves by ``-lr * (step + weight_decay * row)``. The step reads the *new* slots only, so the
  dense strategy can write each slot in place before the table reads it."""

  slots: Callable[[Array, tuple[Array, ...]], tuple[Array, ...]]
  direction: Callable[[Array, tuple[Array, ...], Array], Array]
  # ``check(grads, old slot rows) -> arrays``: a cheaper stand-in for the finiteness check,
  # arrays whose rows are all finite only if the gradient and new slot rows are (given finite
  # old slots; lazy Adam: the squared gradients, read without the slots); None: the gradients
  # and the new slots themselves
  check: Callable[[Array, tuple[Array, ...]], tuple[Array, ...]] | None = None


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
    >>> from embedlab.core.sparse_rules import choose_update_strategy
    >>> choose_update_strategy(32768, 16385, "cpu"), choose_update_strategy(1 << 22, 16385, "cpu")
    ('dense', 'rows')
  """
  backend = jax.default_backend() if backend is None else backend
  if backend == "cpu" and num_rows <= DENSE_MAX_ROWS_PER_ID * num_ids:
    return "dense"
  return "rows"

def rows_update(table: Array, slots: tuple[Array, ...], ids: Array, grads: Array, rule: Rule,
                count: Array, lr: Array,
                weight_decay: float = 0.0) -> tuple[Array, tuple[Array, ...]]:
  """The ``rows`` strategy: the rule on the touched rows, gathered and scattered back.

  Args:
    table: ``Array[V, D]``; ``slots`` the optimizer's slots, each ``[V, ...]``.
    ids: int ``[N]`` *distinct* ids (``V`` and beyond: no row; ``sum_duplicates`` makes them).
    grads: ``[N, D]``, in the table's dtype.
    rule, count, lr, weight_decay: as ``apply_rule``.

  Returns:
    ``(table, slots)`` with the touched rows updated.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.sparse_rules import Rule, rows_update
    >>> sgd = Rule(lambda g, slots: (), lambda g, slots, count: g)
    >>> table, _ = rows_update(jnp.ones((3, 1)), (), jnp.array([2, 3]), jnp.ones((2, 1)), sgd,
    ...                        jnp.array(1), jnp.array(0.5))
    >>> table[:, 0].tolist()
    [1.0, 1.0, 0.5]
  """
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
  return table, slots


def dense_update(table: Array, slots: tuple[Array, ...], ids: Array, grads: Array, rule: Rule,
                 count: Array, lr: Array,
                 weight_decay: float = 0.0) -> tuple[Array, tuple[Array, ...]]:
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
    >>> from embedlab.core.sparse import sparse_rowwise_adagrad
    >>> from embedlab.core.sparse_rules import apply_rule
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
  ok = ok & _finite_rows(*(rule.check(checked_grads, checked_slots) if rule.check is not None
                           else (checked_grads, *rule.slots(checked_grads, checked_slots))))
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
