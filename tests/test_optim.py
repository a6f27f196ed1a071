"""Freezing and weight decay happen in the optimizer, through masks by parameter path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedlab as el
from embedlab.core import optim


def params():
  return {"embed": {"table": jnp.ones((5, 3))}, "out": {"w": jnp.ones((3, 2)),
                                                       "b": jnp.ones((2,))}}


def run(tx, p, steps=3):
  state = tx.init(p)
  for _ in range(steps):
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), p)
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  return p


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw", "adagrad"])
def test_frozen_table_never_moves_even_with_weight_decay(name):
  p = params()
  tx = optim.make_optimizer(name, p, 10, learning_rate=0.1, weight_decay=0.1,
                            frozen=["embed/table"])
  out = run(tx, p)
  np.testing.assert_array_equal(out["embed"]["table"], p["embed"]["table"])
  assert not np.allclose(out["out"]["w"], p["out"]["w"])


def test_frozen_rows_never_move_and_the_others_do():
  p = params()
  trainable = np.array([False, True, False, True, True])
  tx = optim.make_optimizer("adamw", p, 10, learning_rate=0.1, weight_decay=0.5,
                            row_masks={"embed/table": trainable})
  out = np.asarray(run(tx, p)["embed"]["table"])
  np.testing.assert_array_equal(out[~trainable], 1.0)
  assert np.all(out[trainable] != 1.0)


def test_weight_decay_mask_skips_biases_and_precedes_the_learning_rate():
  p = params()
  tx = optim.make_optimizer("sgd", p, 10, learning_rate=0.1, weight_decay=0.5)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
  # zero gradient: the update is -lr * wd * w for matrices, nothing for the bias
  np.testing.assert_allclose(updates["out"]["w"], -0.1 * 0.5 * 1.0)
  np.testing.assert_array_equal(updates["out"]["b"], 0.0)


def test_sgd_matches_the_plain_rule():
  p = params()
  out = run(optim.make_optimizer("sgd", p, 10, learning_rate=0.2), p, steps=2)
  np.testing.assert_allclose(out["out"]["b"], 1.0 - 2 * 0.2 * 0.5)


def test_path_mask_rejects_a_pattern_that_matches_nothing():
  with pytest.raises(ValueError, match="pattern 'embd/\\*' matches no parameter"):
    optim.path_mask(params(), ["embd/*"])


def test_schedules():
  for name in ("constant", "cosine", "linear", "warmup_cosine"):
    sched = optim.make_schedule(name, 1.0, 100, warmup_steps=10)
    assert float(sched(0)) <= 1.0 and float(sched(50)) > 0
  assert float(optim.make_schedule("linear", 1.0, 100)(100)) == 0.0
  assert float(optim.make_schedule("constant", 1.0, 100, warmup_steps=10)(5)) == 0.5


@pytest.mark.parametrize("mask,match", [
    (np.array([1, 3]), r"must be a 1-D bool array \[rows\] \(True: trainable\), got int64\[2\]"),
    ([True, False], r"has 2 rows but embed/table has shape \[5, 3\]"),
    (np.ones((5, 1), bool), r"must be a 1-D bool array .* got bool\[5, 1\]"),
    (np.array([True]), r"has 1 rows but embed/table has shape \[5, 3\]"),
    (np.ones(6, bool), r"has 6 rows but embed/table has shape \[5, 3\]"),
])
def test_a_row_mask_that_is_not_one_flag_per_row_is_an_error(mask, match):
  # row ids read as truthy flags, or a short mask (a RowGrad's rows past it were frozen), were
  # silent
  p = params()
  with pytest.raises((TypeError, ValueError), match=match):
    tx = optax.chain(optax.sgd(0.1), el.freeze_rows({"embed/table": mask}))
    tx.init(p)
  with pytest.raises(TypeError, match=r"freeze_rows: row_masks must map a table's path"):
    el.freeze_rows([np.ones(5, bool)])
