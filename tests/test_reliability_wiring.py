"""Checks that span modules:

1. ``build_lib.build`` calls ``resources.check_fits`` before allocating anything.
2. ``models``: cnn / bilstm name a wrong-rank ``ids`` instead of failing deep inside XLA.
3. ``pooling.pool_padded``: ``bag(mode="max")`` of bags with no ids at all (shape ``(B, 0)``)
   is a zero vector, as for the other modes.
"""

import time

import jax
import numpy as np
import pytest

import embedlab as el
from embedlab import config as config_lib
from embedlab.run import model_args
from embedlab.run import resources
from embedlab.run import train
from embedlab.config import Config, ModelConfig


def test_train_refuses_a_config_too_big_for_memory_before_allocating(tmp_path):
  # 2^31 rows x 256 features x 4 bytes = 2 TiB of table alone: no machine running the tests has
  # that, and a run that tried to allocate it would die or take minutes, not fail at once.
  cfg = config_lib.apply_overrides(Config(name="huge"), [
      "data.synthetic_train_size=64", "data.synthetic_eval_size=16", "data.ngrams=2",
      "data.num_buckets=2147483000", "model.features=256", "train.num_steps=2",
      "train.progress=false"])
  start = time.perf_counter()
  with pytest.raises(resources.ResourceError, match=r"needs about .* TiB .* is available .*"
                                                    r"Settings that would fit: .*num_buckets"):
    train.train(cfg, tmp_path / "run", echo=lambda *_: None)
  assert time.perf_counter() - start < 30
  assert not (tmp_path / "run" / "checkpoints" / "latest").exists() or not any(
      (tmp_path / "run" / "checkpoints" / "latest").iterdir())


@pytest.mark.parametrize("name", ["bag", "cnn", "bilstm"])
@pytest.mark.parametrize("shape", [(3,), (2, 2, 2)])
def test_models_name_a_wrong_rank_of_ids(name, shape):
  model = model_args.make_model(ModelConfig(name=name, features=4, num_filters=3, lstm_hidden=4),
                            10, 3)
  params = model.init(jax.random.key(0))
  with pytest.raises(ValueError, match=r"ids must be 2-D \[batch, (seq_len|bag_len)\].*got shape"):
    model.apply(params, np.ones(shape, np.int32))


def test_max_bag_of_no_ids_is_zero():
  table = el.init_table(jax.random.key(0), 10, 4, padding_id=0)
  out = el.bag(table, np.zeros((2, 0), np.int32), mode="max", padding_id=0)
  np.testing.assert_array_equal(out, np.zeros((2, 4)))
