"""How bags are pooled: one implementation for every bag path, and the strategies for padded bags.

``pool_vectors`` (with its parts ``masked_weights``, ``weighted_sum``, ``finish`` and
``max_pool``) is the only pooling code: ``embedlab.bag`` (padded and ragged),
``variants.contract.bag_lookup`` (the bags of every table variant that does not pool rows),
``sharding.sharded_bag`` and the train step's ``tables.pool_vectors`` all call it. Sums
accumulate in ``accumulation_dtype`` (float32 at least, whatever the table's dtype) and the
result is cast back; positions that are not part of a bag (padding, ids out of range under
``oob="zero"``) are left out with ``jnp.where``, so a NaN or inf weight or row there changes
nothing, as in PyTorch's ``EmbeddingBag``.

Padded bags ``[B, L]`` are gathered and pooled by ``pool_padded``, which checks their ids with
``embedlab.core.ids_lib.normalize_ids`` first.

Three ways to compute ``sum_l w[b, l] * table[ids[b, l]]``:

  * ``take``: gather ``[B, L, D]`` with ``jnp.take``, then contract over ``L``. One big gather,
    which accelerators do in parallel; on CPU it writes and reads the whole ``[B, L, D]``
    array through memory.
  * ``scan``: ``lax.scan`` over the ``L`` positions, gathering ``[B, D]`` and accumulating;
    never materialises ``[B, L, D]``. Its gradient is the same scatter-add into the table's
    (or the localized table's) rows, one position at a time, so it stays row-sparse.
  * ``segment``: gather the flattened ``[B*L, D]`` and ``segment_sum`` it into bags (how the
    ragged layout pools).

Measured on a 2-core CPU (``benchmarks/pooling.py``; BENCHMARKS.md, "Pooling strategies"):
``scan`` is several times faster than ``take`` for forward once ``[B, L, D]`` is large (for
1M x 128, 16,384 bags of 64: about 47 ms against 250 ms) and about level on small shapes, so
``choose_strategy`` picks ``scan`` on CPU when ``[B, L, D]`` is at least
``SCAN_MIN_BYTES`` and ``take`` otherwise and on other backends (not measured here: GPUs and
TPUs gather in parallel, and a scan would serialise the ``L`` steps). ``max`` always uses
``take``: a running maximum would split the gradient between tied rows differently from
``jnp.max``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import ids as ids_lib

Array = jax.Array

STRATEGIES = ("take", "scan", "segment")
SCAN_MIN_BYTES = 1 << 21  # [B, L, D] at least 2 MiB: scan on CPU.


def choose_strategy(batch: int, bag_len: int, features: int, itemsize: int, mode: str,
                    backend: str | None = None) -> str:
  """The pooling strategy ``bag`` uses for padded bags of this shape on this backend.

  Args:
    batch, bag_len, features: B, L and D.
    itemsize: bytes per number of the pooled rows (4 for float32).
    mode: the bag mode (``sum``, ``mean``, ``sqrtn``, ``max``).
    backend: ``jax.default_backend()`` when None.

  Returns:
    One of ``STRATEGIES``.

  Example:
    >>> from embedlab.core.pooling import choose_strategy
    >>> choose_strategy(16384, 64, 128, 4, "sum", "cpu"), choose_strategy(8, 4, 16, 4, "sum", "cpu")
    ('scan', 'take')
  """
  backend = jax.default_backend() if backend is None else backend
  if mode == "max" or backend != "cpu" or bag_len < 2:
    return "take"
  return "scan" if batch * bag_len * features * itemsize >= SCAN_MIN_BYTES else "take"


def accumulation_dtype(dtype: Any) -> np.dtype:
  """The dtype sums are accumulated in: ``dtype`` promoted to at least float32 (a bfloat16
  sum of 1000 ones would stop at 256).

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import accumulation_dtype
    >>> accumulation_dtype(jnp.bfloat16)
    dtype('float32')
  """
  return np.dtype(jnp.promote_types(dtype, jnp.float32))


def masked_weights(mask: Array, weights: Any, dtype: Any) -> Array:
  """Per-position weights in ``accumulation_dtype(dtype)``: ``weights`` (1 where None) at the
  bag's positions and exactly 0 where ``mask`` is False, set with ``jnp.where`` so a NaN or inf
  weight at a padding position is ignored (as PyTorch's ``EmbeddingBag``).

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import masked_weights
    >>> masked_weights(jnp.array([True, False]), jnp.array([2.0, jnp.nan]), jnp.float32).tolist()
    [2.0, 0.0]
  """
  acc = accumulation_dtype(dtype)
  if weights is None:
    return mask.astype(acc)
  return jnp.where(mask, jnp.asarray(weights).astype(acc), jnp.zeros((), acc))


def weighted_sum(vecs: Array, w: Array, mask: Array, *, segment_ids: Array | None = None,
                 num_bags: int | None = None, indices_are_sorted: bool = False) -> Array:
  """``sum_i w_i v_i`` per bag in ``w``'s (accumulation) dtype; positions where ``mask`` is
  False add exactly nothing (``jnp.where``).

  Args:
    vecs: ``[B, L, D]`` (padded bags) or ``[N, D]`` (ragged, with ``segment_ids`` ``[N]`` and
      ``num_bags``).
    w: ``masked_weights`` of the positions, ``[B, L]`` or ``[N]``.
    mask: bool, True at the bags' positions.

  Returns:
    ``[B, D]`` or ``[num_bags, D]`` in ``w.dtype``.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import weighted_sum
    >>> weighted_sum(jnp.ones((1, 2, 1)), jnp.array([[1.0, 0.0]]), jnp.array([[True, False]]))
    Array([[1.]], dtype=float32)
  """
  products = jnp.where(mask[..., None], w[..., None] * vecs.astype(w.dtype),
                       jnp.zeros((), w.dtype))
  if segment_ids is None:
    return products.sum(axis=-2)
  return jax.ops.segment_sum(products, segment_ids, num_bags,
                             indices_are_sorted=indices_are_sorted)


def finish(total: Array, w: Array, mode: str, dtype: Any, *, segment_ids: Array | None = None,
           num_bags: int | None = None, indices_are_sorted: bool = False) -> Array:
  """A bag's weighted sum divided as ``mode`` says (``sum``: by 1, ``mean``: by ``sum w``,
  ``sqrtn``: by ``sqrt(sum w^2)``), in the accumulation dtype, then cast to ``dtype``. A bag
  whose divisor is 0 (no ids) gives zeros, with zero (never NaN) gradients.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import finish
    >>> finish(jnp.array([[3.0], [0.0]]), jnp.array([[1.0, 2.0], [0.0, 0.0]]), "mean",
    ...        jnp.float32).tolist()
    [[1.0], [0.0]]
  """
  if mode == "sum":
    return total.astype(dtype)
  per_position = w if mode == "mean" else w * w
  if segment_ids is None:
    denom = per_position.sum(axis=-1)
  else:
    denom = jax.ops.segment_sum(per_position, segment_ids, num_bags,
                                indices_are_sorted=indices_are_sorted)
  if mode == "sqrtn":
    denom = jnp.sqrt(denom)
  ok = denom != 0
  out = jnp.where(ok[:, None], total / jnp.where(ok, denom, 1)[:, None], 0)
  return out.astype(dtype)


def max_pool(vecs: Array, mask: Array, *, segment_ids: Array | None = None,
             num_bags: int | None = None) -> Array:
  """Element-wise max over each bag's positions where ``mask`` is True; an empty bag gives
  zeros. Exact in any dtype (nothing is accumulated).

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import max_pool
    >>> max_pool(jnp.array([[[1.0], [5.0]]]), jnp.array([[True, False]])).tolist()
    [[1.0]]
  """
  neg = jnp.array(-jnp.inf, vecs.dtype)
  masked = jnp.where(mask[..., None], vecs, neg)
  if segment_ids is None:
    best = jnp.max(masked, axis=-2, initial=neg)
    present = mask.any(axis=-1)
  else:
    best = jax.ops.segment_max(masked, segment_ids, num_bags)
    present = jax.ops.segment_sum(mask.astype(jnp.int32), segment_ids, num_bags) > 0
  return jnp.where(present[:, None], best, jnp.zeros((), vecs.dtype))


def pool_vectors(vecs: Array, mask: Array, mode: str, *, weights: Any = None,
                 segment_ids: Array | None = None, num_bags: int | None = None,
                 dtype: Any = None, indices_are_sorted: bool = False) -> Array:
  """The one pooling of vectors already gathered, for every bag path (``embedlab.bag``,
  ``pool_padded``, ``variants.contract.bag_lookup``, ``sharding.sharded_bag`` share its parts).

  Args:
    vecs: ``[B, L, D]`` (padded bags) or ``[N, D]`` (ragged: ``segment_ids`` ``[N]`` name each
      vector's bag, ``num_bags`` the number of bags).
    mask: bool ``[B, L]`` / ``[N]``, True at the bags' positions (False at padding).
    mode: ``sum``, ``mean``, ``sqrtn`` or ``max`` (see ``embedlab.bag``).
    weights: per-position weights of ``mask``'s shape (1 when None; ignored where ``mask`` is
      False, even when NaN or inf); ``max`` takes none.
    dtype: the result's dtype (default ``vecs.dtype``); sums are accumulated in
      ``accumulation_dtype(dtype)`` (float32 at least).

  Returns:
    ``[B, D]`` or ``[num_bags, D]`` of ``dtype``; an empty bag gives zeros.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import pool_vectors
    >>> ones = jnp.ones((1000, 1), jnp.bfloat16)
    >>> pool_vectors(ones, jnp.ones(1000, bool), "sum", segment_ids=jnp.zeros(1000, "int32"),
    ...              num_bags=1)
    Array([[1000]], dtype=bfloat16)
  """
  dtype = vecs.dtype if dtype is None else jnp.dtype(dtype)
  layout = dict(segment_ids=segment_ids, num_bags=num_bags)
  if mode == "max":
    return max_pool(vecs, mask, **layout).astype(dtype)
  w = masked_weights(mask, weights, dtype)
  total = weighted_sum(vecs, w, mask, indices_are_sorted=indices_are_sorted, **layout)
  return finish(total, w, mode, dtype, indices_are_sorted=indices_are_sorted, **layout)


def pool_padded(table: Array, ids_BxL: Any, w_BxL: Any, mask_BxL: Any, mode: str, *,
                compute_dtype: Any = None, strategy: str = "auto", oob: str = "error",
                padding_id: int | None = None, where: str = "pool_padded") -> Array:
  """Gathers and pools padded bags: ``Array[B, D]`` (``embedlab.bag``'s padded layout).

  Args:
    table: ``Array[V, D]``.
    ids_BxL: integer ids, checked by ``embedlab.core.ids_lib.normalize_ids`` under ``oob`` (as
      ``embedlab.lookup``: out-of-range ids raise by default).
    w_BxL: per-position weights, or None (1); only read at the bags' positions.
    mask_BxL: bool, True at the bags' positions, or None (all of them, except ``padding_id``).
    mode: ``sum``, ``mean``, ``sqrtn`` or ``max`` (see ``embedlab.bag``).
    compute_dtype: cast the gathered rows to this dtype (None: the table's); sums accumulate in
      float32 at least and the result has this dtype.
    strategy: ``auto`` (``choose_strategy``) or one of ``STRATEGIES``.
    oob, padding_id: as ``embedlab.bag``.
    where: the name error messages start with.

  Returns:
    ``Array[B, D]``; an empty bag gives zeros with finite (zero) gradients.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.pooling import pool_padded
    >>> ids = jnp.array([[1, 2, 0]])
    >>> pool_padded(jnp.arange(12.0).reshape(4, 3), ids, None, None, "mean", padding_id=0,
    ...             strategy="scan")
    Array([[4.5, 5.5, 6.5]], dtype=float32)
  """
  dtype = jnp.dtype(table.dtype if compute_dtype is None else compute_dtype)
  if np.ndim(ids_BxL) != 2:
    raise ValueError(f"{where}: ids must be 2-D [batch, bag_len], got shape "
                     f"{np.shape(ids_BxL)}.")
  if w_BxL is not None and np.shape(w_BxL) != np.shape(ids_BxL):
    raise ValueError(f"{where}: weights must have the shape of ids {np.shape(ids_BxL)}, got "
                     f"{np.shape(w_BxL)}.")
  checked = ids_lib.normalize_ids(ids_BxL, table.shape[0], oob=oob, padding_id=padding_id,
                                 where=where)
  mask = jnp.ones(checked.ids.shape, bool) if mask_BxL is None else jnp.asarray(mask_BxL, bool)
  if checked.keep is not None:
    mask = mask & checked.keep
  batch, bag_len = checked.ids.shape
  if strategy == "auto":
    strategy = choose_strategy(batch, bag_len, table.shape[1], dtype.itemsize, mode)
  if strategy not in STRATEGIES:
    raise ValueError(f"{where}: strategy={strategy!r} is not 'auto' or one of "
                     f"{', '.join(STRATEGIES)}.")
  if mode == "max" and strategy != "take":
    raise ValueError(f"{where}: mode='max' is pooled with strategy='take' only.")
  return _pool_padded(table, checked.ids, w_BxL, mask, mode, dtype, strategy)


@functools.partial(jax.jit, static_argnames=("mode", "dtype", "strategy"))
def _pool_padded(table, ids_BxL, w_BxL, mask_BxL, mode, dtype, strategy):
  if strategy == "take" or mode == "max":
    vecs_BxLxD = jnp.take(table, ids_BxL, axis=0, mode="clip").astype(dtype)
    return pool_vectors(vecs_BxLxD, mask_BxL, mode, weights=w_BxL, dtype=dtype)
  if strategy == "segment":
    batch, bag_len = ids_BxL.shape
    vecs_NxD = jnp.take(table, ids_BxL.reshape(-1), axis=0, mode="clip").astype(dtype)
    bag_N = jnp.repeat(jnp.arange(batch), bag_len, total_repeat_length=batch * bag_len)
    weights_N = None if w_BxL is None else jnp.reshape(w_BxL, -1)
    return pool_vectors(vecs_NxD, mask_BxL.reshape(-1), mode, weights=weights_N,
                        segment_ids=bag_N, num_bags=batch, dtype=dtype, indices_are_sorted=True)
  w_BxL = masked_weights(mask_BxL, w_BxL, dtype)
  total_BxD = _scan_weighted_sum(table, ids_BxL, w_BxL, mask_BxL, dtype)
  return finish(total_BxD, w_BxL, mode, dtype)


def _scan_weighted_sum(table, ids_BxL, w_BxL, mask_BxL, dtype):
  acc_dtype = w_BxL.dtype

  def add_position(acc_BxD, position):
    ids_B, w_B, mask_B = position
    vecs_BxD = jnp.take(table, ids_B, axis=0, mode="clip").astype(dtype)
    return acc_BxD + weighted_sum(vecs_BxD[:, None], w_B[:, None], mask_B[:, None]), None

  acc_BxD = jnp.zeros((ids_BxL.shape[0], table.shape[1]), acc_dtype)
  acc_BxD, _ = jax.lax.scan(add_position, acc_BxD, (ids_BxL.T, w_BxL.T, mask_BxL.T))
  return acc_BxD
