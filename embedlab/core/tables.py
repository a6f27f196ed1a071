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

Every table function that takes ids (``lookup``, ``bag``, the variants of ``embedlab.core.variants``,
``embedlab.core.sharding``, ``embedlab.core.pooling``, ``embedlab.core.localize``, the Flax modules)
sends them through one function, ``ids_lib.normalize_ids``: an integer dtype is required, each id is
compared with the table's rows exactly whatever its dtype (a ``uint8`` id 255 is row 255 of a
1000-row table, an ``int8`` id 4 is not padding id 260), and the ids come back widened to
``ids_lib.id_dtype()`` (int32, or int64 under ``jax_enable_x64``) before anything else compares or
gathers them. Ragged bags check their segment ids the same way (``ids_lib.normalize_segments``; under
``jit`` with ``oob="error"`` that is a second device check and callback).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import ids as ids_lib
from embedlab.core import pooling

Array = jax.Array
Params = dict[str, Array]

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
  check_size(num_embeddings, features)
  if not _is_float_dtype(dtype):
    raise TypeError(f"init_table: dtype must be a floating dtype (float32, bfloat16, ...), got "
                    f"{_dtype_name(dtype)}: a table of integers cannot be trained.")
  if scale is not None:
    try:
      value = real_number(scale)
    except TypeError:
      value = math.nan
    if value is not None and not 0 <= value < math.inf:
      raise ValueError(f"init_table: scale must be a finite number >= 0, got {scale!r}.")
  shape = (int(num_embeddings), int(features))
  if isinstance(init, str):
    table = _initializer(init, scale)(key, shape, dtype)
  elif isinstance(init, (np.ndarray, jax.Array)):
    if tuple(init.shape) != shape:
      raise ValueError(f"init_table: the given array has shape {tuple(init.shape)}, "
                       f"expected {shape} (num_embeddings, features).")
    _check_finite_rows(init)
    table = jnp.asarray(init, dtype)
  elif callable(init):
    table = jnp.asarray(init(key, shape, dtype), dtype)
    if table.shape != shape:
      raise ValueError(f"init_table: init returned shape {table.shape}, expected {shape}.")
  else:
    raise TypeError(f"init_table: init must be a name, a callable or an array, got "
                    f"{type(init).__name__}.")
  if padding_id is not None:
    ids_lib.check_padding_id(padding_id, shape[0], "init_table")
    table = table.at[padding_id].set(0)
  return {"table": table}


def _dtype_name(dtype: Any) -> str:
  try:
    return jnp.dtype(dtype).name
  except TypeError:
    return repr(dtype)


def _is_float_dtype(dtype: Any) -> bool:
  try:
    return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
  except TypeError:
    return False


def _check_finite_rows(array: Any) -> None:
  """Raises if a given table holds NaN or infinite values (a vector file cut short, a bad
  export): training would carry them into every bag that reads the row."""
  if isinstance(array, jax.core.Tracer):
    return
  if isinstance(array, jax.Array):  # on its devices: a sharded table is not copied to the host
    if bool(jnp.all(jnp.isfinite(array))):
      return
    if not array.is_fully_addressable:
      raise ValueError("init_table: the given array has values that are NaN or infinite; fix "
                       "or zero those rows before making a table of them.")
  finite = np.isfinite(np.asarray(array, np.float32))
  if not finite.all():
    rows = np.flatnonzero(~finite.all(axis=1))
    raise ValueError(f"init_table: the given array has {int((~finite).sum()):,} values that are "
                     f"NaN or infinite, in {len(rows):,} rows (first: row {int(rows[0])}); fix or "
                     "zero those rows before making a table of them.")


def check_compute_dtype(compute_dtype: Any, where: str) -> None:
  """Raises unless ``compute_dtype`` is None or a floating dtype (rows cast to an integer
  dtype would be truncated in silence)."""
  if compute_dtype is not None and not _is_float_dtype(compute_dtype):
    raise TypeError(f"{where}: compute_dtype must be a floating dtype (float32, bfloat16, ...), "
                    f"got {_dtype_name(compute_dtype)}; rows are never truncated to integers.")


