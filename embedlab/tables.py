"""The embedding table as pure functions over a params pytree ``{"table": f32[V, D]}``.

An embedding layer is a trainable lookup table: ``num_embeddings`` rows (one per token id) of
``features`` numbers each, ``num_embeddings x features`` weights. A batch of ids of shape
``(batch, seq_len)`` comes out as ``(batch, seq_len, features)``.

  >>> import jax, embedlab as el
  >>> params = el.init_table(jax.random.key(0), 10_000, 64, padding_id=0)
  >>> params["table"].shape, el.num_params(params)
  ((10000, 64), 640000)
  >>> el.lookup(params, jax.numpy.zeros((32, 20), "int32"), padding_id=0).shape
  (32, 20, 64)

Ids outside ``0..num_embeddings-1`` raise (``oob="error"``, the default) instead of becoming
NaN (``jnp.take``'s default), being clamped (``table[ids]``) or wrapping around (negative ids).
Concrete ids are checked in numpy and raise ``ValueError``; traced ids (under ``jit``, ``grad``,
``vmap``) are checked on the device with one reduction, and a host callback raises the same
message at run time (as a ``jax.errors.JaxRuntimeError``). That check costs one fused
reduction over the ids plus one host callback per call: measured 0.03-1.3 ms per call on a
busy 2-core CPU (``python benchmarks/oob_check.py``), which matters for tiny batches and not for
large ones. Pass ``oob="clip"`` or ``oob="zero"`` to skip it where the ids are known to be valid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from embedlab import pooling

Array = jax.Array
Params = dict[str, Array]

OOB_POLICIES = ("error", "clip", "zero")
BAG_MODES = ("sum", "mean", "max", "sqrtn")


def _initializer(name: str, scale: float | None) -> Callable[..., Array]:
  inits = jax.nn.initializers
  fan = dict(in_axis=-1, out_axis=-2)  # fan_in = features, as in flax.linen.Embed
  s = scale
  table = {
      "normal": lambda: inits.normal(stddev=1.0 if s is None else s),
      "truncated_normal": lambda: inits.truncated_normal(stddev=1.0 if s is None else s),
      "uniform": lambda: _symmetric_uniform(0.05 if s is None else s),
      "zeros": lambda: inits.zeros,
      "xavier_uniform": lambda: inits.glorot_uniform(**fan),
      "xavier_normal": lambda: inits.glorot_normal(**fan),
      "glorot_uniform": lambda: inits.glorot_uniform(**fan),
      "glorot_normal": lambda: inits.glorot_normal(**fan),
      "lecun_normal": lambda: inits.lecun_normal(**fan),
      "lecun_uniform": lambda: inits.lecun_uniform(**fan),
      "he_normal": lambda: inits.he_normal(**fan),
      "he_uniform": lambda: inits.he_uniform(**fan),
  }
  if name not in table:
    raise ValueError(f"init_table: unknown init {name!r}; use one of {', '.join(sorted(table))}, "
                     "a callable init(key, shape, dtype), or an array of pretrained vectors.")
  return table[name]()


def _symmetric_uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


INIT_NAMES = ("normal", "truncated_normal", "uniform", "zeros", "xavier_uniform",
              "xavier_normal", "glorot_uniform", "glorot_normal", "lecun_normal",
              "lecun_uniform", "he_normal", "he_uniform")


def init_table(key: Array, num_embeddings: int, features: int, *, init: Any = "normal",
               padding_id: int | None = None, dtype: Any = jnp.float32,
               scale: float | None = None) -> Params:
  """Creates an embedding table ``{"table": Array[num_embeddings, features]}``.

  Args:
    key: a ``jax.random`` key.
    num_embeddings: rows, one per token id.
    features: numbers per row.
    init: a name (``normal`` (stddev 1, as PyTorch's ``nn.Embedding``), ``truncated_normal``,
      ``uniform`` (symmetric, +-0.05 as Keras), ``zeros``, ``xavier_uniform``, ``xavier_normal``,
      ``lecun_normal``, ``he_normal``, ...), a callable ``init(key, shape, dtype)`` as in
      ``jax.nn.initializers``, or an array of shape ``(num_embeddings, features)`` (pretrained).
    padding_id: if given, that row starts at zero.
    dtype: the parameters' dtype.
    scale: stddev for ``normal`` / ``truncated_normal``, half-width for ``uniform``.

  Returns:
    ``{"table": Array[num_embeddings, features]}`` of ``dtype``.

  Example:
    >>> import jax, embedlab as el
    >>> el.init_table(jax.random.key(0), 5, 3, padding_id=0)["table"][0]
    Array([0., 0., 0.], dtype=float32)
  """
  _check_size(num_embeddings, features)
  shape = (int(num_embeddings), int(features))
  if isinstance(init, str):
    table = _initializer(init, scale)(key, shape, dtype)
  elif isinstance(init, (np.ndarray, jax.Array)):
    if tuple(init.shape) != shape:
      raise ValueError(f"init_table: the given array has shape {tuple(init.shape)}, "
                       f"expected {shape} (num_embeddings, features).")
    table = jnp.asarray(init, dtype)
  elif callable(init):
    table = jnp.asarray(init(key, shape, dtype), dtype)
    if table.shape != shape:
      raise ValueError(f"init_table: init returned shape {table.shape}, expected {shape}.")
  else:
    raise TypeError(f"init_table: init must be a name, a callable or an array, got "
                    f"{type(init).__name__}.")
  if padding_id is not None:
    _check_padding_id(padding_id, shape[0], "init_table")
    table = table.at[padding_id].set(0)
  return {"table": table}


def _check_size(num_embeddings, features):
  for name, v in (("num_embeddings", num_embeddings), ("features", features)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"init_table: {name} must be a positive integer, got {v!r}.")


def _check_padding_id(padding_id, rows, where):
  if isinstance(padding_id, bool) or not isinstance(padding_id, (int, np.integer)):
    raise TypeError(f"{where}: padding_id must be an int, got {padding_id!r}.")
  if not 0 <= padding_id < rows:
    raise ValueError(f"{where}: padding_id {padding_id} is outside the table "
                     f"({rows} rows: valid ids are 0..{rows - 1}).")


def _table(params: Params, where: str) -> Array:
  if not isinstance(params, dict) or "table" not in params:
    raise TypeError(f"{where}: params must be a dict with a 'table' entry "
                    f"(as returned by init_table), got {type(params).__name__}.")
  table = params["table"]
  if table.ndim != 2:
    raise ValueError(f"{where}: params['table'] must be 2-D [num_embeddings, features], "
                     f"got shape {table.shape}.")
  return table


def _oob_message(where: str, bad_id, position, rows: int) -> str:
  return (f"{where}: id {int(bad_id)} at position {tuple(int(p) for p in position)} is outside "
          f"the table ({rows} rows: valid ids are 0..{rows - 1}). Check the vocabulary size used "
          f"to build the table, or pass oob='clip' / oob='zero' to map such ids deliberately.")


def check_ids(ids: Any, num_embeddings: int, *, where: str = "lookup") -> Array:
  """Validates ids against a table of ``num_embeddings`` rows and returns them as an array.

  Raises ``TypeError`` for non-integer ids, ``ValueError`` for concrete ids outside
  ``0..num_embeddings-1`` (naming the first such id and its position); for traced ids it adds a
  device-side check whose host callback raises the same message when the computation runs.

  Example:
    >>> import embedlab as el
    >>> el.check_ids([[1, 2], [3, 9]], 5)
    Traceback (most recent call last):
    ...
    ValueError: lookup: id 9 at position (1, 1) is outside the table (5 rows: valid ids are 0..4). ...
  """
  if isinstance(ids, jax.core.Tracer):
    _check_integer_dtype(ids.dtype, where)
    _traced_range_check(ids, num_embeddings, where)
    return ids
  if not isinstance(ids, (np.ndarray, jax.Array)):
    ids = np.asarray(ids)
    if ids.dtype == np.float64 and ids.size == 0:
      ids = ids.astype(np.int32)
  check_host_ids(np.asarray(ids), num_embeddings, where=where)
  return jnp.asarray(ids)


def check_host_ids(ids: np.ndarray, num_embeddings: int, *, where: str = "lookup") -> None:
  """``check_ids`` for a numpy array, without making a device array of it: its dtype, two
  reductions (min, max), and the first bad position only when there is one."""
  _check_integer_dtype(ids.dtype, where)
  if ids.size == 0 or (ids.min() >= 0 and ids.max() < num_embeddings):
    return
  bad = (ids < 0) | (ids >= num_embeddings)
  position = np.unravel_index(int(np.argmax(bad)), ids.shape)
  raise ValueError(_oob_message(where, ids[position], position, num_embeddings))


def _check_integer_dtype(dtype, where):
  if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
    raise TypeError(f"{where}: ids must be integers, got dtype {dtype}. Convert token ids with "
                    f"ids.astype('int32'); floats are never silently truncated.")


def _traced_range_check(ids: Array, rows: int, where: str) -> None:
  flat = ids.reshape(-1)
  if flat.size == 0:
    return
  bad = (flat < 0) | (flat >= rows)
  first = jnp.argmax(bad)
  shape = ids.shape

  def raise_if_bad(any_bad, bad_id, flat_index):
    if bool(any_bad):
      position = np.unravel_index(int(flat_index), shape)
      raise ValueError(_oob_message(where, bad_id, position, rows))

  jax.debug.callback(raise_if_bad, bad.any(), flat[first], first)


def _checked_ids(table: Array, ids: Any, oob: str, where: str) -> tuple[Array, Array | None]:
  """Returns (ids safe to gather, in-range mask or None) under one of the oob policies."""
  if oob not in OOB_POLICIES:
    raise ValueError(f"{where}: oob={oob!r} is not one of {', '.join(OOB_POLICIES)}.")
  rows = table.shape[0]
  if oob == "error":
    return check_ids(ids, rows, where=where), None
  if not isinstance(ids, (jax.Array, np.ndarray)):
    ids = np.asarray(ids)
  _check_integer_dtype(ids.dtype, where)
  ids = jnp.asarray(ids)
  safe = jnp.clip(ids, 0, rows - 1)
  if oob == "clip":
    return safe, None
  return safe, (ids >= 0) & (ids < rows)


def _gather(table: Array, ids: Any, oob: str, where: str) -> tuple[Array, Array, Array | None]:
  """Returns (vectors, safe ids, in-range mask or None); out-of-range rows are zero ("zero")."""
  ids, in_range = _checked_ids(table, ids, oob, where)
  vecs = jnp.take(table, ids, axis=0, mode="clip")
  if in_range is not None:
    vecs = vecs * in_range[..., None].astype(vecs.dtype)
  return vecs, ids, in_range


def lookup(params: Params, ids: Any, *, padding_id: int | None = None, oob: str = "error",
           max_norm: float | None = None, compute_dtype: Any = None) -> Array:
  """Looks up the rows of ``ids`` (any rank) with ``jnp.take``: ``Array[*ids.shape, features]``.

  Args:
    params: ``{"table": Array[V, D]}``.
    ids: integer ids of any shape.
    padding_id: positions holding it come out as zero vectors and send exactly zero gradient
      to that row (PyTorch's ``padding_idx``; Keras' ``mask_zero`` only masks).
    oob: ``"error"`` (default: out-of-range ids raise), ``"clip"`` (clamp to the nearest row,
      unchecked) or ``"zero"`` (out-of-range positions give zero vectors and no gradient).
    max_norm: rows whose L2 norm exceeds it are rescaled to norm ``max_norm`` in the output,
      with the gradient passed to the row unscaled - what PyTorch's ``max_norm`` gives (PyTorch
      also rewrites the table in place; use ``renorm_rows`` for that step functionally).
    compute_dtype: cast the looked-up rows to this dtype (e.g. ``jnp.bfloat16`` compute on
      ``float32`` parameters); only the gathered rows are cast, never the whole table.

  Returns:
    ``Array[*ids.shape, D]``.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el
    >>> p = el.init_table(jax.random.key(0), 10, 4, padding_id=0)
    >>> el.lookup(p, jnp.array([[3, 0, 7]]), padding_id=0).shape
    (1, 3, 4)
  """
  table = _table(params, "lookup")
  if padding_id is not None:
    _check_padding_id(padding_id, table.shape[0], "lookup")
  vecs, ids, _ = _gather(table, ids, oob, "lookup")
  if max_norm is not None:
    norms = jnp.linalg.norm(vecs.astype(jnp.float32), axis=-1, keepdims=True)
    scale = jnp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(vecs.dtype)
    vecs = vecs + jax.lax.stop_gradient(vecs * scale - vecs)
  if compute_dtype is not None:
    vecs = vecs.astype(compute_dtype)
  if padding_id is not None:
    vecs = vecs * (ids != padding_id)[..., None].astype(vecs.dtype)
  return vecs


def renorm_rows(params: Params, ids: Any, max_norm: float) -> Params:
  """Returns params whose rows in ``ids`` have norm at most ``max_norm`` (PyTorch's in-place
  ``max_norm`` step, as a pure function). Call it on the params before or after an update.

  Example:
    >>> import jax.numpy as jnp, embedlab as el
    >>> p = el.renorm_rows({"table": jnp.full((3, 4), 2.0)}, jnp.array([1]), 1.0)
    >>> [round(float(n), 4) for n in jnp.linalg.norm(p["table"], axis=1)]
    [4.0, 1.0, 4.0]
  """
  table = _table(params, "renorm_rows")
  ids = check_ids(ids, table.shape[0], where="renorm_rows").reshape(-1)
  rows = table[ids]
  norms = jnp.linalg.norm(rows.astype(jnp.float32), axis=-1, keepdims=True)
  scale = jnp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(table.dtype)
  return {**params, "table": table.at[ids].set(rows * scale)}


def offsets_to_segment_ids(offsets: Any, num_ids: int) -> np.ndarray:
  """Converts PyTorch ``EmbeddingBag`` offsets (bag starts) into per-id segment ids.

  Example:
    >>> import embedlab as el
    >>> el.offsets_to_segment_ids([0, 2, 2], 5).tolist()
    [0, 0, 2, 2, 2]
  """
  offsets = np.asarray(offsets)
  if offsets.ndim != 1 or (offsets.size and (np.any(np.diff(offsets) < 0) or offsets[0] != 0
                                             or offsets[-1] > num_ids)):
    raise ValueError(f"offsets_to_segment_ids: offsets must be a non-decreasing 1-D array "
                     f"starting at 0 and at most {num_ids}, got {offsets.tolist()}.")
  marks = np.zeros(num_ids, np.int32)
  np.add.at(marks, offsets[1:][offsets[1:] < num_ids], 1)
  return np.cumsum(marks).astype(np.int32)


def bag(params: Params, ids: Any, *, mode: str = "mean", weights: Any = None,
        padding_id: int | None = None, segment_ids: Any = None, num_bags: int | None = None,
        oob: str = "error", compute_dtype: Any = None) -> Array:
  """Pools the rows of each bag of ids into one vector: ``Array[num_bags, features]``.

  Two layouts, as PyTorch's ``EmbeddingBag``:
    * padded: ``ids`` of shape ``[B, L]``, one bag per row; positions holding ``padding_id`` are
      not part of the bag.
    * ragged: ``ids`` of shape ``[N]`` with ``segment_ids`` ``[N]`` naming each id's bag
      (``offsets_to_segment_ids`` converts PyTorch offsets) and ``num_bags`` (needed under
      ``jit``: it fixes the output shape).

  Modes, with per-position ``weights`` ``w`` (1 when not given; 0 at padding):
    * ``sum``: ``sum_i w_i v_i``
    * ``mean``: ``sum_i w_i v_i / sum_i w_i`` (the weighted mean, as TensorFlow's combiner)
    * ``sqrtn``: ``sum_i w_i v_i / sqrt(sum_i w_i^2)``
    * ``max``: element-wise max over the bag's rows (no weights).
  A bag with no real ids gives a zero vector with finite (zero) gradients, never NaN.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el
    >>> p = {"table": jnp.arange(12.0).reshape(4, 3)}
    >>> el.bag(p, jnp.array([[1, 2, 0], [0, 0, 0]]), mode="sum", padding_id=0)
    Array([[ 9., 11., 13.],
           [ 0.,  0.,  0.]], dtype=float32)
  """
  if mode not in BAG_MODES:
    raise ValueError(f"bag: mode={mode!r} is not one of {', '.join(BAG_MODES)}.")
  if mode == "max" and weights is not None:
    raise ValueError("bag: mode='max' takes no weights (as PyTorch's EmbeddingBag); use "
                     "mode='sum' or 'mean' for weighted bags.")
  table = _table(params, "bag")
  if padding_id is not None:
    _check_padding_id(padding_id, table.shape[0], "bag")
  ids_shape = np.shape(ids)
  if segment_ids is None:
    if len(ids_shape) != 2:
      raise ValueError(f"bag: ids must be 2-D [batch, bag_len] (or 1-D with segment_ids), "
                       f"got shape {ids_shape}.")
  else:
    if len(ids_shape) != 1 or np.shape(segment_ids) != ids_shape:
      raise ValueError(f"bag: ragged input needs 1-D ids and segment_ids of the same shape, got "
                       f"{ids_shape} and {np.shape(segment_ids)}.")
    if num_bags is None:
      if isinstance(segment_ids, jax.core.Tracer):
        raise ValueError("bag: under jit, ragged input needs num_bags (a Python int).")
      num_bags = int(np.max(np.asarray(segment_ids))) + 1 if ids_shape[0] else 0
  ids, in_range = _checked_ids(table, ids, oob, "bag")
  dtype = jnp.dtype(compute_dtype) if compute_dtype is not None else table.dtype
  mask = jnp.ones(ids.shape, bool) if padding_id is None else ids != padding_id
  if in_range is not None:
    mask = mask & in_range
  if weights is None:
    w = mask.astype(dtype)
  else:
    if np.shape(weights) != ids.shape:
      raise ValueError(f"bag: weights must have the shape of ids {ids.shape}, "
                       f"got {np.shape(weights)}.")
    w = jnp.asarray(weights).astype(dtype) * mask.astype(dtype)
  if segment_ids is None:
    # the strategy (gather-then-sum or a scan over positions) is chosen per backend and shape
    return pooling.pool_padded(table, ids, w, mask, mode, compute_dtype=compute_dtype)
  vecs = jnp.take(table, ids, axis=0, mode="clip").astype(dtype)
  return _pool_ragged(vecs, w, mask, jnp.asarray(segment_ids), int(num_bags), mode)


def pool_vectors(vecs: Array, mask: Array, mode: str = "mean", *, segment_ids: Any = None,
                 num_bags: int | None = None) -> Array:
  """``bag``'s pooling of vectors already gathered: ``vecs [B, L, D]`` with ``mask [B, L]``
  (padded bags), or ``vecs [N, D]`` with ``mask [N]``, ``segment_ids [N]`` and ``num_bags``
  (ragged). ``mask`` is False at padding. The same numbers as ``bag`` (unweighted) on the ids
  the vectors were read for: what the row-sparse step pools when it gathers the rows itself
  (``embedlab.train``).

  Example:
    >>> import jax.numpy as jnp
    >>> v = jnp.arange(12.0).reshape(1, 4, 3)
    >>> pool_vectors(v, jnp.array([[True, True, False, False]]), "mean").tolist()
    [[1.5, 2.5, 3.5]]
  """
  if mode not in BAG_MODES:
    raise ValueError(f"pool_vectors: mode={mode!r} is not one of {', '.join(BAG_MODES)}.")
  if segment_ids is None:  # padded: bag b's positions are segment b, in order
    bags, length = mask.shape
    vecs = vecs.reshape(bags * length, vecs.shape[-1])
    segment_ids, num_bags, mask = (jnp.repeat(jnp.arange(bags), length), bags,
                                   mask.reshape(-1))
  elif num_bags is None:
    raise ValueError("pool_vectors: ragged vectors (with segment_ids) need num_bags, the "
                     "number of bags (a Python int).")
  return _pool_ragged(vecs, mask.astype(vecs.dtype), mask, segment_ids, int(num_bags), mode)


def _safe_divide(total: Array, denom: Array) -> Array:
  ok = denom != 0
  return jnp.where(ok, total / jnp.where(ok, denom, 1), 0)


def _pool_ragged(vecs_NxD, w_N, mask_N, seg_N, num_bags, mode):
  if mode == "max":
    neg = jnp.array(-jnp.inf, vecs_NxD.dtype)
    best = jax.ops.segment_max(jnp.where(mask_N[:, None], vecs_NxD, neg), seg_N, num_bags)
    count = jax.ops.segment_sum(mask_N.astype(jnp.int32), seg_N, num_bags)
    return jnp.where(count[:, None] > 0, best, 0)
  total = jax.ops.segment_sum(vecs_NxD * w_N[:, None], seg_N, num_bags)
  if mode == "sum":
    return total
  if mode == "mean":
    denom = jax.ops.segment_sum(w_N, seg_N, num_bags)
  else:
    denom = jnp.sqrt(jax.ops.segment_sum(w_N ** 2, seg_N, num_bags))
  return _safe_divide(total, denom[:, None])


def attend(params: Params, x: Array) -> Array:
  """Logits over the vocabulary, ``x @ table.T`` (tied input/output embeddings).

  Args:
    params: ``{"table": Array[V, D]}``.
    x: ``Array[..., D]``; the table is cast to ``x``'s dtype for the product.

  Returns:
    ``Array[..., V]``.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el
    >>> p = el.init_table(jax.random.key(0), 100, 8)
    >>> el.attend(p, jnp.ones((2, 5, 8))).shape
    (2, 5, 100)
  """
  table = _table(params, "attend")
  if x.shape[-1] != table.shape[1]:
    raise ValueError(f"attend: x has {x.shape[-1]} features, the table has {table.shape[1]}.")
  return jnp.einsum("...d,vd->...v", x, table.astype(x.dtype))


def num_params(params: Any) -> int:
  """Total number of weights in a params pytree (for a table: rows x features).

  Example:
    >>> import jax, embedlab as el
    >>> el.num_params(el.init_table(jax.random.key(0), 1000, 16))
    16000
  """
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass(frozen=True)
class TableSummary:
  """What an embedding table looks like: rows x features = weights, bytes, output shape."""

  rows: int
  features: int
  weights: int
  bytes: int
  dtype: str
  ids_shape: tuple[int, ...] | None = None
  output_shape: tuple[int, ...] | None = None

  def __str__(self) -> str:
    text = (f"embedding table: {self.rows:,} rows x {self.features:,} features = "
            f"{self.weights:,} weights ({self.dtype}, {human_bytes(self.bytes)})")
    if self.ids_shape is not None:
      text += f"\nids {self.ids_shape} -> embeddings {self.output_shape}"
    return text


def describe(params: Params, ids_shape: tuple[int, ...] | None = None) -> TableSummary:
  """Answers "what does this embedding layer look like?" for a table.

  Example:
    >>> import jax, embedlab as el
    >>> print(el.describe(el.init_table(jax.random.key(0), 10_000, 64), (32, 20)))
    embedding table: 10,000 rows x 64 features = 640,000 weights (float32, 2.4 MiB)
    ids (32, 20) -> embeddings (32, 20, 64)
  """
  table = _table(params, "describe")
  rows, features = (int(d) for d in table.shape)
  out = None
  if ids_shape is not None:
    ids_shape = tuple(int(d) for d in ids_shape)
    out = ids_shape + (features,)
  return TableSummary(rows, features, rows * features, rows * features * table.dtype.itemsize,
                      str(table.dtype), ids_shape, out)


def human_bytes(n: float) -> str:
  """``2.4 MiB`` for 2,560,000 bytes."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return str(n)
