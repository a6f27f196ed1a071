"""Tests for embedlab.core.sharding and embedlab.core.meshes on 8 simulated CPU devices.

JAX fixes its device count when it starts, and the rest of the suite has started it already with
one CPU device, so the checks run in one subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. The script raises ``AssertionError`` on a
mismatch and prints one ``OK ...`` line per check; the test asserts on those lines.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.run import placement

MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))

SCRIPT = r'''
import functools
import jax, jax.numpy as jnp, numpy as np
import embedlab as el
from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.run import placement

assert len(jax.devices()) == 8, jax.devices()
V, D, PAD = 20, 3, 0  # 20 rows: even over 1, 2, 4 shards; padded to 24 over 8
rng = np.random.default_rng(0)
table_np = rng.normal(size=(V, D)).astype(np.float32)
table_np[PAD] = 0
ids_np = rng.integers(0, V, size=(8, 6)).astype(np.int32)
ids_np[0, :] = [5, 5, 5, 19, 0, 0]   # duplicates, the last row, padding
ids_np[1, :] = PAD                   # an empty bag
ids_np[2, :3] = [1, 10, 11]          # ids on both sides of shard boundaries
w_np = rng.uniform(0.5, 2.0, size=ids_np.shape).astype(np.float32)
cot_lookup = rng.normal(size=ids_np.shape + (D,)).astype(np.float32)
cot_bag = rng.normal(size=(ids_np.shape[0], D)).astype(np.float32)


def ref_lookup(padding_id):
  keep = np.ones(ids_np.shape, bool) if padding_id is None else ids_np != padding_id
  out = table_np[ids_np] * keep[..., None]
  grad = np.zeros_like(table_np)
  np.add.at(grad, ids_np, cot_lookup * keep[..., None])
  return out, grad


def ref_bag(mode, weights):
  keep = (ids_np != PAD).astype(np.float32)
  w = keep if weights is None else weights * keep
  total = np.einsum("bl,bld->bd", w, table_np[ids_np])
  if mode == "sum":
    denom = np.ones(len(ids_np), np.float32)
  elif mode == "mean":
    denom = w.sum(1)
  else:
    denom = np.sqrt((w ** 2).sum(1))
  scale = np.where(denom > 0, 1 / np.where(denom > 0, denom, 1), 0)
  out = total * scale[:, None]
  grad = np.zeros_like(table_np)
  np.add.at(grad, ids_np, (w * scale[:, None])[..., None] * cot_bag[:, None, :])
  return out, grad


def close(got, want, what):
  got = np.asarray(got)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  err = float(np.max(np.abs(got - want))) if want.size else 0.0
  assert err < 1e-5, f"{what}: max abs error {err}"


for data, model in MESHES:
  mesh = meshes.make_mesh(data, model)
  assert dict(mesh.shape) == {"data": data, "model": model}, mesh.shape
  params = meshes.shard_table({"table": jnp.asarray(table_np)}, mesh, pad=True)
  rows = meshes.padded_rows(V, model)
  table = params["table"]
  assert table.shape == (rows, D), table.shape
  assert len(table.addressable_shards) == 8
  for shard in table.addressable_shards:
    assert shard.data.shape == (rows // model, D), (shard.data.shape, rows, model)
  close(table[:V], table_np, "placed table")
  close(table[V:], np.zeros((rows - V, D), np.float32), "padding rows")
  sub = lambda g: np.asarray(g["table"])[:V]

  # every variant's value and gradient in one jitted function: one compile per mesh
  lookups = {pid: functools.partial(sharding.sharded_lookup, mesh=mesh, padding_id=pid,
                                    num_embeddings=V) for pid in (None, PAD)}
  bags = {(mode, w is not None): functools.partial(
              sharding.sharded_bag, mesh=mesh, mode=mode, weights=w, padding_id=PAD,
              num_embeddings=V)
          for mode in ("sum", "mean", "sqrtn") for w in (None, w_np)}

  @jax.jit
  def everything(p, ids):
    out = {}
    for pid, f in lookups.items():
      value, vjp = jax.vjp(lambda q: f(q, ids=ids), p)
      out[f"lookup {pid}"] = (value, vjp(jnp.asarray(cot_lookup))[0]["table"])
    for key, f in bags.items():
      value, vjp = jax.vjp(lambda q: f(q, ids=ids), p)
      out["bag %s %s" % key] = (value, vjp(jnp.asarray(cot_bag))[0]["table"])
    out["partitioned"] = el.lookup(p, ids, padding_id=PAD)
    return out

  out = everything(params, jnp.asarray(ids_np))
  for pid in (None, PAD):
    want, want_grad = ref_lookup(pid)
    value, grad = out[f"lookup {pid}"]
    what = f"lookup {data}x{model} padding_id={pid}"
    close(value, want, what)
    assert grad.sharding.spec == table.sharding.spec, grad.sharding
    close(np.asarray(grad)[:V], want_grad, "grad " + what)
    close(np.asarray(grad)[V:], np.zeros((rows - V, D), np.float32), "padding grad " + what)
  close(out["partitioned"], ref_lookup(PAD)[0], f"partitioned lookup {data}x{model}")
  print(f"OK lookup {data}x{model}")
  for mode, weighted in bags:
    want, want_grad = ref_bag(mode, w_np if weighted else None)
    value, grad = out[f"bag {mode} {weighted}"]
    what = f"bag {mode} weighted={weighted} {data}x{model}"
    close(value, want, what)
    close(np.asarray(grad)[:V], want_grad, "grad " + what)
  print(f"OK bag {data}x{model}")


# outside jit too (concrete ids are checked in numpy), and the references agree with embedlab
mesh = meshes.make_mesh(4, 2)
params = meshes.shard_table({"table": jnp.asarray(table_np)}, mesh)
close(sharding.sharded_lookup(params, ids_np, mesh, padding_id=PAD), ref_lookup(PAD)[0], "eager")
close(sharding.sharded_bag(params, ids_np, mesh, weights=w_np, padding_id=PAD),
      ref_bag("mean", w_np)[0], "eager bag")
close(el.bag({"table": jnp.asarray(table_np)}, ids_np, mode="sqrtn", weights=w_np,
             padding_id=PAD), ref_bag("sqrtn", w_np)[0], "unsharded bag")
print("OK eager")


def raises(fn, *fragments):
  try:
    fn()
  except (ValueError, TypeError) as e:
    for fragment in fragments:
      assert fragment in str(e), (fragment, str(e))
    return str(e)
  raise AssertionError(f"no error; expected one naming {fragments}")


raises(lambda: meshes.make_mesh(3, 2), "data=3 x model=2 = 6", "8 are available", "8 x cpu")
raises(lambda: meshes.make_mesh(model=3), "model=3 does not divide the 8 devices")
raises(lambda: meshes.make_mesh(4, 4), "16 devices", "8 are available")
mesh = meshes.make_mesh(2, 4)
raises(lambda: meshes.shard_table({"table": jnp.ones((10, 2))}, mesh),
       "10 rows", "model=4", "pad=True", "= 12 rows")
params = meshes.shard_table({"table": jnp.ones((10, 2))}, mesh, pad=True)
raises(lambda: sharding.sharded_lookup(params, [[3, 10]], mesh, num_embeddings=10),
       "id 10 at position (0, 1)", "10 rows")
raises(lambda: sharding.sharded_lookup(params, [[3]], mesh), "batch size 1", "data=2")
raises(lambda: sharding.sharded_bag(params, [[3, 1], [1, 2]], mesh, mode="max"), "'max'")
raises(lambda: meshes.table_sharding(mesh, by="columns"), "by='columns'", "rows")
raises(lambda: sharding.sharded_lookup(params, [[1], [2]], jax.make_mesh((8,), ("x",))),
       "axes ('data', 'model')")
print("OK errors")
'''


def test_sharded_lookup_and_bag_on_8_simulated_devices():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  script = f"MESHES = {MESHES!r}\n" + SCRIPT
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  expected = [f"OK {kind} {d}x{m}" for d, m in MESHES for kind in ("lookup", "bag")]
  for line in expected + ["OK eager", "OK errors"]:
    assert line in lines, (line, result.stdout)


def test_padded_rows():
  assert [meshes.padded_rows(20, m) for m in (1, 2, 3, 8)] == [20, 20, 21, 24]
  with pytest.raises(ValueError, match="model must be positive"):
    meshes.padded_rows(20, 0)


def test_single_device_mesh_matches_lookup():
  # in the main pytest process: whatever devices it has, as one "data" axis
  mesh = meshes.make_mesh(model=1)
  table = np.arange(24, dtype=np.float32).reshape(8, 3)
  params = meshes.shard_table({"table": jnp.asarray(table)}, mesh)
  ids = np.array([[1, 1, 7, 0]] * mesh.shape["data"])
  np.testing.assert_array_equal(sharding.sharded_lookup(params, ids, mesh, padding_id=0),
                                table[ids] * (ids != 0)[..., None])
  np.testing.assert_allclose(sharding.sharded_bag(params, ids, mesh, padding_id=0),
                             table[[1, 1, 7]].mean(0)[None].repeat(len(ids), 0), rtol=1e-6)
  with pytest.raises(ValueError, match="make_mesh: data="):
    meshes.make_mesh(data=len(jax.devices()) + 1)


@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "16"}, "SLURM_NTASKS"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "OMPI_COMM_WORLD_SIZE"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_COORDINATOR_ADDRESS"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "TPU_WORKER_HOSTNAMES"),
])
def test_multi_process_launches_are_detected_from_the_environment(environ, expected):
  assert placement.cluster_detected(environ) == expected


def test_initialize_distributed_only_when_asked():
  from embedlab.config import MeshConfig
  assert not placement.initialize_distributed(MeshConfig(), environ={})
  assert not placement.initialize_distributed(MeshConfig(distributed="off"),
                                             environ={"SLURM_NTASKS": "8"})


# ---------------------------------------------------------------- regressions (one-device mesh)

def test_sharded_lookup_and_bag_read_narrow_ids_exactly():
  mesh = meshes.make_mesh(1, 1, devices=jax.devices()[:1])
  table = np.arange(600, dtype=np.float32).reshape(300, 2)
  params = meshes.shard_table({"table": jnp.asarray(table)}, mesh)
  ids = np.array([[255, 4, 4], [1, 2, 3]], np.uint8)
  got = jax.jit(lambda i: sharding.sharded_lookup(params, i, mesh))(jnp.asarray(ids))
  np.testing.assert_array_equal(got, table[ids.astype(np.int64)])
  # int8 ids never equal padding id 260 (it would wrap to 4 in int8)
  small = np.array([[100, 4, 4], [1, 2, 3]], np.int8)
  got = sharding.sharded_lookup(params, small, mesh, padding_id=260)
  np.testing.assert_array_equal(got, table[small.astype(np.int64)])
  got = sharding.sharded_bag(params, ids, mesh, mode="sum", padding_id=260)
  np.testing.assert_array_equal(got, table[ids.astype(np.int64)].sum(1))
  with pytest.raises(ValueError, match=r"sharded_bag: id 4294967295 at position \(0, 0\)"):
    sharding.sharded_bag(params, np.array([[2**32 - 1, 1]], np.uint32), mesh)
  with pytest.raises(TypeError, match="sharded_take: ids must be integers"):
    sharding.sharded_take(params["table"], jnp.array([1.0, 2.0]), mesh)


@pytest.mark.parametrize("mode", sharding.SHARDED_BAG_MODES)
def test_sharded_bag_ignores_nan_weights_at_padding_and_accumulates_in_float32(mode):
  mesh = meshes.make_mesh(1, 1, devices=jax.devices()[:1])
  table = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
  params = meshes.shard_table({"table": jnp.asarray(table)}, mesh)
  ids = np.array([[1, 0, 2], [0, 0, 0]], np.int32)
  weights = np.array([[2.0, np.nan, 0.5], [np.inf] * 3], np.float32)
  w = np.where(ids != 0, weights, 0)
  total = np.einsum("bl,bld->bd", w, table[ids])
  denom = {"sum": np.ones(2), "mean": w.sum(1), "sqrtn": np.sqrt((w ** 2).sum(1))}[mode]
  want = np.where(denom[:, None] > 0, total / np.where(denom > 0, denom, 1)[:, None], 0)
  fn = lambda p: sharding.sharded_bag(p, ids, mesh, mode=mode, weights=weights, padding_id=0)
  np.testing.assert_allclose(fn(params), want, rtol=1e-6, atol=1e-6)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(fn(p))))(params)["table"]
  assert np.isfinite(np.asarray(grad)).all() and np.all(np.asarray(grad)[0] == 0)
  ones = meshes.shard_table({"table": jnp.ones((4, 2), jnp.bfloat16)}, mesh)
  got = sharding.sharded_bag(ones, np.ones((1, 1000), np.int32), mesh, mode="sum")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), 1000.0)
