"""Optimizers for embedding models: optax chains, with freezing and weight decay as masks.

Freezing lives in the optimizer, never in the model: a frozen table gets ``optax.set_to_zero``
through ``optax.multi_transform``; frozen *rows* (e.g. the pretrained ones) get their updates
zeroed by ``freeze_rows`` as the last transformation, so nothing (momentum, weight decay) moves
them. Weight decay is masked by parameter path the same way and is applied before the
learning-rate scaling.

  >>> import jax, jax.numpy as jnp, optax, embedlab as el
  >>> params = {"embed": el.init_table(jax.random.key(0), 5, 2), "out": {"w": jnp.ones((2, 2))}}
  >>> tx = el.freeze(optax.sgd(0.1), params, frozen=["embed/table"])
  >>> updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  >>> float(abs(updates["embed"]["table"]).sum()), round(float(updates["out"]["w"][0, 0]), 6)
  (0.0, -0.1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedlab.core import names
from embedlab.core.paths import param_paths, path_matches, path_of, values_of
from embedlab.core.rowgrad import RowGrad


def path_mask(params: Any, patterns: Iterable[str] | Callable[[str, Any], bool]) -> Any:
  """A pytree of bools, True where a leaf's path matches one of the glob ``patterns``
  (``"embed/*"``) or where ``patterns(path, leaf)`` is true.

  Raises ``ValueError`` for a pattern that matches no parameter (a typo freezes nothing).
  Flax ``nnx`` params (an ``nnx.State``) are read by value: the mask has the values' tree and
  the paths Flax gives them (``"embed/embedding"``; ``".../value"`` matches too).

  Example:
    >>> import jax.numpy as jnp
    >>> path_mask({"embed": {"table": jnp.ones(2)}, "b": jnp.ones(1)}, ["embed/*"])
    {'b': False, 'embed': {'table': True}}
  """
  params = values_of(params)
  if callable(patterns):
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(patterns(path_of(p), x)), params)
  patterns = list(patterns)
  paths = param_paths(params)
  for pattern in patterns:
    if not any(path_matches(p, pattern) for p in paths):
      raise ValueError(f"path_mask: pattern {pattern!r} matches no parameter; the parameters "
                       f"are {', '.join(paths)}.")
  return jax.tree_util.tree_map_with_path(
      lambda p, _: any(path_matches(path_of(p), pat) for pat in patterns), params)


def freeze(optimizer: optax.GradientTransformation, params: Any,
           frozen: Iterable[str] | Callable[[str, Any], bool]) -> optax.GradientTransformation:
  """Wraps ``optimizer`` so that the parameters matching ``frozen`` never change.

  Uses ``optax.multi_transform`` with ``optax.set_to_zero`` for the frozen labels, so the
  frozen parameters carry no optimizer state either. ``params`` may be an ``nnx.State`` (e.g.
  ``nnx.state(model, nnx.Param)``, for ``nnx.Optimizer``), named by Flax's paths.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import embedlab as el
    >>> model = nnx.Sequential(el.Embed(5, 2, rngs=nnx.Rngs(0)), nnx.Linear(2, 1, rngs=nnx.Rngs(0)))
    >>> tx = el.freeze(optax.sgd(0.1), nnx.state(model, nnx.Param), ["layers/0/embedding"])
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> table = model.layers[0].embedding[...]
    >>> grads = nnx.grad(lambda m: m(jnp.array([1, 2])).sum())(model)
    >>> _ = optimizer.update(model, grads)
    >>> bool((model.layers[0].embedding[...] == table).all())
    True
  """
  mask = path_mask(params, frozen)
  labels = jax.tree.map(lambda m: "frozen" if m else "trained", mask)
  return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)


class FreezeRowsState(NamedTuple):
  """No state: the row masks are static data passed to ``freeze_rows``."""


def freeze_rows(row_masks: dict[str, Any]) -> optax.GradientTransformation:
  """Zeros the updates of frozen rows: ``row_masks`` maps a table's path (``"embed/table"``)
  to a bool array ``[rows]``, True where the row is trainable. Put it last in the chain.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> params = {"embed": {"table": jnp.ones((3, 2))}}
    >>> tx = optax.chain(optax.sgd(1.0), freeze_rows({"embed/table": jnp.array([0, 1, 1], bool)}))
    >>> u, _ = tx.update(params, tx.init(params))
    >>> (u["embed"]["table"][:, 0] + 0.0).tolist()  # + 0.0: no -0.0
    [0.0, -1.0, -1.0]
  """
  if not isinstance(row_masks, Mapping):
    raise TypeError(f"freeze_rows: row_masks must map a table's path to a bool array [rows] "
                    f"(True: trainable), e.g. {{'embed/table': mask}}; got "
                    f"{type(row_masks).__name__}.")
  masks = {}
  for path, mask in row_masks.items():
    dtype = getattr(mask, "dtype", None) or np.asarray(mask).dtype
    if np.dtype(dtype) != np.bool_ or np.ndim(mask) != 1:
      # row ids would be read as truthy values, and a short mask freezes the rows past it
      raise TypeError(f"freeze_rows: the mask of {path!r} must be a 1-D bool array [rows] (True: "
                      f"trainable), got {np.dtype(dtype).name}{list(np.shape(mask))}. To freeze "
                      "rows by id: mask = np.ones(rows, bool); mask[ids] = False.")
    masks[path] = jnp.asarray(mask, bool)
  row_masks = masks

  def init(params):
    leaves = [(path_of(p), x) for p, x in
              jax.tree_util.tree_flatten_with_path(values_of(params))[0]]
    paths = [p for p, _ in leaves]
    missing = [k for k in row_masks if not any(path_matches(p, k) for p in paths)]
    if missing:
      raise ValueError(f"freeze_rows: no parameter at {sorted(missing)}; the parameters are "
                       f"{', '.join(paths)}.")
    for pattern, mask in row_masks.items():
      for path, x in leaves:
        if path_matches(path, pattern) and (np.ndim(x) < 1 or np.shape(x)[0] != mask.shape[0]):
          raise ValueError(f"freeze_rows: the mask of {pattern!r} has {mask.shape[0]} rows but "
                           f"{path} has shape {list(np.shape(x))}; give one flag per row.")
    return FreezeRowsState()

  def update(updates, state, params=None):
    del params

    def apply(path, u):
      mask = next((m for k, m in row_masks.items() if path_matches(path_of(path), k)), None)
      if mask is None:
        return u
      if isinstance(u, RowGrad):  # the rows of its ids (ids out of range: no row)
        keep = jnp.take(mask, u.ids, mode="fill", fill_value=False)
        return u.with_rows(u.rows * keep[:, None].astype(u.rows.dtype))
      return u * mask.reshape((-1,) + (1,) * (u.ndim - 1)).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(apply, updates,
                                            is_leaf=lambda x: isinstance(x, RowGrad)), state

  return optax.GradientTransformation(init, update)


def decay_mask(params: Any, frozen_mask: Any = None) -> Any:
  """Which leaves get weight decay: matrices and tables (ndim >= 2), not biases, not frozen."""
  mask = jax.tree.map(lambda x: x.ndim >= 2, params)
  if frozen_mask is not None:
    mask = jax.tree.map(lambda m, f: m and not f, mask, frozen_mask)
  return mask


def make_schedule(name: str, learning_rate: float, total_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
  """``constant``, ``cosine``, ``linear`` (to zero) or ``warmup_cosine`` learning rates."""
  total_steps = max(int(total_steps), 1)
  if name == "constant":
    base = optax.constant_schedule(learning_rate)
  elif name == "cosine":
    base = optax.cosine_decay_schedule(learning_rate, total_steps)
  elif name == "linear":
    base = optax.linear_schedule(learning_rate, 0.0, total_steps)
  elif name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(warmup_steps, 1),
                                              total_steps)
  else:
    raise ValueError(f"make_schedule: unknown schedule {name!r}; use one of "
                     f"{', '.join(names.SCHEDULES)}.")
  if warmup_steps:
    warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warm, base], [warmup_steps])
  return base


# The dense optimizers by name: each the optax transformation that scales the gradient
# (the learning rate and weight decay are chained around it by ``make_optimizer``).
DENSE_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": lambda momentum: optax.identity(),
    "momentum": lambda momentum: optax.trace(decay=momentum),
    "adam": lambda momentum: optax.scale_by_adam(),
    "adamw": lambda momentum: optax.scale_by_adam(),
    "adagrad": lambda momentum: optax.scale_by_rss(initial_accumulator_value=0.1),
}
assert tuple(DENSE_OPTIMIZERS) == tuple(names.DENSE_OPTIMIZERS), "see embedlab.core.names"


def make_optimizer(name: str, params: Any, total_steps: int, *, learning_rate: float,
                   schedule: str = "constant", warmup_steps: int = 0, clip_norm: float = 0.0,
                   weight_decay: float = 0.0, momentum: float = 0.9,
                   frozen: Iterable[str] = (),
                   row_masks: dict[str, Any] | None = None) -> optax.GradientTransformation:
  """Builds a dense optax optimizer: ``name`` one of ``DENSE_OPTIMIZERS``.

  Order: clip -> [L2 decay, masked] -> scale (sgd / momentum / adam / adagrad) -> [decoupled
  decay for adamw, masked] -> learning rate -> frozen rows zeroed; frozen tables through
  ``freeze``. Weight decay always precedes the learning-rate scaling, so it is scaled by it.

  Example:
    >>> import jax.numpy as jnp
    >>> params = {"w": jnp.ones((2, 2))}
    >>> tx = make_optimizer("adamw", params, 100, learning_rate=1e-3, weight_decay=0.01)
    >>> updates, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
    >>> updates["w"].shape
    (2, 2)
  """
  if name not in DENSE_OPTIMIZERS:
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; use one of "
                     f"{', '.join(DENSE_OPTIMIZERS)}.")
  frozen = list(frozen)
  frozen_mask = path_mask(params, frozen) if frozen else None
  wd_mask = decay_mask(params, frozen_mask)
  parts = []
  if clip_norm:
    parts.append(optax.clip_by_global_norm(clip_norm))
  decay = optax.masked(optax.add_decayed_weights(weight_decay), wd_mask)
  if weight_decay and name != "adamw":
    parts.append(decay)
  parts.append(DENSE_OPTIMIZERS[name](momentum))
  if weight_decay and name == "adamw":
    parts.append(decay)
  parts.append(optax.scale_by_learning_rate(
      make_schedule(schedule, learning_rate, total_steps, warmup_steps)))
  if row_masks:
    parts.append(freeze_rows(row_masks))
  tx = optax.chain(*parts)
  return freeze(tx, params, frozen) if frozen else tx
