"""Pooling strategies (embedlab/core/pooling.py) against a numpy reference, under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import embedlab as el
from embedlab.core import pooling
from embedlab.core.localize import localize

MODES = ("sum", "mean", "sqrtn", "max")


def reference_bag(table, ids, weights, padding_id, mode):
  table = np.asarray(table, np.float64)
  out = np.zeros((ids.shape[0], table.shape[1]))
  for b in range(ids.shape[0]):
    real = [l for l in range(ids.shape[1]) if ids[b, l] != padding_id]
    if not real:
      continue
    vecs = table[ids[b, real]]
    w = np.ones(len(real)) if weights is None else np.asarray(weights[b, real], np.float64)
    if mode == "max":
      out[b] = vecs.max(0)
    elif mode == "sum":
      out[b] = w @ vecs
    elif mode == "mean":
      out[b] = w @ vecs / w.sum() if w.sum() != 0 else 0
    else:
      norm = np.sqrt((w ** 2).sum())
      out[b] = w @ vecs / norm if norm != 0 else 0
  return out


def make_batch(seed=0, batch=6, bag_len=5, rows=11, features=3):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(rows, features)).astype(np.float32)
  ids = rng.integers(0, rows, size=(batch, bag_len)).astype(np.int32)
  ids[0] = 0                  # an empty bag (all padding)
  ids[1, 2:] = 0              # trailing padding
  ids[2, 1] = ids[2, 3]       # a duplicate inside a bag
  weights = rng.uniform(0.5, 2.0, size=ids.shape).astype(np.float32)
  return table, ids, weights


def pool_with(strategy, table, ids, weights, mode):
  mask = ids != 0
  w = mask.astype(jnp.float32) if weights is None else weights * mask
  return pooling.pool_padded(table, ids, w, mask, mode, strategy=strategy)


# max takes no weights and pools with take only, so those combinations are not generated
CASES = [(s, m, w) for s in pooling.STRATEGIES for m in MODES for w in (False, True)
         if not (m == "max" and (w or s != "take"))]


@pytest.mark.parametrize("strategy,mode,weighted", CASES)
def test_every_strategy_matches_numpy(strategy, mode, weighted):
  table, ids, weights = make_batch()
  weights = weights if weighted else None
  got = jax.jit(pool_with, static_argnums=(0, 4))(strategy, jnp.asarray(table), jnp.asarray(ids),
                                                  weights, mode)
  np.testing.assert_allclose(got, reference_bag(table, ids, weights, 0, mode), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("mode", ("sum", "mean", "sqrtn"))
def test_strategies_have_the_same_gradient_and_empty_bags_stay_finite(mode):
  table, ids, weights = make_batch(seed=1)

  def loss(table, strategy):
    pooled = pool_with(strategy, table, jnp.asarray(ids), jnp.asarray(weights), mode)
    return jnp.sum(jnp.sin(pooled))

  grads = {s: jax.jit(jax.grad(loss), static_argnums=1)(jnp.asarray(table), s)
           for s in pooling.STRATEGIES}
  for s in pooling.STRATEGIES:
    assert np.isfinite(np.asarray(grads[s])).all()
    np.testing.assert_allclose(grads[s], grads["take"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(grads["scan"][0], 0)   # padding row: exactly no gradient
  untouched = np.setdiff1d(np.arange(table.shape[0]), ids)
  np.testing.assert_array_equal(np.asarray(grads["scan"])[untouched], 0)


def test_strategies_agree_on_a_localized_table():
  table, ids, weights = make_batch(seed=2)
  local = localize(jnp.asarray(table), jnp.asarray(ids), padding_id=0)
  for strategy in pooling.STRATEGIES:
    got = pool_with(strategy, local.params["table"], local.ids, jnp.asarray(weights), "mean")
    np.testing.assert_allclose(got, reference_bag(table, ids, weights, 0, "mean"), rtol=1e-5,
                               atol=1e-6)


def test_bag_dispatches_to_scan_on_large_cpu_shapes_with_the_same_numbers(monkeypatch):
  table, ids, weights = make_batch(seed=3)
  expected = reference_bag(table, ids, weights, 0, "sqrtn")
  assert pooling.choose_strategy(*ids.shape, 3, 4, "sqrtn", "cpu") == "take"
  monkeypatch.setattr(pooling, "SCAN_MIN_BYTES", 1)
  assert pooling.choose_strategy(*ids.shape, 3, 4, "sqrtn", "cpu") == "scan"
  assert pooling.choose_strategy(*ids.shape, 3, 4, "max", "cpu") == "take"
  assert pooling.choose_strategy(*ids.shape, 3, 4, "sum", "gpu") == "take"
  used = []
  kernel = pooling._pool_padded
  monkeypatch.setattr(pooling, "_pool_padded", lambda *a: used.append(a[-1]) or kernel(*a))
  got = jax.jit(lambda t, i, w: el.bag({"table": t}, i, mode="sqrtn", weights=w, padding_id=0))(
      jnp.asarray(table), jnp.asarray(ids), jnp.asarray(weights))
  assert used == (["scan"] if jax.default_backend() == "cpu" else ["take"])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_bag_keeps_its_oob_policies():
  table = jnp.arange(12.0).reshape(4, 3)
  ids = jnp.array([[1, 9, 0], [-1, 2, 2]])
  zero = el.bag({"table": table}, ids, mode="sum", padding_id=0, oob="zero")
  np.testing.assert_allclose(zero, [[3, 4, 5], [12, 14, 16]])
  clip = el.bag({"table": table}, ids, mode="sum", oob="clip")
  np.testing.assert_allclose(clip, [[12, 15, 18], [12, 15, 18]])  # -1 -> row 0
  with pytest.raises(ValueError, match="id 9 at position"):
    el.bag({"table": table}, ids, mode="sum")


def test_bfloat16_compute_accumulates_in_float32():
  table = jnp.full((3, 2), 1.0 + 2 ** -7, jnp.float32)   # not a bfloat16 number
  ids = jnp.ones((1, 512), jnp.int32)
  w = jnp.ones((1, 512), jnp.bfloat16)
  got = pooling.pool_padded(table, ids, w, ids != 0, "sum", compute_dtype=jnp.bfloat16,
                            strategy="scan")
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), 512.0, rtol=1e-2)


def test_unknown_strategy_says_which_exist():
  with pytest.raises(ValueError, match="take, scan, segment"):
    pool_with("loop", jnp.ones((3, 2)), jnp.ones((1, 2), jnp.int32), None, "sum")


# ---------------------------------------------------------------- regressions: every strategy

@pytest.mark.parametrize("strategy", pooling.STRATEGIES)
def test_every_strategy_accumulates_a_bfloat16_table_in_float32(strategy):
  table = jnp.ones((3, 2), jnp.bfloat16)
  ids = jnp.ones((2, 1000), jnp.int32)
  got = pooling.pool_padded(table, ids, None, None, "sum", strategy=strategy)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), 1000.0)


@pytest.mark.parametrize("strategy", pooling.STRATEGIES)
@pytest.mark.parametrize("mode", ("sum", "mean", "sqrtn"))
def test_every_strategy_ignores_non_finite_weights_at_padding(strategy, mode):
  table, ids, weights = make_batch(seed=4)
  dirty = weights.copy()
  dirty[ids == 0] = np.nan
  dirty[0, 0] = np.inf  # bag 0 is all padding
  fn = jax.jit(lambda t: pooling.pool_padded(t, ids, dirty, None, mode, padding_id=0,
                                             strategy=strategy))
  np.testing.assert_allclose(fn(jnp.asarray(table)), reference_bag(table, ids, weights, 0, mode),
                             rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda t: jnp.sum(fn(t))))(jnp.asarray(table))
  assert np.isfinite(np.asarray(grad)).all()
  np.testing.assert_array_equal(np.asarray(grad)[0], 0)


def test_pool_padded_checks_ids_as_bag_does():
  table = jnp.arange(2000.0).reshape(1000, 2)
  ids = np.array([[255, 3]], np.uint8)  # valid: 255 is row 255 of 1000, never 255 - 256
  for strategy in pooling.STRATEGIES:
    got = pooling.pool_padded(table, ids, None, None, "sum", strategy=strategy)
    np.testing.assert_array_equal(got, [[516.0, 518.0]])
  with pytest.raises(ValueError, match=r"pool_padded: id 1000 at position \(0, 1\) is outside "
                                       r"the table \(1000 rows"):
    pooling.pool_padded(table, np.array([[1, 1000]], np.int32), None, None, "sum")
  with pytest.raises(jax.errors.JaxRuntimeError, match=r"pool_padded: id -3 at position"):
    jax.block_until_ready(jax.jit(lambda i: pooling.pool_padded(table, i, None, None, "mean"))(
        jnp.array([[-3, 1]], jnp.int8)))
  with pytest.raises(TypeError, match="pool_padded: ids must be integers"):
    pooling.pool_padded(table, np.ones((1, 2), np.float32), None, None, "sum")
  np.testing.assert_array_equal(
      pooling.pool_padded(table, np.array([[1, 1000]]), None, None, "sum", oob="zero"), [[2, 3]])


def test_localized_narrow_ids_keep_their_rows_under_clip():
  table = jnp.arange(2000.0).reshape(1000, 2)
  ids = jnp.array([[255, 3, 0]], jnp.uint8)
  for oob in ("error", "clip"):
    local = localize(table, ids, padding_id=0, oob=oob)
    got = pooling.pool_padded(local.params["table"], local.ids, None, None, "sum", padding_id=0)
    np.testing.assert_array_equal(got, [[516.0, 518.0]])
