"""Row-wise quantization of trained tables for inference: int8, 4-bit and 2-bit storage.

Quantization is a transformation over the table variants, not a variant of its own: it takes the
params of any variant after training (``quantize_entries`` quantizes every 2-D float entry: a
plain table, a factorized table and its projection, a hash-embedding pool, ...) and gives
integer storage that is read back (``lookup_quantized``, ``dequantize_entries``) but not
trained. A variant (``embedlab.core.variants``) is what ``model.table`` names and trains; a
quantized table is what ``embedlab export --quantize`` writes and ``embedlab eval --quantize``
reads, so it has no entry in that registry.

==================  ===========================================
storage             params
==================  ===========================================
int8                ``{"q8": int8[V, D], "scale": f32[V]}``
4 bit               ``{"q4": uint8[V, D/2], "scale": f32[V]}``
2 bit               ``{"q2": uint8[V, D/4], "scale": f32[V]}``
==================  ===========================================

Sizes for a 2,000,000 x 64 float32 table (488.3 MiB; ``table_bytes``, see
``tests/test_variants.py``): int8 129.7 MiB; 4-bit 68.7 MiB; 2-bit 38.1 MiB.

  >>> import jax, jax.numpy as jnp, embedlab as el, embedlab.core.quantize as eq
  >>> q = eq.quantize(el.init_table(jax.random.key(0), 100, 8), bits=4)
  >>> eq.lookup_quantized(q, jnp.array([[1, 2]])).shape
  (1, 2, 8)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from embedlab.core import ids as ids_lib
from embedlab.core import tables

Array = jax.Array
Params = dict[str, Array]


def quantize(params: Params, bits: int = 8) -> Params:
  """Row-wise quantization of a plain table for inference, with one float32 scale per row.

  - ``bits=8`` and ``bits=4``: symmetric, ``scale = max|row| / qmax`` (``qmax`` 127 or 7) and
    ``q = round(x / scale)``.
  - ``bits=2``: four levels ``(-1.5, -0.5, 0.5, 1.5) * scale`` with ``scale = max|row| / 1.5``
    (a mid-rise quantizer: it has no zero level, so all four codes carry a value).

  Every element is off by at most ``scale / 2``. Sub-byte values are packed into ``uint8``:
  4-bit values two per byte (column ``2c`` in the low nibble, ``2c+1`` in the high one, each as
  ``q + 8`` in 0..15), 2-bit codes four per byte (column ``4c+j`` in bits ``2j, 2j+1``, as 0..3),
  so ``D`` must be a multiple of 2 (4 bits) or 4 (2 bits).

  Args:
    params: ``{"table": Array[V, D]}``.
    bits: 8, 4 or 2.

  Returns:
    ``{"q8": int8[V, D], "scale": float32[V]}``, ``{"q4": uint8[V, D/2], "scale": ...}`` or
    ``{"q2": uint8[V, D/4], "scale": ...}``.

  Example:
    >>> import jax.numpy as jnp, embedlab.core.quantize as eq
    >>> q = eq.quantize({"table": jnp.array([[1.0, -0.5], [0.0, 0.0]])})
    >>> q["q8"].tolist(), q["scale"].tolist()[1]
    ([[127, -64], [0, 0]], 0.0)
    >>> q2 = eq.quantize({"table": jnp.array([[1.5, -0.6, 0.2, -1.5]])}, bits=2)
    >>> eq.dequantize(q2)["table"].tolist()
    [[1.5, -0.5, 0.5, -1.5]]
  """
  table = tables.table_of(params, "quantize").astype(jnp.float32)
  if bits not in _PER_BYTE:
    raise ValueError(f"quantize: bits={bits!r} is not supported; use 8, 4 or 2.")
  per_byte = _PER_BYTE[bits]
  if table.shape[1] % per_byte:
    raise ValueError(f"quantize: bits={bits} packs {per_byte} values per byte and needs a "
                     f"number of features divisible by {per_byte}, got {table.shape[1]}; use "
                     f"bits=8 or pad the table.")
  if bits == 8:
    scale = jnp.max(jnp.abs(table), axis=1) / 127
    q = jnp.round(table / jnp.where(scale == 0, 1, scale)[:, None])
    return {"q8": jnp.clip(q, -127, 127).astype(jnp.int8), "scale": scale}
  offset = _OFFSET[bits]  # code = level + offset, in 0 .. 2**bits - 1
  scale = jnp.max(jnp.abs(table), axis=1) / (2 ** bits - 1 - offset)
  unit = table / jnp.where(scale == 0, 1, scale)[:, None]
  level = jnp.round(unit) if bits == 4 else jnp.floor(unit) + 0.5  # 2 bits: mid-rise
  codes = jnp.clip(level + offset, 0, 2 ** bits - 1).astype(jnp.uint8)
  packed = codes[:, 0::per_byte]
  for j in range(1, per_byte):
    packed = packed | (codes[:, j::per_byte] << (bits * j))
  return {f"q{bits}": packed, "scale": scale}


_PER_BYTE = {8: 1, 4: 2, 2: 4}
_OFFSET = {4: 8, 2: 1.5}  # symmetric 4-bit levels -7..7 stored as 1..15; 2-bit -1.5..1.5 as 0..3


def _unpack(stored, bits):
  """The values of ``quantize``'s stored integers, in units of the row's scale (float32)."""
  if bits == 8:
    return stored.astype(jnp.float32)
  per_byte, mask = _PER_BYTE[bits], 2 ** bits - 1
  parts = [((stored >> (bits * j)) & mask).astype(jnp.float32) - _OFFSET[bits]
           for j in range(per_byte)]
  return jnp.stack(parts, axis=-1).reshape(*stored.shape[:-1], per_byte * stored.shape[-1])


def _quantized_parts(params, where):
  if isinstance(params, dict) and "scale" in params:
    for key, bits in (("q8", 8), ("q4", 4), ("q2", 2)):
      if key in params:
        return params[key], bits, params["scale"]
  raise TypeError(f"{where}: params must be quantize()'s output, a dict with 'q8', 'q4' or 'q2' "
                  f"and 'scale', got {sorted(params) if isinstance(params, dict) else params!r}.")


def dequantize(params: Params, dtype: Any = jnp.float32) -> Params:
  """The whole table back as ``{"table": Array[V, D]}`` of ``dtype``.

  Example:
    >>> import jax.numpy as jnp, embedlab.core.quantize as eq
    >>> eq.dequantize(eq.quantize({"table": jnp.array([[1.0, -0.5]])}))["table"].tolist()
    [[1.0, -0.5039370059967041]]
  """
  stored, bits, scale = _quantized_parts(params, "dequantize")
  return {"table": (_unpack(stored, bits) * scale[:, None]).astype(dtype)}


def lookup_quantized(params: Params, ids: Any, *, padding_id: int | None = None,
                     oob: str = "error", dtype: Any = jnp.float32) -> Array:
  """Looks up rows of a quantized table and dequantizes only those: ``Array[*ids.shape, D]``.

  Not trainable (the stored values are integers): quantize a trained table for inference.
  ``padding_id`` positions give zero vectors.

  Example:
    >>> import jax, jax.numpy as jnp, embedlab as el, embedlab.core.quantize as eq
    >>> q = eq.quantize(el.init_table(jax.random.key(0), 100, 8), bits=4)
    >>> eq.lookup_quantized(q, jnp.array([[1, 2]])).shape
    (1, 2, 8)
  """
  stored, bits, scale = _quantized_parts(params, "lookup_quantized")
  rows = stored.shape[0]
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id,
                                 where="lookup_quantized")
  values = _unpack(jnp.take(stored, checked.ids, axis=0, mode="clip"), bits)  # ids in range
  vecs = (values * jnp.take(scale, checked.ids, mode="clip")[..., None]).astype(dtype)
  return ids_lib.mask_rows(vecs, checked.keep)


def quantization_error(params: Params, quantized: Params) -> float:
  """Max absolute difference between a float table and its quantized version.

  Example:
    >>> import jax, embedlab as el, embedlab.core.quantize as eq
    >>> p = el.init_table(jax.random.key(0), 1000, 16)
    >>> eq.quantization_error(p, eq.quantize(p)) < 0.02
    True
  """
  table = tables.table_of(params, "quantization_error").astype(jnp.float32)
  return float(jnp.max(jnp.abs(dequantize(quantized)["table"] - table)))


QUANTIZE_NAMES = {"int8": 8, "int4": 4, "int2": 2}


def quantize_bits(name: str, where: str) -> int:
  """The bits of a ``--quantize`` name (``int8``, ``int4``, ``int2``); a clear error otherwise.

  Example:
    >>> import embedlab.core.quantize as eq
    >>> eq.quantize_bits("int2", "eval")
    2
  """
  if name not in QUANTIZE_NAMES:
    raise ValueError(f"{where}: quantize={name!r} is not one of {', '.join(QUANTIZE_NAMES)}.")
  return QUANTIZE_NAMES[name]


def quantize_entries(params: Params, bits: int = 8) -> dict[str, Any]:
  """``quantize`` applied to every 2-D float entry of any variant's params (the plain table,
  a factorized table and its projection, a pool, ...); other entries are kept as they are.

  Returns ``{name: quantize({"table": entry}, bits) or entry}``; ``dequantize_entries`` inverts
  it. Row-wise scales: the error of each element is at most half its row's step.

  Example:
    >>> import jax, embedlab.core.quantize as eq
    >>> from embedlab.core.variants import factorized
    >>> p = factorized.init_factorized_table(jax.random.key(0), 100, 8, rank=2)
    >>> q = eq.quantize_entries(p)
    >>> sorted(q["table"]), eq.dequantize_entries(q)["projection"].shape
    (['q8', 'scale'], (2, 8))
  """
  if not isinstance(params, dict):
    raise TypeError(f"quantize_entries: params must be a dict of arrays, got "
                    f"{type(params).__name__}.")
  out = {}
  for name, value in params.items():
    if jnp.ndim(value) == 2 and jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating):
      try:
        out[name] = quantize({"table": value}, bits)
      except ValueError as e:
        raise ValueError(f"quantize_entries: entry {name!r}: {e}") from None
    else:
      out[name] = value
  return out


def dequantize_entries(quantized: dict[str, Any], dtype: Any = jnp.float32) -> Params:
  """Inverse of ``quantize_entries``: float entries again (what ``lookup_quantized`` computes
  for the rows it reads), so a model runs unchanged on a quantized table."""
  return {name: dequantize(v, dtype)["table"] if isinstance(v, dict) else v
          for name, v in quantized.items()}


def describe_quantized(params: Params) -> tuple[str, int, int]:
  """``(kind, rows, features)`` of ``quantize()``'s output: kind ``int8``, ``4-bit`` or ``2-bit``.

  Example:
    >>> import jax.numpy as jnp, embedlab.core.quantize as eq
    >>> eq.describe_quantized(eq.quantize({"table": jnp.ones((3, 8))}, bits=4))
    ('4-bit', 3, 8)
  """
  stored, bits, _ = _quantized_parts(params, "describe_quantized")
  return ("int8" if bits == 8 else f"{bits}-bit"), stored.shape[0], stored.shape[1] * _PER_BYTE[bits]


def is_quantized(params: Any) -> bool:
  """Whether ``params`` are ``quantize()``'s output (``q8``, ``q4`` or ``q2`` and ``scale``)."""
  return isinstance(params, dict) and len(params) == 2 and "scale" in params and any(
      k in params for k in ("q8", "q4", "q2"))
