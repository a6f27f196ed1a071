"""Tests for embedlab.models.flax_embed: nnx and linen modules backed by embedlab.core.tables."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import embedlab as el
from embedlab.core import tables
from embedlab.models.flax_embed import Embed, LinenEmbed

V, D = 12, 5
IDS = np.array([[3, 0, 11, 7], [1, 1, 0, 2]], np.int32)


def _reference_table(seed=0):
  return np.random.default_rng(seed).normal(size=(V, D)).astype(np.float32)


def test_nnx_embed_matches_numpy_lookup_and_nnx_embed():
  table = _reference_table()
  layer = Embed(V, D, embedding_init=table, rngs=nnx.Rngs(0))
  out = layer(jnp.asarray(IDS))
  np.testing.assert_array_equal(np.asarray(out), table[IDS])
  np.testing.assert_array_equal(np.asarray(out), np.asarray(tables.lookup(layer.params, IDS)))

  flax_layer = nnx.Embed(V, D, rngs=nnx.Rngs(1))
  flax_layer.embedding[...] = jnp.asarray(table)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(flax_layer(jnp.asarray(IDS))))

  # The parameter has nnx.Embed's name, so state moves between the two.
  nnx.update(flax_layer, nnx.state(Embed(V, D, rngs=nnx.Rngs(5))))
  other = Embed(V, D, rngs=nnx.Rngs(5))
  np.testing.assert_array_equal(np.asarray(flax_layer(jnp.asarray(IDS))),
                                np.asarray(other(jnp.asarray(IDS))))


def test_nnx_embed_init_uses_rngs_and_padding_row_is_zero():
  a = Embed(V, D, padding_id=0, rngs=nnx.Rngs(0))
  b = Embed(V, D, padding_id=0, rngs=nnx.Rngs(0))
  c = Embed(V, D, padding_id=0, rngs=nnx.Rngs(1))
  np.testing.assert_array_equal(np.asarray(a.params["table"]), np.asarray(b.params["table"]))
  assert not np.array_equal(np.asarray(a.params["table"]), np.asarray(c.params["table"]))
  np.testing.assert_array_equal(np.asarray(a.params["table"][0]), np.zeros(D, np.float32))
  assert isinstance(a.embedding, nnx.Param)
  assert a.embedding[...].shape == (V, D) and a.embedding[...].dtype == jnp.float32


def test_nnx_padding_gives_zero_vectors_and_zero_gradient():
  table = _reference_table()
  layer = Embed(V, D, embedding_init=table, padding_id=0, rngs=nnx.Rngs(0))
  out = np.asarray(layer(jnp.asarray(IDS)))
  expected = table[IDS] * (IDS != 0)[..., None]
  np.testing.assert_array_equal(out, expected)
  assert np.all(out[IDS == 0] == 0)

  def loss(model, ids):
    return jnp.sum(model(ids) ** 2)

  grads = nnx.grad(loss)(layer, jnp.asarray(IDS))
  g = np.asarray(grads["embedding"][...])
  expected_grad = np.zeros_like(table)
  np.add.at(expected_grad, IDS, 2 * expected)
  np.testing.assert_allclose(g, expected_grad, rtol=1e-6)
  np.testing.assert_array_equal(g[0], np.zeros(D, np.float32))
  assert np.any(g[3] != 0)

  # The same through jax.grad on the split state.
  graphdef, state = nnx.split(layer)

  def pure_loss(state, ids):
    return loss(nnx.merge(graphdef, state), ids)

  g2 = jax.grad(pure_loss)(state, jnp.asarray(IDS))["embedding"][...]
  np.testing.assert_allclose(np.asarray(g2), expected_grad, rtol=1e-6)


def test_nnx_out_of_range_ids_raise_eagerly_and_under_jit():
  layer = Embed(V, D, rngs=nnx.Rngs(0))
  bad = np.array([[1, 2], [V, 0]], np.int32)
  message = re.escape(f"lookup: id {V} at position (1, 0) is outside the table ({V} rows")
  with pytest.raises(ValueError, match=message):
    layer(jnp.asarray(bad))
  with pytest.raises(ValueError, match=re.escape("lookup: id -1 at position (0,)")):
    layer(jnp.array([-1]))

  @nnx.jit
  def forward(model, ids):
    return model(ids)

  np.testing.assert_array_equal(np.asarray(forward(layer, jnp.asarray(IDS))),
                                np.asarray(layer.params["table"])[IDS])
  with pytest.raises(jax.errors.JaxRuntimeError, match=message):
    jax.block_until_ready(forward(layer, jnp.asarray(bad)))

  clipped = Embed(V, D, oob="clip", rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(clipped(jnp.array([V + 3]))),
                                np.asarray(clipped.params["table"])[[V - 1]])
  with pytest.raises(ValueError, match=r"Embed: oob='nan' is not one of error, clip, zero"):
    Embed(V, D, oob="nan", rngs=nnx.Rngs(0))


def test_nnx_attend_bag_max_norm_and_dtype():
  table = _reference_table()
  layer = Embed(V, D, embedding_init=table, padding_id=0, rngs=nnx.Rngs(0))
  padded = np.where(np.arange(V)[:, None] == 0, 0, table)  # init zeroes the padding row
  x = np.random.default_rng(1).normal(size=(3, 2, D)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(layer.attend(jnp.asarray(x))), x @ padded.T, rtol=1e-5,
                             atol=1e-5)

  bags = np.asarray(layer.bag(jnp.asarray(IDS), mode="sum"))
  np.testing.assert_allclose(bags, (table[IDS] * (IDS != 0)[..., None]).sum(1), rtol=1e-6)
  means = np.asarray(layer.bag(jnp.asarray(IDS), mode="mean"))
  np.testing.assert_allclose(means, bags / (IDS != 0).sum(1, keepdims=True), rtol=1e-6)

  capped = Embed(V, D, embedding_init=table, max_norm=1.0, rngs=nnx.Rngs(0))
  norms = np.linalg.norm(np.asarray(capped(jnp.asarray(IDS))), axis=-1)
  expected = np.minimum(np.linalg.norm(table[IDS], axis=-1), 1.0)
  np.testing.assert_allclose(norms, expected, rtol=1e-5)

  half = Embed(V, D, embedding_init=table, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert half(jnp.asarray(IDS)).dtype == jnp.bfloat16
  assert half.embedding[...].dtype == jnp.float32


def test_nnx_train_step_moves_only_looked_up_rows():
  table = _reference_table()
  layer = Embed(V, D, embedding_init=table, padding_id=0, rngs=nnx.Rngs(0))

  @nnx.jit
  def step(model, ids):
    grads = nnx.grad(lambda m: jnp.sum(m(ids)))(model)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p, g: p - 0.5 * g, params, grads))

  step(layer, jnp.array([[0, 4, 4]]))
  after = np.asarray(layer.params["table"])
  expected = table.copy()
  expected[0] = 0  # the padding row starts at zero and stays there
  expected[4] -= 0.5 * 2  # two uses of row 4, gradient 1 each
  np.testing.assert_allclose(after, expected, rtol=1e-6)


def test_linen_embed_matches_nn_embed_and_checks_ids():
  table = _reference_table()
  ids = jnp.asarray(IDS)
  layer = LinenEmbed(V, D)
  variables = layer.init(jax.random.key(0), ids)
  assert set(variables["params"]) == {"embedding"}
  assert variables["params"]["embedding"].shape == (V, D)

  flax_variables = nn.Embed(V, D).init(jax.random.key(1), ids)
  assert jax.tree.structure(flax_variables) == jax.tree.structure(variables)
  assert jax.tree.map(jnp.shape, flax_variables) == jax.tree.map(jnp.shape, variables)
  flax_variables = {"params": {"embedding": jnp.asarray(table)}}  # an nn.Embed checkpoint
  out = layer.apply(flax_variables, ids)
  np.testing.assert_array_equal(np.asarray(out), table[IDS])
  np.testing.assert_array_equal(np.asarray(out),
                                np.asarray(nn.Embed(V, D).apply(flax_variables, ids)))
  x = np.ones((2, D), np.float32)
  np.testing.assert_allclose(np.asarray(layer.apply(flax_variables, jnp.asarray(x),
                                                    method="attend")), x @ table.T, rtol=1e-5)

  with pytest.raises(ValueError, match=re.escape(f"lookup: id {V + 1} at position (0, 1)")):
    layer.apply(flax_variables, jnp.array([[1, V + 1]]))
  with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(f"lookup: id {V + 1}")):
    jax.block_until_ready(jax.jit(layer.apply)(flax_variables, jnp.array([[1, V + 1]])))


def test_linen_embed_padding_gradient_bag_and_init():
  table = _reference_table()
  layer = LinenEmbed(V, D, padding_id=0, embedding_init=table)
  ids = jnp.asarray(IDS)
  variables = layer.init(jax.random.key(0), ids)
  np.testing.assert_array_equal(np.asarray(variables["params"]["embedding"]),
                                np.where(np.arange(V)[:, None] == 0, 0, table))
  out = np.asarray(layer.apply(variables, ids))
  np.testing.assert_array_equal(out, table[IDS] * (IDS != 0)[..., None])

  full = {"params": {"embedding": jnp.asarray(table)}}  # padding row not zero in the params
  grads = jax.grad(lambda v: jnp.sum(layer.apply(v, ids) ** 2))(full)
  g = np.asarray(grads["params"]["embedding"])
  np.testing.assert_array_equal(g[0], np.zeros(D, np.float32))
  np.testing.assert_allclose(g[3], 2 * table[3], rtol=1e-6)

  bags = np.asarray(layer.apply(variables, ids, mode="max", method="bag"))
  masked = np.where((IDS != 0)[..., None], table[IDS], -np.inf)
  np.testing.assert_array_equal(bags, masked.max(1))

  random_init = LinenEmbed(V, D, padding_id=0).init(jax.random.key(3), ids)
  emb = np.asarray(random_init["params"]["embedding"])
  np.testing.assert_array_equal(emb[0], np.zeros(D, np.float32))
  assert np.all(emb[1:] != 0)


# ---------------------------------------------------------------- regressions: the shared id path

def test_nnx_and_linen_read_narrow_ids_exactly_and_ignore_nan_weights_at_padding():
  table = np.random.default_rng(2).normal(size=(300, 3)).astype(np.float32)
  table[260] = 0
  nnx_layer = Embed(300, 3, embedding_init=table, padding_id=260, rngs=nnx.Rngs(0))
  linen_layer = LinenEmbed(300, 3, padding_id=260, oob="clip")
  variables = {"params": {"embedding": jnp.asarray(table)}}
  ids = np.array([[255, 4, 4], [1, 2, 3]], np.uint8)  # 255 is row 255; 4 is not padding 260
  small = np.array([[100, 4, 4], [1, 2, 3]], np.int8)  # 260 would wrap to 4 in int8
  for layer_ids, got in ((ids, nnx_layer(ids)),
                         (ids, nnx.jit(lambda m, i: m(i))(nnx_layer, jnp.asarray(ids))),
                         (ids, linen_layer.apply(variables, ids)),
                         (small, linen_layer.apply(variables, small)),
                         (small, jax.jit(linen_layer.apply)(variables, jnp.asarray(small)))):
    np.testing.assert_array_equal(np.asarray(got), table[layer_ids.astype(np.int64)])
  weights = np.array([[1.0, 2.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
  padded_ids = ids.astype(np.int32)
  padded_ids[0, 2] = 260  # padding: its NaN weight is ignored, as PyTorch does
  weights[0, 2] = np.nan
  w = np.where(padded_ids != 260, weights, 0)
  want_sum = np.einsum("bl,bld->bd", w, table[padded_ids])
  np.testing.assert_allclose(np.asarray(nnx_layer.bag(padded_ids, mode="sum", weights=weights)),
                             want_sum, rtol=1e-6)
  np.testing.assert_allclose(
      np.asarray(linen_layer.apply(variables, padded_ids, mode="mean", weights=weights,
                                   method="bag")), want_sum / w.sum(1, keepdims=True), rtol=1e-6)


def test_nnx_ragged_bag_checks_segment_ids_and_num_bags():
  layer = Embed(V, D, rngs=nnx.Rngs(0))
  ids = np.array([1, 2, 3], np.int32)
  with pytest.raises(ValueError, match=r"bag: segment id 2 at position \(2,\) is outside the bags"):
    layer.bag(ids, segment_ids=np.array([0, 1, 2], np.int32), num_bags=2)
  with pytest.raises(TypeError, match=r"num_bags must be a Python int >= 0"):
    layer.bag(ids, segment_ids=np.array([0, 1, 1], np.int32), num_bags=2.0)


# ---------------------------------------------------------------- nnx arguments, metadata, optax

class BagModel(nnx.Module):
  """A bag of embeddings and a linear classifier: the shape of the README's model."""

  def __init__(self, table, rngs):
    self.embed = Embed(V, D, embedding_init=table, padding_id=0, rngs=rngs)
    self.out = nnx.Linear(D, 3, rngs=rngs)

  def __call__(self, ids):
    return self.out(self.embed.bag(ids, mode="mean"))


