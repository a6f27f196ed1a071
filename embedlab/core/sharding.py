"""Sharded embedding tables: a ("data", "model") device mesh, rows split over "model".

A table too big for one device is split by rows: with ``model`` shards, shard ``k`` holds rows
``k * V/model .. (k+1) * V/model - 1``. The batch is split over "data". ``sharded_lookup`` and
``sharded_bag`` run under ``jax.shard_map``: each shard gathers only the ids it owns (others give
zeros), and one ``psum`` over "model" adds the pieces, so every id is read from exactly one
device. Values and gradients equal ``embedlab.lookup`` / ``embedlab.bag`` on the whole table.

  >>> import jax, jax.numpy as jnp, embedlab as el
  >>> from embedlab.core import sharding
  >>> mesh = sharding.make_mesh(data=1, model=1)
  >>> params = sharding.shard_table(el.init_table(jax.random.key(0), 10, 4), mesh)
  >>> sharding.sharded_lookup(params, jnp.array([[1, 2], [3, 9]]), mesh).shape
  (2, 2, 4)

The other path is to place the table with ``shard_table`` and call plain ``embedlab.lookup``
under ``jax.jit``: XLA's partitioner then decides how to gather (``partitioned_lookup``).
``python benchmarks/sharded_lookup.py`` times both on simulated CPU devices.

Rows must divide evenly by the "model" size. ``shard_table`` raises when they do not, unless
``pad=True``: then zero rows are appended up to ``padded_rows(V, model)``; pass the real
vocabulary size as ``num_embeddings`` to the lookups so ids in the padding still raise.

Training (``embedlab train`` with a ``mesh`` config section) uses the second half of this
module: ``embedlab.run.placement.mesh_from_config`` builds the mesh, ``state_shardings`` / ``place`` put the train
state on it (tables and their optimizer slots by rows over "model", the rest replicated),
``global_batch`` splits each batch over "data" (each process handing over only its own rows),
and the row-sparse step reads and updates rows with ``sharded_take`` /
``sharded_sparse_update`` (``mesh.lookup=shard_map``) or leaves it to XLA (``xla``).

Process-wide settings (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` to simulate 8 CPU
devices, ``jax.distributed.initialize()``) belong to the program's entry point, never here:
``embedlab.run.placement.initialize_distributed`` is the helper such an entry point
(``embedlab train``) calls first.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from embedlab.core import ids as ids_lib
from embedlab.core import pooling
from embedlab.core import tables


Array = jax.Array


Params = dict[str, Array]


AXES = ("data", "model")


SHARD_BY = ("rows",)


SHARDED_BAG_MODES = ("sum", "mean", "sqrtn")


def make_mesh(data: int = 0, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds a 2-D device mesh with axes ``("data", "model")``.

  Args:
    data: devices along "data" (the batch is split over it); 0 means all devices not used by
      ``model``.
    model: devices along "model" (the table's rows are split over it).
    devices: the devices to use, in order; default ``jax.devices()``.

  Returns:
    a ``jax.sharding.Mesh`` of shape ``{"data": data, "model": model}``.

  Example:
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> mesh.axis_names, mesh.shape["model"]
    (('data', 'model'), 1)
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for name, v in (("data", data), ("model", model)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"make_mesh: {name} must be a non-negative integer, got {v!r}.")
  if model == 0:
    raise ValueError("make_mesh: model must be at least 1 (1 = the table is not split).")
  if data == 0:
    if n % model:
      raise ValueError(f"make_mesh: model={model} does not divide the {n} devices available "
                       f"({describe_devices(devices)}); choose model among the divisors of {n}.")
    data = n // model
  if data * model != n:
    raise ValueError(f"make_mesh: data={data} x model={model} = {data * model} devices, but "
                     f"{n} are available ({describe_devices(devices)}). Choose data * model == {n}, "
                     f"or pass data=0 to use all remaining devices. To simulate more CPU "
                     f"devices, set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
                     f"JAX starts.")
  return Mesh(np.array(devices, dtype=object).reshape(data, model), AXES)


def describe_devices(devices) -> str:
  kinds = sorted({d.platform for d in devices})
  return f"{len(devices)} x {'/'.join(kinds)}" if devices else "none"


def _check_mesh(mesh: Any, where: str) -> Mesh:
  if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != AXES:
    raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh with axes {AXES} (use "
                    f"embedlab.core.sharding.make_mesh), got {getattr(mesh, 'axis_names', mesh)!r}.")
  return mesh


def table_sharding(mesh: Mesh, *, by: str = "rows") -> NamedSharding:
  """The sharding of a table: rows split over "model", replicated over "data".

  Args:
    mesh: a mesh from ``make_mesh``.
    by: ``"rows"`` (the only layout the sharded lookups support).

  Returns:
    ``NamedSharding(mesh, P("model", None))``.

  Example:
    >>> from embedlab.core import sharding
    >>> sharding.table_sharding(sharding.make_mesh()).spec
    P('model', None)
  """
  _check_mesh(mesh, "table_sharding")
  if by not in SHARD_BY:
    raise ValueError(f"table_sharding: by={by!r} is not supported; use one of "
                     f"{', '.join(SHARD_BY)} (column sharding is not implemented).")
  return NamedSharding(mesh, P("model", None))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch ``[B, ...]``: split over "data", replicated over "model".

  Example:
    >>> from embedlab.core import sharding
    >>> sharding.batch_sharding(sharding.make_mesh()).spec
    P('data', None)
  """
  _check_mesh(mesh, "batch_sharding")
  return NamedSharding(mesh, P("data", None))