def check_size(num_embeddings, features):
  for name, v in (("num_embeddings", num_embeddings), ("features", features)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
      raise ValueError(f"init_table: {name} must be a positive integer, got {v!r}.")


def table_of(params: Params, where: str) -> Array:
  # "embedding" is the name Flax's Embed layers (and embedlab.Embed / LinenEmbed) give the table
  key = next((k for k in ("table", "embedding") if k in params), None) \
      if isinstance(params, Mapping) else None
  if key is None:
    keys = f" with keys {', '.join(map(repr, params))}" if isinstance(params, Mapping) else ""
    raise TypeError(f"{where}: params must be a dict with a 'table' entry (as returned by "
                    f"init_table) or Flax's 'embedding' entry, got {type(params).__name__}"
                    f"{keys}.")
  table = params[key]
  if table.ndim != 2:
    raise ValueError(f"{where}: params[{key!r}] must be 2-D [num_embeddings, features], "
                     f"got shape {table.shape}.")
  return table


def real_number(value: Any) -> float | None:
  """``value`` as a float if it is a real number (Python, numpy or a concrete 0-d JAX array);
  None for a traced value (its caller checks it where it is used); ``TypeError`` for a bool or
  anything else.

  Example:
    >>> real_number(np.float32(0.5)), real_number(3)
    (0.5, 3.0)
  """
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (jax.Array, np.ndarray)) and value.shape == ():
    value = value.item()
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{value!r} is not a number")
  return float(value)


def check_max_norm(max_norm: Any, where: str) -> Any:
  """``max_norm`` as given, if it is a number > 0 (``inf``: no row is rescaled) or a traced
  value (checked by its caller); else a ``ValueError``/``TypeError`` naming it. A norm of 0 or
  below, or NaN, would zero, flip or leave rows in silence.

  Example:
    >>> check_max_norm(-1.0, "lookup")
    Traceback (most recent call last):
    ...
    ValueError: lookup: max_norm must be a number > 0 (the largest row norm kept), got -1.0.
  """
  message = (f"{where}: max_norm must be a number > 0 (the largest row norm kept), got "
             f"{max_norm!r}.")
  try:
    value = real_number(max_norm)
  except TypeError:
    raise TypeError(message) from None
  if value is not None and not value > 0:  # NaN too
    raise ValueError(message)
  return max_norm


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
    max_norm: a number > 0; rows whose L2 norm exceeds it are rescaled to norm ``max_norm`` in
      the output, with the gradient passed to the row unscaled - what PyTorch's ``max_norm``
      gives (PyTorch also rewrites the table in place; use ``renorm_rows`` for that step
      functionally).
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
  table = table_of(params, "lookup")
  checked = ids_lib.normalize_ids(ids, table.shape[0], oob=oob, padding_id=padding_id, where="lookup")
  check_compute_dtype(compute_dtype, "lookup")
  vecs = jnp.take(table, checked.ids, axis=0, mode="clip")  # in range: checked or clamped
  if max_norm is not None:
    check_max_norm(max_norm, "lookup")
    norms = jnp.linalg.norm(vecs.astype(jnp.float32), axis=-1, keepdims=True)
    scale = jnp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(vecs.dtype)
    vecs = vecs + jax.lax.stop_gradient(vecs * scale - vecs)
  if compute_dtype is not None:
    vecs = vecs.astype(compute_dtype)
  return ids_lib.mask_rows(vecs, checked.keep)


