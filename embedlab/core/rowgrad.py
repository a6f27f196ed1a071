"""Row-sparse gradients that flow through optax: ``RowGrad``, ``row_sparse``, ``apply_updates``.

``embedlab.core.sparse`` trains a table row-sparsely through its own ``opt.update(table, state,
row_ids, row_grads)``; this module puts the same arithmetic behind optax's interface, so a
row-sparse table optimizer chains with optax's own transformations and lives in one optimizer
with the dense one of the rest of a model:

  * ``value_and_row_grad(loss_fn, params, ids)`` localizes the rows a batch touches
    (``embedlab.core.localize.localize``), differentiates the loss with respect to them, and returns
    the gradients as a pytree of ``params``' structure whose table leaf is a ``RowGrad``: the
    distinct ids the batch touched and their summed gradient rows. The other leaves are
    ordinary dense gradients.
  * ``row_sparse(sparse_lazy_adam(1e-3))`` is an optax ``GradientTransformation`` that takes
    ``RowGrad`` leaves and returns ``RowGrad`` updates (the same ids, each row's change),
    reading and writing only those rows of its slots. The numbers are the ``sparse_*``
    optimizer's own ``update`` (its ``Rule``, learning rate and weight decay).
  * ``apply_updates(params, updates)`` scatter-adds them into the table, in place when the
    jitted step donates ``params`` (``optax.apply_updates`` works too: ``array + RowGrad`` is
    that scatter-add).

Design: a ``RowGrad`` is a pytree node with one leaf, ``rows`` ``[N, D]``; the int ids are its
*static* data (the node's aux data, compared by identity), not a leaf. optax transformations
map over leaves and take norms over them, so they see the gradient rows only:
``clip_by_global_norm`` gets the dense gradient's norm (each touched row once, duplicates
summed), ``scale*`` scales rows, ``apply_if_finite`` checks rows, ``inject_hyperparams``,
``chain``, ``masked`` and ``multi_transform`` pass the node through. Every transformation here
returns its updates with the *same* ids object, so the two branches of a ``lax.cond``
(``apply_if_finite``) have equal tree structures; a row whose change would not be finite gets
a zero change instead of a new id list.

Consequences, stated plainly:

  * A ``RowGrad`` lives inside one traced step: make it, transform it and apply it in the same
    ``jax.jit`` (as below). It cannot be returned from a jitted function or kept in an
    optimizer's state (its ids are static data, so they would leak out of the trace).
  * Transformations that combine the gradient with dense state of the table's shape cannot take
    it: ``optax.MultiSteps`` (its accumulator), ``optax.trace`` / ``ema`` and the dense
    optimizers (``optax.adam`` given the table). They raise (a tree-structure mismatch, an
    arithmetic operation on a ``RowGrad``, or ``row_sparse`` handed the dense sum ``MultiSteps``
    made) with a message that names the optax function and what to do: route the table to
    ``row_sparse`` with ``optax.multi_transform`` / ``optax.masked``; for gradient
    accumulation, use a larger batch (or sum micro-batch losses in one step) instead of
    ``MultiSteps``.
  * ``embedlab.freeze_rows`` masks a ``RowGrad``'s rows (zero updates); ``value_and_row_grad``'s
    ``row_mask`` drops frozen rows from the ``RowGrad`` itself, so their optimizer state does
    not move either. ``nnx.Optimizer.update`` takes the gradients of
    ``value_and_row_grad(loss_fn, model, ids)`` on an ``nnx`` model.

A jitted step on plain params (``table`` and the optimizer state donated):

  >>> import functools, jax, jax.numpy as jnp, optax, embedlab as el
  >>> params = el.init_table(jax.random.key(0), 1000, 8, padding_id=0)
  >>> tx = optax.chain(optax.clip_by_global_norm(1.0), el.row_sparse(el.sparse_lazy_adam(1e-2)))
  >>> opt_state = tx.init(params)
  >>> @functools.partial(jax.jit, donate_argnums=(0, 1))
  ... def train_step(params, opt_state, ids_BxL, labels_B):
  ...   def loss_fn(params, ids_BxL):
  ...     pooled_BxD = el.bag(params, ids_BxL, mode="mean", padding_id=0)
  ...     return jnp.mean((pooled_BxD.sum(-1) - labels_B) ** 2)
  ...   loss, grads = el.value_and_row_grad(loss_fn, params, ids_BxL, padding_id=0)
  ...   updates, opt_state = tx.update(grads, opt_state, params)
  ...   return el.apply_updates(params, updates), opt_state, loss
  >>> params, opt_state, loss = train_step(params, opt_state, jnp.array([[3, 5, 3, 0]]),
  ...                                      jnp.ones(1))
  >>> int(opt_state[1]["table"].count)
  1
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedlab.core import sparse
from embedlab.core import sparse_rules
from embedlab.core.localize import localize
from embedlab.core.paths import path_matches, path_of

Array = jax.Array

_WHAT_TO_DO = ("route the table to embedlab.row_sparse with optax.multi_transform or "
               "optax.masked (dense optimizers for the other parameters); accumulate gradients by "
               "a larger batch instead of optax.MultiSteps; or take dense gradients with jax.grad")


def _optax_callers() -> str | None:
  """The optax functions on the call stack, innermost first (``update_moment <- ...``)."""
  names, frame = [], sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None and len(names) < 3:
    if frame.f_globals.get("__name__", "").startswith("optax") and \
        "extra_args" not in frame.f_code.co_qualname:
      name = f"optax {frame.f_code.co_qualname.replace('.<locals>', '')}"  # Python >= 3.11
      if name not in names:
        names.append(name)
    frame = frame.f_back
  return " <- ".join(names) if names else None


class _RowGradType(type):
  """``RowGrad``'s class. Its repr names the optax function on the stack, if any: JAX prints
  the class when a transformation maps a ``RowGrad`` together with a dense tree (e.g.
  ``optax.MultiSteps``' accumulator), so that error says what met it and what to do."""

  def __repr__(cls):
    callers = _optax_callers()
    if callers is None:
      return super().__repr__()
    return (f"embedlab.RowGrad (a row-sparse gradient, which {callers} cannot take, as it "
            f"combines it with a dense array of the table's shape: {_WHAT_TO_DO})")


class _Ids:
  """A RowGrad's ids as static data: equal only to itself (a traced array cannot be hashed)."""

  __slots__ = ("array",)

  def __init__(self, array):
    self.array = array

  def __eq__(self, other):
    return self is other

  def __hash__(self):
    return id(self)


class RowGrad(metaclass=_RowGradType):
  """A row-sparse gradient (or update) of a table ``[num_rows, D]``: ``rows[i]`` belongs to row
  ``ids[i]``; ids are distinct, and an id of ``num_rows`` (out of range) stands for no row.

  A pytree with one leaf, ``rows``; the ids are static data (see the module docstring), so
  ``jax.tree.map`` and optax transformations see and change the rows only, and keep the ids.

  Attributes:
    ids: int32 ``[N]``.
    rows: ``[N, D]``.
    num_rows: the table's rows, ``V``.
    dense: True when ``ids[i]`` is ``i`` or ``V`` (``N == V``, from ``localize``'s ``"table"``
      strategy): the rows are then a dense ``[V, D]`` gradient, zero on untouched rows, and
      updates and their application take one pass over the table instead of a gather/scatter.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el
    >>> g = el.RowGrad(jnp.array([4, 1]), jnp.ones((2, 3)), num_rows=6)
    >>> jax.tree.leaves(jax.tree.map(lambda r: 2 * r, g))[0][0].tolist()
    [2.0, 2.0, 2.0]
    >>> (jnp.zeros((6, 3)) + g)[:, 0].tolist()  # added to a table: a scatter-add
    [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
  """

  __slots__ = ("_ids", "rows", "num_rows", "dense")

  def __init__(self, ids: Any, rows: Any, num_rows: int, dense: bool = False):
    self._ids = ids if isinstance(ids, _Ids) else _Ids(jnp.asarray(ids, jnp.int32))
    self.rows = rows
    self.num_rows = int(num_rows)
    self.dense = bool(dense)

  @property
  def ids(self) -> Array:
    return self._ids.array

  def with_rows(self, rows: Any) -> "RowGrad":
    """The same ids (the same static data) with new rows."""
    return RowGrad(self._ids, rows, self.num_rows, self.dense)

  def __repr__(self):
    return (f"RowGrad(ids={self.ids!r}, rows={self.rows!r}, num_rows={self.num_rows}, "
            f"dense={self.dense})")

  def __add__(self, other):
    return _add_to(other, self, "+")

  def __radd__(self, other):
    return _add_to(other, self, "+")

  def _unsupported(self, *args, **kwargs):
    callers = _optax_callers()
    where = f" in {callers}" if callers else ""
    raise TypeError(f"RowGrad: a row-sparse gradient met an operation{where} that needs a "
                    f"dense array (only `table + RowGrad` is defined, as a scatter-add). "
                    f"To fix it: {_WHAT_TO_DO}.")

  __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _unsupported
  __neg__ = __pow__ = __matmul__ = __rmatmul__ = __array__ = _unsupported

  # the pytree protocol: one child, the rows; the ids (by identity), size and layout as aux data
  def tree_flatten(self):
    return (self.rows,), (self._ids, self.num_rows, self.dense)

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey("rows"), self.rows),), (self._ids, self.num_rows, self.dense)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(aux[0], children[0], aux[1], aux[2])


