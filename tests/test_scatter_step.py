"""The row-sparse step's scatter-add path (bag model + sparse_sgd): per-occurrence gradients added
straight into the table, against numpy references and against the dedup path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedlab as el
from embedlab.data import batches as batch_lib
from embedlab.run import model_args
from embedlab.core import sparse
from embedlab.core import tables
from embedlab.run import steps as steps_lib
from embedlab.config import ModelConfig

V, D, C = 23, 5, 3


def random_bags(rng, batch=6, length=7):
  """Padded bags with repeated ids, padding in the middle and at the end, and an empty bag."""
  ids = rng.integers(1, V, size=(batch, length)).astype(np.int32)
  ids[0, 2] = ids[0, 0]  # a duplicate within a bag
  ids[1, 3:] = 0
  ids[2, 1] = 0  # padding between real ids
  ids[3] = 0  # an empty bag
  ids[4, :] = ids[4, 0]  # one id, seven times
  return ids


@pytest.mark.parametrize("seed", [0, 1])
def test_add_equals_update_and_a_numpy_scatter_add(seed):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(V, D)).astype(np.float32)
  ids = rng.integers(-2, V + 3, size=40).astype(np.int32)  # duplicates and out-of-range ids
  grads = rng.normal(size=(40, D)).astype(np.float32)
  mask = rng.random(V) < 0.8
  opt = sparse.sparse_sgd(0.3)
  state = opt.init(jnp.asarray(table))
  added, s1 = jax.jit(lambda t, s, i, g: opt.add(t, s, i, g, row_mask=mask, skip_ids=(0, 5)))(
      jnp.asarray(table), state, ids, grads)
  updated, s2 = opt.update(jnp.asarray(table), state, ids, grads, row_mask=mask, skip_ids=(0, 5))
  want = table.copy()
  for i, g in zip(ids, grads):
    if 0 <= i < V and i not in (0, 5) and mask[i]:
      want[i] -= np.float32(0.3) * g
  np.testing.assert_allclose(added, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(added, updated, rtol=1e-6, atol=1e-6)
  untouched = ~np.isin(np.arange(V), ids) | ~mask
  untouched[[0, 5]] = True
  np.testing.assert_array_equal(np.asarray(added)[untouched], table[untouched])
  assert int(s1.count) == int(s2.count) == 1


def test_add_follows_the_schedule_and_exists_only_for_plain_sgd():
  opt = sparse.sparse_sgd(optax.linear_schedule(1.0, 0.0, 4))
  table, state = jnp.zeros((3, 2)), opt.init(jnp.zeros((3, 2)))
  for _ in range(2):  # lr 1.0, then 0.75
    table, state = opt.add(table, state, jnp.array([1]), jnp.ones((1, 2)))
  np.testing.assert_allclose(table[1], [-1.75, -1.75])
  assert sparse.sparse_sgd(0.1, weight_decay=0.01).add is None
  for name in ("sparse_adagrad", "sparse_rowwise_adagrad", "sparse_lazy_adam"):
    assert sparse.get_sparse_optimizer(name, 0.1).add is None
  with pytest.raises(ValueError, match=r"sparse_sgd.add: ids must be 1-D"):
    opt.add(table, state, jnp.array([[1]]), jnp.ones((1, 2)))


@pytest.mark.parametrize("mode", ["mean", "sum", "sqrtn", "max"])
def test_pool_vectors_equals_bag_padded_and_ragged(mode):
  rng = np.random.default_rng(3)
  params = {"table": jnp.asarray(rng.normal(size=(V, D)).astype(np.float32)).at[0].set(0)}
  ids = random_bags(rng)
  want = el.bag(params, ids, mode=mode, padding_id=0)
  got = tables.pool_vectors(params["table"][ids], jnp.asarray(ids != 0), mode)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  ragged = batch_lib.ragged_batches(ids[None], 48)
  got = tables.pool_vectors(params["table"][ragged.ids[0]], jnp.asarray(ragged.ids[0] != 0), mode,
                            segment_ids=ragged.segment_ids[0], num_bags=ids.shape[0])
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="ragged vectors .* need num_bags"):
    tables.pool_vectors(params["table"][ragged.ids[0]], jnp.asarray(ragged.ids[0] != 0), mode,
                        segment_ids=ragged.segment_ids[0])
  with pytest.raises(ValueError, match="pool_vectors: mode='min'"):
    tables.pool_vectors(params["table"][ids], jnp.asarray(ids != 0), "min")


@pytest.mark.parametrize("table,extra", [("plain", {}), ("hashed", {"table_buckets": 11,
                                                                     "table_exact": 6}),
                                         ("factorized", {"table_rank": 3}),
                                         ("plain", {"hidden": 4})])
def test_apply_gathered_equals_apply(table, extra):
  cfg = ModelConfig(name="bag", features=D, table=table, **extra)
  model = model_args.make_model(cfg, V, C)
  params = model.init(jax.random.key(0))
  ids = random_bags(np.random.default_rng(4))
  vectors = params["embed"]["table"][model.embedder.rows(ids)]
  np.testing.assert_allclose(model.apply_gathered(params, vectors, ids),
                             model.apply(params, ids), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [ModelConfig(name="bag", max_norm=1.0),
                                 ModelConfig(name="bag", table="factorized", pooling="max"),
                                 ModelConfig(name="bag", table="qr"),
                                 ModelConfig(name="cnn", filter_widths=(2,), num_filters=2)])
def test_models_that_read_the_table_themselves_have_no_apply_gathered(cfg):
  assert model_args.make_model(cfg, V, C).apply_gathered is None


def numpy_sgd_step(table, w, b, ids, labels, lr):
  """One SGD step of a mean bag + linear softmax classifier, by hand (fastText's update)."""
  mask = ids != 0
  count = np.maximum(mask.sum(1, keepdims=True), 1)
  pooled = (table[ids] * mask[..., None]).sum(1) / count
  logits = pooled @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  g_logits = (p - np.eye(C)[labels]) / len(labels)  # the batch-mean cross-entropy
  g_pooled = g_logits @ w.T
  new_table = table.copy()
  for bag, row in zip(*np.nonzero(mask)):
    new_table[ids[bag, row]] -= lr * g_pooled[bag] / count[bag, 0]
  return new_table, w - lr * pooled.T @ g_logits, b - lr * g_logits.sum(0)


def setup_for(model, lr, table_optimizer):
  params = model.init(jax.random.key(1))
  table, dense = steps_lib.split_table(params)
  dense_opt = optax.sgd(lr)
  state = steps_lib.TrainState(jnp.array(0, jnp.int32), params,
                           {"dense": dense_opt.init(dense), "table": table_optimizer.init(table)},
                           jax.random.PRNGKey(2))
  return dense_opt, state


@pytest.mark.parametrize("ragged", [False, True])
def test_scatter_step_matches_numpy_and_the_dedup_path(ragged):
  model = model_args.make_model(ModelConfig(name="bag", features=D), V, C, oob="clip")
  opt = sparse.sparse_sgd(0.7)
  dedup_opt = opt._replace(add=None)  # the same optimizer without add: the dedup path
  dense_opt, state = setup_for(model, 0.7, opt)
  step = jax.jit(steps_lib.make_train_step(model, dense_opt, table_optimizer=opt, oob="clip"))
  dedup = jax.jit(steps_lib.make_train_step(model, dense_opt, table_optimizer=dedup_opt, oob="clip"))
  rng = np.random.default_rng(5)
  table = np.asarray(state.params["embed"]["table"])
  w, b = (np.asarray(state.params["out"][k]) for k in ("w", "b"))
  other = state
  for _ in range(3):
    ids, labels = random_bags(rng), rng.integers(0, C, 6).astype(np.int32)
    batch = batch_lib.RaggedBatch(*map(jnp.asarray, batch_lib.ragged_batches(ids[None], 48)))
    batch = jax.tree.map(lambda x: x[0], batch) if ragged else ids
    table, w, b = numpy_sgd_step(table, w, b, ids, labels, np.float32(0.7))
    state, sums = step(state, batch, labels)
    other, other_sums = dedup(other, batch, labels)
    np.testing.assert_allclose(sums["loss"], other_sums["loss"], rtol=1e-5)
  np.testing.assert_allclose(state.params["embed"]["table"], table, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.params["out"]["w"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.params["out"]["b"], b, rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(other)):
    if jnp.issubdtype(x.dtype, jnp.floating):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(state.params["embed"]["table"])[0])  # padding: never updated
  assert int(state.opt_state["table"].count) == 3


def test_scatter_step_skips_a_nonfinite_batch_and_keeps_frozen_rows():
  model = model_args.make_model(ModelConfig(name="bag", features=D), V, C, oob="clip")
  opt = sparse.sparse_sgd(0.5)
  dense_opt, state = setup_for(model, 0.5, opt)
  frozen = np.zeros(V, bool)
  frozen[1:8] = True
  row_mask = jnp.asarray(~frozen)
  step = jax.jit(steps_lib.make_train_step(model, dense_opt, table_optimizer=opt, oob="clip",
                                       row_mask=row_mask))
  ids = random_bags(np.random.default_rng(6))
  before = jax.tree.map(np.asarray, state)
  out = {**state.params["out"], "b": state.params["out"]["b"].at[0].set(np.inf)}
  bad = state._replace(params={**state.params, "out": out})
  after_bad, sums = step(bad, ids, np.zeros(6, np.int32))
  assert float(sums["nonfinite"]) == 1
  np.testing.assert_array_equal(after_bad.params["embed"]["table"],
                                before.params["embed"]["table"])
  assert int(after_bad.opt_state["table"].count) == 0
  after, sums = step(state, ids, np.zeros(6, np.int32))
  assert float(sums["nonfinite"]) == 0
  table = np.asarray(after.params["embed"]["table"])
  np.testing.assert_array_equal(table[frozen], before.params["embed"]["table"][frozen])
  used = np.isin(np.arange(V), ids) & ~frozen
  used[0] = False
  assert np.all(np.any(table[used] != before.params["embed"]["table"][used], axis=1))


def test_scatter_step_checks_ids_by_default():
  model = model_args.make_model(ModelConfig(name="bag", features=D), V, C)
  opt = sparse.sparse_sgd(0.5)
  dense_opt, state = setup_for(model, 0.5, opt)
  step = jax.jit(steps_lib.make_train_step(model, dense_opt, table_optimizer=opt))
  ids = random_bags(np.random.default_rng(7))
  ids[5, 6] = V + 4
  with pytest.raises(Exception, match=rf"id {V + 4}"):
    jax.block_until_ready(step(state, ids, np.zeros(6, np.int32)))
