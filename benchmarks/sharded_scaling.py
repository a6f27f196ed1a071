"""Lookup and train-step time against the number of devices, for both sharded lookup paths.

For 1, 2, 4 and 8 simulated CPU devices, with the table's rows split over all of them (mesh
``1 x n``: "model" parallel) and, for the step, also with the batch split over all of them and
the table whole on each (mesh ``n x 1``: "data" parallel), it times

* ``bag``: mean bag pooling of a ``[B, L]`` batch, ``shard_map`` (``sharding.sharded_bag``) vs
  XLA's partitioner (``embedlab.bag`` under ``jit`` on the sharded table);
* ``step``: one training step of the bag model (what ``embedlab train`` runs): the row-sparse
  lazy-Adam step with ``mesh.lookup=shard_map`` and ``mesh.lookup=xla``, and the dense Adam step
  (always XLA's partitioner).

The simulated devices share this machine's cores, so more devices cannot run faster here: the
figures show what sharding costs (collectives, partitioning), not a speed-up. Run on real
accelerators for scaling.

  python benchmarks/sharded_scaling.py [--rows 200000] [--repeats 10]

The last line of output is JSON.
"""

import argparse
import os

import harness

harness.simulate_cpu_devices(8)  # before JAX starts: 8 simulated CPU devices

import functools  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import embedlab as el  # noqa: E402
from embedlab import config as config_lib  # noqa: E402
from embedlab.run import model_args  # noqa: E402
from embedlab.core import optim as optim_lib  # noqa: E402
from embedlab.core import meshes  # noqa: E402
from embedlab.core import sharding  # noqa: E402
from embedlab.core import sparse as sparse_lib  # noqa: E402
from embedlab.run import steps as steps_lib

DEVICES = (1, 2, 4, 8)
FEATURES, BATCH, BAG_LEN, CLASSES = 64, 512, 32, 4


def time_steps_ms(step, state, ids, labels, repeats):
  """Median ms of ``step(state, ids, labels)``, the state carried from call to call, after
  one call that compiles it."""

  def call():
    nonlocal state
    state, sums = step(state, ids, labels)
    return sums

  return harness.time_ms(call, repeats=repeats)


def bag_times(mesh, table, ids_np, repeats):
  params = meshes.shard_table(table, mesh)
  ids = jax.device_put(ids_np, meshes.batch_sharding(mesh))
  shard_map = jax.jit(functools.partial(sharding.sharded_bag, mesh=mesh, padding_id=0))
  xla = jax.jit(functools.partial(el.bag, padding_id=0))
  np.testing.assert_allclose(shard_map(params, ids), xla(params, ids), rtol=1e-5, atol=1e-6)
  return {"bag shard_map": harness.time_ms(shard_map, params, ids, repeats=repeats),
          "bag xla": harness.time_ms(xla, params, ids, repeats=repeats)}


def step_time(mesh, rows, ids_np, labels_np, tables, lookup, repeats):
  model_cfg = config_lib.ModelConfig(features=FEATURES)
  model = model_args.make_model(model_cfg, rows, CLASSES, oob="clip")
  params = jax.jit(model.init)(jax.random.key(0))
  optim_cfg = config_lib.OptimConfig(name="adam", learning_rate=1e-2, tables=tables)
  if tables == "dense":
    optimizer, table_optimizer = optim_lib.make_optimizer(optim_cfg, params, 100), None
    opt_state = optimizer.init(params)
  else:
    dense = {k: v for k, v in params.items() if k != "embed"}
    optimizer = optim_lib.make_optimizer(optim_cfg, dense, 100)
    table_optimizer = sparse_lib.get_sparse_optimizer(tables, 1e-2)
    opt_state = {"dense": optimizer.init(dense),
                 "table": table_optimizer.init(params["embed"]["table"])}
  state = steps_lib.TrainState(jnp.array(0, jnp.int32), params, opt_state, jax.random.key(1))
  shardings = meshes.state_shardings(state, mesh)
  state = meshes.place(state, shardings)
  step = steps_lib.make_train_step(model, optimizer, table_optimizer=table_optimizer,
                                   oob="clip", mesh=mesh, lookup=lookup)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(step, donate_argnums=0, out_shardings=(shardings, replicated))
  ids = meshes.global_batch(mesh, ids_np)
  labels = meshes.global_batch(mesh, labels_np)
  return time_steps_ms(step, state, ids, labels, repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=200_000)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  ids_np = rng.integers(1, args.rows, size=(BATCH, BAG_LEN)).astype(np.int32)
  labels_np = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
  table = el.init_table(jax.random.key(0), args.rows, FEATURES, padding_id=0)
  print(f"{len(jax.devices())} simulated {jax.devices()[0].platform} devices on "
        f"{os.cpu_count()} cores; table {args.rows} x {FEATURES}, batch {BATCH} x {BAG_LEN}; "
        f"median of {args.repeats}, ms")
  print(f"{'devices':>7} | {'bag 1xn':>17} | {'step 1xn (rows split)':>32} | "
        f"{'step nx1 (batch split)':>32}")
  print(f"{'':>7} | {'shard_map':>8} {'xla':>8} | {'sparse':>10} {'sparse':>10} {'dense':>10} | "
        f"{'sparse':>10} {'sparse':>10} {'dense':>10}")
  print(f"{'':>7} | {'':>8} {'':>8} | {'shard_map':>10} {'xla':>10} {'xla':>10} | "
        f"{'shard_map':>10} {'xla':>10} {'xla':>10}")
  results = []
  for n in DEVICES:
    devices = jax.devices()[:n]
    row = {"devices": n}
    row.update(bag_times(meshes.make_mesh(1, n, devices), table, ids_np, args.repeats))
    for mesh_name, (data, model) in (("1xn", (1, n)), ("nx1", (n, 1))):
      mesh = meshes.make_mesh(data, model, devices)
      for name, tables, lookup in (("sparse shard_map", "sparse_lazy_adam", "shard_map"),
                                   ("sparse xla", "sparse_lazy_adam", "xla"),
                                   ("dense xla", "dense", "xla")):
        row[f"step {mesh_name} {name}"] = step_time(mesh, args.rows, ids_np, labels_np, tables,
                                                    lookup, args.repeats)
    row = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    results.append(row)
    cells = [row["bag shard_map"], row["bag xla"]] + [
        row[f"step {m} {name}"] for m in ("1xn", "nx1")
        for name in ("sparse shard_map", "sparse xla", "dense xla")]
    print(f"{n:>7} | {cells[0]:>8.2f} {cells[1]:>8.2f} | "
          + " ".join(f"{c:>10.2f}" for c in cells[2:5]) + " | "
          + " ".join(f"{c:>10.2f}" for c in cells[5:]))
  harness.emit({"benchmark": "sharded_scaling", "unit": "ms", "rows": args.rows,
                "features": FEATURES, "batch": BATCH, "bag_len": BAG_LEN,
                "cores": os.cpu_count(), "results": results})


if __name__ == "__main__":
  main()
