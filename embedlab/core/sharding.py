"""Sharded table ops: lookups, bags, row reads and row-sparse updates on a row-sharded table.

A table too big for one device is split by rows over the "model" axis of an
``embedlab.core.meshes`` mesh (``make_mesh``, ``shard_table``); the batch is split over "data".
``sharded_lookup`` and ``sharded_bag`` run under ``jax.shard_map``: each shard gathers only the
ids it owns (others give zeros), and one ``psum`` over "model" adds the pieces, so every id is
read from exactly one device. Values and gradients equal ``embedlab.lookup`` / ``embedlab.bag``
on the whole table.

  >>> import jax, jax.numpy as jnp, embedlab as el
  >>> from embedlab.core import meshes
  >>> from embedlab.core import meshes, sharding
  >>> mesh = meshes.make_mesh(data=1, model=1)
  >>> params = meshes.shard_table(el.init_table(jax.random.key(0), 10, 4), mesh)
  >>> sharding.sharded_lookup(params, jnp.array([[1, 2], [3, 9]]), mesh).shape
  (2, 2, 4)

The other path is to place the table with ``shard_table`` and call plain ``embedlab.lookup``
under ``jax.jit``: XLA's partitioner then decides how to gather (``partitioned_lookup``).
``python benchmarks/sharded_lookup.py`` times both on simulated CPU devices.

Rows must divide evenly by the "model" size. ``shard_table`` raises when they do not, unless
``pad=True``: then zero rows are appended up to ``padded_rows(V, model)``; pass the real
vocabulary size as ``num_embeddings`` to the lookups so ids in the padding still raise.

The row-sparse train step (``mesh.lookup=shard_map``) reads and updates a sharded table's rows
with ``sharded_take`` / ``sharded_sparse_update``; the train state's placement is
``embedlab.core.meshes``'.

``make_mesh``, ``shard_table``, ``state_shardings``, ``place``, ``global_batch`` and the other
names of ``embedlab.core.meshes`` were once this module's; they still resolve here, with a
``DeprecationWarning``.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from embedlab.core import ids as ids_lib
from embedlab.core import pooling
from embedlab.core import tables
from embedlab.core.meshes import check_mesh

Array = jax.Array


Params = dict[str, Array]


SHARDED_BAG_MODES = ("sum", "mean", "sqrtn")


def _prepare(params, ids, mesh, padding_id, num_embeddings, where):
  table = tables.table_of(params, where)
  mesh = check_mesh(mesh, where)
  rows, model, data = table.shape[0], mesh.shape["model"], mesh.shape["data"]
  if rows % model:
    raise ValueError(f"{where}: the table's {rows} rows do not split evenly over model={model} "
                     f"devices; place it with shard_table(params, mesh, pad=True) first.")
  valid = rows if num_embeddings is None else int(num_embeddings)
  if not 0 < valid <= rows:
    raise ValueError(f"{where}: num_embeddings={valid} must be in 1..{rows} (the table's rows).")
  checked = ids_lib.normalize_ids(ids, valid, padding_id=padding_id, where=where)
  ids = checked.ids
  if ids.ndim < 1 or ids.shape[0] % data:
    raise ValueError(f"{where}: the batch size {ids.shape[0] if ids.ndim else None} (ids shape "
                     f"{ids.shape}) must be a multiple of the mesh's data={data} devices; pad "
                     f"the batch with padding ids or choose another mesh.")
  keep = jnp.ones(ids.shape, bool) if checked.keep is None else checked.keep
  return table, ids, keep, rows // model


def _owned_rows(table_shard, ids, rows_per_shard):
  """This shard's rows for ``ids``, zero where another shard owns the id; and the owned mask."""
  start = jax.lax.axis_index("model") * rows_per_shard
  local = ids - start
  owned = (local >= 0) & (local < rows_per_shard)
  # the ids were checked against the whole table: clamping to this shard's rows only picks a
  # row that ``owned`` then zeroes
  vecs = jnp.take(table_shard, jnp.clip(local, 0, rows_per_shard - 1), axis=0, mode="clip")
  return ids_lib.mask_rows(vecs, owned), owned


def _batch_spec(ndim):
  return P("data", *([None] * (ndim - 1)))


