"""How ``bag`` pools padded bags ``[B, L]``: one contract, a strategy chosen per backend and shape.

Three ways to compute ``sum_l w[b, l] * table[ids[b, l]]``:

  * ``take``: gather ``[B, L, D]`` with ``jnp.take``, then contract over ``L``. One big gather,
    which accelerators do in parallel; on CPU it writes and reads the whole ``[B, L, D]``
    array through memory.
  * ``scan``: ``lax.scan`` over the ``L`` positions, gathering ``[B, D]`` and accumulating;
    never materialises ``[B, L, D]``. Its gradient is the same scatter-add into the table's
    (or the localized table's) rows, one position at a time, so it stays row-sparse.
  * ``segment``: gather the flattened ``[B*L, D]`` and ``segment_sum`` it into bags (how the
    ragged layout pools).

Measured on a 2-core CPU (``benchmarks/pooling.py``, figures in ``benchmarks/RESULTS_sparse.md``):
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
    >>> from embedlab.pooling import choose_strategy
    >>> choose_strategy(16384, 64, 128, 4, "sum", "cpu"), choose_strategy(8, 4, 16, 4, "sum", "cpu")
    ('scan', 'take')
  """
  backend = jax.default_backend() if backend is None else backend
  if mode == "max" or backend != "cpu" or bag_len < 2:
    return "take"
  return "scan" if batch * bag_len * features * itemsize >= SCAN_MIN_BYTES else "take"


@functools.partial(jax.jit, static_argnames=("mode", "compute_dtype", "strategy"))
def pool_padded(table: Array, ids_BxL: Array, w_BxL: Array, mask_BxL: Array, mode: str, *,
                compute_dtype: Any = None, strategy: str = "auto") -> Array:
  """Pools padded bags: ``Array[B, D]``, for ``embedlab.bag``'s padded layout.

  Args:
    table: ``Array[V, D]``.
    ids_BxL: int ids; gathered with ``mode="clip"``, so out-of-range ids must be masked out.
    w_BxL: per-position weights, 0 where ``mask_BxL`` is False, in the pooled dtype.
    mask_BxL: bool, True at the bag's real positions.
    mode: ``sum``, ``mean``, ``sqrtn`` or ``max`` (see ``embedlab.bag``).
    compute_dtype: cast the gathered rows to this dtype (None: the table's).
    strategy: ``auto`` (``choose_strategy``) or one of ``STRATEGIES``.

  Returns:
    ``Array[B, D]``; an empty bag gives zeros with finite (zero) gradients.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.pooling import pool_padded
    >>> ids = jnp.array([[1, 2, 0]]); mask = ids != 0
    >>> pool_padded(jnp.arange(12.0).reshape(4, 3), ids, mask * 1.0, mask, "mean",
    ...             strategy="scan")
    Array([[4.5, 5.5, 6.5]], dtype=float32)
  """
  dtype = jnp.dtype(table.dtype if compute_dtype is None else compute_dtype)
  batch, bag_len = ids_BxL.shape
  features = table.shape[1]
  if strategy == "auto":
    strategy = choose_strategy(batch, bag_len, features, dtype.itemsize, mode)
  if strategy not in STRATEGIES:
    raise ValueError(f"pool_padded: strategy={strategy!r} is not 'auto' or one of "
                     f"{', '.join(STRATEGIES)}.")
  if mode == "max":
    if strategy != "take":
      raise ValueError("pool_padded: mode='max' is pooled with strategy='take' only.")
    vecs_BxLxD = jnp.take(table, ids_BxL, axis=0, mode="clip").astype(dtype)
    best = jnp.max(jnp.where(mask_BxL[..., None], vecs_BxLxD, -jnp.inf), axis=1,
                   initial=-jnp.inf)
    return jnp.where(mask_BxL.any(1, keepdims=True), best, 0).astype(dtype)
  w_BxL = w_BxL.astype(dtype)
  if strategy == "take":
    vecs_BxLxD = jnp.take(table, ids_BxL, axis=0, mode="clip").astype(dtype)
    total_BxD = jnp.einsum("bl,bld->bd", w_BxL, vecs_BxLxD)
  elif strategy == "segment":
    vecs_NxD = jnp.take(table, ids_BxL.reshape(-1), axis=0, mode="clip").astype(dtype)
    bag_N = jnp.repeat(jnp.arange(batch), bag_len, total_repeat_length=batch * bag_len)
    total_BxD = jax.ops.segment_sum(vecs_NxD * w_BxL.reshape(-1, 1), bag_N, batch,
                                    indices_are_sorted=True)
  else:
    total_BxD = _scan_weighted_sum(table, ids_BxL, w_BxL, dtype)
  if mode == "sum":
    return total_BxD
  denom_B = w_BxL.sum(1) if mode == "mean" else jnp.sqrt((w_BxL ** 2).sum(1))
  ok = denom_B[:, None] != 0
  return jnp.where(ok, total_BxD / jnp.where(ok, denom_B[:, None], 1), 0)


def _scan_weighted_sum(table, ids_BxL, w_BxL, dtype):
  # Accumulate in at least float32: bfloat16 sums over long bags lose digits.
  acc_dtype = jnp.promote_types(dtype, jnp.float32)

  def add_position(acc_BxD, position):
    ids_B, w_B = position
    vecs_BxD = jnp.take(table, ids_B, axis=0, mode="clip").astype(dtype)
    return acc_BxD + (w_B[:, None] * vecs_BxD).astype(acc_dtype), None

  acc_BxD = jnp.zeros((ids_BxL.shape[0], table.shape[1]), acc_dtype)
  acc_BxD, _ = jax.lax.scan(add_position, acc_BxD, (ids_BxL.T, w_BxL.T))
  return acc_BxD.astype(dtype)
