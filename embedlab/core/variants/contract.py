"""The contract every table variant keeps, and the two builders that keep it.

``make(num_embeddings, features, *, padding_id=None, **options) -> TableVariant`` (one factory
per variant module, as optax builds a transformation) fixes the static facts; the functions it
returns take the params pytree and ids and nothing hidden:

- ``init(key, *, init="normal", scale=None, dtype=float32) -> params``: ``scale`` is the stddev
  the looked-up vectors start with (``init`` names the plain table's initializer; ignored by
  variants whose weights start by their own rule);
- ``lookup(params, ids, *, oob="error", compute_dtype=None, max_norm=None, rows=False)``:
  ``Array[*ids.shape, features]`` for ids ``0..num_embeddings-1`` of any rank; positions
  holding ``padding_id`` give zero vectors and send zero gradient to every parameter; bad ids
  raise (``ValueError`` eagerly, ``JaxRuntimeError`` under ``jit``; ``TypeError`` for floats),
  as ``embedlab.lookup``; no variant clamps ids by itself;
- ``bag(params, ids, mode="mean", *, weights=None, segment_ids=None, num_bags=None, ...)``:
  ``Array[B, features]``, ``embedlab.bag``'s modes, through ``embedlab.core.pooling``;
- ``rows(ids, oob="error")``: the rows of ``params["table"]`` a batch touches (what row-sparse
  optimizers update), or ``None`` for variants whose weights every id shares; with
  ``rows=True``, ``lookup`` and ``bag`` read ids that are already such rows (the row-sparse
  step's local table);
- ``project(params, pooled)``: what follows a pool of ``params["table"]`` rows (identity, or the
  factorized projection), ``None`` where there are no such rows;
- ``describe(params) -> CompressedSummary``.

What each variant supports is declared in its registry entry (``embedlab.core.variants.Spec``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import ids as ids_lib
from embedlab.core import pooling
from embedlab.core import tables
from embedlab.core.variants import TABLES

Array = jax.Array
Params = dict[str, Array]


class TableVariant(NamedTuple):
  """A table variant's pure functions (see the module docstring for each signature)."""

  name: str
  init: Callable[..., Params]
  lookup: Callable[..., Array]
  bag: Callable[..., Array]
  rows: Callable[..., Array] | None
  project: Callable[[Params, Array], Array] | None
  describe: Callable[[Params], "CompressedSummary"]


@dataclasses.dataclass(frozen=True)
class CompressedSummary:
  """A table variant against the plain float32 table of the same logical shape."""

  kind: str
  num_embeddings: int
  features: int
  weights: int
  bytes: int
  plain_bytes: int

  @property
  def ratio(self) -> float:
    return self.plain_bytes / self.bytes

  def __str__(self) -> str:
    return (f"{self.kind} embedding: {self.num_embeddings:,} ids x {self.features:,} features in "
            f"{self.weights:,} weights ({tables.human_bytes(self.bytes)}; a plain float32 table: "
            f"{tables.human_bytes(self.plain_bytes)}, {self.ratio:.1f}x larger)")


def check_count(value: Any, name: str, where: str, minimum: int = 1) -> int:
  """``value`` if it is an integer >= ``minimum``, else a ``ValueError`` naming the option.

  Example:
    >>> check_count(0, "num_buckets", "hashed.init")
    Traceback (most recent call last):
    ...
    ValueError: hashed.init: num_buckets must be an integer >= 1, got 0.
  """
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def table_bytes(params: Any) -> int:
  """Bytes held by a params pytree (every variant, the plain table and quantized ones too).

  Example:
    >>> import jax, embedlab as el
    >>> from embedlab.core.variants import contract
    >>> contract.table_bytes(el.init_table(jax.random.key(0), 1000, 16))
    64000
  """
  leaves = jax.tree_util.tree_leaves(params)  # arrays or jax.eval_shape's ShapeDtypeStructs
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))


