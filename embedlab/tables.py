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

Every table function that takes ids (``lookup``, ``bag``, the variants of ``embedlab.compress``,
``embedlab.sharding``, ``embedlab.pooling``, ``embedlab.sparse.localize``, the Flax modules)
sends them through one function, ``normalize_ids``: an integer dtype is required, each id is
compared with the table's rows exactly whatever its dtype (a ``uint8`` id 255 is row 255 of a
1000-row table, an ``int8`` id 4 is not padding id 260), and the ids come back widened to
``id_dtype()`` (int32, or int64 under ``jax_enable_x64``) before anything else compares or
gathers them. Ragged bags check their segment ids the same way (``normalize_segments``; under
``jit`` with ``oob="error"`` that is a second device check and callback).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

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


def _oob_message(where: str, bad_id, position, rows: int) -> str:
  return (f"{where}: id {int(bad_id)} at position {tuple(int(p) for p in position)} is outside "
          f"the table ({rows} rows: valid ids are 0..{rows - 1}). Check the vocabulary size used "
          f"to build the table, or pass oob='clip' / oob='zero' to map such ids deliberately.")


def _segment_message(where: str, bad_id, position, num_bags: int) -> str:
  valid = (f"valid segment ids are 0..{num_bags - 1}" if num_bags else
           "there is no bag to put it in")
  return (f"{where}: segment id {int(bad_id)} at position "
          f"{tuple(int(p) for p in position)} is outside the bags (num_bags={num_bags}: "
          f"{valid}). Pass num_bags = the number of bags, and segment ids in 0..num_bags-1 "
          f"(offsets_to_segment_ids converts PyTorch offsets).")


class CheckedIds(NamedTuple):
  """Ids after ``normalize_ids``: safe to gather, and which positions count.

  ``ids``: ``id_dtype()`` ids of the input's shape, all in ``0..num_embeddings-1``.
  ``keep``: bool of the same shape, False at positions holding ``padding_id`` and (with
  ``oob="zero"``) at out-of-range ones; None when every position counts.
  """

  ids: Array
  keep: Array | None


def id_dtype() -> np.dtype:
  """The integer dtype ids are widened to before any comparison or gather: int32, or int64
  under ``jax_enable_x64``. Narrow ids (``int8``, ``uint8``, ...) are never compared in their own
  dtype, where a table size or a padding id would wrap around.

  Example:
    >>> import embedlab as el
    >>> el.tables.id_dtype()
    dtype('int32')
  """
  return np.dtype(jax.dtypes.canonicalize_dtype(np.int64))


def normalize_ids(ids: Any, num_embeddings: int, *, oob: str = "error",
                  padding_id: int | None = None, where: str = "lookup") -> CheckedIds:
  """The one id path of every function that takes ids: type check, range check, widening.

  1. ``ids`` must have an integer dtype (``TypeError`` otherwise: floats are never truncated).
  2. Each id is compared with ``0..num_embeddings-1`` exactly, whatever its dtype (a ``uint8``
     id 255 is 255, an ``int8`` id never equals padding id 260, a ``uint32`` id 2**32-1 is
     not -1). Under ``oob="error"`` a concrete id outside raises ``ValueError`` naming the id,
     its position, the valid range and how to fix it; traced ids (``jit``, ``grad``, ``vmap``)
     get a device-side check whose host callback raises the same message when the computation
     runs. ``oob="clip"`` clamps to the nearest row; ``oob="zero"`` clamps and marks the
     position as not kept.
  3. The ids come back as ``id_dtype()`` (int32, or int64 under ``jax_enable_x64``), and
     ``padding_id`` is compared with the widened ids.

  Args:
    ids: integer ids of any shape (numpy, JAX or nested lists).
    num_embeddings: rows of the table (the logical vocabulary of a variant).
    oob: ``"error"``, ``"clip"`` or ``"zero"`` (see ``lookup``).
    padding_id: positions holding it are marked as not kept.
    where: the caller's name, first word of every message.

  Returns:
    ``CheckedIds(ids, keep)``.

  Example:
    >>> import numpy as np, embedlab as el
    >>> checked = el.tables.normalize_ids(np.array([1, 255], np.uint8), 1000, padding_id=1)
    >>> checked.ids.tolist(), checked.ids.dtype, checked.keep.tolist()
    ([1, 255], dtype('int32'), [False, True])
  """
  if oob not in OOB_POLICIES:
    raise ValueError(f"{where}: oob={oob!r} is not one of {', '.join(OOB_POLICIES)}.")
  if padding_id is not None:
    _check_padding_id(padding_id, num_embeddings, where)
  ids = _integer_array(ids, where)
  message = functools.partial(_oob_message, where, rows=num_embeddings)
  if oob == "error":
    safe, keep = _checked_in_range(ids, num_embeddings, message), None
  else:
    safe, out_of_range = _clipped(ids, num_embeddings)
    keep = ~out_of_range if oob == "zero" else None
  if padding_id is not None:
    real = safe != padding_id
    keep = real if keep is None else keep & real
  return CheckedIds(safe, keep)