def renorm_rows(params: Params, ids: Any, max_norm: float) -> Params:
  """Returns params whose rows in ``ids`` have norm at most ``max_norm`` (PyTorch's in-place
  ``max_norm`` step, as a pure function). Call it on the params before or after an update.

  Example:
    >>> import jax.numpy as jnp, embedlab as el
    >>> p = el.renorm_rows({"table": jnp.full((3, 4), 2.0)}, jnp.array([1]), 1.0)
    >>> [round(float(n), 4) for n in jnp.linalg.norm(p["table"], axis=1)]
    [4.0, 1.0, 4.0]
  """
  table = table_of(params, "renorm_rows")
  check_max_norm(max_norm, "renorm_rows")
  ids = ids_lib.check_ids(ids, table.shape[0], where="renorm_rows").reshape(-1)
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
  offsets = np.asarray(ids_lib.integer_array(offsets, "offsets_to_segment_ids", what="offsets"))
  if isinstance(num_ids, bool) or not isinstance(num_ids, (int, np.integer)) or num_ids < 0:
    raise TypeError(f"offsets_to_segment_ids: num_ids must be a Python int >= 0 (the number of "
                    f"ids), got {num_ids!r}.")
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

  Ragged ``segment_ids`` must be integers in ``0..num_bags-1`` and ``num_bags`` a Python int
  (``ids_lib.normalize_segments``): others raise, as ids do (checked under ``jit`` with
  ``oob="error"``), instead of silently dropping their ids.

  Modes, with per-position ``weights`` ``w`` (1 when not given; 0 at padding, whatever the
  weight there, even NaN or inf, as PyTorch's ``EmbeddingBag``):
    * ``sum``: ``sum_i w_i v_i``
    * ``mean``: ``sum_i w_i v_i / sum_i w_i`` (the weighted mean, as TensorFlow's combiner)
    * ``sqrtn``: ``sum_i w_i v_i / sqrt(sum_i w_i^2)``
    * ``max``: element-wise max over the bag's rows (no weights).
  A bag with no real ids gives a zero vector with finite (zero) gradients, never NaN. Sums
  accumulate in float32 (at least) whatever the table's dtype, and the result is cast to the
  table's (or ``compute_dtype``): a bfloat16 bag of 1000 ones is 1000, not 256.

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
  table = table_of(params, "bag")
  check_compute_dtype(compute_dtype, "bag")
  ids = ids_lib.integer_array(ids, "bag")
  ids_shape = np.shape(ids)
  if segment_ids is None:
    if len(ids_shape) != 2:
      raise ValueError(f"bag: ids must be 2-D [batch, bag_len] (or 1-D with segment_ids), "
                       f"got shape {ids_shape}.")
  elif len(ids_shape) != 1 or np.shape(segment_ids) != ids_shape:
    raise ValueError(f"bag: ragged input needs 1-D ids and segment_ids of the same shape, got "
                     f"{ids_shape} and {np.shape(segment_ids)}.")
  if weights is not None and np.shape(weights) != ids_shape:
    raise ValueError(f"bag: weights must have the shape of ids {ids_shape}, "
                     f"got {np.shape(weights)}.")
  if segment_ids is None:
    _check_padded_num_bags(num_bags, ids_shape[0], "bag")
    # the strategy (gather-then-sum or a scan over positions) is chosen per backend and shape
    return pooling.pool_padded(table, ids, weights, None, mode, compute_dtype=compute_dtype,
                               oob=oob, padding_id=padding_id, where="bag")
  checked = ids_lib.normalize_ids(ids, table.shape[0], oob=oob, padding_id=padding_id, where="bag")
  segment_ids, num_bags = ids_lib.normalize_segments(segment_ids, num_bags,
                                             check_traced=oob == "error", where="bag")
  dtype = jnp.dtype(table.dtype if compute_dtype is None else compute_dtype)
  vecs = jnp.take(table, checked.ids, axis=0, mode="clip").astype(dtype)
  keep = jnp.ones(checked.ids.shape, bool) if checked.keep is None else checked.keep
  return pooling.pool_vectors(vecs, keep, mode, weights=weights, segment_ids=segment_ids,
                              num_bags=num_bags, dtype=dtype)


def _check_padded_num_bags(num_bags, batch, where):
  # padded bags are the rows of ids: a num_bags that disagrees would otherwise be ignored
  if num_bags is not None and (isinstance(num_bags, bool) or num_bags != batch):
    raise ValueError(f"{where}: padded bags are the {batch} rows of ids, but num_bags="
                     f"{num_bags!r}. Leave num_bags out, or pass 1-D ids with segment_ids for "
                     f"ragged bags.")


def pool_vectors(vecs: Array, mask: Array, mode: str = "mean", *, segment_ids: Any = None,
                 num_bags: int | None = None) -> Array:
  """``bag``'s pooling of vectors already gathered: ``vecs [B, L, D]`` with ``mask [B, L]``
  (padded bags), or ``vecs [N, D]`` with ``mask [N]``, ``segment_ids [N]`` and ``num_bags``
  (ragged). ``mask`` is False at padding. The same numbers as ``bag`` (unweighted) on the ids
  the vectors were read for: what the row-sparse step pools when it gathers the rows itself
  (``embedlab.run.train``). ``num_bags`` and concrete segment ids are checked as ``bag`` checks
  them; traced segment ids are not (as ``bag`` with ``oob="clip"``: the train step's batches
  come from ``data.ragged_batches``). Sums accumulate in float32 at least
  (``pooling.pool_vectors``).

  Example:
    >>> import jax.numpy as jnp
    >>> v = jnp.arange(12.0).reshape(1, 4, 3)
    >>> pool_vectors(v, jnp.array([[True, True, False, False]]), "mean").tolist()
    [[1.5, 2.5, 3.5]]
  """
  if mode not in BAG_MODES:
    raise ValueError(f"pool_vectors: mode={mode!r} is not one of {', '.join(BAG_MODES)}.")
  if segment_ids is not None:
    if num_bags is None:
      raise ValueError("pool_vectors: ragged vectors (with segment_ids) need num_bags, the "
                       "number of bags (a Python int).")
    segment_ids, num_bags = ids_lib.normalize_segments(segment_ids, num_bags, check_traced=False,
                                               where="pool_vectors")
  else:
    _check_padded_num_bags(num_bags, np.shape(mask)[0], "pool_vectors")
  return pooling.pool_vectors(vecs, jnp.asarray(mask, bool), mode, segment_ids=segment_ids,
                              num_bags=num_bags)


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
  table = table_of(params, "attend")
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
  table = table_of(params, "describe")
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