jax.tree_util.register_pytree_with_keys(RowGrad, RowGrad.tree_flatten_with_keys,
                                        RowGrad.tree_unflatten, RowGrad.tree_flatten)


def _is_row_grad(x) -> bool:
  return isinstance(x, RowGrad)


def _add_to(table: Any, g: RowGrad, op: str) -> Array:
  """``table + g``: ``g``'s rows scatter-added into ``table`` (ids out of range dropped)."""
  if isinstance(table, RowGrad) or getattr(table, "ndim", None) != 2 or \
      tuple(table.shape) != (g.num_rows, g.rows.shape[-1]):
    shape = getattr(table, "shape", type(table).__name__)
    raise TypeError(f"RowGrad: `x {op} RowGrad` needs x to be the table of shape "
                    f"({g.num_rows}, {g.rows.shape[-1]}), got {shape}. To fix it: "
                    f"{_WHAT_TO_DO}.")
  rows = g.rows.astype(table.dtype)
  if g.dense:  # zero change on untouched rows: one pass, no scatter
    return table + rows
  return table.at[g.ids].add(rows, mode="drop")


def apply_updates(params: Any, updates: Any) -> Any:
  """``optax.apply_updates`` that also takes ``RowGrad`` leaves: scatter-adds their rows.

  Inside a jitted step that donates ``params``, XLA writes the table in place: the step makes
  no second table-sized buffer.

  Args:
    params: a params pytree.
    updates: the optimizer's updates: its structure, with ``RowGrad`` or dense leaves.

  Returns:
    The new params, each leaf in its own dtype.

  Example:
    >>> import jax.numpy as jnp, embedlab as el
    >>> params = {"table": jnp.zeros((4, 1)), "b": jnp.ones(1)}
    >>> updates = {"table": el.RowGrad(jnp.array([2, 4]), jnp.ones((2, 1)), num_rows=4),
    ...            "b": jnp.ones(1)}
    >>> new = el.apply_updates(params, updates)  # id 4 = 4 rows: no row
    >>> new["table"][:, 0].tolist(), new["b"].tolist()
    ([0.0, 0.0, 1.0, 0.0], [2.0])
  """

  def one(p, u):
    if p is None:
      return None
    if isinstance(u, RowGrad):
      return _add_to(p, u, "+")
    return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)

  return jax.tree.map(one, params, updates, is_leaf=lambda x: x is None)