def normalize_segments(segment_ids: Any, num_bags: Any, *, check_traced: bool = True,
                       where: str = "bag") -> tuple[Array, int]:
  """Ragged bags' ``segment_ids`` and ``num_bags``, checked as ids are (``normalize_ids``).

  ``num_bags`` must be a Python int >= 0 (it fixes the output shape); None infers it from
  concrete segment ids (their maximum + 1). Segment ids must be integers in ``0..num_bags-1``
  (PyTorch raises on such offsets; ``segment_sum`` would silently drop their ids). Concrete
  segment ids are always checked; traced ones when ``check_traced`` (``bag`` checks them under
  ``oob="error"``, as it checks the ids).

  Returns:
    ``(segment_ids as id_dtype(), num_bags)``.

  Example:
    >>> import embedlab as el
    >>> el.tables.normalize_segments([0, 0, 2], 2)
    Traceback (most recent call last):
    ...
    ValueError: bag: segment id 2 at position (2,) is outside the bags (num_bags=2: valid ...
  """
  segment_ids = _integer_array(segment_ids, where, what="segment_ids")
  if num_bags is None:
    if isinstance(segment_ids, jax.core.Tracer):
      raise ValueError(f"{where}: under jit, ragged input needs num_bags (a Python int): it "
                       f"fixes the output shape.")
    host = np.asarray(segment_ids)
    num_bags = int(host.max()) + 1 if host.size else 0
    num_bags = max(num_bags, 0)  # negative segment ids are reported by the range check
  elif (isinstance(num_bags, bool) or not isinstance(num_bags, (int, np.integer))
        or num_bags < 0):
    raise TypeError(f"{where}: num_bags must be a Python int >= 0 (the number of bags; it fixes "
                    f"the output shape), got {num_bags!r} of type {type(num_bags).__name__}.")
  num_bags = int(num_bags)
  message = functools.partial(_segment_message, where, num_bags=num_bags)
  if isinstance(segment_ids, jax.core.Tracer) and not check_traced:
    return segment_ids.astype(id_dtype()), num_bags
  return _checked_in_range(segment_ids, num_bags, message), num_bags


