"""Property-based tests (hypothesis) of the id path and the pooling against numpy references.

Random shapes, every integer id dtype (int8 ... uint32), random padding ids (some beyond what
the id dtype can hold), NaN weights at padding positions, ragged segments, every table variant,
every pooling mode, float32 and bfloat16 tables, eager and under ``jit``. Shapes come from small
menus so the jitted functions below are compiled a few times and then reused.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import embedlab as el
from embedlab.core import hashing as eh
from embedlab.core import quantize as eq
from embedlab.core.variants import contract
from embedlab.core.variants import factorized as fac
from embedlab.core.variants import hash_embedding as he
from embedlab.core.variants import hashed as hs
from embedlab.core.variants import qr as eqr
from embedlab.core import pooling
from embedlab.core import meshes
from embedlab.core import sharding

INT_DTYPES = [np.dtype(d) for d in ("int8", "uint8", "int16", "uint16", "int32", "uint32")]
TABLE_DTYPES = [np.dtype(np.float32), np.dtype(jnp.bfloat16)]
MODES = ("sum", "mean", "max", "sqrtn")
ROWS = (7, 300)  # 300 rows: ids and padding ids beyond int8 / uint8
FEATURES = 3
# examples per test: each new id dtype / mode / shape compiles once; these keep the file's run
# well under a minute and a half on 2 cores
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
FEW = settings(max_examples=12, deadline=None, derandomize=True)


def make_table(rows, dtype):
  rng = np.random.default_rng(rows)
  return jnp.asarray(rng.standard_normal((rows, FEATURES)).astype(np.float32), dtype)


def tolerance(dtype):
  # bfloat16 results are float32 sums rounded once to bfloat16 (8 significant bits)
  return dict(rtol=1 / 128, atol=1e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)


def highest_id(dtype, rows):
  return min(rows - 1, int(np.iinfo(dtype).max))


@st.composite
def id_arrays(draw, shapes=((5,), (2, 3), (3, 4))):
  """(ids of a random integer dtype, all valid for the table, table rows)."""
  dtype = draw(st.sampled_from(INT_DTYPES))
  rows = draw(st.sampled_from(ROWS))
  shape = draw(st.sampled_from(shapes))
  ids = draw(hnp.arrays(dtype, shape, elements=st.integers(0, highest_id(dtype, rows))))
  return ids, rows


def padding_ids(rows):
  # None, any row, or row 260 (an int8 / uint8 id can never hold it: nothing is padding)
  return st.one_of(st.none(), st.integers(0, rows - 1), st.just(min(260, rows - 1)))


@st.composite
def bad_id_arrays(draw, rows):
  """(ids of a dtype that can hold an id outside 0..rows-1, with one there; its position)."""
  dtype = draw(st.sampled_from([d for d in INT_DTYPES
                                if np.iinfo(d).min < 0 or np.iinfo(d).max >= rows]))
  info = np.iinfo(dtype)
  shape = draw(st.sampled_from([(1, 4), (2, 3)]))  # [batch, bag_len]: bags read them too
  ids = draw(hnp.arrays(dtype, shape, elements=st.integers(0, min(rows - 1, info.max))))
  choices = []
  if info.min < 0:
    choices.append(st.integers(int(info.min), -1))
  if info.max >= rows:
    choices.append(st.integers(rows, int(info.max)))
  bad = draw(st.one_of(*choices))
  position = draw(st.sampled_from(list(np.ndindex(shape))))
  ids[position] = bad
  return ids, bad, position


# ---------------------------------------------------------------- numpy references

def np_lookup(table, ids, padding_id=None, keep=None):
  ids = ids.astype(np.int64)
  out = np.asarray(table, np.float64)[np.clip(ids, 0, table.shape[0] - 1)]
  real = np.ones(ids.shape, bool) if keep is None else keep.copy()
  if padding_id is not None:
    real &= ids != padding_id
  out[~real] = 0
  return out


def np_pool(vecs, real, mode, weights=None, segments=None, num_bags=None):
  """Bags of gathered vectors in float64: padded ``[B, L, D]`` or ragged ``[N, D]``."""
  if segments is None:
    num_bags, length = real.shape
    segments = np.repeat(np.arange(num_bags), length)
    vecs, real = vecs.reshape(-1, vecs.shape[-1]), real.reshape(-1)
    weights = None if weights is None else weights.reshape(-1)
  w = np.ones(len(real)) if weights is None else np.where(real, weights, 0).astype(np.float64)
  out = np.zeros((num_bags, vecs.shape[-1]))
  scale = np.zeros(num_bags)  # d out_b / d (w_i v_i)
  for b in range(num_bags):
    sel = real & (segments == b)
    if not sel.any():
      continue
    x, wb = vecs[sel], w[sel]
    if mode == "max":
      out[b] = x.max(0)
      continue
    denom = {"sum": 1.0, "mean": wb.sum(), "sqrtn": np.sqrt((wb ** 2).sum())}[mode]
    if denom != 0:
      out[b], scale[b] = wb @ x / denom, 1 / denom
  return out, w, segments, scale


def np_linear_grad(rows, ids, real, w, segments, scale, cot):
  """d <pool(table[ids]), cot> / d table for the linear modes (sum, mean, sqrtn)."""
  grad = np.zeros((rows, cot.shape[-1]))
  flat, real = ids.reshape(-1).astype(np.int64), real.reshape(-1)
  for i in np.nonzero(real)[0]:
    grad[flat[i]] += w[i] * scale[segments[i]] * cot[segments[i]]
  return grad


# ---------------------------------------------------------------- jitted, reused

@functools.partial(jax.jit, static_argnames=("padding_id", "oob"))
def jit_lookup(params, ids, padding_id, oob="error"):
  return el.lookup(params, ids, padding_id=padding_id, oob=oob)


@functools.partial(jax.jit, static_argnames=("padding_id",))
def jit_lookup_grad(params, ids, cot, padding_id):
  return jax.grad(lambda p: jnp.sum(el.lookup(p, ids, padding_id=padding_id) * cot))(params)


@functools.partial(jax.jit, static_argnames=("mode", "padding_id", "num_bags"))
def jit_bag(params, ids, weights, segments, mode, padding_id, num_bags):
  return el.bag(params, ids, mode=mode, weights=weights, padding_id=padding_id,
                segment_ids=segments, num_bags=num_bags)


@functools.partial(jax.jit, static_argnames=("mode", "padding_id", "num_bags"))
def jit_bag_grad(params, ids, weights, segments, cot, mode, padding_id, num_bags):
  return jax.grad(lambda p: jnp.sum(el.bag(
      p, ids, mode=mode, weights=weights, padding_id=padding_id, segment_ids=segments,
      num_bags=num_bags).astype(jnp.float32) * cot))(params)


@functools.partial(jax.jit, static_argnames=("mode", "padding_id", "strategy"))
def jit_pool_padded(table, ids, weights, mode, padding_id, strategy):
  return pooling.pool_padded(table, ids, weights, None, mode, padding_id=padding_id,
                             strategy=strategy)


# ---------------------------------------------------------------- lookup

@SETTINGS
@given(data=st.data(), drawn=id_arrays(), table_dtype=st.sampled_from(TABLE_DTYPES))
def test_lookup_of_any_int_dtype_matches_numpy_eager_and_jit(data, drawn, table_dtype):
  ids, rows = drawn
  padding_id = data.draw(padding_ids(rows))
  params = {"table": make_table(rows, table_dtype)}
  want = np_lookup(params["table"].astype(jnp.float32), ids, padding_id)
  for got in (el.lookup(params, ids, padding_id=padding_id),
              el.lookup(params, jnp.asarray(ids), padding_id=padding_id),
              jit_lookup(params, jnp.asarray(ids), padding_id)):
    assert got.dtype == table_dtype and got.shape == ids.shape + (FEATURES,)
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)


@SETTINGS
@given(data=st.data(), drawn=id_arrays())
def test_lookup_gradient_of_any_int_dtype_matches_numpy(data, drawn):
  ids, rows = drawn
  padding_id = data.draw(padding_ids(rows))
  params = {"table": make_table(rows, jnp.float32)}
  cot = np.random.default_rng(ids.size).standard_normal(ids.shape + (FEATURES,))
  want = np.zeros((rows, FEATURES))
  real = np.ones(ids.shape, bool) if padding_id is None else ids.astype(np.int64) != padding_id
  np.add.at(want, ids.astype(np.int64)[real], cot[real])
  got = jit_lookup_grad(params, jnp.asarray(ids), jnp.asarray(cot, jnp.float32), padding_id)
  np.testing.assert_allclose(np.asarray(got["table"]), want, rtol=1e-6, atol=1e-6)


@SETTINGS
@given(data=st.data(), rows=st.sampled_from(ROWS), oob=st.sampled_from(["clip", "zero"]))
def test_clip_and_zero_policies_are_exact_in_any_int_dtype(data, rows, oob):
  dtype = data.draw(st.sampled_from(INT_DTYPES))
  info = np.iinfo(dtype)
  ids = data.draw(hnp.arrays(dtype, (2, 4), elements=st.integers(int(info.min), int(info.max))))
  params = {"table": make_table(rows, jnp.float32)}
  wide = ids.astype(np.int64)
  keep = (wide >= 0) & (wide < rows) if oob == "zero" else None
  want = np_lookup(params["table"], ids, keep=keep)
  for got in (el.lookup(params, ids, oob=oob), jit_lookup(params, jnp.asarray(ids), None, oob)):
    np.testing.assert_array_equal(np.asarray(got, np.float64), want)


@SETTINGS
@given(data=st.data(), rows=st.sampled_from(ROWS))
def test_bad_ids_of_any_int_dtype_raise_naming_id_and_position(data, rows):
  ids, bad, position = data.draw(bad_id_arrays(rows))
  params = {"table": make_table(rows, jnp.float32)}
  message = (rf"lookup: id {bad} at position \({', '.join(map(str, position))}\) is outside "
             rf"the table \({rows} rows")
  with pytest.raises(ValueError, match=message):
    el.lookup(params, ids)
  with pytest.raises(ValueError, match=message.replace("lookup", "bag")):
    el.bag(params, ids)
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(jit_lookup(params, jnp.asarray(ids), None))


# ---------------------------------------------------------------- bags

@st.composite
def padded_bags(draw):
  ids, rows = draw(id_arrays(shapes=((1, 1), (2, 4), (3, 5))))
  padding_id = draw(padding_ids(rows))
  mode = draw(st.sampled_from(MODES))
  weights = None
  if mode != "max" and draw(st.booleans()):
    weights = draw(hnp.arrays(np.float32, ids.shape, elements=st.floats(0.25, 2.0, width=32)))
    if padding_id is not None:  # PyTorch ignores whatever sits at padding: so must we
      weights[ids.astype(np.int64) == padding_id] = np.nan
  table_dtype = draw(st.sampled_from(TABLE_DTYPES))
  return ids, rows, padding_id, mode, weights, table_dtype


@FEW
@given(bags=padded_bags(), strategy=st.sampled_from(pooling.STRATEGIES))
def test_padded_bag_every_mode_dtype_and_strategy_matches_numpy(bags, strategy):
  ids, rows, padding_id, mode, weights, table_dtype = bags
  assume(mode != "max" or strategy == "take")
  params = {"table": make_table(rows, table_dtype)}
  table = np.asarray(params["table"], np.float64)
  real = np.ones(ids.shape, bool) if padding_id is None else ids.astype(np.int64) != padding_id
  want, w, segments, scale = np_pool(table[ids.astype(np.int64)], real, mode, weights)
  results = [el.bag(params, ids, mode=mode, weights=weights, padding_id=padding_id),
             jit_bag(params, jnp.asarray(ids), weights, None, mode, padding_id, None),
             jit_pool_padded(params["table"], jnp.asarray(ids), weights, mode, padding_id,
                             strategy)]
  for got in results:
    assert got.dtype == table_dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), want, **tolerance(table_dtype))
  if mode in ("sum", "mean") and table_dtype == np.float32:
    cot = np.random.default_rng(ids.size).standard_normal(want.shape)
    got = jit_bag_grad(params, jnp.asarray(ids), weights, None, jnp.asarray(cot, jnp.float32),
                       mode, padding_id, None)["table"]
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), np_linear_grad(rows, ids, real, w, segments,
                                                               scale, cot), rtol=1e-5, atol=1e-5)


@st.composite
def ragged_bags(draw):
  ids, rows = draw(id_arrays(shapes=((1,), (6,), (9,))))
  num_bags = draw(st.sampled_from([1, 3, 4]))
  segments = draw(hnp.arrays(np.int32, ids.shape, elements=st.integers(0, num_bags - 1)))
  if draw(st.booleans()):
    segments = np.sort(segments)  # PyTorch's offsets give sorted segments; any order works
  padding_id = draw(padding_ids(rows))
  mode = draw(st.sampled_from(MODES))
  weights = None
  if mode != "max" and draw(st.booleans()):
    weights = draw(hnp.arrays(np.float32, ids.shape, elements=st.floats(0.25, 2.0, width=32)))
    if padding_id is not None:
      weights[ids.astype(np.int64) == padding_id] = np.inf
  return ids, rows, segments, num_bags, padding_id, mode, weights


@FEW
@given(bags=ragged_bags(), table_dtype=st.sampled_from(TABLE_DTYPES))
def test_ragged_bag_every_mode_and_dtype_matches_numpy(bags, table_dtype):
  ids, rows, segments, num_bags, padding_id, mode, weights = bags
  params = {"table": make_table(rows, table_dtype)}
  table = np.asarray(params["table"], np.float64)
  real = np.ones(ids.shape, bool) if padding_id is None else ids.astype(np.int64) != padding_id
  want, w, segs, scale = np_pool(table[ids.astype(np.int64)], real, mode, weights, segments,
                                 num_bags)
  kwargs = dict(mode=mode, weights=weights, padding_id=padding_id, num_bags=num_bags)
  for got in (el.bag(params, ids, segment_ids=segments, **kwargs),
              jit_bag(params, jnp.asarray(ids), weights, jnp.asarray(segments), mode,
                      padding_id, num_bags)):
    assert got.dtype == table_dtype and got.shape == (num_bags, FEATURES)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, **tolerance(table_dtype))
  if mode in ("sum", "mean") and table_dtype == np.float32:
    cot = np.random.default_rng(ids.size).standard_normal(want.shape)
    got = jit_bag_grad(params, jnp.asarray(ids), weights, jnp.asarray(segments),
                       jnp.asarray(cot, jnp.float32), mode, padding_id, num_bags)["table"]
    np.testing.assert_allclose(np.asarray(got), np_linear_grad(rows, ids, real, w, segs, scale,
                                                               cot), rtol=1e-5, atol=1e-5)


@FEW
@given(data=st.data(), num_bags=st.sampled_from([0, 2, 3]))
def test_bad_segment_ids_and_num_bags_raise(data, num_bags):
  dtype = data.draw(st.sampled_from(INT_DTYPES))
  info = np.iinfo(dtype)
  choices = [st.integers(num_bags, min(int(info.max), num_bags + 1000))]
  if info.min < 0:
    choices.append(st.integers(max(int(info.min), -1000), -1))
  segments = np.zeros(5, dtype)  # all bad when num_bags is 0: then the first one is reported
  bad = data.draw(st.one_of(*choices))
  position = data.draw(st.integers(0, 4)) if num_bags else 0
  segments[position] = bad
  params = {"table": make_table(7, jnp.float32)}
  ids = np.ones(5, np.int32)
  message = rf"bag: segment id {bad} at position \({position},\) is outside the bags"
  with pytest.raises(ValueError, match=message):
    el.bag(params, ids, segment_ids=segments, num_bags=num_bags)
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(jit_bag(params, jnp.asarray(ids), None, jnp.asarray(segments), "mean",
                                  None, num_bags))
  with pytest.raises(TypeError, match=r"num_bags must be a Python int >= 0"):
    el.bag(params, ids, segment_ids=np.zeros(5, np.int32),
           num_bags=data.draw(st.sampled_from([2.0, -1, True, "2", np.float32(3)])))


# ---------------------------------------------------------------- table variants

M32 = np.uint64(0xFFFFFFFF)


def np_fmix(x):
  x = x.astype(np.uint64)
  x ^= x >> np.uint64(16)
  x = (x * np.uint64(0x85EBCA6B)) & M32
  x ^= x >> np.uint64(13)
  x = (x * np.uint64(0xC2B2AE35)) & M32
  return x ^ (x >> np.uint64(16))


def np_hash(ids, seed):
  mix = np_fmix(np.array([(seed * 0x9E3779B9 + 1) & 0xFFFFFFFF], np.uint64))[0]
  return np_fmix(np_fmix(ids.astype(np.int64).astype(np.uint64) & M32) ^ mix)


def make_variants():
  rng = np.random.default_rng(7)
  f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  vocab, m, exact, buckets, pool_rows = 300, 17, 8, 11, 5
  hashed = {"table": f32(exact + buckets, 4)}
  hash_emb = {"pool": f32(pool_rows, 4), "importance": f32(vocab, 2)}
  qr = {"quotient": f32(18, 4), "remainder": f32(m, 4)}
  factorized = {"table": f32(vocab, 2), "projection": f32(2, 4)}
  quant = {bits: eq.quantize({"table": jnp.asarray(f32(vocab, 4))}, bits) for bits in (8, 4, 2)}

  def np_hashed(ids):
    wide = ids.astype(np.int64)
    row = np.where(wide < exact, wide, exact + np_hash(ids, 3) % buckets)
    return hashed["table"][row.astype(np.int64)]

  def np_hash_emb(ids):
    wide = ids.astype(np.int64)
    rows = [(np_hash(ids, 5 + j) % pool_rows).astype(np.int64) for j in range(2)]
    return sum(hash_emb["importance"][wide, j, None] * hash_emb["pool"][rows[j]]
               for j in range(2))

  def np_qr(ids):
    wide = ids.astype(np.int64)
    return qr["quotient"][wide // m] * qr["remainder"][wide % m]

  return {
      "hashed": (hashed, functools.partial(hs.lookup_hashed, num_buckets=buckets,
                                           exact_size=exact, seed=3), np_hashed, eh.MAX_RAW_ID),
      "hash_embedding": (hash_emb, functools.partial(he.lookup_hash_embedding, seed=5),
                         np_hash_emb, vocab),
      "qr": (qr, functools.partial(eqr.lookup_qr, num_embeddings=vocab), np_qr, vocab),
      "factorized": (factorized, fac.lookup_factorized,
                     lambda i: factorized["table"][i.astype(np.int64)] @ factorized["projection"],
                     vocab),
      **{f"quantized{bits}": (q, eq.lookup_quantized,
                              lambda i, q=q: np.asarray(eq.dequantize(q)["table"])[
                                  i.astype(np.int64)], vocab)
         for bits, q in quant.items()},
  }


VARIANTS = make_variants()


@functools.partial(jax.jit, static_argnames=("name", "padding_id", "mode"))
def jit_variant_bag(params, ids, weights, name, padding_id, mode):
  return contract.bag_lookup(VARIANTS[name][1], params, ids, mode=mode, weights=weights,
                       padding_id=padding_id)


@FEW
@given(data=st.data(), name=st.sampled_from(sorted(VARIANTS)), mode=st.sampled_from(MODES))
def test_every_variant_reads_any_int_dtype_and_pools_every_mode(data, name, mode):
  params, lookup_fn, np_vectors, logical_rows = VARIANTS[name]
  dtype = data.draw(st.sampled_from(INT_DTYPES))
  ids = data.draw(hnp.arrays(dtype, (2, 4), elements=st.integers(
      0, highest_id(dtype, min(logical_rows, 300)))))
  padding_id = data.draw(st.one_of(st.none(), st.sampled_from([0, 4, 260])))
  real = np.ones(ids.shape, bool) if padding_id is None else ids.astype(np.int64) != padding_id
  vectors = np.where(real[..., None], np_vectors(ids), 0).astype(np.float64)
  got = lookup_fn(params, ids, padding_id=padding_id)
  np.testing.assert_allclose(np.asarray(got), vectors, rtol=1e-5, atol=1e-5)
  weights = None
  if mode != "max":
    weights = np.where(real, 1.5, np.nan).astype(np.float32)
  want = np_pool(vectors, real, mode, weights)[0]
  got = jit_variant_bag(params, jnp.asarray(ids), weights, name, padding_id, mode)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(data=st.data(), name=st.sampled_from(sorted(VARIANTS)))
def test_every_variant_rejects_bad_ids_of_any_int_dtype(data, name):
  params, lookup_fn, _, logical_rows = VARIANTS[name]
  ids, bad, position = data.draw(bad_id_arrays(logical_rows))
  where = "lookup" if name == "factorized" else lookup_fn.func.__name__ if isinstance(
      lookup_fn, functools.partial) else lookup_fn.__name__
  message = rf"{where}: id {bad} at position \({', '.join(map(str, position))}\) is outside"
  with pytest.raises(ValueError, match=message):
    lookup_fn(params, ids)
  with pytest.raises(ValueError, match=message):
    contract.bag_lookup(lookup_fn, params, ids)


# ---------------------------------------------------------------- sharded

MESH = meshes.make_mesh(1, 1, devices=jax.devices()[:1])


@functools.partial(jax.jit, static_argnames=("mode", "padding_id"))
def jit_sharded(params, ids, weights, mode, padding_id):
  return (sharding.sharded_lookup(params, ids, MESH, padding_id=padding_id),
          sharding.sharded_bag(params, ids, MESH, mode=mode, weights=weights,
                               padding_id=padding_id))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(bags=padded_bags())
def test_sharded_lookup_and_bag_match_numpy_for_any_int_dtype(bags):
  ids, rows, padding_id, mode, weights, table_dtype = bags
  assume(mode in sharding.SHARDED_BAG_MODES)
  params = meshes.shard_table({"table": make_table(rows, table_dtype)}, MESH)
  table = np.asarray(params["table"], np.float64)
  real = np.ones(ids.shape, bool) if padding_id is None else ids.astype(np.int64) != padding_id
  vecs, pooled = jit_sharded(params, jnp.asarray(ids), weights, mode, padding_id)
  np.testing.assert_array_equal(np.asarray(vecs, np.float64), np_lookup(table, ids, padding_id))
  assert pooled.dtype == table_dtype
  np.testing.assert_allclose(np.asarray(pooled, np.float64),
                             np_pool(table[ids.astype(np.int64)], real, mode, weights)[0],
                             **tolerance(table_dtype))