def summarize(kind: str, num_embeddings: int, features: int, params: Any) -> CompressedSummary:
  """``CompressedSummary`` of ``params`` holding ``num_embeddings`` ids of ``features`` each.

  Example:
    >>> import jax, embedlab as el
    >>> from embedlab.core.variants import contract
    >>> contract.summarize("plain", 10, 4, el.init_table(jax.random.key(0), 10, 4)).ratio
    1.0
  """
  v, d = int(num_embeddings), int(features)
  return CompressedSummary(kind, v, d, tables.num_params(params), table_bytes(params), v * d * 4)


def entries_of(params: Any, names: tuple[str, ...], where: str) -> tuple[Array, ...]:
  """``params[name]`` for each name; a clear error when params are not that variant's."""
  if not isinstance(params, dict) or any(n not in params for n in names):
    got = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise TypeError(f"{where}: params must be a dict with entries {list(names)}, got {got}. "
                    "Build them with the matching init function.")
  return tuple(params[n] for n in names)


def bag_lookup(lookup_fn: Callable[..., Array], params: Params, ids: Any, *, mode: str = "mean",
               weights: Any = None, padding_id: int | None = None, oob: str = "error",
               **lookup_kwargs) -> Array:
  """Pools padded bags ``[B, L]`` of looked-up vectors of any variant: ``Array[B, D]``.

  The one path for bags that are not a pool of table rows: ``lookup_fn(params, ids,
  padding_id=..., oob=..., **lookup_kwargs)`` gives ``[B, L, D]`` and
  ``embedlab.core.pooling.pool_vectors`` pools it (float32 accumulation; weights at padding
  positions are ignored even when NaN or inf); positions holding ``padding_id`` are not part of
  a bag and an empty bag gives a zero vector. ``oob="zero"`` is not offered here (it would count
  out-of-range positions in a mean).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.core.variants import contract, qr
    >>> p = qr.init_qr_table(jax.random.key(0), 100, 4, num_collisions=10)
    >>> contract.bag_lookup(qr.lookup_qr, p, jnp.array([[1, 2, 0]]), mode="sum",
    ...                     padding_id=0).shape
    (1, 4)
  """
  if mode not in tables.BAG_MODES:
    raise ValueError(f"bag_lookup: mode={mode!r} is not one of {', '.join(tables.BAG_MODES)}.")
  if oob not in ("error", "clip"):
    raise ValueError(f"bag_lookup: oob={oob!r}; use 'error' or 'clip'.")
  if mode == "max" and weights is not None:
    raise ValueError("bag_lookup: mode='max' takes no weights; use 'sum' or 'mean'.")
  if len(np.shape(ids)) != 2:
    raise ValueError(f"bag_lookup: ids must be 2-D [batch, bag_len], got shape {np.shape(ids)}.")
  if weights is not None and np.shape(weights) != np.shape(ids):
    raise ValueError(f"bag_lookup: weights must have the shape of ids {np.shape(ids)}, got "
                     f"{np.shape(weights)}.")
  vecs = lookup_fn(params, ids, padding_id=padding_id, oob=oob, **lookup_kwargs)
  keep = ids_lib.padding_mask(ids, padding_id)  # exact in any id dtype
  return pooling.pool_vectors(vecs, keep, mode, weights=weights, dtype=vecs.dtype)


def _ragged_error(name: str) -> ValueError:
  return ValueError(f"{name}.bag: ragged bags (segment_ids) are pooled by "
                    f"{TABLES.ragged_requirements(name)}; pass padded ids [batch, bag_len].")