def sharded_lookup(params: Params, ids: Any, mesh: Mesh, *, padding_id: int | None = None,
                   num_embeddings: int | None = None) -> Array:
  """``embedlab.lookup`` on a row-sharded table with ``jax.shard_map``: ``[*ids.shape, D]``.

  Each "model" shard gathers the ids it owns, the others contribute zeros, and a ``psum`` over
  "model" combines them; the batch (first axis of ``ids``) is split over "data".

  Args:
    params: ``{"table": Array[V, D]}``, ideally placed by ``shard_table``.
    ids: integer ids ``[B, ...]``; ``B`` a multiple of ``mesh.shape["data"]``.
    mesh: a mesh from ``make_mesh``.
    padding_id: positions holding it come out as zero and send no gradient.
    num_embeddings: the real vocabulary size when the table was padded (ids are checked
      against it); default ``V``.

  Returns:
    ``Array[*ids.shape, D]``, split over "data" along the first axis.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import meshes, sharding
    >>> mesh = meshes.make_mesh()
    >>> p = meshes.shard_table({"table": jnp.arange(8.0).reshape(4, 2)}, mesh)
    >>> sharding.sharded_lookup(p, jnp.array([[3, 0]]), mesh, padding_id=0)
    Array([[[6., 7.],
            [0., 0.]]], dtype=float32)
  """
  table, ids, keep, rows_per_shard = _prepare(params, ids, mesh, padding_id, num_embeddings,
                                              "sharded_lookup")
  spec = _batch_spec(ids.ndim)

  def local_lookup(table_shard, ids_local, keep_local):
    vecs, _ = _owned_rows(table_shard, ids_local, rows_per_shard)
    return jax.lax.psum(ids_lib.mask_rows(vecs, keep_local), "model")

  return jax.shard_map(local_lookup, mesh=mesh, in_specs=(P("model", None), spec, spec),
                       out_specs=P(*spec, None))(table, ids, keep)


def sharded_bag(params: Params, ids: Any, mesh: Mesh, *, mode: str = "mean",
                weights: Any = None, padding_id: int | None = None,
                num_embeddings: int | None = None) -> Array:
  """``embedlab.bag`` (padded layout) on a row-sharded table: ``Array[B, D]``.

  Each "model" shard sums the weighted rows it owns per bag, a ``psum`` over "model" adds the
  partial sums, and ``mean`` / ``sqrtn`` then divide by the bag's total weight, which every
  shard knows already (it sees all the ids of its "data" slice). An empty bag gives zeros.

  Args:
    params: ``{"table": Array[V, D]}``, ideally placed by ``shard_table``.
    ids: ``[B, L]`` integer ids, one bag per row; ``B`` a multiple of ``mesh.shape["data"]``.
    mesh: a mesh from ``make_mesh``.
    mode: ``"sum"``, ``"mean"`` or ``"sqrtn"`` (``"max"`` is not sharded yet).
    weights: optional ``[B, L]`` per-position weights.
    padding_id: positions holding it are not part of the bag.
    num_embeddings: the real vocabulary size when the table was padded; default ``V``.

  Returns:
    ``Array[B, D]``, split over "data".

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import meshes, sharding
    >>> mesh = meshes.make_mesh()
    >>> p = meshes.shard_table({"table": jnp.arange(12.0).reshape(4, 3)}, mesh)
    >>> sharding.sharded_bag(p, jnp.array([[1, 2, 0]]), mesh, mode="sum", padding_id=0)
    Array([[ 9., 11., 13.]], dtype=float32)
  """
  if mode not in SHARDED_BAG_MODES:
    raise ValueError(f"sharded_bag: mode={mode!r} is not one of {', '.join(SHARDED_BAG_MODES)} "
                     f"('max' is not sharded yet: use embedlab.bag under jit).")
  if np.ndim(ids) != 2:
    raise ValueError(f"sharded_bag: ids must be 2-D [batch, bag_len], got shape {np.shape(ids)}.")
  if weights is not None and np.shape(weights) != np.shape(ids):
    raise ValueError(f"sharded_bag: weights must have the shape of ids {np.shape(ids)}, "
                     f"got {np.shape(weights)}.")
  table, ids, keep, rows_per_shard = _prepare(params, ids, mesh, padding_id, num_embeddings,
                                              "sharded_bag")
  # float32 (at least) weights, exactly 0 at padding: NaN / inf weights there are ignored
  w = pooling.masked_weights(keep, weights, table.dtype)

  def local_bag(table_shard, ids_local, w_local, keep_local):
    vecs, _ = _owned_rows(table_shard, ids_local, rows_per_shard)
    total = jax.lax.psum(pooling.weighted_sum(vecs, w_local, keep_local), "model")
    return pooling.finish(total, w_local, mode, table.dtype)

  batch = P("data", None)
  return jax.shard_map(local_bag, mesh=mesh, in_specs=(P("model", None), batch, batch, batch),
                       out_specs=batch)(table, ids, w, keep)


@functools.partial(jax.jit, static_argnames=("padding_id",))
def _jit_lookup(params, ids, padding_id):
  return tables.lookup(params, ids, padding_id=padding_id)


def partitioned_lookup(params: Params, ids: Any, mesh: Mesh, *,
                       padding_id: int | None = None) -> Array:
  """The comparison path: plain ``embedlab.lookup`` under ``jit`` on a sharded table, the batch
  placed with ``batch_sharding``; XLA's partitioner decides how to gather.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import meshes, sharding
    >>> mesh = meshes.make_mesh()
    >>> p = meshes.shard_table({"table": jnp.arange(8.0).reshape(4, 2)}, mesh)
    >>> sharding.partitioned_lookup(p, jnp.array([[3, 1]]), mesh)
    Array([[[6., 7.],
            [2., 3.]]], dtype=float32)
  """
  ids = jnp.asarray(ids)
  spec = _batch_spec(ids.ndim)
  ids = jax.device_put(ids, NamedSharding(check_mesh(mesh, "partitioned_lookup"), spec))
  return _jit_lookup(params, ids, padding_id)