def _xent(model, ids, labels):
  return jnp.mean(jax.nn.logsumexp(model(ids), -1)
                  - jnp.take_along_axis(model(ids), labels[:, None], -1)[:, 0])


def _batches(steps, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    ids = rng.integers(1, 8, size=(4, 5)).astype(np.int32)  # rows 8.. never used
    ids[0, 2:] = 0
    out.append((jnp.asarray(ids), jnp.asarray(rng.integers(0, 3, size=4))))
  return out


@pytest.mark.parametrize("strategy", ["rows", "table"])
def test_nnx_row_sparse_step_in_an_nnx_optimizer_matches_the_dense_step_with_sgd(strategy):
  table = _reference_table()
  table[0] = 0
  dense_model, sparse_model = BagModel(table, nnx.Rngs(0)), BagModel(table, nnx.Rngs(0))
  dense_opt = nnx.Optimizer(dense_model, optax.sgd(0.3), wrt=nnx.Param)
  labels = jax.tree.map(lambda _: "dense", nnx.as_pure(nnx.state(sparse_model, nnx.Param)))
  labels["embed"]["embedding"] = "rows"
  sparse_opt = nnx.Optimizer(sparse_model, optax.multi_transform(
      {"rows": el.row_sparse(el.sparse_sgd(0.3)), "dense": optax.sgd(0.3)}, labels), wrt=nnx.Param)

  @nnx.jit
  def dense_step(model, optimizer, ids, y):
    loss, grads = nnx.value_and_grad(_xent)(model, ids, y)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def sparse_step(model, optimizer, ids, y):
    loss, grads = el.value_and_row_grad(_xent, model, ids, y, strategy=strategy)
    optimizer.update(model, grads)
    return loss

  for ids, y in _batches(4):
    np.testing.assert_allclose(float(sparse_step(sparse_model, sparse_opt, ids, y)),
                               float(dense_step(dense_model, dense_opt, ids, y)), rtol=1e-6)
  got, want = nnx.state(sparse_model, nnx.Param), nnx.state(dense_model, nnx.Param)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-7)
  emb = np.asarray(sparse_model.embed.embedding[...])
  assert not np.allclose(emb[1:8], table[1:8])
  np.testing.assert_array_equal(emb[8:], table[8:])  # never looked up: never read or written
  assert sparse_model.embed.embedding[...].shape == (V, D)  # the full table is back in place


