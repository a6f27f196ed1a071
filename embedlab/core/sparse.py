"""Row-sparse training of embedding tables: gradients for the looked-up rows, not the table.

The gradient of ``jnp.take`` with respect to a ``[V, D]`` table is a dense ``[V, D]`` array, and
an optax optimizer then reads and writes every row of the table and of each of its slots on
every step. Here the step instead

  1. gathers the rows a batch uses into a small *local* table (``embedlab.core.localize``), so
     the model code runs unchanged (``embedlab.bag`` / ``embedlab.lookup`` on ``localized.params``);
  2. differentiates the loss with respect to that local table: one gradient row per distinct
     id of the batch, duplicates already summed by the gather's transpose;
  3. hands ``(row_ids, row_grads)`` to a row-sparse optimizer, which reads and writes only
     those rows of the table and its slots, in place when the step donates them.

The step's cost then follows the batch, not the table (``benchmarks/step_scaling.py``).

A jitted train step, the pattern to copy (``table`` and ``opt_state`` are donated, so the
scatter into them happens in place and no second table-sized buffer is made):

  >>> import functools, jax, jax.numpy as jnp, embedlab as el
  >>> from embedlab.core import sparse
  >>> from embedlab.core.localize import localize
  >>> opt = sparse.sparse_lazy_adam(1e-2)
  >>> table = el.init_table(jax.random.key(0), 1000, 8, padding_id=0)["table"]
  >>> opt_state = opt.init(table)
  >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
  ... def train_step(table, opt_state, ids_BxL, labels_B):
  ...   local = localize(table, ids_BxL, padding_id=0)
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
with fixed shapes (``embedlab.core.localize.sum_duplicates``; no recompiles).

How ``update`` reads and writes the table (the touched rows, or one masked pass over the whole
table: ``choose_update_strategy``), and why a row whose update would not be finite is not
written: ``embedlab.core.sparse_rules``, which holds each optimizer's per-row ``Rule``.

Ids outside ``0..V-1`` are ignored by ``update`` (``localize`` has checked the batch's ids
already; ``-1`` can mark "no row"); ``skip_ids`` (e.g. the padding id) and ``row_mask`` (a bool
``[V]`` array, True = trainable) name rows that never change: not their values, not their
slots, no weight decay.

Weight decay (all optimizers) is *decoupled* (AdamW-style) and *lazy*: a touched row moves by
``-lr * (step + weight_decay * row)``, an untouched row not at all, so a row's decay follows
how often it appears in batches. For SGD this is the same as L2 regularisation.

``localize``, ``sum_duplicates``, ``Rule``, ``apply_rule``, ``choose_update_strategy`` and the
other names of ``embedlab.core.localize`` and ``embedlab.core.sparse_rules`` were once this
module's; they still resolve here, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import localize as localize_lib
from embedlab.core import names
from embedlab.core import sparse_rules as rules
from embedlab.core import tables

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
  rule: rules.Rule | None = None
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

def _sparse_optimizer(name: str, learning_rate: ScalarOrSchedule,
                      init_slots: Callable[[Array], tuple[Array, ...]], rule: rules.Rule,
                      state_type: type, weight_decay: float = 0.0) -> SparseOptimizer:
  """Builds ``(init, update)`` from a per-row rule: the shared dedup / gather / scatter."""

  def init(table):
    if getattr(table, "ndim", None) != 2:
      raise ValueError(f"{name}.init: expected the table Array[V, D], got "
                       f"{getattr(table, 'shape', type(table).__name__)}. {_IN_OPTAX}")
    return state_type(jnp.zeros([], jnp.int32), *init_slots(table))

  def update(table, state, ids=None, row_grads=None, *, row_mask=None, skip_ids=(),
             unique=False, strategy="auto"):
    if ids is None or row_grads is None:  # called as optax calls update(updates, state, params)
      raise TypeError(f"{name}.update(table, state, ids, row_grads) takes the table and the "
                      f"touched rows' ids and gradients, not optax's (updates, state, params). "
                      f"{_IN_OPTAX}")
    rows = table.shape[0]
    ids, grads = _kept(name, "update", table, ids, row_grads, row_mask, skip_ids)
    if strategy == "auto":
      strategy = rules.choose_update_strategy(rows, ids.shape[0])
    if strategy not in rules.UPDATE_STRATEGIES:
      raise ValueError(f"{name}.update: strategy={strategy!r} is not 'auto' or one of "
                       f"{', '.join(rules.UPDATE_STRATEGIES)}.")
    lr = _learning_rate(learning_rate, state.count, table.dtype)
    count = state.count + 1
    slots = tuple(state[1:])
    if strategy == "dense":
      table, slots = rules.dense_update(table, slots, ids, grads, rule, count, lr, weight_decay)
      return table, state_type(count, *slots)
    if not unique:
      ids, grads = localize_lib.sum_duplicates(ids, grads, rows)
    table, slots = rules.rows_update(table, slots, ids, grads, rule, count, lr, weight_decay)
    return table, state_type(count, *slots)

  return SparseOptimizer(init, update, rule=rule, learning_rate=learning_rate,
                         weight_decay=weight_decay)


_IN_OPTAX = ("In an optax chain (clipping, schedules, multi_transform, nnx.Optimizer), wrap it: "
             "embedlab.row_sparse(<optimizer>), with gradients from embedlab.value_and_row_grad "
             "and new params from embedlab.apply_updates; on its own, call "
             "opt.init(params['table']) and opt.update(table, state, ids, row_grads).")


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


def _check_hyper(name: str, learning_rate: Any, **values: Any) -> None:
  """Raises a clear error for a hyperparameter no run could mean (as PyTorch's optimizers do):
  a learning rate (unless a schedule), weight decay, eps or initial accumulator that is not a
  finite number >= 0, a beta outside [0, 1). A NaN learning rate would otherwise keep every
  row as it is in silence (the per-row finiteness check), a string fail deep inside ``jit``.

  Example:
    >>> _check_hyper("sparse_sgd", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: sparse_sgd: learning_rate must be a finite number >= 0 or an optax schedule, got nan.
  """
  items = ([] if callable(learning_rate) else [("learning_rate", learning_rate)]) + list(
      values.items())
  for key, value in items:
    beta = key in ("b1", "b2")
    want = ("a number in [0, 1)" if beta else "a finite number >= 0"
            + (" or an optax schedule" if key == "learning_rate" else ""))
    try:
      number = tables.real_number(value)
    except TypeError:
      raise TypeError(f"{name}: {key} must be {want}, got {value!r}.") from None
    if number is not None and not (0 <= number < 1 if beta else 0 <= number < math.inf):
      raise ValueError(f"{name}: {key} must be {want}, got {value!r}.")


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
  _check_hyper("sparse_sgd", learning_rate, weight_decay=weight_decay)

  rule = rules.Rule(lambda g, slots: (), lambda g, slots, count: g)

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
  _check_hyper("sparse_adagrad", learning_rate, weight_decay=weight_decay, eps=eps,
               initial_accumulator_value=initial_accumulator_value)

  def init_slots(table):
    return (jnp.full_like(table, initial_accumulator_value),)

  def direction(g, slots, count):
    acc, = slots
    return jnp.where(acc > 0, jax.lax.rsqrt(acc + eps), 0.0) * g

  rule = rules.Rule(lambda g, slots: (slots[0] + g * g,), direction)

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
  _check_hyper("sparse_rowwise_adagrad", learning_rate, weight_decay=weight_decay, eps=eps,
               initial_accumulator_value=initial_accumulator_value)

  def init_slots(table):
    return (jnp.full(table.shape[:1], initial_accumulator_value, table.dtype),)

  def direction(g, slots, count):
    acc, = slots
    return g / (jnp.sqrt(acc) + eps)[:, None]

  rule = rules.Rule(lambda g, slots: (slots[0] + jnp.mean(g * g, axis=1),), direction)

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

  A row is not written (it keeps its weights, ``m`` and ``v``) when its gradient is not finite
  or, on float32/float64 tables, when a gradient's square overflows (float32: |g| > 1.8e19):
  that test reads the gradients alone, where the moments would need ``m`` and ``v`` read a
  second time. 16-bit tables test the new moments themselves.

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
  _check_hyper("sparse_lazy_adam", learning_rate, weight_decay=weight_decay, eps=eps, b1=b1,
               b2=b2)

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

  def squares(g, slots):
    # the new moments are convex combinations of the finite old ones and of ``g`` and ``g * g``:
    # finite when ``g * g`` is, so the check reads the gradients alone. A little stricter than
    # the moments need (float32: |g| above 1.8e19 is rejected, where ``(1 - b2) * g * g`` would
    # stay finite up to ~5.8e20); 16-bit tables, where that band starts at |g| = 256
    # (float16), check the moments themselves
    if jnp.finfo(g.dtype).bits < 32:
      return (g, *moments(g, slots))
    return (g * g,)

  convex = all(isinstance(b, (int, float)) and 0 <= b <= 1 for b in (b1, b2))
  rule = rules.Rule(moments, direction, squares if convex else None)

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


# the names that moved to their own modules: still attributes here, with a warning
_MOVED = {
    "embedlab.core.localize": ("Localized", "localize", "sum_duplicates"),
    "embedlab.core.sparse_rules": ("Rule", "UPDATE_STRATEGIES", "DENSE_MAX_ROWS_PER_ID",
                                   "choose_update_strategy", "apply_rule"),
}


def __getattr__(name):
  """A name that moved to ``embedlab.core.localize`` or ``embedlab.core.sparse_rules``, with
  a ``DeprecationWarning``."""
  for module, moved in _MOVED.items():
    if name in moved:
      import warnings  # noqa: PLC0415
      warnings.warn(f"embedlab.core.sparse.{name} moved to {module}.{name}; import it from "
                    "there.", DeprecationWarning, stacklevel=2)
      return getattr(importlib.import_module(module), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
