"""The core table functions against plain numpy references, under jit, grad and vmap."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import embedlab as el
from embedlab.core import tables

RNG = np.random.default_rng(0)


def random_table(rows=None, features=None, seed=None):
  rng = np.random.default_rng(seed) if seed is not None else RNG
  rows = rows or int(rng.integers(5, 40))
  features = features or int(rng.integers(1, 9))
  return rng.standard_normal((rows, features)).astype(np.float32)


# ---------------------------------------------------------------- numpy references

def np_lookup(table, ids, padding_id=None):
  out = table[ids]
  if padding_id is not None:
    out = out * (ids != padding_id)[..., None]
  return out


def np_bag(table, ids, mode, weights=None, padding_id=None):
  out = np.zeros((ids.shape[0], table.shape[1]), np.float64)
  for b in range(ids.shape[0]):
    keep = [i for i in range(ids.shape[1]) if padding_id is None or ids[b, i] != padding_id]
    if not keep:
      continue
    vecs = table[ids[b, keep]].astype(np.float64)
    w = np.ones(len(keep)) if weights is None else weights[b, keep].astype(np.float64)
    if mode == "max":
      out[b] = vecs.max(0)
    elif mode == "sum":
      out[b] = (w[:, None] * vecs).sum(0)
    elif mode == "mean":
      out[b] = (w[:, None] * vecs).sum(0) / w.sum() if w.sum() != 0 else 0
    elif mode == "sqrtn":
      out[b] = (w[:, None] * vecs).sum(0) / np.sqrt((w ** 2).sum())
  return out


def np_bag_grad(table, ids, mode, cot, weights=None, padding_id=None):
  """d <bag(table), cot> / d table."""
  grad = np.zeros_like(table, dtype=np.float64)
  for b in range(ids.shape[0]):
    keep = [i for i in range(ids.shape[1]) if padding_id is None or ids[b, i] != padding_id]
    if not keep:
      continue
    w = np.ones(len(keep)) if weights is None else weights[b, keep].astype(np.float64)
    if mode == "max":
      vecs = table[ids[b, keep]]
      for d in range(table.shape[1]):
        j = int(np.argmax(vecs[:, d]))
        grad[ids[b, keep[j]], d] += cot[b, d]
      continue
    denom = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w ** 2).sum())}[mode]
    for wi, i in zip(w, keep):
      grad[ids[b, i]] += wi / denom * cot[b]
  return grad


# ---------------------------------------------------------------- init_table

@pytest.mark.parametrize("init", el.INIT_NAMES)
def test_init_table_names_shapes_and_padding(init):
  params = el.init_table(jax.random.key(1), 300, 16, init=init, padding_id=3)
  table = np.asarray(params["table"])
  assert table.shape == (300, 16) and table.dtype == np.float32
  assert np.all(table[3] == 0)
  if init != "zeros":
    assert np.count_nonzero(table) >= 299 * 16 - 5


def test_init_table_statistics():
  normal = np.asarray(el.init_table(jax.random.key(0), 4000, 50)["table"])
  assert abs(normal.std() - 1.0) < 0.02 and abs(normal.mean()) < 0.02
  scaled = np.asarray(el.init_table(jax.random.key(0), 4000, 50, scale=0.1)["table"])
  assert abs(scaled.std() - 0.1) < 0.002
  uniform = np.asarray(el.init_table(jax.random.key(0), 4000, 50, init="uniform")["table"])
  assert uniform.min() >= -0.05 and uniform.max() <= 0.05 and uniform.min() < -0.049
  xavier = np.asarray(el.init_table(jax.random.key(0), 4000, 50, init="xavier_uniform")["table"])
  limit = np.sqrt(6 / (4000 + 50))
  assert np.abs(xavier).max() <= limit and np.abs(xavier).max() > 0.95 * limit


def test_init_table_pretrained_array_callable_and_dtype():
  vectors = random_table(7, 3)
  params = el.init_table(jax.random.key(0), 7, 3, init=vectors, padding_id=0)
  np.testing.assert_array_equal(params["table"][1:], vectors[1:])
  np.testing.assert_array_equal(params["table"][0], 0)
  called = el.init_table(jax.random.key(0), 4, 2, init=lambda k, s, d: jnp.full(s, 2.0, d))
  np.testing.assert_array_equal(called["table"], 2.0)
  half = el.init_table(jax.random.key(0), 4, 2, dtype=jnp.bfloat16)
  assert half["table"].dtype == jnp.bfloat16


def test_init_table_errors():
  with pytest.raises(ValueError, match=r"shape \(7, 3\), expected \(8, 3\)"):
    el.init_table(jax.random.key(0), 8, 3, init=random_table(7, 3))
  with pytest.raises(ValueError, match="unknown init 'gaussian'"):
    el.init_table(jax.random.key(0), 8, 3, init="gaussian")
  with pytest.raises(ValueError, match="padding_id 8 is outside the table"):
    el.init_table(jax.random.key(0), 8, 3, padding_id=8)
  with pytest.raises(ValueError, match="num_embeddings must be a positive integer"):
    el.init_table(jax.random.key(0), 0, 3)


# ---------------------------------------------------------------- lookup

@pytest.mark.parametrize("trial", range(6))
def test_lookup_matches_numpy_any_rank_under_jit(trial):
  rng = np.random.default_rng(trial)
  table = random_table(seed=trial)
  shape = tuple(rng.integers(1, 5, size=trial % 4))  # rank 0..3
  ids = rng.integers(0, table.shape[0], size=shape).astype(np.int32)
  padding_id = int(ids.flat[0]) if ids.size and trial % 2 else None
  expected = np_lookup(table, ids, padding_id)
  for fn in (el.lookup, jax.jit(el.lookup, static_argnames="padding_id")):
    got = fn({"table": jnp.asarray(table)}, jnp.asarray(ids), padding_id=padding_id)
    assert got.shape == ids.shape + (table.shape[1],)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=0)


@pytest.mark.parametrize("trial", range(4))
def test_lookup_gradient_is_scatter_add_and_padding_row_gets_zero(trial):
  rng = np.random.default_rng(10 + trial)
  table = random_table(seed=10 + trial)
  ids = rng.integers(0, table.shape[0], size=(3, 6)).astype(np.int32)
  ids[0, :3] = 0  # padding, and duplicates elsewhere are likely
  cot = rng.standard_normal(ids.shape + (table.shape[1],)).astype(np.float32)
  loss = lambda p: jnp.sum(el.lookup(p, ids, padding_id=0) * cot)
  grad = jax.jit(jax.grad(loss))({"table": jnp.asarray(table)})["table"]
  expected = np.zeros_like(table)
  np.add.at(expected, ids[ids != 0], cot[ids != 0])
  np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(grad)[0] == 0.0)


def test_lookup_padding_row_zero_even_if_table_row_is_not():
  table = jnp.ones((4, 2))
  out = el.lookup({"table": table}, jnp.array([0, 1]), padding_id=0)
  np.testing.assert_array_equal(out, [[0, 0], [1, 1]])


def test_lookup_under_vmap_matches_numpy():
  table = random_table(20, 4, seed=3)
  ids = np.random.default_rng(3).integers(0, 20, size=(5, 7)).astype(np.int32)
  got = jax.vmap(lambda i: el.lookup({"table": jnp.asarray(table)}, i, padding_id=2))(ids)
  np.testing.assert_array_equal(np.asarray(got), np_lookup(table, ids, 2))
  # vmap over tables too (e.g. an ensemble of tables)
  tables = np.stack([table, 2 * table])
  got = jax.vmap(lambda t: el.lookup({"table": t}, ids))(tables)
  np.testing.assert_array_equal(np.asarray(got[1]), 2 * table[ids])


def test_lookup_max_norm_matches_pytorch_semantics():
  rng = np.random.default_rng(5)
  table = (3 * rng.standard_normal((10, 4))).astype(np.float32)
  ids = np.array([[1, 2, 2], [9, 0, 4]], np.int32)
  out = el.lookup({"table": jnp.asarray(table)}, ids, max_norm=1.5)
  rows = table[ids]
  norms = np.linalg.norm(rows, axis=-1, keepdims=True)
  expected = np.where(norms > 1.5, rows * 1.5 / (norms + 1e-7), rows)
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
  # PyTorch renormalises the weight in place and differentiates the renormed lookup: the
  # gradient reaching the row is the output gradient itself.
  cot = rng.standard_normal(out.shape).astype(np.float32)
  grad = jax.grad(lambda p: jnp.sum(el.lookup(p, ids, max_norm=1.5) * cot))(
      {"table": jnp.asarray(table)})["table"]
  expected_grad = np.zeros_like(table)
  np.add.at(expected_grad, ids, cot)
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-6)
  renormed = el.renorm_rows({"table": jnp.asarray(table)}, ids, 1.5)["table"]
  new_norms = np.linalg.norm(np.asarray(renormed), axis=1)
  touched = np.unique(ids)
  assert np.all(new_norms[touched] <= 1.5 + 1e-5)
  untouched = np.setdiff1d(np.arange(10), touched)
  np.testing.assert_array_equal(np.asarray(renormed)[untouched], table[untouched])


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan"), -np.inf, np.float32(0), True,
                                      "1.0", [1.0], jnp.array(-2.0)])
def test_a_max_norm_that_is_not_a_number_above_zero_is_an_error(max_norm):
  # 0 would zero every row, a negative norm flip it, NaN leave it: each in silence
  import flax.nnx as nnx  # noqa: PLC0415

  params = el.init_table(jax.random.key(0), 10, 4)
  ids = jnp.array([1, 2])
  for call in (lambda: el.lookup(params, ids, max_norm=max_norm),
               lambda: el.renorm_rows(params, ids, max_norm),
               lambda: el.Embed(10, 4, max_norm=max_norm, rngs=nnx.Rngs(0)),
               lambda: el.LinenEmbed(10, 4, max_norm=max_norm).init(jax.random.key(0), ids)):
    with pytest.raises((ValueError, TypeError), match=r"max_norm must be a number > 0"):
      call()


def test_an_infinite_max_norm_rescales_nothing():
  params = el.init_table(jax.random.key(0), 10, 4)
  ids = jnp.array([1, 2])
  np.testing.assert_array_equal(el.lookup(params, ids, max_norm=np.inf), el.lookup(params, ids))
  np.testing.assert_array_equal(el.renorm_rows(params, ids, np.inf)["table"], params["table"])
  traced = jax.jit(lambda m: el.lookup(params, ids, max_norm=m))(jnp.float32(0.5))
  assert np.allclose(np.linalg.norm(np.asarray(traced), axis=1), 0.5, atol=1e-5)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"dtype": jnp.int32}, TypeError, "dtype must be a floating dtype .* got int32"),
    ({"dtype": "uint8"}, TypeError, "dtype must be a floating dtype .* got uint8"),
    ({"dtype": bool}, TypeError, "dtype must be a floating dtype .* got bool"),
    ({"scale": -0.1}, ValueError, r"scale must be a finite number >= 0, got -0\.1"),
    ({"scale": float("nan")}, ValueError, "scale must be a finite number >= 0, got nan"),
    ({"scale": float("inf")}, ValueError, "scale must be a finite number >= 0, got inf"),
    ({"scale": "0.1"}, ValueError, "scale must be a finite number >= 0, got '0.1'"),
])
def test_init_table_names_a_dtype_or_scale_it_cannot_use(kwargs, error, match):
  with pytest.raises(error, match=f"init_table: {match}"):
    el.init_table(jax.random.key(0), 6, 3, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_given_array_with_values_that_are_not_finite_is_named(bad):
  vectors = np.ones((6, 3), np.float32)
  vectors[4, 1] = bad
  vectors[5] = bad
  for given in (vectors, jnp.asarray(vectors)):
    with pytest.raises(ValueError, match=r"init_table: the given array has 4 values that are "
                                         r"NaN or infinite, in 2 rows \(first: row 4\)"):
      el.init_table(jax.random.key(0), 6, 3, init=given)
  np.testing.assert_array_equal(  # a zero scale and finite vectors are fine
      el.init_table(jax.random.key(0), 6, 3, scale=0.0)["table"], np.zeros((6, 3)))


@pytest.mark.parametrize("fn", ["lookup", "bag"])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, bool, "not a dtype"])
def test_a_compute_dtype_that_is_not_floating_is_an_error(fn, dtype):
  params = el.init_table(jax.random.key(0), 10, 4)
  ids = jnp.array([[1, 2]])
  with pytest.raises(TypeError, match=f"{fn}: compute_dtype must be a floating dtype"):
    getattr(el, fn)(params, ids, compute_dtype=dtype)


@pytest.mark.parametrize("rows", [0, -3, 2.5, True, "10"])
def test_check_ids_names_itself_and_a_table_size_that_is_not_one(rows):
  with pytest.raises(ValueError, match=r"check_ids: num_embeddings must be a positive integer"):
    el.check_ids([1, 2], rows)
  with pytest.raises(ValueError, match=r"^check_ids: id 12 at position \(1,\)"):
    el.check_ids([1, 12], 10)


def test_lookup_compute_dtype_casts_only_the_rows():
  params = el.init_table(jax.random.key(0), 50, 8)
  out = el.lookup(params, jnp.array([1, 2]), compute_dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16 and params["table"].dtype == jnp.float32
  grad = jax.grad(lambda p: el.lookup(p, jnp.array([1]), compute_dtype=jnp.bfloat16)
                  .astype(jnp.float32).sum())(params)["table"]
  assert grad.dtype == jnp.float32 and float(grad[1].sum()) == 8.0


# ---------------------------------------------------------------- bad ids

TABLE = {"table": jnp.zeros((10, 3))}


@pytest.mark.parametrize("fn", ["lookup", "bag"])
@pytest.mark.parametrize("bad,pos,value", [((1, 2), "(1, 2)", 10), ((0, 0), "(0, 0)", -1),
                                            ((1, 0), "(1, 0)", 12345)])
def test_out_of_range_ids_raise_eagerly_with_id_position_and_range(fn, bad, pos, value):
  ids = np.ones((2, 4), np.int32)
  ids[bad] = value
  message = (rf"{fn}: id {value} at position {re.escape(pos)} is outside the table "
             r"\(10 rows: valid ids are 0\.\.9\)")
  with pytest.raises(ValueError, match=message):
    getattr(el, fn)(TABLE, ids)
  with pytest.raises(ValueError, match=message):
    getattr(el, fn)(TABLE, jnp.asarray(ids))


@pytest.mark.parametrize("fn", ["lookup", "bag", "renorm_rows", "check_ids"])
def test_ragged_nested_ids_are_named_not_numpys_error(fn):
  ids = [[1, 2, 3], [4]]
  calls = {"lookup": lambda: el.lookup(TABLE, ids), "bag": lambda: el.bag(TABLE, ids),
           "renorm_rows": lambda: el.renorm_rows(TABLE, ids, 1.0),
           "check_ids": lambda: el.check_ids(ids, 10)}
  with pytest.raises(ValueError, match=r"ids must be a rectangular array of integers; got "
                                       r"nested lists whose rows differ in length\. Pad"):
    calls[fn]()


@pytest.mark.parametrize("fn", ["lookup", "bag"])
def test_out_of_range_ids_fail_loudly_under_jit_and_grad(fn):
  ids = np.ones((2, 4), np.int32)
  ids[1, 3] = 10
  jitted = jax.jit(lambda p, i: getattr(el, fn)(p, i))
  assert np.all(np.isfinite(jitted(TABLE, np.ones((2, 4), np.int32))))
  message = rf"{fn}: id 10 at position \(1, 3\) is outside the table \(10 rows"
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(jitted(TABLE, ids))
  grad = jax.jit(jax.grad(lambda p, i: getattr(el, fn)(p, i).sum()))
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(grad(TABLE, ids))
  ids[1, 3] = -2
  with pytest.raises(jax.errors.JaxRuntimeError, match=r"id -2 at position \(1, 3\)"):
    jax.block_until_ready(jitted(TABLE, ids))


def test_out_of_range_ids_fail_under_vmap():
  ids = np.ones((3, 4), np.int32)
  ids[2, 1] = 99
  with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="id 99"):
    jax.block_until_ready(jax.vmap(lambda i: el.lookup(TABLE, i))(ids))


@pytest.mark.parametrize("fn", ["lookup", "bag", "check_ids"])
@pytest.mark.parametrize("ids", [np.ones((2, 3), np.float32), jnp.ones((2, 3)),
                                 np.ones((2, 3), bool), [[1.5, 2.0]]])
def test_non_integer_ids_raise_type_error(fn, ids):
  call = (lambda i: el.check_ids(i, 10)) if fn == "check_ids" else (
      lambda i: getattr(el, fn)(TABLE, i))
  with pytest.raises(TypeError, match="ids must be integers, got dtype"):
    call(ids)
  with pytest.raises(TypeError, match="ids must be integers"):
    jax.jit(call)(jnp.asarray(np.asarray(ids)))


def test_oob_clip_and_zero_policies():
  table = jnp.arange(10.0).reshape(5, 2)
  ids = jnp.array([-3, 0, 4, 7])
  clipped = el.lookup({"table": table}, ids, oob="clip")
  np.testing.assert_array_equal(clipped, np.asarray(table)[[0, 0, 4, 4]])
  zeroed = el.lookup({"table": table}, ids, oob="zero")
  np.testing.assert_array_equal(zeroed, [[0, 0], [0, 1], [8, 9], [0, 0]])
  grad = jax.grad(lambda p: el.lookup(p, ids, oob="zero").sum())({"table": table})["table"]
  np.testing.assert_array_equal(grad, [[1, 1], [0, 0], [0, 0], [0, 0], [1, 1]])
  bagged = el.bag({"table": table}, ids[None], oob="zero", mode="mean")
  np.testing.assert_allclose(bagged, [[4, 5]])  # the mean of the two in-range rows
  bag_grad = jax.grad(lambda p: el.bag(p, ids[None], oob="zero", mode="sum").sum())(
      {"table": table})["table"]
  np.testing.assert_array_equal(bag_grad, [[1, 1], [0, 0], [0, 0], [0, 0], [1, 1]])
  with pytest.raises(ValueError, match="oob='nan' is not one of"):
    el.lookup({"table": table}, ids, oob="nan")


def test_padding_id_outside_table_and_bad_params():
  with pytest.raises(ValueError, match="padding_id 10 is outside the table"):
    el.lookup(TABLE, np.array([1]), padding_id=10)
  with pytest.raises(TypeError, match="params must be a dict with a 'table' entry"):
    el.lookup(jnp.zeros((3, 3)), np.array([1]))


def test_empty_batch_gives_empty_output():
  assert el.lookup(TABLE, np.zeros((0, 5), np.int32)).shape == (0, 5, 3)
  assert el.bag(TABLE, np.zeros((0, 5), np.int32)).shape == (0, 3)


# ---------------------------------------------------------------- bag

@pytest.mark.parametrize("mode", tables.BAG_MODES)
@pytest.mark.parametrize("trial", range(4))
def test_bag_padded_values_and_gradients_match_numpy(mode, trial):
  rng = np.random.default_rng(100 + trial)
  table = random_table(seed=100 + trial)
  batch, length = int(rng.integers(1, 6)), int(rng.integers(1, 8))
  ids = rng.integers(0, table.shape[0], size=(batch, length)).astype(np.int32)
  padding_id = 0 if trial % 2 else None
  if padding_id is not None:
    ids[rng.random(ids.shape) < 0.3] = 0
    ids[0] = 0  # an all-padding bag
  weights = None
  if mode != "max" and trial >= 2:
    weights = rng.uniform(0.5, 2.0, size=ids.shape).astype(np.float32)
  expected = np_bag(table, ids, mode, weights, padding_id)
  fn = jax.jit(lambda p, i, w: el.bag(p, i, mode=mode, weights=w, padding_id=padding_id))
  got = fn({"table": jnp.asarray(table)}, ids, weights)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  cot = rng.standard_normal(expected.shape).astype(np.float32)
  grad = jax.jit(jax.grad(lambda p: jnp.sum(
      el.bag(p, ids, mode=mode, weights=weights, padding_id=padding_id) * cot)))(
          {"table": jnp.asarray(table)})["table"]
  assert np.all(np.isfinite(np.asarray(grad)))
  np.testing.assert_allclose(np.asarray(grad), np_bag_grad(table, ids, mode, cot, weights,
                                                           padding_id), rtol=1e-5, atol=1e-5)
  if padding_id is not None:
    assert np.all(np.asarray(grad)[0] == 0.0)


@pytest.mark.parametrize("mode", tables.BAG_MODES)
def test_all_padding_bag_is_zero_with_finite_gradient(mode):
  params = {"table": jnp.asarray(random_table(6, 3, seed=1))}
  ids = jnp.zeros((2, 4), jnp.int32)
  out, grad = jax.value_and_grad(lambda p: el.bag(p, ids, mode=mode, padding_id=0).sum())(params)
  assert float(out) == 0.0
  assert np.all(np.asarray(grad["table"]) == 0.0)


@pytest.mark.parametrize("mode", tables.BAG_MODES)
def test_bag_ragged_matches_padded(mode):
  rng = np.random.default_rng(7)
  table = random_table(30, 5, seed=7)
  lengths = [3, 0, 5, 1]
  flat = rng.integers(1, 30, size=sum(lengths)).astype(np.int32)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  segments = el.offsets_to_segment_ids(offsets, len(flat))
  padded = np.zeros((4, 5), np.int32)
  for b, (o, n) in enumerate(zip(offsets, lengths)):
    padded[b, :n] = flat[o:o + n]
  weights = None if mode == "max" else rng.uniform(0.5, 2, size=flat.shape).astype(np.float32)
  padded_w = None
  if weights is not None:
    padded_w = np.zeros(padded.shape, np.float32)
    for b, (o, n) in enumerate(zip(offsets, lengths)):
      padded_w[b, :n] = weights[o:o + n]
  params = {"table": jnp.asarray(table)}
  expected = np_bag(table, padded, mode, padded_w, padding_id=0)
  ragged = jax.jit(lambda p, i, s, w: el.bag(p, i, mode=mode, segment_ids=s, num_bags=4,
                                             weights=w))
  np.testing.assert_allclose(np.asarray(ragged(params, flat, segments, weights)), expected,
                             rtol=1e-5, atol=1e-6)
  eager = el.bag(params, flat, mode=mode, segment_ids=segments, weights=weights, num_bags=4)
  np.testing.assert_allclose(np.asarray(eager), expected, rtol=1e-5, atol=1e-6)
  cot = rng.standard_normal(expected.shape).astype(np.float32)
  grad = jax.grad(lambda p: jnp.sum(ragged(p, flat, segments, weights) * cot))(params)["table"]
  np.testing.assert_allclose(np.asarray(grad), np_bag_grad(table, padded, mode, cot, padded_w, 0),
                             rtol=1e-5, atol=1e-5)


def test_bag_under_vmap_over_a_batch_of_batches():
  table = random_table(12, 3, seed=2)
  ids = np.random.default_rng(2).integers(0, 12, size=(4, 5, 6)).astype(np.int32)
  got = jax.vmap(lambda i: el.bag({"table": jnp.asarray(table)}, i, mode="mean", padding_id=0))(ids)
  for k in range(4):
    np.testing.assert_allclose(np.asarray(got[k]), np_bag(table, ids[k], "mean", None, 0),
                               rtol=1e-5, atol=1e-6)


def test_bag_argument_errors():
  with pytest.raises(ValueError, match="mode='median' is not one of"):
    el.bag(TABLE, np.ones((2, 2), np.int32), mode="median")
  with pytest.raises(ValueError, match="mode='max' takes no weights"):
    el.bag(TABLE, np.ones((2, 2), np.int32), mode="max", weights=np.ones((2, 2)))
  with pytest.raises(ValueError, match=r"ids must be 2-D \[batch, bag_len\]"):
    el.bag(TABLE, np.ones((2, 2, 2), np.int32))
  with pytest.raises(ValueError, match="weights must have the shape of ids"):
    el.bag(TABLE, np.ones((2, 2), np.int32), weights=np.ones((2, 3)))
  with pytest.raises(ValueError, match="ragged input needs 1-D ids and segment_ids"):
    el.bag(TABLE, np.ones((4,), np.int32), segment_ids=np.zeros((3,), np.int32))


# ---------------------------------------------------------------- attend, counts

def test_attend_matches_numpy_and_ties_gradients():
  rng = np.random.default_rng(9)
  table = random_table(25, 6, seed=9)
  x = rng.standard_normal((2, 3, 6)).astype(np.float32)
  params = {"table": jnp.asarray(table)}
  np.testing.assert_allclose(np.asarray(jax.jit(el.attend)(params, x)), x @ table.T, rtol=1e-5,
                             atol=1e-5)
  cot = rng.standard_normal((2, 3, 25)).astype(np.float32)
  grad = jax.grad(lambda p: jnp.sum(el.attend(p, x) * cot))(params)["table"]
  np.testing.assert_allclose(np.asarray(grad), np.einsum("bsv,bsd->vd", cot, x), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match="x has 5 features, the table has 6"):
    el.attend(params, np.ones((2, 5), np.float32))


def test_num_params_and_describe_answer_the_seed_question():
  params = el.init_table(jax.random.key(0), 10_000, 64)
  assert el.num_params(params) == 640_000
  assert el.num_params({"a": params, "b": {"w": jnp.zeros((3, 4))}}) == 640_012
  summary = el.describe(params, (32, 20))
  assert (summary.rows, summary.features, summary.weights, summary.bytes) == (
      10_000, 64, 640_000, 2_560_000)
  assert summary.output_shape == (32, 20, 64)
  assert "10,000 rows x 64 features = 640,000 weights" in str(summary)
  assert "ids (32, 20) -> embeddings (32, 20, 64)" in str(summary)
  assert el.describe(el.init_table(jax.random.key(0), 4, 2, dtype=jnp.bfloat16)).bytes == 16


# ---------------------------------------------------------------- regressions: narrow ids, ragged
# bags, bfloat16 accumulation, NaN weights at padding

BIG = {"table": jnp.arange(1000.0)[:, None] * jnp.ones((1, 2))}  # row r is [r, r]


@pytest.mark.parametrize("oob", ["error", "clip", "zero"])
def test_uint8_id_255_reads_row_255_of_a_1000_row_table(oob):
  ids = np.array([1, 255], np.uint8)
  for got in (el.lookup(BIG, ids, oob=oob), el.lookup(BIG, jnp.asarray(ids), oob=oob),
              jax.jit(lambda i: el.lookup(BIG, i, oob=oob))(jnp.asarray(ids))):
    np.testing.assert_array_equal(np.asarray(got)[:, 0], [1, 255])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16"])
def test_valid_narrow_ids_on_a_large_table_pass_the_jit_check(dtype):
  ids = np.array([[0, 1], [100, min(int(np.iinfo(dtype).max), 999)]], dtype)
  got = jax.jit(lambda i: el.lookup(BIG, i))(jnp.asarray(ids))
  np.testing.assert_array_equal(np.asarray(jax.block_until_ready(got))[..., 0],
                                ids.astype(np.int64))
  pooled = jax.jit(lambda i: el.bag(BIG, i, mode="sum"))(jnp.asarray(ids))
  np.testing.assert_array_equal(np.asarray(pooled)[:, 0], ids.astype(np.int64).sum(1))


def test_padding_id_beyond_the_id_dtype_matches_no_position():
  ids = np.array([4, 5, 100], np.int8)  # 260 wraps to 4 in int8
  for got in (el.lookup(BIG, ids, padding_id=260),
              jax.jit(lambda i: el.lookup(BIG, i, padding_id=260))(jnp.asarray(ids))):
    np.testing.assert_array_equal(np.asarray(got)[:, 0], [4, 5, 100])
  np.testing.assert_array_equal(el.bag(BIG, ids[None], mode="sum", padding_id=260)[0, 0], 109)
  np.testing.assert_array_equal(
      el.bag(BIG, ids, segment_ids=np.zeros(3, np.int32), mode="sum", padding_id=260)[0, 0], 109)


def test_uint32_ids_beyond_int32_are_named_exactly():
  ids = np.array([[3, 2**32 - 1]], np.uint32)
  message = r"id 4294967295 at position \(0, 1\) is outside the table \(1000 rows"
  with pytest.raises(ValueError, match=message):
    el.lookup(BIG, ids)
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(jax.jit(lambda i: el.lookup(BIG, i))(jnp.asarray(ids)))
  np.testing.assert_array_equal(el.lookup(BIG, ids, oob="clip")[0, :, 0], [3, 999])
  np.testing.assert_array_equal(el.lookup(BIG, ids, oob="zero")[0, :, 0], [3, 0])


@pytest.mark.parametrize("segments,bad,position", [([0, -1, 1], -1, 1), ([0, 1, 2], 2, 2),
                                                   ([5, 0, 0], 5, 0)])
def test_ragged_segment_ids_outside_the_bags_raise(segments, bad, position):
  ids, segments = np.array([1, 2, 3], np.int32), np.array(segments, np.int32)
  message = (rf"bag: segment id {bad} at position \({position},\) is outside the bags "
             r"\(num_bags=2: valid segment ids are 0\.\.1\)")
  with pytest.raises(ValueError, match=message):
    el.bag(BIG, ids, segment_ids=segments, num_bags=2, mode="sum")
  jitted = jax.jit(lambda i, s: el.bag(BIG, i, segment_ids=s, num_bags=2, mode="sum"))
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(jitted(ids, segments))
  np.testing.assert_array_equal(jitted(ids, np.array([0, 1, 1], np.int32))[:, 0], [1, 5])


@pytest.mark.parametrize("num_bags", [2.0, -1, True, np.float32(2), jnp.array(2)])
def test_ragged_num_bags_must_be_a_python_int(num_bags):
  with pytest.raises(TypeError, match=r"bag: num_bags must be a Python int >= 0"):
    el.bag(BIG, np.array([1, 2]), segment_ids=np.array([0, 1]), num_bags=num_bags)
  with pytest.raises(TypeError, match=r"segment_ids must be integers"):
    el.bag(BIG, np.array([1, 2]), segment_ids=np.array([0.0, 1.0]), num_bags=2)


def test_bfloat16_ragged_bags_accumulate_in_float32():
  ones = {"table": jnp.ones((10, 2), jnp.bfloat16)}
  got = el.bag(ones, np.ones(1000, np.int32), segment_ids=np.zeros(1000, np.int32), num_bags=1,
               mode="sum")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), 1000.0)
  # ragged and padded means agree (both float32 sums rounded once), and match numpy
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.uniform(0.5, 1.5, (50, 4)), jnp.bfloat16)
  ids = rng.integers(0, 50, (3, 400)).astype(np.int32)
  want = np.asarray(table, np.float64)[ids].mean(1)
  padded = el.bag({"table": table}, ids, mode="mean")
  ragged = el.bag({"table": table}, ids.reshape(-1), mode="mean", num_bags=3,
                  segment_ids=np.repeat(np.arange(3), 400))
  for got in (padded, ragged):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2 ** -8)
  np.testing.assert_allclose(np.asarray(ragged, np.float64), np.asarray(padded, np.float64),
                             rtol=2 ** -7)


@pytest.mark.parametrize("bad_weight", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("mode", ["sum", "mean", "sqrtn"])
def test_non_finite_weights_at_padding_are_ignored(bad_weight, mode):
  table = random_table(6, 3, seed=4)
  ids = np.array([[1, 0, 2], [0, 0, 0]], np.int32)
  weights = np.array([[2.0, bad_weight, 0.5], [bad_weight] * 3], np.float32)
  clean = np.where(ids != 0, weights, 1.0)
  want = np_bag(table, ids, mode, clean, padding_id=0)
  cot = np.ones(want.shape, np.float32)
  want_grad = np_bag_grad(table, ids, mode, cot, clean, padding_id=0)
  params = {"table": jnp.asarray(table)}
  padded = lambda p: el.bag(p, ids, mode=mode, weights=weights, padding_id=0)
  ragged = lambda p: el.bag(p, ids.reshape(-1), mode=mode, weights=weights.reshape(-1),
                            padding_id=0, segment_ids=np.repeat([0, 1], 3), num_bags=2)
  for fn in (padded, ragged):
    np.testing.assert_allclose(np.asarray(fn(params)), want, rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(fn(p) * cot)))(params)["table"]
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-6)


def test_padded_num_bags_and_offsets_are_checked():
  with pytest.raises(ValueError, match=r"bag: padded bags are the 2 rows of ids, but num_bags=3"):
    el.bag(BIG, np.ones((2, 3), np.int32), num_bags=3)
  assert el.bag(BIG, np.ones((2, 3), np.int32), num_bags=2).shape == (2, 2)
  with pytest.raises(TypeError, match=r"offsets_to_segment_ids: offsets must be integers"):
    el.offsets_to_segment_ids([0, 1.5], 3)
  with pytest.raises(TypeError, match=r"num_ids must be a Python int >= 0"):
    el.offsets_to_segment_ids([0, 1], 3.0)
  np.testing.assert_array_equal(el.offsets_to_segment_ids(np.array([0, 200], np.uint8), 202),
                                [0] * 200 + [1, 1])