# ------------------------------------------------------------------------------ gradients


def _find_table(flat, table: str | None, where: str) -> int:
  paths = [path_of(p) for p, _ in flat]
  if table is None:
    bare = [p[:-len("/value")] if p.endswith("/value") else p for p in paths]
    hits = [i for i, p in enumerate(bare) if p.split("/")[-1] in ("table", "embedding")]
    hint = "name it with table='path/to/table'"
  else:
    hits = [i for i, p in enumerate(paths) if path_matches(p, table)]
    hint = "give a pattern that matches exactly one"
  if len(hits) != 1:
    found = ", ".join(paths[i] for i in hits) or "none"
    raise ValueError(f"{where}: {'table=' + repr(table) if table else 'the table'} must name one "
                     f"parameter (a leaf named 'table' or 'embedding' by default); matched: "
                     f"{found}; the parameters are {', '.join(paths)}. To fix it: {hint}.")
  leaf = flat[hits[0]][1]
  if getattr(leaf, "ndim", None) != 2:
    raise ValueError(f"{where}: the table {paths[hits[0]]} must be 2-D [V, D], got "
                     f"{getattr(leaf, 'shape', type(leaf).__name__)}.")
  return hits[0]


def value_and_row_grad(fn: Callable[..., Any], params: Any, ids: Any, *args: Any,
                       table: str | None = None, padding_id: int | None = 0,
                       has_aux: bool = False, oob: str = "error", strategy: str = "auto",
                       gather: Callable[[Array, Array], Array] | None = None,
                       row_mask: Any = None):
  """``jax.value_and_grad`` whose gradient for the embedding table is a ``RowGrad``.

  Gathers the rows ``ids`` touch into a local table (``embedlab.core.localize.localize``), calls
  ``fn(local_params, local_ids, *args)``, where ``local_params`` is ``params`` with the table
  replaced by the local table and ``local_ids`` index it, and differentiates with respect to
  ``local_params``. ``fn`` is the loss written for the full table: ``el.bag`` /
  ``el.lookup`` (or an ``embedlab.Embed`` layer) give the same numbers on the local one.

  Args:
    fn: ``fn(params, ids, *args) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
    params: a params pytree (``{"embed": {"table": ...}, ...}``, an ``nnx.State``), or an
      ``nnx.Module``: then ``fn`` gets the module with the local table in place (only its
      ``nnx.Param`` variables are differentiated; what ``fn`` changes in its other state, such
      as rng counts, is written back to it, as ``nnx.value_and_grad`` does) and the gradients
      are an ``nnx.State`` of its params, ready for ``nnx.Optimizer.update``.
    ids: int ids of any shape, all looked up in the table; checked as ``lookup`` does.
    *args: passed on to ``fn``.
    table: the table's path, a glob (``"embed/table"``, ``"embed/embedding"``); default: the
      one leaf named ``table`` or ``embedding``.
    padding_id: the padding id ``fn`` passes to ``bag`` / ``lookup`` (never updated), or None.
    has_aux, oob, strategy, gather: as ``jax.value_and_grad`` (``has_aux``) and ``localize``.
    row_mask: bool ``[V]``, True where a row is trainable, or None (all are). A frozen row
      takes part in ``fn`` as any other, but the ``RowGrad`` names no row for it (its id is
      ``V``): ``row_sparse`` then changes neither the row nor its optimizer state, as
      ``SparseOptimizer.update``'s ``row_mask`` (``embedlab.freeze_rows`` instead zeros
      updates and leaves the ids, so the slots of a frozen row still move).

  Returns:
    ``(value, grads)``: ``fn``'s value, and gradients of ``params``' structure whose table leaf
    is a ``RowGrad`` (one row per distinct id, duplicates summed; ``ids`` of ``V`` for local
    rows that stand for no table row, with zero rows).

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el
    >>> params = {"embed": {"table": jnp.ones((10, 2))}, "w": jnp.ones(2)}
    >>> def loss_fn(p, ids):
    ...   return jnp.sum(el.lookup(p["embed"], ids, padding_id=0) @ p["w"])
    >>> loss, grads = el.value_and_row_grad(loss_fn, params, jnp.array([4, 7, 4, 0]),
    ...                                     strategy="rows")
    >>> g = grads["embed"]["table"]
    >>> float(loss), g.ids.tolist(), g.rows[:, 0].tolist(), grads["w"].tolist()
    (6.0, [10, 4, 10, 7, 10], [0.0, 2.0, 0.0, 1.0, 0.0], [3.0, 3.0])

    On an ``nnx`` model (``nnx.Optimizer.update(model, grads)`` takes the result; the README's
    "Use it from Python" has the whole step):

    >>> from flax import nnx
    >>> model = nnx.Sequential(el.Embed(10, 2, padding_id=0, rngs=nnx.Rngs(0)))
    >>> _, grads = el.value_and_row_grad(lambda m, ids: m(ids).sum(), model,
    ...                                  jnp.array([[3, 3, 0]]), strategy="rows")
    >>> g = grads["layers"][0]["embedding"].get_value()
    >>> g.ids.tolist(), g.rows[:, 0].tolist()
    ([10, 3, 10, 10], [0.0, 2.0, 0.0, 0.0])

    Frozen rows (``row_mask``): row 7 is read but names no row of the gradient:

    >>> frozen_7 = jnp.arange(10) != 7
    >>> _, grads = el.value_and_row_grad(loss_fn, params, jnp.array([4, 7, 4, 0]),
    ...                                  strategy="rows", row_mask=frozen_7)
    >>> grads["embed"]["table"].ids.tolist()
    [10, 4, 10, 10, 10]
  """
  where = "value_and_row_grad"
  nnx = sys.modules.get("flax.nnx")
  module = nnx is not None and isinstance(params, nnx.Module)
  if module:
    graphdef, state, rest = nnx.split(params, nnx.Param, ...)
  else:
    state = params
  flat, treedef = jax.tree_util.tree_flatten_with_path(state)
  i = _find_table(flat, table, where)
  full = flat[i][1]
  rows = full.shape[0]
  if row_mask is not None and np.shape(row_mask) != (rows,):
    raise ValueError(f"{where}: row_mask must be a bool array of shape ({rows},), one entry per "
                     f"row of the table {path_of(flat[i][0])} (True = trainable), got shape "
                     f"{np.shape(row_mask)}.")
  n = max(1, int(jnp.size(ids)))
  if strategy == "auto":  # as localize's, resolved here to know which one the RowGrad holds
    strategy = ("table" if gather is None
                and sparse_rules.choose_update_strategy(rows, n + 1) == "dense" else "rows")
  local = localize(full, ids, padding_id=padding_id, oob=oob, gather=gather,
                   strategy=strategy)
  leaves = [leaf for _, leaf in flat]
  leaves[i] = local.params["table"]
  local_state = jax.tree_util.tree_unflatten(treedef, leaves)

  def loss(s, rest):  # rest goes in as an argument, so fn may update it inside the trace
    first = nnx.merge(graphdef, s, rest, copy=True) if module else s
    out = fn(first, local.ids, *args)
    value, aux = out if has_aux else (out, None)
    # what fn changed in the module besides its params (rng counts, batch statistics, ...)
    new_rest = nnx.split(first, nnx.Param, ...)[2] if module else None
    return value, (aux, new_rest)

  (value, (aux, new_rest)), grads = jax.value_and_grad(loss, has_aux=True)(
      local_state, rest if module else None)
  if module:
    nnx.update(params, new_rest)
  if has_aux:
    value = (value, aux)
  grad_leaves, grad_def = jax.tree_util.tree_flatten(grads)
  row_ids = local.row_ids
  if row_mask is not None:  # a frozen row: no row (V), as SparseOptimizer.update's row_mask
    trainable = jnp.take(jnp.asarray(row_mask, bool), row_ids, mode="fill", fill_value=False)
    row_ids = jnp.where(trainable, row_ids, rows)
  grad_leaves[i] = RowGrad(row_ids, grad_leaves[i], rows, dense=strategy == "table")
  return value, jax.tree_util.tree_unflatten(grad_def, grad_leaves)


