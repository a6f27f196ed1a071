"""Table variants (embedlab.core.variants) and quantized storage (embedlab.core.quantize) against
numpy references: the plain table's contract.

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
from embedlab.core import hashing as eh
from embedlab.core import quantize as eq
from embedlab.core import tables
from embedlab.core import variants
from embedlab.core.variants import contract
from embedlab.core.variants import factorized as fac
from embedlab.core.variants import hash_embedding as he
from embedlab.core.variants import hashed as hs
from embedlab.core.variants import qr as eqr

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
      functools.partial(hs.lookup_hashed, num_buckets=buckets, exact_size=exact, seed=3),
      lambda p, i: p["table"][row(i)],
      lambda p, i, c: {"table": (row(i), c)},
      rows=eh.MAX_RAW_ID,
      good_ids=lambda rng, shape: np.where(rng.random(shape) < 0.3, rng.integers(0, exact, shape),
                                           rng.integers(0, 10**9, shape)).astype(np.int32)))

  pool, k, vocab = 7, 3, 50
  hsh = lambda i: [py_hash(i, 5 + j) % pool for j in range(k)]
  out.append(Variant(
      "hash_embedding", {"pool": f32(pool, 4), "importance": f32(vocab, k)},
      functools.partial(he.lookup_hash_embedding, seed=5),
      lambda p, i: sum(p["importance"][i, j] * p["pool"][h] for j, h in enumerate(hsh(i))),
      lambda p, i, c: _hash_grad(p, i, c, hsh(i)),
      rows=vocab))

  vocab, m = 47, 6
  for combine in eqr.COMBINE_MODES:
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
        functools.partial(eqr.lookup_qr, combine=combine, num_embeddings=vocab), vec, grad,
        rows=vocab))

  out.append(Variant(
      "factorized", {"table": f32(30, 3), "projection": f32(3, 5)}, fac.lookup_factorized,
      lambda p, i: p["table"][i] @ p["projection"],
      lambda p, i, c: {"table": (i, p["projection"] @ c),
                       "projection": (slice(None), np.outer(p["table"][i], c))},
      rows=30))

  for bits in (8, 4, 2):
    q = {k: np.asarray(v) for k, v in eq.quantize({"table": f32(25, 8)}, bits=bits).items()}
    out.append(Variant(
        f"quantized{bits}", q, eq.lookup_quantized,
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
  h = he.init_hash_embedding(key, 20, 4, pool_size=5, padding_id=3)
  assert np.all(np.asarray(he.lookup_hash_embedding(h, jnp.array([3]))) == 0)
  f = fac.init_factorized_table(key, 20, 6, rank=2, padding_id=3)
  assert np.all(np.asarray(fac.lookup_factorized(f, jnp.array([3]))) == 0)
  assert np.all(np.asarray(hs.init_hashed_table(key, 5, 3, exact_size=4, padding_id=0)["table"][0])
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
    eqr.lookup_qr({"table": jnp.ones((3, 2))}, jnp.array([0]))
  with pytest.raises(ValueError, match="combine='dot' is not one of mult, add, concat"):
    eqr.init_qr_table(jax.random.key(0), 10, 4, num_collisions=3, combine="dot")
  with pytest.raises(ValueError, match="expected exact_size \\+ num_buckets = 2 \\+ 5"):
    hs.lookup_hashed({"table": jnp.ones((6, 2))}, jnp.array([0]), num_buckets=5, exact_size=2)
  with pytest.raises(ValueError, match="features divisible by 2, got 5; use bits=8"):
    eq.quantize({"table": jnp.ones((3, 5))}, bits=4)
  with pytest.raises(ValueError, match="features divisible by 4, got 6; use bits=8"):
    eq.quantize({"table": jnp.ones((3, 6))}, bits=2)
  with pytest.raises(ValueError, match="use 8, 4 or 2"):
    eq.quantize({"table": jnp.ones((3, 4))}, bits=3)
  with pytest.raises(ValueError, match="export: quantize='int3' is not one of int8, int4, int2"):
    eq.quantize_bits("int3", "export")
  with pytest.raises(TypeError, match="quantize\\(\\)'s output"):
    eq.lookup_quantized({"table": jnp.ones((3, 4))}, jnp.array([0]))


# ---------------------------------------------------------------- hashing trick

def test_hash_ids_ints_are_deterministic_and_match_the_device_hash():
  ids = np.array([[0, 3, 9, 10, 11], [12345, 10**9, 2**31 - 2, 7, 10**6]], np.int64)
  rows = eh.hash_ids(ids, 13, seed=3, exact_size=10)
  want = np.vectorize(lambda i: i if i < 10 else 10 + py_hash(i, 3) % 13)(ids)
  np.testing.assert_array_equal(rows, want)
  np.testing.assert_array_equal(rows, eh.hash_ids(ids, 13, seed=3, exact_size=10))
  assert rows.dtype == np.int32 and rows.min() >= 0 and rows.max() < 23
  assert not np.array_equal(eh.hash_ids(ids, 13, seed=4, exact_size=10), rows)
  # the device hash of lookup_hashed picks the same rows: look up a table whose row r is r
  table = {"table": jnp.arange(23.0)[:, None]}
  got = hs.lookup_hashed(table, jnp.asarray(ids, jnp.int32), num_buckets=13, exact_size=10, seed=3)
  np.testing.assert_array_equal(np.asarray(got)[..., 0], rows)
  assert eh.hash_ids(np.array([2**40 + 5]), 100).shape == (1,)  # 64-bit ids are folded


def test_hash_ids_words_follow_fasttext_and_the_exact_vocabulary():
  words = [["the", "cat", "naïve"], ["zzz", "the", "dog"]]
  rows = eh.hash_ids(words, 1000)
  np.testing.assert_array_equal(rows, [[py_fnv(w) % 1000 for w in r] for r in words])
  assert int(eh.hash_ids("the", 1000)) == py_fnv("the") % 1000
  vocab = {"the": 0, "cat": 1}
  rows = eh.hash_ids(words, 1000, vocab=vocab)
  assert rows[0, 0] == 0 and rows[0, 1] == 1 and rows[1, 1] == 0
  assert rows[1, 0] == 2 + py_fnv("zzz") % 1000
  assert eh.hash_ids(words, 1000, seed=1)[1, 0] != eh.hash_ids(words, 1000)[1, 0] or \
      eh.hash_ids(words, 1000, seed=1)[0, 0] != eh.hash_ids(words, 1000)[0, 0]


def test_hash_ids_rejects_bad_input():
  with pytest.raises(ValueError, match=r"id -4 at position \(1,\) is negative"):
    eh.hash_ids([3, -4], 10)
  with pytest.raises(TypeError, match="floats are never silently truncated"):
    eh.hash_ids([1.5], 10)
  with pytest.raises(ValueError, match="num_buckets must be a positive integer"):
    eh.hash_ids([1], 0)
  with pytest.raises(ValueError, match="pass exact_size >= the vocabulary size"):
    eh.hash_ids(["a"], 10, vocab={"a": 5}, exact_size=2)


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
    fn = lambda p, i, w: contract.bag_lookup(v.lookup, p, i, mode=mode, weights=w, padding_id=4)
    got = (jax.jit(fn) if mode == "mean" else fn)(v.params, ids, weights)  # jit once: time
    want = np_pool(v.np_lookup(ids), ids, mode,
                   np.ones(ids.shape) if weights is None else weights, 4)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5, err_msg=v.name)


@pytest.mark.parametrize("mode", tables.BAG_MODES)
def test_bag_factorized_equals_pooling_the_full_vectors(mode):
  v = next(v for v in VARIANTS if v.name == "factorized")
  ids = np.array([[1, 2, 0, 0], [0, 0, 0, 0], [5, 5, 29, 3]], np.int32)
  got = fac.bag_factorized(v.params, ids, mode=mode, padding_id=0)
  want = np_pool(v.np_lookup(ids), ids, mode, np.ones(ids.shape), 0)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- quantization and bf16

@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantization_error_is_at_most_half_a_step_per_element(bits):
  rng = np.random.default_rng(6)
  table = rng.standard_normal((200, 16)).astype(np.float32) * rng.uniform(0.01, 3, (200, 1))
  table[7] = 0  # an all-zero row quantizes exactly
  q = eq.quantize({"table": jnp.asarray(table)}, bits=bits)
  qmax = {8: 127, 4: 7, 2: 1.5}[bits]
  scale = np.abs(table).max(1) / qmax
  np.testing.assert_allclose(np.asarray(q["scale"]), scale, rtol=1e-6)
  deq = np.asarray(eq.dequantize(q)["table"])
  err = np.abs(deq - table)
  assert np.all(err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-7)
  assert np.all(deq[7] == 0)
  np.testing.assert_allclose(deq, np_quant_values({k: np.asarray(x) for k, x in q.items()}),
                             rtol=1e-6, atol=1e-7)
  assert eq.quantization_error({"table": jnp.asarray(table)}, q) == pytest.approx(err.max())
  ids = rng.integers(0, 200, (5, 3))
  np.testing.assert_array_equal(np.asarray(eq.lookup_quantized(q, ids)), deq[ids])
  stored = q[f"q{bits}"]
  assert stored.dtype == (jnp.int8 if bits == 8 else jnp.uint8)
  assert stored.shape == (200, 16 * bits // 8)
  if bits == 2:  # the row's extremes are stored exactly, and every code is one of four levels
    np.testing.assert_allclose(np.abs(deq).max(1), np.abs(table).max(1), rtol=1e-6)
    levels = np.unique(np.round(deq[scale > 0] / scale[scale > 0, None], 5))
    assert set(levels.tolist()) == {-1.5, -0.5, 0.5, 1.5}
  assert contract.table_bytes(q) == 200 * (16 * bits // 8 + 4)


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
  assert contract.table_bytes(params) == 20 * 8 * 2


# ---------------------------------------------------------------- sizes

V, D = 2_000_000, 64
SIZES = {  # the documented 2M x 64 configurations and their table_bytes
    "hashed": (lambda k: hs.init_hashed_table(k, 200_000, D, exact_size=100_000), 76_800_000),
    "hash": (lambda k: he.init_hash_embedding(k, V, D, pool_size=250_000), 80_000_000),
    "qr": (lambda k: eqr.init_qr_table(k, V, D, num_collisions=1414), 724_224),
    "factorized": (lambda k: fac.init_factorized_table(k, V, D, rank=16), 128_004_096),
    "int8": (lambda k: eq.quantize(el.init_table(k, V, D), bits=8), 136_000_000),
    "4-bit": (lambda k: eq.quantize(el.init_table(k, V, D), bits=4), 72_000_000),
    "2-bit": (lambda k: eq.quantize(el.init_table(k, V, D), bits=2), 40_000_000),
}


@pytest.mark.parametrize("name", list(SIZES))
def test_each_variant_is_smaller_than_the_plain_table(name):
  init, want = SIZES[name]
  shapes = jax.eval_shape(init, jax.random.key(0))  # no 512 MB allocation
  plain = contract.table_bytes(jax.eval_shape(lambda k: el.init_table(k, V, D), jax.random.key(0)))
  assert plain == V * D * 4 == 512_000_000
  assert contract.table_bytes(shapes) == want < plain
  summary = variants.describe_compressed(shapes, num_embeddings=V)
  assert (summary.num_embeddings, summary.features) == (V, D)
  assert summary.bytes == want and summary.plain_bytes == plain
  assert summary.weights == el.num_params(shapes)
  assert "a plain float32 table: 488.3 MiB" in str(summary)


def test_describe_compressed_names_the_variant():
  key = jax.random.key(0)
  kinds = jax.eval_shape(lambda key: {
      "hash": he.init_hash_embedding(key, 100, 4, pool_size=10),
      "quotient-remainder": eqr.init_qr_table(key, 100, 4, num_collisions=10),
      "factorized": fac.init_factorized_table(key, 100, 4, rank=2),
      "int8": eq.quantize(el.init_table(key, 100, 4)),
      "4-bit": eq.quantize(el.init_table(key, 100, 4), bits=4),
      "2-bit": eq.quantize(el.init_table(key, 100, 4), bits=2),
      "plain": el.init_table(key, 100, 4),
  }, key)
  for kind, params in kinds.items():
    s = variants.describe_compressed(params)
    assert s.bytes == contract.table_bytes(params) and s.weights == el.num_params(params)
    assert (s.kind, s.num_embeddings, s.features) == (kind, 100, 4)
  concat = jax.eval_shape(lambda k: eqr.init_qr_table(k, 100, 4, num_collisions=10,
                                                     combine="concat", remainder_features=3), key)
  assert variants.describe_compressed(concat, combine="concat").features == 7
  with pytest.raises(TypeError, match="unknown params"):
    variants.describe_compressed({"w": jnp.ones(3)})


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
    q = eq.quantize({"table": table}, bits=bits)
    got = eq.lookup_quantized(q, np.array([1, 255], np.uint8))
    want = np.asarray(eq.dequantize(q)["table"])[[1, 255]]
    np.testing.assert_array_equal(np.asarray(got), want)
  qr = {"quotient": jnp.arange(40.0)[:, None], "remainder": jnp.ones((25, 1))}
  got = eqr.lookup_qr(qr, np.array([255, 4], np.uint8), combine="mult", padding_id=260,
                     num_embeddings=1000)
  np.testing.assert_array_equal(np.asarray(got)[:, 0], [255 // 25, 0])  # 4 is not 260


def test_negative_and_too_large_ids_raise_in_every_id_taking_function():
  with pytest.raises(ValueError, match=r"hash_embedding_buckets: id -1 at position \(1,\)"):
    he.hash_embedding_buckets(np.array([1, -1], np.int8), 2, 10)
  with pytest.raises(ValueError, match=r"lookup_hashed: id 4294967295 at position \(0,\)"):
    hs.lookup_hashed({"table": jnp.ones((5, 2))}, np.array([2**32 - 1], np.uint32), num_buckets=5)


@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_bag_lookup_ignores_nan_weights_at_padding_and_accumulates_in_float32(mode):
  v = next(v for v in VARIANTS if v.name == "qr_add")
  ids = np.array([[1, 4, 2], [4, 4, 4]], np.int8)
  weights = np.array([[2.0, np.nan, 0.5], [np.inf] * 3], np.float32)
  want = np_pool(v.np_lookup(ids, padding_id=4), ids, mode, np.where(ids != 4, weights, 1), 4)
  got = contract.bag_lookup(v.lookup, v.params, ids, mode=mode, weights=weights, padding_id=4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  grads = jax.grad(lambda p: jnp.sum(contract.bag_lookup(v.lookup, p, ids, mode=mode, weights=weights,
                                                   padding_id=4)))(v.params)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
  # a bfloat16 bag of 1000 rows of 1.0 sums to 1000 (accumulated in bfloat16 it stops at 256)
  ones = eq.quantize({"table": jnp.ones((3, 4))})
  lookup_bf16 = functools.partial(eq.lookup_quantized, dtype=jnp.bfloat16)
  total = contract.bag_lookup(lookup_bf16, ones, np.ones((1, 1000), np.int32), mode="sum")
  assert total.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(total, np.float32), 1000.0)


# ---------------------------------------------------------------- the registry's contract
#
# Every entry of embedlab.core.variants.TABLES (and a variant registered here, below) through
# its factory: values and bags against numpy, gradients, padding, bad ids, jit, row-sparse
# reads of a local table where the entry declares row_sparse, ragged bags where it pools rows.
# A new entry needs only a numpy reference in NUMPY_VECTORS to be covered.

CONTRACT_V, CONTRACT_D, CONTRACT_PAD = 50, 6, 3


def _np_hashed(p, ids, num_buckets, exact_size=0, seed=0):
  exact = max(exact_size, CONTRACT_PAD + 1)  # the factory keeps a row for the padding id
  rows = np.vectorize(lambda i: i if i < exact else exact + py_hash(i, seed) % num_buckets)(ids)
  return p["table"][rows]


def _np_hash_embedding(p, ids, pool_size, num_hashes=2, seed=0):
  def one(i):
    return sum(p["importance"][i, j] * p["pool"][py_hash(i, seed + j) % pool_size]
               for j in range(num_hashes))
  return np.stack([one(int(i)) for i in ids.reshape(-1)]).reshape(ids.shape + (-1,))


def _np_qr(p, ids, num_collisions, combine="mult"):
  q, r = p["quotient"][ids // num_collisions], p["remainder"][ids % num_collisions]
  return {"mult": q * r, "add": q + r, "concat": np.concatenate([q, r], -1)}[combine]


NUMPY_VECTORS = {  # (numpy params, ids, **options) -> each id's vector, padding not masked
    "plain": lambda p, ids: p["table"][ids],
    "hashed": _np_hashed,
    "hash_embedding": _np_hash_embedding,
    "qr": _np_qr,
    "factorized": lambda p, ids, rank: p["table"][ids] @ p["projection"],
}


def make_scaled(num_embeddings, features, *, padding_id=None, factor=2.0):
  """A toy variant: a plain table whose vectors are ``factor`` times its rows (one module's
  worth of code: a factory and a describe, built on contract.row_table)."""
  def init(key, *, init="normal", scale=None, dtype=jnp.float32):
    return el.init_table(key, num_embeddings, features, init=init, padding_id=padding_id,
                         scale=scale, dtype=dtype)
  return contract.row_table("scaled", padding_id=padding_id, init=init,
                            project=lambda params, x: factor * x,
                            describe=lambda p: describe_scaled(p, num_embeddings=num_embeddings))


def describe_scaled(params, *, num_embeddings=None, **options):
  rows, features = params["table"].shape
  return contract.summarize("scaled", num_embeddings or rows, features, params)


TOY_TABLES = variants.TABLES.register(variants.Spec(
    "scaled", "scaled", ("table",), fields={"table_rank": "factor"}, row_sparse=True,
    sharding=True, pooled_modes=variants.BAG_MODES, example={"factor": 2.0},
    load=lambda: type("ScaledModule", (), {"make": staticmethod(make_scaled),
                                           "describe": staticmethod(describe_scaled)})))
TOY_VECTORS = {"scaled": lambda p, ids, factor: factor * p["table"][ids]}

CONTRACT_CASES = [(variants.TABLES, name, {}) for name in variants.TABLES] + [
    (variants.TABLES, "qr", {"combine": "concat"}), (variants.TABLES, "qr", {"combine": "add"}),
    (TOY_TABLES, "scaled", {})]


class Case:
  """A registry entry built by its factory, with perturbed params and their numpy vectors."""

  def __init__(self, registry, name, extra):
    self.spec = registry.spec(name)
    self.options = {**self.spec.example, **extra}
    self.v = registry.factory(name)(CONTRACT_V, CONTRACT_D, padding_id=CONTRACT_PAD,
                                    **self.options)
    params = self.v.init(jax.random.key(0), scale=0.5)
    # perturb every weight: no entry keeps its initial constant (importance 1, zero padding row)
    keys = iter(jax.random.split(jax.random.key(1), len(params)))
    self.params = {k: x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)
                   for k, x in params.items()}
    self.np = {k: np.asarray(x, np.float64) for k, x in self.params.items()}
    vectors = (TOY_VECTORS if registry is TOY_TABLES else NUMPY_VECTORS).get(name)
    assert vectors is not None, f"add a numpy reference for the variant {name!r} to NUMPY_VECTORS"
    self.vectors = lambda ids: vectors(self.np, np.asarray(ids, np.int64), **self.options)

  def np_lookup(self, ids):
    ids = np.asarray(ids)
    return np.where((ids != CONTRACT_PAD)[..., None], self.vectors(ids), 0)


def contract_case(registry, name, extra):
  label = name + "".join(f"-{v}" for v in extra.values())
  return pytest.param(registry, name, extra, id=label)


CONTRACT_PARAMS = [contract_case(*c) for c in CONTRACT_CASES]


def _contract_ids(rng, shape):
  ids = rng.integers(0, CONTRACT_V, shape).astype(np.int32)
  ids.reshape(-1)[::4] = CONTRACT_PAD  # some padding everywhere
  return ids


@pytest.mark.parametrize("registry,name,extra", CONTRACT_PARAMS)
def test_contract_lookup_and_bag_match_numpy_eager_and_under_jit(registry, name, extra):
  c = Case(registry, name, extra)
  rng = np.random.default_rng(0)
  for shape in [(), (7,), (3, 4), (2, 3, 2)]:
    ids = _contract_ids(rng, shape)
    got = c.v.lookup(c.params, jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(got), c.np_lookup(ids), rtol=1e-5, atol=1e-5)
  ids = _contract_ids(rng, (4, 5))
  ids[2] = CONTRACT_PAD  # an empty bag
  np.testing.assert_allclose(np.asarray(jax.jit(c.v.lookup)(c.params, ids)), c.np_lookup(ids),
                             rtol=1e-5, atol=1e-5)
  weights = rng.uniform(0.5, 2, ids.shape).astype(np.float32)
  for mode in tables.BAG_MODES:
    w = None if mode == "max" else weights
    want = np_pool(c.np_lookup(ids), ids, mode, np.ones(ids.shape) if w is None else w,
                   CONTRACT_PAD)
    bag = jax.jit(lambda p, i, w, mode=mode: c.v.bag(p, i, mode, weights=w))
    np.testing.assert_allclose(np.asarray(bag(c.params, ids, w)), want, rtol=1e-4, atol=1e-5,
                               err_msg=f"{name} {mode}")
  summary = c.v.describe(c.params)
  assert (summary.num_embeddings, summary.features) == (CONTRACT_V, CONTRACT_D)
  assert summary.weights == el.num_params(c.params)
  assert summary.bytes == contract.table_bytes(c.params)


@pytest.mark.parametrize("registry,name,extra", CONTRACT_PARAMS)
def test_contract_gradients_match_finite_differences_and_skip_padding(registry, name, extra):
  c = Case(registry, name, extra)
  ids = _contract_ids(np.random.default_rng(1), (3, 6))
  cot = jax.random.normal(jax.random.key(2), (3, CONTRACT_D))

  def f(p):
    return jnp.sum(c.v.bag(p, ids, "sum") * cot)

  grads = jax.jit(jax.grad(f))(c.params)
  direction = {k: jax.random.normal(jax.random.key(3), x.shape) for k, x in c.params.items()}
  eps = 1e-3
  plus = f({k: x + eps * direction[k] for k, x in c.params.items()})
  minus = f({k: x - eps * direction[k] for k, x in c.params.items()})
  analytic = sum(jnp.vdot(grads[k], direction[k]) for k in grads)
  np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=2e-2, atol=1e-3)
  only_padding = jax.grad(lambda p: jnp.sum(c.v.lookup(p, np.full((2, 3), CONTRACT_PAD))))
  for key, g in only_padding(c.params).items():
    assert not np.any(np.asarray(g)), f"{name}: padding sent gradient to {key}"


@pytest.mark.parametrize("registry,name,extra", CONTRACT_PARAMS)
def test_contract_bad_ids_raise_eagerly_and_under_jit(registry, name, extra):
  c = Case(registry, name, extra)
  too_big = np.array([[1, 2], [4, CONTRACT_V]], np.int32)
  negative = np.array([[1, -1]], np.int32)
  with pytest.raises(ValueError, match=rf"id {CONTRACT_V} at position \(1, 1\) is outside"):
    c.v.lookup(c.params, too_big)
  with pytest.raises(ValueError, match=r"id -1 at position \(0, 1\)"):
    c.v.bag(c.params, negative, "mean")
  with pytest.raises(TypeError, match="integers"):
    c.v.lookup(c.params, too_big.astype(np.float32))
  with pytest.raises(jax.errors.JaxRuntimeError, match=rf"id {CONTRACT_V} at position \(1, 1\)"):
    jax.block_until_ready(jax.jit(c.v.lookup)(c.params, too_big))
  with pytest.raises(jax.errors.JaxRuntimeError, match=r"id -1 at position \(0, 1\)"):
    jax.block_until_ready(jax.jit(lambda p, i: c.v.bag(p, i, "sum"))(c.params, negative))


@pytest.mark.parametrize("registry,name,extra", CONTRACT_PARAMS)
def test_contract_row_sparse_reads_of_a_local_table_equal_the_full_table(registry, name, extra):
  c = Case(registry, name, extra)
  ids = _contract_ids(np.random.default_rng(4), (4, 5))
  assert (c.v.rows is not None) == c.spec.row_sparse == (c.v.project is not None)
  if not c.spec.row_sparse:
    with pytest.raises(ValueError, match="rows=True reads rows of a table"):
      c.v.lookup(c.params, ids, rows=True)
    return
  from embedlab.core.localize import localize
  rows = c.v.rows(ids)
  assert rows.shape == ids.shape and int(rows.max()) < c.params["table"].shape[0]
  assert np.all(np.asarray(rows)[ids == CONTRACT_PAD] == CONTRACT_PAD)  # padding keeps its row
  local = localize(c.params["table"], rows, padding_id=CONTRACT_PAD, strategy="rows")
  cot = jax.random.normal(jax.random.key(5), (4, CONTRACT_D))
  for mode in tables.BAG_MODES:
    def full(table, mode=mode):
      return jnp.sum(c.v.bag({**c.params, "table": table}, ids, mode) * cot)

    def on_rows(local_table, mode=mode):
      return jnp.sum(c.v.bag({**c.params, "table": local_table}, local.ids, mode, rows=True)
                     * cot)

    np.testing.assert_allclose(on_rows(local.params["table"]), full(c.params["table"]),
                               rtol=1e-5, atol=1e-5)
    dense = np.asarray(jax.grad(full)(c.params["table"]))
    by_row = np.zeros_like(dense)
    g_local = np.asarray(jax.grad(on_rows)(local.params["table"]))
    keep = np.asarray(local.row_ids) < dense.shape[0]
    by_row[np.asarray(local.row_ids)[keep]] = g_local[keep]
    np.testing.assert_allclose(by_row, dense, rtol=1e-5, atol=1e-6, err_msg=f"{name} {mode}")


@pytest.mark.parametrize("registry,name,extra", CONTRACT_PARAMS)
def test_contract_ragged_bags_where_the_variant_pools_rows(registry, name, extra):
  c = Case(registry, name, extra)
  ids = _contract_ids(np.random.default_rng(6), (3, 4))
  flat = ids.reshape(-1)
  segments = np.repeat(np.arange(3), 4).astype(np.int32)
  for mode in tables.BAG_MODES:
    if registry.pools_rows(name, mode):
      got = c.v.bag(c.params, flat, mode, segment_ids=segments, num_bags=3)
      np.testing.assert_allclose(np.asarray(got), np.asarray(c.v.bag(c.params, ids, mode)),
                                 rtol=1e-5, atol=1e-5, err_msg=f"{name} {mode}")
    else:
      with pytest.raises(ValueError, match=r"ragged bags \(segment_ids\) are pooled by"):
        c.v.bag(c.params, flat, mode, segment_ids=segments, num_bags=3)


def test_registering_a_variant_returns_a_new_registry_and_leaves_the_global_one():
  assert "scaled" in TOY_TABLES and "scaled" not in variants.TABLES
  assert TOY_TABLES.names == variants.TABLES.names + ("scaled",)
  assert TOY_TABLES.names_with("row_sparse")[-1] == "scaled"
  with pytest.raises(ValueError, match="model.table='scaled' is not one of plain, hashed"):
    variants.get("scaled")
  with pytest.raises(ValueError, match="duplicate names"):
    variants.Registry((variants.TABLES["plain"], variants.TABLES["plain"]))


def test_the_registry_is_read_without_jax_and_config_takes_its_choices_from_it():
  import subprocess
  import sys
  code = ("import sys, embedlab.config as c, embedlab.core.variants as v; "
          "assert 'jax' not in sys.modules, 'jax was imported'; "
          "print(c._CHOICES['model.table'] == v.TABLES.names)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "True"
  from embedlab import config as config_lib
  for name, spec in variants.TABLES.items():  # every entry's typical sizes validate
    sizes = [f"model.{field}={value}" for field, value in spec.required.items()]
    cfg = config_lib.apply_overrides(config_lib.Config(), [f"model.table={name}", *sizes])
    assert cfg.model.table == name


@pytest.mark.parametrize("name,options,match", [
    ("hashed", {"num_buckets": 0}, r"hashed\.init: num_buckets must be an integer >= 1, got 0"),
    ("hashed", {"num_buckets": 2.5}, r"hashed\.init: num_buckets must be an integer >= 1"),
    ("hashed", {"num_buckets": 8, "exact_size": -1}, r"exact_size must be an integer >= 0"),
    ("hash_embedding", {"pool_size": 0}, r"hash_embedding\.init: pool_size must be"),
    ("hash_embedding", {"pool_size": 8, "num_hashes": 0}, r"num_hashes must be an integer >= 1"),
    ("qr", {"num_collisions": -1}, r"qr\.make: num_collisions \(0: the smallest\) must be"),
    ("factorized", {"rank": 0}, r"factorized\.init: rank must be an integer >= 1, got 0"),
    ("factorized", {"rank": True}, r"factorized\.init: rank must be an integer >= 1, got True"),
])
def test_a_variant_option_out_of_range_is_named(name, options, match):
  # before, most were reported as init_table's num_embeddings or features
  with pytest.raises(ValueError, match=match):
    variants.get(name)(100, 8, **options).init(jax.random.key(0))