def check_ids(ids: Any, num_embeddings: int, *, where: str = "lookup") -> Array:
  """Validates ids against a table of ``num_embeddings`` rows; returns them widened to
  ``id_dtype()`` (``normalize_ids`` with ``oob="error"``).

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
  return normalize_ids(ids, num_embeddings, where=where).ids


def check_host_ids(ids: np.ndarray, num_embeddings: int, *, where: str = "lookup") -> None:
  """``check_ids`` for a numpy array, without making a device array of it: its dtype, two
  reductions (min, max), and the first bad position only when there is one."""
  _check_integer_dtype(ids.dtype, where)
  _check_host_range(ids, num_embeddings, functools.partial(_oob_message, where,
                                                           rows=num_embeddings))


def padding_mask(ids: Any, padding_id: int | None) -> Array:
  """True where ``ids`` is not ``padding_id``, compared exactly in any integer dtype (a
  ``padding_id`` the dtype cannot hold matches nothing; it never wraps around).

  Example:
    >>> import numpy as np, embedlab as el
    >>> el.tables.padding_mask(np.array([4, 5], np.int8), 260).tolist()
    [True, True]
  """
  shape = np.shape(ids)
  if padding_id is None:
    return jnp.ones(shape, bool)
  if not isinstance(ids, (np.ndarray, jax.Array)):
    ids = np.asarray(ids)
  info = np.iinfo(ids.dtype)
  if not info.min <= padding_id <= info.max:
    return jnp.ones(shape, bool)
  xp = np if isinstance(ids, np.ndarray) else jnp
  return jnp.asarray(ids != xp.asarray(padding_id, ids.dtype))


def mask_rows(vecs: Array, keep: Array | None) -> Array:
  """Zero vectors where ``keep`` is False, with ``jnp.where`` (not a product: a NaN or inf row
  or cotangent at such a position stays out of the result and out of the gradient).

  Example:
    >>> import jax.numpy as jnp, embedlab as el
    >>> el.tables.mask_rows(jnp.array([[1.0], [jnp.nan]]), jnp.array([True, False])).tolist()
    [[1.0], [0.0]]
  """
  if keep is None:
    return vecs
  return jnp.where(keep[..., None], vecs, jnp.zeros((), vecs.dtype))


def _integer_array(ids: Any, where: str, what: str = "ids"):
  """``ids`` as a numpy array (host input) or a JAX array (device input), integer dtype."""
  if not isinstance(ids, (np.ndarray, jax.Array)):
    ids = np.asarray(ids)
    if ids.dtype == np.float64 and ids.size == 0:
      ids = ids.astype(np.int32)
  _check_integer_dtype(ids.dtype, where, what)
  return ids


def _check_integer_dtype(dtype, where, what="ids"):
  if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
    raise TypeError(f"{where}: {what} must be integers, got dtype {dtype}. Convert them with "
                    f".astype('int32'); floats are never silently truncated.")


def _host_out_of_range(ids: np.ndarray, limit: int) -> np.ndarray:
  """Exact ``(ids < 0) | (ids >= limit)`` for numpy ids of any integer dtype."""
  if ids.dtype.kind == "u":
    return ids.astype(np.uint64) >= np.uint64(limit)
  wide = ids.astype(np.int64)
  return (wide < 0) | (wide >= limit)


def _check_host_range(ids: np.ndarray, limit: int, message: Callable[..., str]) -> None:
  if ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < limit):
    return
  position = np.unravel_index(int(np.argmax(_host_out_of_range(ids, limit))), ids.shape)
  raise ValueError(message(ids[position], position))


def _device_bounds(ids: Array, limit: int) -> tuple[Array | None, Array | None]:
  """``(ids < 0, ids >= limit)`` compared exactly in ``ids``' own dtype; None where the dtype
  cannot hold such a value (an unsigned id is never negative, a uint8 id never reaches 1000)."""
  info = jnp.iinfo(ids.dtype)
  low = ids < 0 if info.min < 0 else None
  high = ids >= jnp.asarray(limit, ids.dtype) if limit <= info.max else None
  return low, high


def _checked_in_range(ids, limit: int, message: Callable[..., str]) -> Array:
  """``ids`` widened to ``id_dtype()``, raising (eagerly, or from the device) if any is outside
  ``0..limit-1``."""
  wide = id_dtype()
  if isinstance(ids, np.ndarray):
    _check_host_range(ids, limit, message)
    return jnp.asarray(ids.astype(wide))
  if not isinstance(ids, jax.core.Tracer):
    _check_host_range(np.asarray(ids), limit, message)
    return ids.astype(wide)
  low, high = _device_bounds(ids, limit)
  if ids.size and (low is not None or high is not None):
    bad = low if high is None else high if low is None else low | high
    flat = bad.reshape(-1)
    first = jnp.argmax(flat)
    shape = ids.shape

    def raise_if_bad(any_bad, bad_id, flat_index):
      if bool(any_bad):
        raise ValueError(message(bad_id, np.unravel_index(int(flat_index), shape)))

    jax.debug.callback(raise_if_bad, flat.any(), ids.reshape(-1)[first], first)
  return ids.astype(wide)


def _clipped(ids, limit: int) -> tuple[Array, Array]:
  """(``ids`` clamped to ``0..limit-1`` as ``id_dtype()``, out-of-range mask), exactly."""
  wide = id_dtype()
  if isinstance(ids, np.ndarray):
    bad = _host_out_of_range(ids, limit)
    if ids.dtype.kind == "u":
      safe = np.minimum(ids.astype(np.uint64), np.uint64(limit - 1))
    else:
      safe = np.clip(ids.astype(np.int64), 0, limit - 1)
    return jnp.asarray(safe.astype(wide)), jnp.asarray(bad)
  low, high = _device_bounds(ids, limit)
  safe = ids.astype(wide)  # wraps only values that high / low replace below
  bad = jnp.zeros(ids.shape, bool)
  if low is not None:
    safe, bad = jnp.where(low, 0, safe), low
  if high is not None:
    safe, bad = jnp.where(high, limit - 1, safe), bad | high
  return safe, bad


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
  checked = normalize_ids(ids, table.shape[0], oob=oob, padding_id=padding_id, where="lookup")
  vecs = jnp.take(table, checked.ids, axis=0, mode="clip")  # in range: checked or clamped
  if max_norm is not None:
    norms = jnp.linalg.norm(vecs.astype(jnp.float32), axis=-1, keepdims=True)
    scale = jnp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(vecs.dtype)
    vecs = vecs + jax.lax.stop_gradient(vecs * scale - vecs)
  if compute_dtype is not None:
    vecs = vecs.astype(compute_dtype)
  return mask_rows(vecs, checked.keep)


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
  offsets = np.asarray(_integer_array(offsets, "offsets_to_segment_ids", what="offsets"))
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
  (``normalize_segments``): others raise, as ids do (checked under ``jit`` with
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
  table = _table(params, "bag")
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
  checked = normalize_ids(ids, table.shape[0], oob=oob, padding_id=padding_id, where="bag")
  segment_ids, num_bags = normalize_segments(segment_ids, num_bags,
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
  (``embedlab.train``). ``num_bags`` and concrete segment ids are checked as ``bag`` checks
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
    segment_ids, num_bags = normalize_segments(segment_ids, num_bags, check_traced=False,
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
