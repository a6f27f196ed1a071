"""Quotient-remainder compositional embeddings (Shi et al. 2020):
``{"quotient": [ceil(V/m), D1], "remainder": [m, D2]}``.

Id ``i`` combines ``quotient[i // m]`` and ``remainder[i % m]`` (``m = num_collisions``), each
pair of ids sharing at most one of the two rows. Every row is shared by many ids, so there are no
rows to update sparsely; bags pool the looked-up vectors. A 2,000,000 x 64 table with m=1414
("mult") takes 0.7 MiB instead of 488.3 MiB.

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.core.variants import qr
  >>> v = qr.make(1000, 16, padding_id=0, num_collisions=32)
  >>> v.lookup(v.init(jax.random.key(0)), jnp.array([[3, 999]])).shape
  (1, 2, 16)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from embedlab.core import ids as ids_lib
from embedlab.core import tables
from embedlab.core.variants import TABLES
from embedlab.core.variants import contract

Array = jax.Array
Params = dict[str, Array]

COMBINE_MODES = TABLES["qr"].choices["table_combine"]  # ("mult", "add", "concat")


def make(num_embeddings: int, features: int, *, padding_id: int | None = None,
         num_collisions: int = 0, combine: str = "mult") -> contract.TableVariant:
  """Quotient-remainder embeddings of ``num_embeddings`` ids, ``features`` wide.

  ``num_collisions`` is ``m`` (0: ``ceil(sqrt(V))``, the smallest); ``"concat"`` splits
  ``features`` between the quotient (``features - features // 2``) and remainder tables.
  ``padding_id`` is positional only (its rows are shared with other ids).
  """
  tables.check_size(num_embeddings, features)
  _check_combine(combine, "qr.make")
  contract.check_count(num_collisions, "num_collisions (0: the smallest)", "qr.make", minimum=0)
  m = num_collisions or math.isqrt(num_embeddings - 1) + 1
  if combine == "concat":  # the two tables' columns add up to features
    widths = {"features": features - features // 2, "remainder_features": features // 2}
  else:
    widths = {"features": features}

  def init(key, *, init: Any = "normal", scale: float | None = None, dtype: Any = jnp.float32):
    del init  # both tables start normal (the remainder near 1 for "mult")
    return init_qr_table(key, num_embeddings, num_collisions=m, combine=combine, scale=scale,
                         dtype=dtype, **widths)

  read = functools.partial(lookup_qr, combine=combine, num_embeddings=num_embeddings)
  return contract.shared_table("qr", padding_id=padding_id, init=init, read=read,
                               describe=functools.partial(describe, num_embeddings=num_embeddings,
                                                          combine=combine))


def describe(params: Any, *, num_embeddings: int | None = None, combine: str = "mult",
             **options: Any) -> contract.CompressedSummary:
  """``CompressedSummary`` of quotient-remainder params (``num_embeddings`` default ``Q * m``)."""
  del options
  q, r = contract.entries_of(params, ("quotient", "remainder"), "describe")
  features = q.shape[1] + r.shape[1] if combine == "concat" else q.shape[1]
  return contract.summarize(TABLES["qr"].title, num_embeddings or q.shape[0] * r.shape[0],
                            features, params)


def init_qr_table(key: Array, num_embeddings: int, features: int, *, num_collisions: int,
                  combine: str = "mult", remainder_features: int | None = None,
                  dtype: Any = jnp.float32, scale: float | None = None) -> Params:
  """Quotient-remainder compositional embeddings (Shi et al. 2020).

  Id ``i`` combines ``quotient[i // m]`` and ``remainder[i % m]`` (``m = num_collisions``), each
  pair of ids sharing at most one of the two rows: ``"mult"`` (element-wise product),
  ``"add"``, or ``"concat"`` (``D = features + remainder_features``). Weights:
  ``(ceil(V/m) + m) * D`` instead of ``V * D``; ``m ~ sqrt(V)`` is smallest.

  Args:
    key: a ``jax.random`` key.
    num_embeddings: ``V``.
    features: columns of both tables (of the quotient table for ``"concat"``).
    num_collisions: ``m``.
    combine: ``"mult"``, ``"add"`` or ``"concat"``.
    remainder_features: columns of the remainder table for ``"concat"`` (default ``features``).
    dtype: the parameters' dtype.
    scale: stddev (default 1 for ``"add"``/``"concat"``; for ``"mult"`` the remainder table
      starts at ``1 + 0.1 N(0, 1)``, so products start near the quotient rows).

  Returns:
    ``{"quotient": Array[ceil(V/m), D1], "remainder": Array[m, D2]}``.

  Example:
    >>> import jax
    >>> from embedlab.core.variants import qr
    >>> p = qr.init_qr_table(jax.random.key(0), 1_000_000, 64, num_collisions=1000)
    >>> p["quotient"].shape, p["remainder"].shape
    ((1000, 64), (1000, 64))
  """
  tables.check_size(num_embeddings, features)
  tables.check_size(num_collisions, remainder_features or features)
  _check_combine(combine, "init_qr_table")
  if combine != "concat" and remainder_features not in (None, features):
    raise ValueError(f"init_qr_table: remainder_features={remainder_features} needs "
                     f"combine='concat'; '{combine}' needs both tables {features} wide.")
  kq, kr = jax.random.split(key)
  std = 1.0 if scale is None else scale
  q = std * jax.random.normal(kq, (-(-num_embeddings // num_collisions), features), dtype)
  d2 = remainder_features or features
  r = jax.random.normal(kr, (num_collisions, d2), dtype)
  r = 1 + 0.1 * r if combine == "mult" else std * r
  return {"quotient": q, "remainder": r.astype(dtype)}


def _check_combine(combine, where):
  if combine not in COMBINE_MODES:
    raise ValueError(f"{where}: combine={combine!r} is not one of {', '.join(COMBINE_MODES)}.")


def lookup_qr(params: Params, ids: Any, *, combine: str = "mult",
              num_embeddings: int | None = None, padding_id: int | None = None,
              oob: str = "error") -> Array:
  """Looks up quotient-remainder embeddings: ``combine(quotient[i // m], remainder[i % m])``.

  Args:
    params: ``{"quotient": Array[Q, D1], "remainder": Array[m, D2]}``.
    ids: integer ids of any shape in ``0..num_embeddings-1``.
    combine: as at init.
    num_embeddings: the logical ``V`` for the range check (default ``Q * m``, which may accept a
      few ids past the real vocabulary).
    padding_id: positions holding it give zero vectors and send zero gradient to both tables
      (its quotient and remainder rows are shared with other ids, so they are not zeroed at
      init and still learn from those ids).
    oob: as ``embedlab.lookup``.

  Returns:
    ``Array[*ids.shape, D]`` (``D = D1 + D2`` for ``"concat"``).

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core.variants import qr
    >>> p = {"quotient": jnp.array([[1.0], [2.0]]), "remainder": jnp.array([[10.0], [20.0]])}
    >>> qr.lookup_qr(p, jnp.array([0, 1, 2, 3]), combine="add")[:, 0].tolist()
    [11.0, 21.0, 12.0, 22.0]
  """
  q, r = contract.entries_of(params, ("quotient", "remainder"), "lookup_qr")
  _check_combine(combine, "lookup_qr")
  m = r.shape[0]
  rows = q.shape[0] * m if num_embeddings is None else int(num_embeddings)
  if rows > q.shape[0] * m:
    raise ValueError(f"lookup_qr: num_embeddings={rows} needs {-(-rows // m)} quotient rows, "
                     f"the params have {q.shape[0]}.")
  checked = ids_lib.normalize_ids(ids, rows, oob=oob, padding_id=padding_id, where="lookup_qr")
  qv = jnp.take(q, checked.ids // m, axis=0, mode="clip")  # ids in range: checked or clamped
  rv = jnp.take(r, checked.ids % m, axis=0, mode="clip")
  if combine == "mult":
    vecs = qv * rv
  elif combine == "add":
    vecs = qv + rv
  else:
    vecs = jnp.concatenate([qv, rv.astype(qv.dtype)], axis=-1)
  return ids_lib.mask_rows(vecs, checked.keep)
