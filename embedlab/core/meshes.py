"""Device meshes and placement: a ("data", "model") mesh, and what lives where on it.

``make_mesh`` builds the mesh: the batch is split over "data", a table's rows over "model"
(with ``model`` shards, shard ``k`` holds rows ``k * V/model .. (k+1) * V/model - 1``).
``shard_table`` places a table by rows (``pad=True`` appends zero rows up to
``padded_rows(V, model)`` when the rows do not divide evenly); ``table_sharding`` and
``batch_sharding`` are the layouts. The lookups over such a table are
``embedlab.core.sharding``'s.

Training (``embedlab train`` with a ``mesh`` config section) places its whole state here:
``embedlab.run.placement.mesh_from_config`` builds the mesh, ``state_shardings`` / ``place`` put
the train state on it (tables and their optimizer slots by rows over "model", the rest
replicated), and ``global_batch`` splits each batch over "data" (each process handing over
only its own rows); the row-sparse step then reads and updates rows with
``embedlab.core.sharding.sharded_take`` / ``sharded_sparse_update`` (``mesh.lookup=shard_map``)
or leaves it to XLA (``xla``).

Process-wide settings (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` to simulate 8 CPU
devices, ``jax.distributed.initialize()``) belong to the program's entry point, never here:
``embedlab.run.placement.initialize_distributed`` is the helper such an entry point
(``embedlab train``) calls first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from embedlab.core import tables

Array = jax.Array


Params = dict[str, Array]


AXES = ("data", "model")


SHARD_BY = ("rows",)


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
    >>> from embedlab.core import meshes
    >>> mesh = meshes.make_mesh()
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


def check_mesh(mesh: Any, where: str) -> Mesh:
  """``mesh`` if it is a ``make_mesh`` mesh (axes ``AXES``); a ``TypeError`` naming ``where``
  otherwise.

  Example:
    >>> from embedlab.core import meshes
    >>> meshes.check_mesh(meshes.make_mesh(), "here").axis_names
    ('data', 'model')
  """
  if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != AXES:
    raise TypeError(f"{where}: mesh must be a jax.sharding.Mesh with axes {AXES} (use "
                    f"embedlab.core.meshes.make_mesh), got {getattr(mesh, 'axis_names', mesh)!r}.")
  return mesh


def table_sharding(mesh: Mesh, *, by: str = "rows") -> NamedSharding:
  """The sharding of a table: rows split over "model", replicated over "data".

  Args:
    mesh: a mesh from ``make_mesh``.
    by: ``"rows"`` (the only layout the sharded lookups support).

  Returns:
    ``NamedSharding(mesh, P("model", None))``.

  Example:
    >>> from embedlab.core import meshes
    >>> meshes.table_sharding(meshes.make_mesh()).spec
    P('model', None)
  """
  check_mesh(mesh, "table_sharding")
  if by not in SHARD_BY:
    raise ValueError(f"table_sharding: by={by!r} is not supported; use one of "
                     f"{', '.join(SHARD_BY)} (column sharding is not implemented).")
  return NamedSharding(mesh, P("model", None))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch ``[B, ...]``: split over "data", replicated over "model".

  Example:
    >>> from embedlab.core import meshes
    >>> meshes.batch_sharding(meshes.make_mesh()).spec
    P('data', None)
  """
  check_mesh(mesh, "batch_sharding")
  return NamedSharding(mesh, P("data", None))


def padded_rows(num_embeddings: int, model: int) -> int:
  """``num_embeddings`` rounded up to a multiple of ``model`` (rows after padding).

  Example:
    >>> from embedlab.core import meshes
    >>> meshes.padded_rows(10, 4)
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
    >>> from embedlab.core import meshes
    >>> p = meshes.shard_table({"table": jnp.ones((10, 4))}, meshes.make_mesh())
    >>> p["table"].sharding.spec
    P('model', None)
  """
  table = tables.table_of(params, "shard_table")
  model = check_mesh(mesh, "shard_table").shape["model"]
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
    >>> from embedlab.core import meshes
    >>> mesh = meshes.make_mesh()
    >>> sh = meshes.state_shardings({"embed": {"table": jnp.ones((4, 2))}, "w": jnp.ones(3)},
    ...                               mesh)
    >>> sh["embed"]["table"].spec, sh["w"].spec
    (P('model', None), P())
  """
  check_mesh(mesh, "state_shardings")
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
    >>> from embedlab.core import meshes
    >>> meshes.global_batch(meshes.make_mesh(), np.zeros((4, 3))).sharding.spec
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
