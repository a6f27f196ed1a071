"""Compressed tables (embedlab.core.compress) against numpy references: the plain table's contract.

What "padding" means per variant (the ids equal to ``padding_id``):
  * hashing trick: the raw padding id's row (its own row when below ``exact_size``);
  * hash embeddings: ``importance[padding_id]`` (zero at init) and the pool rows it hashes to;
  * quotient-remainder: no row of its own (its quotient and remainder rows are shared), so
    padding is positional only;
  * factorized: ``table[padding_id]`` (zero at init) and the projection;
  * quantized: not trainable, zero vectors only.
For every variant, padding positions give exact zero vectors, and every parameter's gradient
equals the numpy gradient computed with those positions left out (so a batch of padding only
gives exactly zero gradient everywhere).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import embedlab as el
from embedlab.core import tables
from embedlab.core import compress as ec

M32 = 0xFFFFFFFF


# ---------------------------------------------------------------- numpy references

def py_fmix(x):
  x ^= x >> 16
  x = (x * 0x85EBCA6B) & M32
  x ^= x >> 13
  x = (x * 0xC2B2AE35) & M32
  return x ^ (x >> 16)


def py_hash(i, seed):
  return py_fmix(py_fmix(int(i) & M32) ^ py_fmix((seed * 0x9E3779B9 + 1) & M32))


def py_fnv(word):
  h = 2166136261
  for b in word.encode("utf-8"):
    h = ((h ^ (b if b < 128 else (b - 256) & M32)) * 16777619) & M32
  return h


def np_quant_values(params):
  if "q8" in params:
    q = params["q8"].astype(np.float64)
  elif "q2" in params:  # four 2-bit codes per byte, code c means c - 1.5
    p = params["q2"].astype(np.int64)
    q = np.empty((p.shape[0], 4 * p.shape[1]))
    for j in range(4):
      q[:, j::4] = ((p >> (2 * j)) & 3) - 1.5
  else:
    p = params["q4"].astype(np.int64)
    q = np.empty((p.shape[0], 2 * p.shape[1]))
    q[:, 0::2] = (p & 15) - 8
    q[:, 1::2] = (p >> 4) - 8
  return q * params["scale"][:, None].astype(np.float64)


class Variant:
  """One compressed table: params, its lookup, and per-id numpy value and gradient."""

  def __init__(self, name, params, lookup, vec, grad, rows, trainable=True, good_ids=None):
    self.name, self.lookup, self.vec, self.grad = name, lookup, vec, grad
    self.params = {k: jnp.asarray(v) for k, v in params.items()}
    self.np = {k: np.asarray(v, np.float64) if v.dtype.kind == "f" else np.asarray(v)
               for k, v in params.items()}
    self.rows, self.trainable = rows, trainable
    self.good_ids = good_ids or (lambda rng, shape: rng.integers(0, rows, shape).astype(np.int32))

  def np_lookup(self, ids, padding_id=None):
    d = self.vec(self.np, 0).shape[0]
    out = np.zeros(ids.shape + (d,))
    for pos in np.ndindex(ids.shape):
      if ids[pos] != padding_id:
        out[pos] = self.vec(self.np, int(ids[pos]))
    return out

  def np_grad(self, ids, cot, padding_id=None):
    grads = {k: np.zeros(v.shape) for k, v in self.np.items()}
    for pos in np.ndindex(ids.shape):
      if ids[pos] != padding_id:
        for k, (index, g) in self.grad(self.np, int(ids[pos]), cot[pos]).items():
          grads[k][index] += g
    return grads


def make_variants():
  rng = np.random.default_rng(0)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  out = []

  exact, buckets = 10, 13
  def row(i):
    return i if i < exact else exact + py_hash(i, 3) % buckets
  out.append(Variant(
      "hashed", {"table": f32(exact + buckets, 4)},
      functools.partial(ec.lookup_hashed, num_buckets=buckets, exact_size=exact, seed=3),
      lambda p, i: p["table"][row(i)],
      lambda p, i, c: {"table": (row(i), c)},
      rows=ec.MAX_RAW_ID,
      good_ids=lambda rng, shape: np.where(rng.random(shape) < 0.3, rng.integers(0, exact, shape),
                                           rng.integers(0, 10**9, shape)).astype(np.int32)))

  pool, k, vocab = 7, 3, 50
  hsh = lambda i: [py_hash(i, 5 + j) % pool for j in range(k)]
  out.append(Variant(
      "hash_embedding", {"pool": f32(pool, 4), "importance": f32(vocab, k)},
      functools.partial(ec.lookup_hash_embedding, seed=5),
      lambda p, i: sum(p["importance"][i, j] * p["pool"][h] for j, h in enumerate(hsh(i))),
      lambda p, i, c: _hash_grad(p, i, c, hsh(i)),
      rows=vocab))

  vocab, m = 47, 6
  for combine in ec.COMBINE_MODES:
    d2 = 2 if combine == "concat" else 4
    def vec(p, i, combine=combine):
      q, r = p["quotient"][i // m], p["remainder"][i % m]
      return {"mult": lambda: q * r, "add": lambda: q + r,
              "concat": lambda: np.concatenate([q, r])}[combine]()
    def grad(p, i, c, combine=combine):
      q, r = p["quotient"][i // m], p["remainder"][i % m]
      gq, gr = {"mult": lambda: (r * c, q * c), "add": lambda: (c, c),
                "concat": lambda: (c[:4], c[4:])}[combine]()
      return {"quotient": (i // m, gq), "remainder": (i % m, gr)}
    out.append(Variant(
        f"qr_{combine}", {"quotient": f32(8, 4), "remainder": f32(m, d2)},
        functools.partial(ec.lookup_qr, combine=combine, num_embeddings=vocab), vec, grad,
        rows=vocab))

  out.append(Variant(
      "factorized", {"table": f32(30, 3), "projection": f32(3, 5)}, ec.lookup_factorized,
      lambda p, i: p["table"][i] @ p["projection"],
      lambda p, i, c: {"table": (i, p["projection"] @ c),
                       "projection": (slice(None), np.outer(p["table"][i], c))},
      rows=30))

  for bits in (8, 4, 2):
    q = {k: np.asarray(v) for k, v in ec.quantize({"table": f32(25, 8)}, bits=bits).items()}
    out.append(Variant(
        f"quantized{bits}", q, ec.lookup_quantized,
        lambda p, i, q=q: np_quant_values(q)[i], None, rows=25, trainable=False))
  return out


def _hash_grad(p, i, c, buckets):
  # pool rows may repeat among the k hashes: accumulate them into one dense update
  gpool = np.zeros(p["pool"].shape)
  gw = np.zeros(p["importance"].shape[1])
  for j, h in enumerate(buckets):
    gpool[h] += p["importance"][i, j] * c
    gw[j] = p["pool"][h] @ c
  return {"pool": (slice(None), gpool), "importance": (i, gw)}


VARIANTS = make_variants()
TRAINABLE = [v for v in VARIANTS if v.trainable]
ids_of = lambda v: pytest.param(v, id=v.name)


def padding_of(v):
  return 4  # a valid id of every variant (and a raw id below exact_size for "hashed")


# ---------------------------------------------------------------- values, grads, padding

@pytest.mark.parametrize("v", [ids_of(v) for v in VARIANTS])
def test_lookup_matches_numpy_any_rank_eager_and_jit(v):
  rng = np.random.default_rng(1)
  jitted = jax.jit(lambda p, i: v.lookup(p, i))
  for shape in [(), (7,), (3, 4), (2, 3, 2)]:
    ids = v.good_ids(rng, shape)
    want = v.np_lookup(ids)
    for fn in (v.lookup, jitted) if len(shape) == 2 else (v.lookup,):
      got = np.asarray(fn(v.params, jnp.asarray(ids)))
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("v", [ids_of(v) for v in TRAINABLE])
def test_gradients_match_numpy_under_jit(v):
  rng = np.random.default_rng(2)
  ids = v.good_ids(rng, (4, 6))
  ids[0, :2] = ids[1, :2]  # repeated ids accumulate
  cot = rng.standard_normal(v.np_lookup(ids).shape)
  loss = lambda p: jnp.sum(v.lookup(p, ids) * cot)
  got = jax.jit(jax.grad(loss))(v.params)
  want = v.np_grad(ids, cot)
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-4, atol=1e-5,
                               err_msg=f"{v.name}: gradient of {key}")


@pytest.mark.parametrize("v", [ids_of(v) for v in VARIANTS])
def test_padding_gives_zero_vectors_and_zero_gradient(v):
  rng = np.random.default_rng(3)
  pad = padding_of(v)
  ids = v.good_ids(rng, (3, 5))
  ids[:, -2:] = pad
  ids[2] = pad  # a bag of padding only
  fn = jax.jit(lambda p, i: v.lookup(p, i, padding_id=pad))
  out = np.asarray(fn(v.params, ids))
  assert np.all(out[ids == pad] == 0)
  np.testing.assert_allclose(out, v.np_lookup(ids, padding_id=pad), rtol=1e-5, atol=1e-5)
  if not v.trainable:
    return
  cot = rng.standard_normal(out.shape)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(v.lookup(p, ids, padding_id=pad) * cot)))
  got, want = grad(v.params), v.np_grad(ids, cot, padding_id=pad)
  for key in want:
    np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-4, atol=1e-5)
  only_pad = jax.grad(lambda p: jnp.sum(v.lookup(p, np.full((2, 3), pad), padding_id=pad)))
  for key, g in only_pad(v.params).items():
    assert np.all(np.asarray(g) == 0), f"{v.name}: padding sent gradient to {key}"


def test_init_zeroes_the_padding_row_where_the_variant_has_one():
  key = jax.random.key(0)
  h = ec.init_hash_embedding(key, 20, 4, pool_size=5, padding_id=3)
  assert np.all(np.asarray(ec.lookup_hash_embedding(h, jnp.array([3]))) == 0)
  f = ec.init_factorized_table(key, 20, 6, rank=2, padding_id=3)
  assert np.all(np.asarray(ec.lookup_factorized(f, jnp.array([3]))) == 0)
  assert np.all(np.asarray(ec.init_hashed_table(key, 5, 3, exact_size=4, padding_id=0)["table"][0])
                == 0)


# ---------------------------------------------------------------- bad ids

@pytest.mark.parametrize("v", [ids_of(v) for v in VARIANTS])
def test_bad_ids_raise_eagerly_and_under_jit(v):
  where = v.lookup.func.__name__ if isinstance(v.lookup, functools.partial) else v.lookup.__name__
  where = "lookup" if where == "lookup_factorized" else where  # it delegates to el.lookup
  good = v.good_ids(np.random.default_rng(4), (2, 3))
  too_big = good.copy()
  too_big[1, 2] = v.rows
  negative = good.copy()
  negative[0, 1] = -1
  with pytest.raises(ValueError, match=rf"{where}: id {v.rows} at position \(1, 2\) is outside"):
    v.lookup(v.params, too_big)
  with pytest.raises(ValueError, match=r"id -1 at position \(0, 1\)"):
    v.lookup(v.params, negative)
  with pytest.raises(TypeError, match="ids must be integers"):
    v.lookup(v.params, good.astype(np.float32))
  jitted = jax.jit(lambda p, i: v.lookup(p, i))
  assert np.all(np.isfinite(np.asarray(jitted(v.params, good))))
  with pytest.raises(jax.errors.JaxRuntimeError, match=rf"id {v.rows} at position \(1, 2\)"):
    jax.block_until_ready(jitted(v.params, too_big))
  with pytest.raises(jax.errors.JaxRuntimeError, match=r"id -1 at position \(0, 1\)"):
    jax.block_until_ready(jitted(v.params, negative))


def test_oob_zero_and_clip_policies():
  v = next(v for v in VARIANTS if v.name == "qr_mult")
  ids = np.array([[1, 47, -3]], np.int32)
  zero = np.asarray(v.lookup(v.params, ids, oob="zero"))
  np.testing.assert_allclose(zero[0, 0], v.np_lookup(np.array([1]))[0], rtol=1e-6)
  assert np.all(zero[0, 1:] == 0)
  clip = np.asarray(v.lookup(v.params, ids, oob="clip"))
  np.testing.assert_allclose(clip[0], v.np_lookup(np.array([1, 46, 0])), rtol=1e-6)


def test_wrong_params_and_options_say_how_to_fix():
  with pytest.raises(TypeError, match=r"entries \['quotient', 'remainder'\]"):
    ec.lookup_qr({"table": jnp.ones((3, 2))}, jnp.array([0]))
  with pytest.raises(ValueError, match="combine='dot' is not one of mult, add, concat"):
    ec.init_qr_table(jax.random.key(0), 10, 4, num_collisions=3, combine="dot")
  with pytest.raises(ValueError, match="expected exact_size \\+ num_buckets = 2 \\+ 5"):
    ec.lookup_hashed({"table": jnp.ones((6, 2))}, jnp.array([0]), num_buckets=5, exact_size=2)
  with pytest.raises(ValueError, match="features divisible by 2, got 5; use bits=8"):
    ec.quantize({"table": jnp.ones((3, 5))}, bits=4)
  with pytest.raises(ValueError, match="features divisible by 4, got 6; use bits=8"):
    ec.quantize({"table": jnp.ones((3, 6))}, bits=2)
  with pytest.raises(ValueError, match="use 8, 4 or 2"):
    ec.quantize({"table": jnp.ones((3, 4))}, bits=3)
  with pytest.raises(ValueError, match="export: quantize='int3' is not one of int8, int4, int2"):
    ec.quantize_bits("int3", "export")
  with pytest.raises(TypeError, match="quantize\\(\\)'s output"):
    ec.lookup_quantized({"table": jnp.ones((3, 4))}, jnp.array([0]))


# ---------------------------------------------------------------- hashing trick

def test_hash_ids_ints_are_deterministic_and_match_the_device_hash():
  ids = np.array([[0, 3, 9, 10, 11], [12345, 10**9, 2**31 - 2, 7, 10**6]], np.int64)
  rows = ec.hash_ids(ids, 13, seed=3, exact_size=10)
  want = np.vectorize(lambda i: i if i < 10 else 10 + py_hash(i, 3) % 13)(ids)
  np.testing.assert_array_equal(rows, want)
  np.testing.assert_array_equal(rows, ec.hash_ids(ids, 13, seed=3, exact_size=10))
  assert rows.dtype == np.int32 and rows.min() >= 0 and rows.max() < 23
  assert not np.array_equal(ec.hash_ids(ids, 13, seed=4, exact_size=10), rows)
  # the device hash of lookup_hashed picks the same rows: look up a table whose row r is r
  table = {"table": jnp.arange(23.0)[:, None]}
  got = ec.lookup_hashed(table, jnp.asarray(ids, jnp.int32), num_buckets=13, exact_size=10, seed=3)
  np.testing.assert_array_equal(np.asarray(got)[..., 0], rows)
  assert ec.hash_ids(np.array([2**40 + 5]), 100).shape == (1,)  # 64-bit ids are folded


def test_hash_ids_words_follow_fasttext_and_the_exact_vocabulary():
  words = [["the", "cat", "naïve"], ["zzz", "the", "dog"]]
  rows = ec.hash_ids(words, 1000)
  np.testing.assert_array_equal(rows, [[py_fnv(w) % 1000 for w in r] for r in words])
  assert int(ec.hash_ids("the", 1000)) == py_fnv("the") % 1000
  vocab = {"the": 0, "cat": 1}
  rows = ec.hash_ids(words, 1000, vocab=vocab)
  assert rows[0, 0] == 0 and rows[0, 1] == 1 and rows[1, 1] == 0
  assert rows[1, 0] == 2 + py_fnv("zzz") % 1000
  assert ec.hash_ids(words, 1000, seed=1)[1, 0] != ec.hash_ids(words, 1000)[1, 0] or \
      ec.hash_ids(words, 1000, seed=1)[0, 0] != ec.hash_ids(words, 1000)[0, 0]


def test_hash_ids_rejects_bad_input():
  with pytest.raises(ValueError, match=r"id -4 at position \(1,\) is negative"):
    ec.hash_ids([3, -4], 10)
  with pytest.raises(TypeError, match="floats are never silently truncated"):
    ec.hash_ids([1.5], 10)
  with pytest.raises(ValueError, match="num_buckets must be a positive integer"):
    ec.hash_ids([1], 0)
  with pytest.raises(ValueError, match="pass exact_size >= the vocabulary size"):
    ec.hash_ids(["a"], 10, vocab={"a": 5}, exact_size=2)


# ---------------------------------------------------------------- pooling

def np_pool(vecs, ids, mode, weights, padding_id):
  out = np.zeros((ids.shape[0], vecs.shape[-1]))
  for b in range(ids.shape[0]):
    keep = ids[b] != padding_id
    if not keep.any():
      continue
    w = weights[b, keep]
    x = vecs[b, keep]
    out[b] = {"sum": lambda: w @ x, "mean": lambda: w @ x / w.sum(),
              "sqrtn": lambda: w @ x / np.sqrt((w ** 2).sum()), "max": lambda: x.max(0)}[mode]()
  return out


@pytest.mark.parametrize("mode", tables.BAG_MODES)
def test_bag_lookup_matches_numpy_for_every_variant(mode):
  rng = np.random.default_rng(5)
  for v in VARIANTS:
    ids = v.good_ids(rng, (3, 4))
    ids[0, 1:] = 4
    ids[2] = 4
    weights = None if mode == "max" else rng.uniform(0.5, 2, ids.shape).astype(np.float32)
    fn = lambda p, i, w: ec.bag_lookup(v.lookup, p, i, mode=mode, weights=w, padding_id=4)
    got = (jax.jit(fn) if mode == "mean" else fn)(v.params, ids, weights)  # jit once: time
    want = np_pool(v.np_lookup(ids), ids, mode,
                   np.ones(ids.shape) if weights is None else weights, 4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=v.name)


@pytest.mark.parametrize("mode", tables.BAG_MODES)
def test_bag_factorized_equals_pooling_the_full_vectors(mode):
  v = next(v for v in VARIANTS if v.name == "factorized")
  ids = np.array([[1, 2, 0, 0], [0, 0, 0, 0], [5, 5, 29, 3]], np.int32)
  got = ec.bag_factorized(v.params, ids, mode=mode, padding_id=0)
  want = np_pool(v.np_lookup(ids), ids, mode, np.ones(ids.shape), 0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- quantization and bf16

@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantization_error_is_at_most_half_a_step_per_element(bits):
  rng = np.random.default_rng(6)
  table = rng.standard_normal((200, 16)).astype(np.float32) * rng.uniform(0.01, 3, (200, 1))
  table[7] = 0  # an all-zero row quantizes exactly
  q = ec.quantize({"table": jnp.asarray(table)}, bits=bits)
  qmax = {8: 127, 4: 7, 2: 1.5}[bits]
  scale = np.abs(table).max(1) / qmax
  np.testing.assert_allclose(np.asarray(q["scale"]), scale, rtol=1e-6)
  deq = np.asarray(ec.dequantize(q)["table"])
  err = np.abs(deq - table)
  assert np.all(err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7)
  assert np.all(deq[7] == 0)
  np.testing.assert_allclose(deq, np_quant_values({k: np.asarray(x) for k, x in q.items()}),
                             rtol=1e-6, atol=1e-7)
  assert ec.quantization_error({"table": jnp.asarray(table)}, q) == pytest.approx(err.max())
  ids = rng.integers(0, 200, (5, 3))
  np.testing.assert_array_equal(np.asarray(ec.lookup_quantized(q, ids)), deq[ids])
  stored = q[f"q{bits}"]
  assert stored.dtype == (jnp.int8 if bits == 8 else jnp.uint8)
  assert stored.shape == (200, 16 * bits // 8)
  if bits == 2:  # the row's extremes are stored exactly, and every code is one of four levels
    np.testing.assert_allclose(np.abs(deq).max(1), np.abs(table).max(1), rtol=1e-6)
    levels = np.unique(np.round(deq[scale > 0] / scale[scale > 0, None], 5))
    assert set(levels.tolist()) == {-1.5, -0.5, 0.5, 1.5}
  assert ec.table_bytes(q) == 200 * (16 * bits // 8 + 4)


def test_bf16_table_lookup_and_gradient():
  params = el.init_table(jax.random.key(0), 20, 8, dtype=jnp.bfloat16, padding_id=0)
  ids = jnp.array([[1, 2, 2, 0]])
  out = jax.jit(lambda p: el.lookup(p, ids, padding_id=0))(params)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(params["table"], np.float32)[[[1, 2, 2, 0]]] *
                                np.array([1, 1, 1, 0])[None, :, None])
  grad = jax.jit(jax.grad(lambda p: jnp.sum(el.lookup(p, ids, padding_id=0).astype(jnp.float32))))
  g = np.asarray(grad(params)["table"], np.float32)
  assert grad(params)["table"].dtype == jnp.bfloat16
  want = np.zeros((20, 8))
  want[1], want[2] = 1, 2
  np.testing.assert_array_equal(g, want)
  assert ec.table_bytes(params) == 20 * 8 * 2


# ---------------------------------------------------------------- sizes

V, D = 2_000_000, 64
SIZES = {  # the documented 2M x 64 configurations and their table_bytes
    "hashed": (lambda k: ec.init_hashed_table(k, 200_000, D, exact_size=100_000), 76_800_000),
    "hash": (lambda k: ec.init_hash_embedding(k, V, D, pool_size=250_000), 80_000_000),
    "qr": (lambda k: ec.init_qr_table(k, V, D, num_collisions=1414), 724_224),
    "factorized": (lambda k: ec.init_factorized_table(k, V, D, rank=16), 128_004_096),
    "int8": (lambda k: ec.quantize(el.init_table(k, V, D), bits=8), 136_000_000),
    "4-bit": (lambda k: ec.quantize(el.init_table(k, V, D), bits=4), 72_000_000),
    "2-bit": (lambda k: ec.quantize(el.init_table(k, V, D), bits=2), 40_000_000),
}


@pytest.mark.parametrize("name", list(SIZES))
def test_each_variant_is_smaller_than_the_plain_table(name):
  init, want = SIZES[name]
  shapes = jax.eval_shape(init, jax.random.key(0))  # no 512 MB allocation
  plain = ec.table_bytes(jax.eval_shape(lambda k: el.init_table(k, V, D), jax.random.key(0)))
  assert plain == V * D * 4 == 512_000_000
  assert ec.table_bytes(shapes) == want < plain
  summary = ec.describe_compressed(shapes, num_embeddings=V)
  assert (summary.num_embeddings, summary.features) == (V, D)
  assert summary.bytes == want and summary.plain_bytes == plain
  assert summary.weights == el.num_params(shapes)
  assert "a plain float32 table: 488.3 MiB" in str(summary)


def test_describe_compressed_names_the_variant():
  key = jax.random.key(0)
  kinds = jax.eval_shape(lambda key: {
      "hash": ec.init_hash_embedding(key, 100, 4, pool_size=10),
      "quotient-remainder": ec.init_qr_table(key, 100, 4, num_collisions=10),
      "factorized": ec.init_factorized_table(key, 100, 4, rank=2),
      "int8": ec.quantize(el.init_table(key, 100, 4)),
      "4-bit": ec.quantize(el.init_table(key, 100, 4), bits=4),
      "2-bit": ec.quantize(el.init_table(key, 100, 4), bits=2),
      "plain": el.init_table(key, 100, 4),
  }, key)
  for kind, params in kinds.items():
    s = ec.describe_compressed(params)
    assert s.bytes == ec.table_bytes(params) and s.weights == el.num_params(params)
    assert (s.kind, s.num_embeddings, s.features) == (kind, 100, 4)
  concat = jax.eval_shape(lambda k: ec.init_qr_table(k, 100, 4, num_collisions=10,
                                                     combine="concat", remainder_features=3), key)
  assert ec.describe_compressed(concat, combine="concat").features == 7
  with pytest.raises(TypeError, match="unknown params"):
    ec.describe_compressed({"w": jnp.ones(3)})


# ---------------------------------------------------------------- regressions: narrow ids, pooling

@pytest.mark.parametrize("v", [ids_of(v) for v in VARIANTS])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "uint32"])
def test_narrow_id_dtypes_read_the_same_rows_eager_and_under_jit(v, dtype):
  ids = v.good_ids(np.random.default_rng(8), (2, 5)) % min(v.rows, 128)
  ids[0, 0] = min(v.rows, int(np.iinfo(dtype).max) + 1) - 1  # the largest id the dtype holds
  narrow = ids.astype(dtype)
  want = v.np_lookup(narrow.astype(np.int64))
  jitted = jax.jit(lambda p, i: v.lookup(p, i))
  for got in (v.lookup(v.params, narrow), jitted(v.params, jnp.asarray(narrow))):
    np.testing.assert_allclose(np.asarray(jax.block_until_ready(got)), want, rtol=1e-5,
                               atol=1e-5)


def test_quantized_lookup_of_uint8_id_255_is_row_255_not_clipped():
  table = jnp.arange(1000.0)[:, None] * jnp.ones((1, 4))
  for bits in (8, 4):
    q = ec.quantize({"table": table}, bits=bits)
    got = ec.lookup_quantized(q, np.array([1, 255], np.uint8))
    want = np.asarray(ec.dequantize(q)["table"])[[1, 255]]
    np.testing.assert_array_equal(np.asarray(got), want)
  qr = {"quotient": jnp.arange(40.0)[:, None], "remainder": jnp.ones((25, 1))}
  got = ec.lookup_qr(qr, np.array([255, 4], np.uint8), combine="mult", padding_id=260,
                     num_embeddings=1000)
  np.testing.assert_array_equal(np.asarray(got)[:, 0], [255 // 25, 0])  # 4 is not 260


def test_negative_and_too_large_ids_raise_in_every_id_taking_function():
  with pytest.raises(ValueError, match=r"hash_embedding_buckets: id -1 at position \(1,\)"):
    ec.hash_embedding_buckets(np.array([1, -1], np.int8), 2, 10)
  with pytest.raises(ValueError, match=r"lookup_hashed: id 4294967295 at position \(0,\)"):
    ec.lookup_hashed({"table": jnp.ones((5, 2))}, np.array([2**32 - 1], np.uint32), num_buckets=5)


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_bag_lookup_ignores_nan_weights_at_padding_and_accumulates_in_float32(mode):
  v = next(v for v in VARIANTS if v.name == "qr_add")
  ids = np.array([[1, 4, 2], [4, 4, 4]], np.int8)
  weights = np.array([[2.0, np.nan, 0.5], [np.inf] * 3], np.float32)
  want = np_pool(v.np_lookup(ids, padding_id=4), ids, mode, np.where(ids != 4, weights, 1), 4)
  got = ec.bag_lookup(v.lookup, v.params, ids, mode=mode, weights=weights, padding_id=4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(ec.bag_lookup(v.lookup, p, ids, mode=mode, weights=weights,
                                                   padding_id=4)))(v.params)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
  # a bfloat16 bag of 1000 rows of 1.0 sums to 1000 (accumulated in bfloat16 it stops at 256)
  ones = ec.quantize({"table": jnp.ones((3, 4))})
  lookup_bf16 = functools.partial(ec.lookup_quantized, dtype=jnp.bfloat16)
  total = ec.bag_lookup(lookup_bf16, ones, np.ones((1, 1000), np.int32), mode="sum")
  assert total.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(total, np.float32), 1000.0)