def sharded_take(table: Array, row_ids: Array, mesh: Mesh) -> Array:
  """``jnp.take(table, row_ids, axis=0, mode="fill", fill_value=0)`` on a row-sharded table
  with ``shard_map``: each "model" shard reads the ids it owns, one ``psum`` combines them.

  Args:
    table: ``Array[V, D]`` with rows split over "model".
    row_ids: int ``[N]``, the same on every device (e.g. a batch's distinct ids); ids outside
      ``0..V-1`` give zero rows.
    mesh: the table's mesh.

  Returns:
    ``Array[N, D]``, replicated.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import meshes, sharding
    >>> mesh = meshes.make_mesh()
    >>> sharding.sharded_take(jnp.arange(6.0).reshape(3, 2), jnp.array([2, 3]), mesh)
    Array([[4., 5.],
           [0., 0.]], dtype=float32)
  """
  rows_per_shard = table.shape[0] // check_mesh(mesh, "sharded_take").shape["model"]
  # the "zero" policy is this function's contract: ids outside the table give zero rows
  checked = ids_lib.normalize_ids(row_ids, table.shape[0], oob="zero", where="sharded_take")

  def local_take(table_shard, ids, keep):
    vecs, _ = _owned_rows(table_shard, ids, rows_per_shard)
    return jax.lax.psum(ids_lib.mask_rows(vecs, keep), "model")

  return jax.shard_map(local_take, mesh=mesh, in_specs=(P("model", None), P(), P()),
                       out_specs=P())(table, checked.ids, checked.keep)


def sharded_sparse_update(optimizer: Any, table: Array, state: Any, row_ids: Array,
                          row_grads: Array, mesh: Mesh, *, row_mask: Array | None = None,
                          skip_ids: Sequence[int] = ()) -> tuple[Array, Any]:
  """A row-sparse optimizer's ``update(..., unique=True)`` on a row-sharded table: each
  "model" shard updates only the rows it owns, in its own slice of the table and its slots.

  Args:
    optimizer: an ``embedlab.core.sparse.SparseOptimizer``.
    table: ``Array[V, D]``, rows split over "model"; ``state`` its optimizer state (slots
      split like the table, ``count`` replicated).
    row_ids: int ``[N]`` distinct ids (``V`` or beyond = no row), the same on every device.
    row_grads: ``[N, D]``, replicated.
    mesh: the table's mesh.
    row_mask: optional bool ``[V]`` (True = trainable).
    skip_ids: ids never updated (the padding id).

  Returns:
    ``(table, state)`` sharded as they came.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import meshes, sharding
    >>> from embedlab.core import sparse
    >>> mesh, opt = meshes.make_mesh(), sparse.sparse_sgd(1.0)
    >>> table = jnp.zeros((4, 1))
    >>> table, st = sharding.sharded_sparse_update(opt, table, opt.init(table),
    ...                                            jnp.array([3, 4]), jnp.ones((2, 1)), mesh)
    >>> table[:, 0].tolist()
    [0.0, 0.0, 0.0, -1.0]
  """
  rows = table.shape[0]
  rows_per_shard = rows // check_mesh(mesh, "sharded_sparse_update").shape["model"]
  # ids outside the table (V is the "no row" id) update nothing: the "zero" policy
  checked = ids_lib.normalize_ids(row_ids, rows, oob="zero", where="sharded_sparse_update")
  row_ids = jnp.where(checked.keep, checked.ids, rows)
  for skip in skip_ids:
    row_ids = jnp.where(row_ids == int(skip), rows, row_ids)
  mask = jnp.ones((rows,), bool) if row_mask is None else jnp.asarray(row_mask)
  specs = jax.tree.map(lambda x: P("model", *([None] * (x.ndim - 1))) if x.ndim else P(),
                       state)

  def local_update(table_shard, state_shard, ids, grads, mask_shard):
    local = ids - jax.lax.axis_index("model") * rows_per_shard
    local = jnp.where((local >= 0) & (local < rows_per_shard), local, rows_per_shard)
    return optimizer.update(table_shard, state_shard, local, grads, unique=True,
                            row_mask=mask_shard)

  return jax.shard_map(local_update, mesh=mesh,
                       in_specs=(P("model", None), specs, P(), P(), P("model")),
                       out_specs=(P("model", None), specs))(table, state, row_ids, row_grads,
                                                            mask)


# the names that moved to embedlab.core.meshes: still attributes here, with a warning
_MOVED = ("AXES", "SHARD_BY", "make_mesh", "describe_devices", "table_sharding",
          "batch_sharding", "padded_rows", "shard_table", "is_primary", "is_table_leaf",
          "leaf_spec", "state_shardings", "place", "global_batch")


def __getattr__(name):
  """A name that moved to ``embedlab.core.meshes``, with a ``DeprecationWarning``."""
  if name in _MOVED:
    import warnings  # noqa: PLC0415
    warnings.warn(f"embedlab.core.sharding.{name} moved to embedlab.core.meshes.{name}; import "
                  "it from there.", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("embedlab.core.meshes"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
