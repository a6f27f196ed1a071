"""Sharded lookup and bag: explicit ``jax.shard_map`` (embedlab.core.sharding) vs XLA's partitioner.

Both paths start from the same table, rows split over "model" (``shard_table``), and the same
batch, split over "data". ``shard_map`` gathers the owned rows on each shard and adds the pieces
with one ``psum``; ``xla`` is plain ``embedlab.lookup`` / ``embedlab.bag`` under ``jax.jit`` and
lets the SPMD partitioner choose. Runs on 8 simulated CPU devices, which share the machine's
cores: the numbers compare the two programs, not a real 8-device machine.

  python benchmarks/sharded_lookup.py

The last line of output is JSON.
"""

import harness

harness.simulate_cpu_devices(8)  # before JAX starts: 8 simulated CPU devices

import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import embedlab as el  # noqa: E402
from embedlab.core import meshes  # noqa: E402
from embedlab.core import sharding  # noqa: E402

SHAPES = (  # (num_embeddings, features, batch, bag_len)
    (20_000, 64, 256, 32),
    (200_000, 64, 512, 32),
)
MESHES = ((8, 1), (4, 2), (1, 8))
REPEATS = 10
TABLE = harness.Table([("V", ">8"), ("D", ">4"), ("BxL", ">8"), ("mesh", ">5"), ("|", None),
                       ("lookup shard_map", ">16.2f"), ("lookup xla", ">10.2f"), ("|", None),
                       ("bag shard_map", ">13.2f"), ("bag xla", ">8.2f")], sep=" ")


def main():
  rows = []
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}; median of {REPEATS} "
        f"calls, ms")
  print(TABLE.header())
  for num_embeddings, features, batch, bag_len in SHAPES:
    table = el.init_table(jax.random.key(0), num_embeddings, features)
    ids_np = np.random.default_rng(0).integers(
        1, num_embeddings, size=(batch, bag_len)).astype(np.int32)
    for data, model in MESHES:
      mesh = meshes.make_mesh(data, model)
      params = meshes.shard_table(table, mesh)
      ids = jax.device_put(ids_np, meshes.batch_sharding(mesh))
      paths = {
          "lookup shard_map": jax.jit(functools.partial(sharding.sharded_lookup, mesh=mesh)),
          "lookup xla": jax.jit(el.lookup),
          "bag shard_map": jax.jit(functools.partial(sharding.sharded_bag, mesh=mesh)),
          "bag xla": jax.jit(el.bag),
      }
      np.testing.assert_allclose(paths["lookup shard_map"](params, ids),
                                 paths["lookup xla"](params, ids), rtol=1e-6)
      np.testing.assert_allclose(paths["bag shard_map"](params, ids),
                                 paths["bag xla"](params, ids), rtol=1e-5, atol=1e-6)
      row = dict(num_embeddings=num_embeddings, features=features, batch=batch,
                 bag_len=bag_len, mesh=f"{data}x{model}")
      row.update({name: round(harness.time_ms(fn, params, ids, repeats=REPEATS), 3)
                  for name, fn in paths.items()})
      rows.append(row)
      print(TABLE.row(num_embeddings, features, f"{batch}x{bag_len}", row["mesh"],
                      row["lookup shard_map"], row["lookup xla"], row["bag shard_map"],
                      row["bag xla"]))
  harness.emit({"benchmark": "sharded_lookup", "unit": "ms", "devices": len(jax.devices()),
                "results": rows})


if __name__ == "__main__":
  main()