def test_flax_partitioning_metadata_reaches_get_partition_spec():
  with nnx.use_eager_sharding(False):
    wrapped = Embed(V, D, padding_id=0, rngs=nnx.Rngs(0), embedding_init=nnx.with_partitioning(
        nnx.initializers.normal(0.5), ("vocab", None)))
    by_argument = Embed(V, D, sharding=(None, "model"), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"partitioning is given twice"):
      Embed(V, D, sharding=("a", None), rngs=nnx.Rngs(0), embedding_init=nnx.with_partitioning(
          nnx.initializers.normal(), ("b", None)))
  spec = nnx.get_partition_spec(nnx.state(wrapped))["embedding"].get_value()
  assert spec == jax.sharding.PartitionSpec("vocab", None)
  assert nnx.get_partition_spec(nnx.state(by_argument))["embedding"].get_value() == \
      jax.sharding.PartitionSpec(None, "model")
  # the wrapped initializer's numbers, with embedlab's padding row
  want = np.array(nnx.initializers.normal(0.5)(nnx.Rngs(0).params(), (V, D), jnp.float32))
  want[0] = 0
  np.testing.assert_array_equal(np.asarray(wrapped.embedding[...]), want)

  linen = LinenEmbed(V, D, embedding_init=nn.with_partitioning(nn.initializers.normal(),
                                                               ("vocab", None)))
  variables = linen.init(jax.random.key(0), jnp.asarray(IDS))
  assert nn.get_partition_spec(variables)["params"]["embedding"] == \
      jax.sharding.PartitionSpec("vocab", None)
  assert LinenEmbed(V, D).init(jax.random.key(0), jnp.asarray(IDS))["params"]["embedding"].shape \
      == (V, D)
  by_field = LinenEmbed(V, D, sharding=("vocab", None)).init(jax.random.key(0), jnp.asarray(IDS))
  assert nn.get_partition_spec(by_field)["params"]["embedding"] == \
      jax.sharding.PartitionSpec("vocab", None)
  np.testing.assert_array_equal(  # boxed params apply as plain ones
      np.asarray(linen.apply(variables, jnp.asarray(IDS))),
      np.asarray(nn.unbox(variables)["params"]["embedding"])[IDS])


