"""Checking ids: the one path every table function sends its ids through.

``normalize_ids`` requires an integer dtype, compares each id with the table's rows exactly
whatever its dtype (a ``uint8`` id 255 is row 255 of a 1000-row table, an ``int8`` id 4 is not
padding id 260), and widens the ids to ``id_dtype()`` (int32, or int64 under
``jax_enable_x64``) before anything else compares or gathers them. Concrete ids are checked in
numpy and raise ``ValueError``; traced ids (under ``jit``, ``grad``, ``vmap``) are checked on the
device with one reduction, and a host callback raises the same message at run time (as a
``jax.errors.JaxRuntimeError``). ``oob="clip"`` / ``oob="zero"`` map bad ids deliberately.
Ragged bags check their segment ids the same way (``normalize_segments``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

OOB_POLICIES = ("error", "clip", "zero")


def check_padding_id(padding_id, rows, where):
  if isinstance(padding_id, bool) or not isinstance(padding_id, (int, np.integer)):
    raise TypeError(f"{where}: padding_id must be an int, got {padding_id!r}.")
  if not 0 <= padding_id < rows:
    raise ValueError(f"{where}: padding_id {padding_id} is outside the table "
                     f"({rows} rows: valid ids are 0..{rows - 1}).")


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
    >>> id_dtype()
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
    >>> import numpy as np
    >>> checked = normalize_ids(np.array([1, 255], np.uint8), 1000, padding_id=1)
    >>> checked.ids.tolist(), checked.ids.dtype, checked.keep.tolist()
    ([1, 255], dtype('int32'), [False, True])
  """
  if oob not in OOB_POLICIES:
    raise ValueError(f"{where}: oob={oob!r} is not one of {', '.join(OOB_POLICIES)}.")
  if padding_id is not None:
    check_padding_id(padding_id, num_embeddings, where)
  ids = integer_array(ids, where)
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
    >>> normalize_segments([0, 0, 2], 2)
    Traceback (most recent call last):
    ...
    ValueError: bag: segment id 2 at position (2,) is outside the bags (num_bags=2: valid ...
  """
  segment_ids = integer_array(segment_ids, where, what="segment_ids")
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


def check_ids(ids: Any, num_embeddings: int, *, where: str = "check_ids") -> Array:
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
    ValueError: check_ids: id 9 at position (1, 1) is outside the table (5 rows: valid ids are 0..4). ...
  """
  if (isinstance(num_embeddings, bool) or not isinstance(num_embeddings, (int, np.integer))
      or num_embeddings <= 0):
    raise ValueError(f"{where}: num_embeddings must be a positive integer (the table's rows), "
                     f"got {num_embeddings!r}.")
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
    >>> import numpy as np
    >>> padding_mask(np.array([4, 5], np.int8), 260).tolist()
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
    >>> import jax.numpy as jnp
    >>> mask_rows(jnp.array([[1.0], [jnp.nan]]), jnp.array([True, False])).tolist()
    [[1.0], [0.0]]
  """
  if keep is None:
    return vecs
  return jnp.where(keep[..., None], vecs, jnp.zeros((), vecs.dtype))


def integer_array(ids: Any, where: str, what: str = "ids"):
  """``ids`` as a numpy array (host input) or a JAX array (device input), integer dtype."""
  if not isinstance(ids, (np.ndarray, jax.Array)):
    try:
      ids = np.asarray(ids)
    except ValueError:  # numpy: "setting an array element with a sequence ... inhomogeneous"
      raise ValueError(f"{where}: {what} must be a rectangular array of integers; got nested "
                       "lists whose rows differ in length. Pad the rows to one length (with "
                       "padding_id), or give bag the ids flat with segment_ids.") from None
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