# ------------------------------------------------------------------------------ the optimizer


def row_sparse(optimizer: sparse.SparseOptimizer) -> optax.GradientTransformation:
  """An embedlab row-sparse optimizer as an optax ``GradientTransformation`` over ``RowGrad``s.

  ``init(params)`` makes the optimizer's state (``SparseLazyAdamState`` ...) for every leaf of
  ``params``, each a table ``[V, D]``: give it the tables only, through
  ``optax.multi_transform`` or ``optax.masked``. ``update(grads, state, params)`` takes a
  ``RowGrad`` per table and returns its updates as ``RowGrad``s with the same ids: ``-lr *
  (step + weight_decay * row)`` per touched row, the rule of ``optimizer.update`` (the same
  numbers), reading and writing only those rows of the slots. ``params`` is needed only with
  weight decay. A row whose change or state would not be finite is not changed (zero update).

  The optimizer's learning rate may be an optax schedule (of its own update count); to read or
  change it in the state, wrap a factory: ``optax.inject_hyperparams(lambda learning_rate:
  el.row_sparse(el.sparse_lazy_adam(learning_rate)))(learning_rate=schedule)``.

  Args:
    optimizer: one of ``embedlab.core.sparse``'s optimizers (``sparse_lazy_adam(1e-3)``, ...).

  Returns:
    An ``optax.GradientTransformation``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, embedlab as el
    >>> params = {"embed": {"table": jnp.zeros((5, 2))}, "w": jnp.ones(2)}
    >>> labels = {"embed": {"table": "rows"}, "w": "dense"}
    >>> tx = optax.multi_transform({"rows": el.row_sparse(el.sparse_sgd(0.5)),
    ...                             "dense": optax.adam(0.1)}, labels)
    >>> grads = {"embed": {"table": el.RowGrad(jnp.array([3]), jnp.ones((1, 2)), num_rows=5)},
    ...          "w": jnp.ones(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> el.apply_updates(params, updates)["embed"]["table"][:, 0].tolist()
    [0.0, 0.0, 0.0, -0.5, 0.0]
  """
  if not isinstance(optimizer, sparse.SparseOptimizer) or optimizer.rule is None:
    raise TypeError(f"row_sparse: expected one of embedlab.core.sparse's optimizers "
                    f"({', '.join(sorted(sparse.SPARSE_OPTIMIZERS))}), got "
                    f"{type(optimizer).__name__}.")
  rule, learning_rate, weight_decay = (optimizer.rule, optimizer.learning_rate,
                                       optimizer.weight_decay)

  def init(params):
    # nnx.Optimizer initialises from the model's variables (nnx.Param) and updates with their
    # values: the state is built on the values, so both see the same tree
    nnx = sys.modules.get("flax.nnx")

    def is_variable(x):
      return nnx is not None and isinstance(x, nnx.Variable)

    def one(path, leaf):
      if is_variable(leaf):
        leaf = leaf.get_value()
      if getattr(leaf, "ndim", None) != 2:
        raise ValueError(f"row_sparse.init: parameter {path_of(path)} has shape "
                         f"{getattr(leaf, 'shape', None)}, not a table [V, D]. Give row_sparse "
                         f"the tables only, with optax.multi_transform or optax.masked.")
      return optimizer.init(leaf)
    return jax.tree_util.tree_map_with_path(one, params, is_leaf=is_variable)

  def update(updates, state, params=None):
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_row_grad)
    states = treedef.flatten_up_to(state)
    tables = treedef.flatten_up_to(params) if params is not None else [None] * len(flat)
    new_updates, new_states = [], []
    for (path, g), s, t in zip(flat, states, tables):
      if not isinstance(g, RowGrad):
        callers = _optax_callers()
        met = (f" (it came through {callers}, which made it dense: {_WHAT_TO_DO})"
               if callers else "")
        raise TypeError(f"row_sparse.update: the gradient of {path_of(path)} is a "
                        f"{type(g).__name__}, not a RowGrad{met}. Take the table's gradient with "
                        f"el.value_and_row_grad, and give dense parameters a dense optimizer "
                        f"through optax.multi_transform.")
      if weight_decay and t is None:
        raise ValueError("row_sparse.update: weight decay needs the params: call "
                         "update(grads, state, params).")
      u, s = _update_rows(rule, learning_rate, weight_decay, g, s, t)
      new_updates.append(u)
      new_states.append(s)
    return treedef.unflatten(new_updates), treedef.unflatten(new_states)

  return optax.GradientTransformation(init, update)


