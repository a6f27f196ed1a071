"""Models: values against numpy references, padding invariance, gradients through the table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedlab.config import ModelConfig
from embedlab.models import classifiers as models
from embedlab.models import registry
from embedlab.run import model_args


def make(cfg, num_embeddings, num_classes):
  return model_args.make_model(cfg, num_embeddings, num_classes)


def test_bag_model_is_mean_embedding_then_linear():
  cfg = ModelConfig(name="bag", features=4)
  model = make(cfg, 30, 3)
  p = model.init(jax.random.key(0))
  ids = np.array([[3, 5, 0, 0], [7, 0, 0, 0]], np.int32)
  table = np.asarray(p["embed"]["table"])
  pooled = np.stack([table[[3, 5]].mean(0), table[[7]].mean(0)])
  expected = pooled @ np.asarray(p["out"]["w"]) + np.asarray(p["out"]["b"])
  np.testing.assert_allclose(np.asarray(model.apply(p, ids)), expected, rtol=1e-5, atol=1e-6)


def test_cnn_matches_a_numpy_convolution():
  cfg = ModelConfig(name="cnn", features=3, filter_widths=(2,), num_filters=4)
  model = make(cfg, 20, 2)
  p = model.init(jax.random.key(1))
  ids = np.array([[4, 9, 2, 0, 0]], np.int32)
  x = np.asarray(p["embed"]["table"])[[4, 9, 2]]  # the 3 real tokens
  w, b = np.asarray(p["conv2"]["w"]), np.asarray(p["conv2"]["b"])
  windows = [x[t:t + 2] for t in range(2)]  # windows fully inside the sentence
  h = np.maximum(np.stack([np.einsum("wd,wdf->f", win, w) for win in windows]) + b, 0)
  expected = h.max(0) @ np.asarray(p["out"]["w"]) + np.asarray(p["out"]["b"])
  np.testing.assert_allclose(np.asarray(model.apply(p, ids))[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["bag", "cnn", "bilstm"])
def test_extra_padding_does_not_change_the_output(name):
  cfg = ModelConfig(name=name, features=8, num_filters=5, lstm_hidden=6, filter_widths=(2, 3))
  model = make(cfg, 50, 3)
  p = model.init(jax.random.key(2))
  ids = np.array([[5, 6, 7, 8, 0, 0], [9, 3, 0, 0, 0, 0]], np.int32)
  longer = np.concatenate([ids, np.zeros((2, 5), np.int32)], axis=1)
  np.testing.assert_allclose(np.asarray(model.apply(p, ids)), np.asarray(model.apply(p, longer)),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["bag", "cnn", "bilstm"])
def test_gradient_reaches_used_rows_only_and_never_padding(name):
  cfg = ModelConfig(name=name, features=8, num_filters=5, lstm_hidden=6, filter_widths=(2, 3),
                    dropout=0.3)
  model = make(cfg, 50, 3)
  p = model.init(jax.random.key(3))
  ids = np.array([[5, 6, 7, 0], [9, 3, 0, 0]], np.int32)
  loss = lambda p: model.apply(p, ids, train=True, rng=jax.random.key(0)).sum()
  g = np.asarray(jax.grad(loss)(p)["embed"]["table"])
  used = np.abs(g).sum(1) > 0
  assert set(np.nonzero(used)[0]) <= {3, 5, 6, 7, 9} and used[[5, 9]].all()
  assert np.all(g[0] == 0)


def test_bilstm_reverse_direction_reads_each_sentence_backwards():
  x = jnp.arange(10).reshape(2, 5)
  out = models._reverse_within_length(x, jnp.array([3, 5]))
  np.testing.assert_array_equal(out, [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])


def test_unknown_model_lists_the_known_ones():
  with pytest.raises(ValueError, match="choose one of bag, cnn, bilstm"):
    models.make_model("mlp", models.make_embedder(10, 4), 2)


def test_bf16_compute_on_f32_params():
  cfg = ModelConfig(name="cnn", features=8, num_filters=4, filter_widths=(2,),
                    compute_dtype="bfloat16")
  model = make(cfg, 20, 2)
  p = model.init(jax.random.key(0))
  assert p["embed"]["table"].dtype == jnp.float32
  out = model.apply(p, np.array([[1, 2, 3]], np.int32))
  f32 = make(ModelConfig(name="cnn", features=8, num_filters=4, filter_widths=(2,)),
              20, 2).apply(p, np.array([[1, 2, 3]], np.int32))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(f32), rtol=0.05, atol=0.05)


def test_models_take_plain_arguments_and_reject_options_they_do_not_have():
  embedder = models.make_embedder(30, 4)
  model = models.make_model("bag", embedder, 3, pooling="max", hidden=5)
  assert model.stages(2, 7)[2:4] == [("pooled (max)", (2, 4)), ("hidden", (2, 5))]
  with pytest.raises(TypeError, match="takes the options pooling, hidden, dropout, not num_filters"):
    models.make_model("bag", embedder, 3, num_filters=4)


@pytest.mark.parametrize("name", registry.MODELS.names)
def test_every_registered_model_reads_only_config_fields_and_builds_from_them(name):
  fields = set(ModelConfig.__dataclass_fields__)
  assert set(registry.MODELS[name].fields) <= fields
  cfg = ModelConfig(name=name, features=4, num_filters=2, lstm_hidden=3, filter_widths=(2,))
  model = make(cfg, 20, 2)
  assert model.apply(model.init(jax.random.key(0)), np.ones((2, 5), np.int32)).shape == (2, 2)


def test_config_choices_come_from_the_registries():
  from embedlab import config as config_lib
  from embedlab.core import names
  assert config_lib._CHOICES["model.name"] == registry.MODELS.names
  assert config_lib._CHOICES["optim.tables"][1:] == tuple(names.TABLE_OPTIMIZERS)
  assert config_lib._CHOICES["optim.name"] == tuple(names.DENSE_OPTIMIZERS)