def row_table(name: str, *, padding_id: int | None, init: Callable[..., Params],
              describe: Callable[[Params], CompressedSummary],
              to_rows: Callable[[Any, str], tuple[Array, Array | None]] | None = None,
              project: Callable[[Params, Array], Array] | None = None,
              pooled_modes: tuple[str, ...] = tables.BAG_MODES) -> TableVariant:
  """A variant whose vectors are rows of ``params["table"]``, then ``project``.

  Args:
    name: the registry name.
    padding_id: must be its own row (``to_rows`` maps it to itself and no other id there).
    init: ``init(key, *, init, scale, dtype) -> params``.
    describe: ``describe(params) -> CompressedSummary``.
    to_rows: ``to_rows(ids, oob) -> (rows, keep or None)``: ids checked against the logical
      vocabulary, mapped to rows (default: the ids are the rows, checked by the lookup).
    project: ``project(params, x)`` applied after the lookup or the pool (default: identity).
    pooled_modes: the bag modes that pool rows first (``project`` is linear in them); others,
      and every mode with ``max_norm``, pool the looked-up vectors (``bag_lookup``).
  """
  project = project or (lambda params, x: x)

  def rows_of(ids, oob, rows):
    """``(rows, the lookup's oob, keep)``: rows already checked are read with "clip"."""
    if rows:
      return ids, "clip", None
    if to_rows is None:
      return ids, oob, None
    mapped, keep = to_rows(ids, oob)
    return mapped, "clip", keep

  def lookup(params, ids, *, oob="error", compute_dtype=None, max_norm=None, rows=False):
    table = tables.table_of(params, f"{name}.lookup")
    index, check, keep = rows_of(ids, oob, rows)
    x = tables.lookup({"table": table}, index, padding_id=padding_id, oob=check,
                      compute_dtype=compute_dtype, max_norm=max_norm)
    return ids_lib.mask_rows(project(params, x), keep)

  def bag(params, ids, mode="mean", *, weights=None, segment_ids=None, num_bags=None,
          oob="error", compute_dtype=None, max_norm=None, rows=False):
    if max_norm is not None or mode not in pooled_modes:
      if segment_ids is not None:
        raise _ragged_error(name)
      # max_norm renormalizes each row read and a non-linear mode pools projected vectors:
      # pool the looked-up vectors (no fused gather-pool)
      def read(p, i, **_):
        return lookup(p, i, oob=oob, compute_dtype=compute_dtype, max_norm=max_norm, rows=rows)
      return bag_lookup(read, params, ids, mode=mode, weights=weights, padding_id=padding_id,
                        oob="clip")
    if to_rows is not None and oob == "zero" and not rows:
      raise ValueError(f"{name}.bag: oob='zero' is not offered for mapped ids; use 'error' or "
                       "'clip'.")
    table = tables.table_of(params, f"{name}.bag")
    index, check, _ = rows_of(ids, oob, rows)
    x = tables.bag({"table": table}, index, mode=mode, weights=weights, padding_id=padding_id,
                   compute_dtype=compute_dtype, oob=check, segment_ids=segment_ids,
                   num_bags=num_bags)
    return project(params, x)

  def rows(ids, oob="error"):
    return ids if to_rows is None else to_rows(ids, oob)[0]

  return TableVariant(name, init, lookup, bag, rows, project, describe)


def shared_table(name: str, *, padding_id: int | None, init: Callable[..., Params],
                 describe: Callable[[Params], CompressedSummary],
                 read: Callable[..., Array]) -> TableVariant:
  """A variant whose weights many ids share (no row per id): ``rows`` and ``project`` are None.

  ``read(params, ids, *, padding_id, oob) -> Array[*ids.shape, D]`` is its lookup; bags pool
  the looked-up vectors (``bag_lookup``); the result is cast to ``compute_dtype`` last.
  """

  def check(rows, max_norm, where):
    if rows:
      raise ValueError(f"{name}.{where}: rows=True reads rows of a table; {name} has none (its "
                       "weights are shared by many ids).")
    if max_norm is not None:
      raise ValueError(f"{name}.{where}: max_norm renormalizes table rows; {name} has none.")

  def cast(x, compute_dtype):
    return x if compute_dtype is None else x.astype(compute_dtype)

  def lookup(params, ids, *, oob="error", compute_dtype=None, max_norm=None, rows=False):
    check(rows, max_norm, "lookup")
    return cast(read(params, ids, padding_id=padding_id, oob=oob), compute_dtype)

  def bag(params, ids, mode="mean", *, weights=None, segment_ids=None, num_bags=None,
          oob="error", compute_dtype=None, max_norm=None, rows=False):
    del num_bags  # padded bags only: their number is the rows of ids
    check(rows, max_norm, "bag")
    if segment_ids is not None:
      raise _ragged_error(name)
    return cast(bag_lookup(read, params, ids, mode=mode, weights=weights, padding_id=padding_id,
                           oob=oob), compute_dtype)

  return TableVariant(name, init, lookup, bag, None, None, describe)