def test_freeze_by_an_nnx_path_freezes_that_parameter():
  table = _reference_table()
  model = BagModel(table, nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  for pattern in ("embed/embedding", "embed/embedding/value", "embed/*"):
    tx = el.freeze(optax.adam(0.1), params, [pattern])
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    kernel = np.asarray(model.out.kernel[...])
    ids, y = _batches(1)[0]
    optimizer.update(model, nnx.grad(_xent)(model, ids, y))
    np.testing.assert_array_equal(np.asarray(model.embed.embedding[...]),
                                  np.where(np.arange(V)[:, None] == 0, 0, table))
    assert not np.allclose(np.asarray(model.out.kernel[...]), kernel)
  with pytest.raises(ValueError, match=r"pattern 'embed/table' matches no parameter; the "
                                       r"parameters are embed/embedding, out/bias, out/kernel"):
    el.freeze(optax.adam(0.1), params, ["embed/table"])


def test_functional_api_reads_flax_params_and_old_init_name_warns():
  table = _reference_table()
  model = BagModel(table, nnx.Rngs(0))
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  ids = jnp.asarray(IDS)
  np.testing.assert_array_equal(np.asarray(el.lookup(params["embed"], ids, padding_id=0)),
                                np.asarray(model.embed(ids)))
  np.testing.assert_array_equal(np.asarray(el.bag(params["embed"], ids, padding_id=0)),
                                np.asarray(model.embed.bag(ids)))
  variables = LinenEmbed(V, D).init(jax.random.key(0), ids)
  np.testing.assert_array_equal(np.asarray(el.lookup(variables["params"], ids)),
                                np.asarray(variables["params"]["embedding"])[IDS])
  with pytest.raises(TypeError, match=r"'table' entry .* or Flax's 'embedding' entry, got dict "
                                      r"with keys 'kernel'"):
    el.lookup({"kernel": jnp.ones((2, 2))}, ids)

  with pytest.warns(DeprecationWarning, match=r"Embed\(init=...\) is deprecated: use "
                                              r"embedding_init"):
    old = Embed(V, D, init=table, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(old.embedding[...]), table)
  with pytest.raises(TypeError, match=r"embedding_init only"):
    Embed(V, D, init=table, embedding_init="uniform", rngs=nnx.Rngs(0))
  assert Embed(V, D, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(ids).dtype == jnp.bfloat16


def test_value_and_row_grad_on_a_module_writes_back_its_other_state():
  """Non-param state the loss changes (here a call counter; rng counts of dropout alike) is
  kept, as nnx.value_and_grad keeps it, eagerly and under nnx.jit."""

  class Counting(nnx.Module):
    def __init__(self, rngs):
      self.embed = Embed(V, D, padding_id=0, rngs=rngs)
      self.calls = nnx.Variable(jnp.array(0))

    def __call__(self, ids):
      self.calls[...] += 1
      return self.embed.bag(ids).sum()

  model = Counting(nnx.Rngs(0))
  ids = jnp.asarray(IDS)
  loss, _ = el.value_and_row_grad(lambda m, i: m(i), model, ids)
  np.testing.assert_allclose(float(loss), float(model.embed.bag(ids).sum()), rtol=1e-6)
  assert int(model.calls[...]) == 1
  step = nnx.jit(lambda m, i: el.value_and_row_grad(lambda m, i: (m(i), 5), m, i,
                                                    has_aux=True)[0])
  loss, aux = step(model, ids)
  assert int(aux) == 5 and int(model.calls[...]) == 2