def padded_rows(num_embeddings: int, model: int) -> int:
  """``num_embeddings`` rounded up to a multiple of ``model`` (rows after padding).

  Example:
    >>> from embedlab.core import sharding
    >>> sharding.padded_rows(10, 4)
    12
  """
  if model <= 0:
    raise ValueError(f"padded_rows: model must be positive, got {model}.")
  return int(math.ceil(num_embeddings / model) * model)


def shard_table(params: Params, mesh: Mesh, *, pad: bool = False) -> Params:
  """Places ``params["table"]`` on the mesh, rows split over "model".

  Args:
    params: ``{"table": Array[V, D]}``.
    mesh: a mesh from ``make_mesh``.
    pad: if ``V`` is not a multiple of ``mesh.shape["model"]``, append zero rows up to
      ``padded_rows(V, model)`` instead of raising. The padding rows are never looked up when
      the lookups get ``num_embeddings=V``; strip them with ``table[:V]`` before saving vectors.

  Returns:
    params with the table as a sharded ``jax.Array``; each device holds ``V / model`` rows.

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import sharding
    >>> p = sharding.shard_table({"table": jnp.ones((10, 4))}, sharding.make_mesh())
    >>> p["table"].sharding.spec
    P('model', None)
  """
  table = tables.table_of(params, "shard_table")
  model = _check_mesh(mesh, "shard_table").shape["model"]
  rows = table.shape[0]
  if rows % model:
    if not pad:
      raise ValueError(f"shard_table: the table's {rows} rows do not split evenly over "
                       f"model={model} devices. Pass pad=True to append "
                       f"{padded_rows(rows, model) - rows} zero rows (and num_embeddings={rows} "
                       f"to the lookups), or build the table with "
                       f"padded_rows({rows}, {model}) = {padded_rows(rows, model)} rows.")
    extra = padded_rows(rows, model) - rows
    table = jnp.concatenate([jnp.asarray(table), jnp.zeros((extra, table.shape[1]), table.dtype)])
  return {**params, "table": jax.device_put(table, table_sharding(mesh))}