def _update_rows(rule: sparse_rules.Rule, learning_rate, weight_decay, g: RowGrad, state, table):
  """One table's update: ``embedlab.core.sparse_rules.apply_rule`` on the ``RowGrad``'s rows,
  returned as a change (zero where a weight or its row's state would not be finite)."""
  slots = tuple(state[1:])
  rows = slots[0].shape[0] if slots else g.num_rows
  if rows != g.num_rows:
    raise ValueError(f"row_sparse.update: a RowGrad of a {g.num_rows}-row table met the state "
                     f"of a {rows}-row table.")
  dtype = table.dtype if table is not None else g.rows.dtype
  lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
  count = state.count + 1
  ids = g.ids
  if g.dense:  # the rows are the whole table's: no gather, no scatter
    slot_rows, table_rows = slots, table
  else:
    slot_rows = tuple(jnp.take(s, ids, axis=0, mode="clip") for s in slots)
    table_rows = None if table is None else jnp.take(table, ids, axis=0, mode="clip")
  change, keep, slot_rows = sparse_rules.apply_rule(
      rule, g.rows.astype(dtype), slot_rows, count, jnp.asarray(lr, dtype), weight_decay,
      table_rows if weight_decay else None, ids < rows, whole_table=g.dense)
  # the ids stay as they are (the same static data in and out)
  change = jnp.where(keep & jnp.isfinite(change), change, 0).astype(dtype)
  if not g.dense:
    slots = tuple(s.at[ids].set(r, mode="drop") for s, r in zip(slots, slot_rows))
  else:
    slots = slot_rows
  return g.with_rows(change), type(state)(count, *slots)