def _prepare(params, ids, mesh, padding_id, num_embeddings, where):
  table = tables.table_of(params, where)
  mesh = _check_mesh(mesh, where)
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
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> p = sharding.shard_table({"table": jnp.arange(8.0).reshape(4, 2)}, mesh)
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
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> p = sharding.shard_table({"table": jnp.arange(12.0).reshape(4, 3)}, mesh)
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
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> p = sharding.shard_table({"table": jnp.arange(8.0).reshape(4, 2)}, mesh)
    >>> sharding.partitioned_lookup(p, jnp.array([[3, 1]]), mesh)
    Array([[[6., 7.],
            [2., 3.]]], dtype=float32)
  """
  ids = jnp.asarray(ids)
  spec = _batch_spec(ids.ndim)
  ids = jax.device_put(ids, NamedSharding(_check_mesh(mesh, "partitioned_lookup"), spec))
  return _jit_lookup(params, ids, padding_id)


def is_primary() -> bool:
  """True in the process that writes the run directory (process 0; the only one, usually)."""
  return jax.process_index() == 0


def is_table_leaf(path: Any, leaf: Any) -> bool:
  """Whether a leaf of a train state is the table or one of its per-row slots: its path holds
  ``['embed']['table']`` (params, optax slots) or starts at ``opt_state['table']`` (the
  row-sparse optimizer's slots)."""
  key = jax.tree_util.keystr(path)
  return ("['embed']['table']" in key
          or (key.startswith(".opt_state['table']") and getattr(leaf, "ndim", 0) >= 1))


def leaf_spec(leaf: Any, mesh: Mesh, *, table_leaf: bool, table: str = "rows",
              dense: str = "replicate") -> P:
  """The partition spec of one array of the train state.

  A table (and its slots) has its rows over "model" (and, with ``table="rows_columns"``, its
  columns over "data"); another array is replicated, or with ``dense="model"`` a matrix has
  its last axis over "model" when it divides.
  """
  ndim = getattr(leaf, "ndim", 0)
  if table_leaf and ndim >= 1:
    if table == "rows_columns" and ndim == 2:
      return P("model", "data")
    return P("model", *([None] * (ndim - 1)))
  if dense == "model" and ndim == 2 and leaf.shape[-1] % mesh.shape["model"] == 0:
    return P(None, "model")
  return P()


def state_shardings(tree: Any, mesh: Mesh, *, table: str = "rows", dense: str = "replicate",
                    is_table: Any = is_table_leaf) -> Any:
  """``NamedSharding``s for every array of a train state (see ``leaf_spec``).

  Example:
    >>> import jax.numpy as jnp
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> sh = sharding.state_shardings({"embed": {"table": jnp.ones((4, 2))}, "w": jnp.ones(3)},
    ...                               mesh)
    >>> sh["embed"]["table"].spec, sh["w"].spec
    (P('model', None), P())
  """
  _check_mesh(mesh, "state_shardings")
  if table not in ("rows", "rows_columns"):
    raise ValueError(f"state_shardings: table={table!r} is not rows or rows_columns.")

  def one(path, leaf):
    spec = leaf_spec(leaf, mesh, table_leaf=is_table(path, leaf), table=table, dense=dense)
    for axis, name in enumerate(spec):
      if name is not None and leaf.shape[axis] % mesh.shape[name]:
        raise ValueError(f"state_shardings: {jax.tree_util.keystr(path)} has shape "
                         f"{leaf.shape}; axis {axis} ({leaf.shape[axis]}) does not split over "
                         f"{name}={mesh.shape[name]} devices (pad the table with "
                         f"padded_rows, or choose model.features divisible by mesh.data for "
                         f"mesh.table=rows_columns).")
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: Any, shardings: Any) -> Any:
  """Puts a pytree (the same values on every process) on the mesh, leaf by leaf.

  Works with several processes too: each builds only the shards of its own devices.
  """

  def one(x, sh):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, sh)
    if jax.process_count() == 1:
      return jax.device_put(x, sh)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sh, lambda index: host[index])

  return jax.tree.map(one, tree, shardings)


def global_batch(mesh: Mesh, array: Any, *, batch_axis: int = 0) -> Array:
  """A host batch (the same on every process) as one array split over "data" on ``batch_axis``.

  With several processes each one hands over only the rows its own devices hold
  (``jax.make_array_from_process_local_data``). A batch that does not split evenly over
  "data" is replicated instead.

  Example:
    >>> import numpy as np
    >>> from embedlab.core import sharding
    >>> sharding.global_batch(sharding.make_mesh(), np.zeros((4, 3))).sharding.spec
    P('data', None)
  """
  array = np.asarray(array)
  spec = [None] * array.ndim
  if array.shape[batch_axis] % mesh.shape["data"] == 0:
    spec[batch_axis] = "data"
  sh = NamedSharding(mesh, P(*spec))
  if jax.process_count() == 1:
    return jax.device_put(array, sh)
  if spec[batch_axis] is None:
    return jax.make_array_from_callback(array.shape, sh, lambda index: array[index])
  spans = [idx[batch_axis] for idx in sh.addressable_devices_indices_map(array.shape).values()]
  start = min(s.start or 0 for s in spans)
  stop = max(array.shape[batch_axis] if s.stop is None else s.stop for s in spans)
  local = np.take(array, np.arange(start, stop), axis=batch_axis)
  return jax.make_array_from_process_local_data(sh, local, array.shape)


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
    >>> from embedlab.core import sharding
    >>> mesh = sharding.make_mesh()
    >>> sharding.sharded_take(jnp.arange(6.0).reshape(3, 2), jnp.array([2, 3]), mesh)
    Array([[4., 5.],
           [0., 0.]], dtype=float32)
  """
  rows_per_shard = table.shape[0] // _check_mesh(mesh, "sharded_take").shape["model"]
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
    >>> from embedlab.core import sharding
    >>> from embedlab.core import sparse
    >>> mesh, opt = sharding.make_mesh(), sparse.sparse_sgd(1.0)
    >>> table = jnp.zeros((4, 1))
    >>> table, st = sharding.sharded_sparse_update(opt, table, opt.init(table),
    ...                                            jnp.array([3, 4]), jnp.ones((2, 1)), mesh)
    >>> table[:, 0].tolist()
    [0.0, 0.0, 0.0, -1.0]
  """
  rows = table.shape[0]
  rows_per_shard = rows // _check_mesh(mesh, "sharded_sparse_update").shape["model"]
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
