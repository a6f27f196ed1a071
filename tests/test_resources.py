"""The memory preflight against XLA's own count: ``resources.estimate_bytes`` must be within
1.5x of ``compiled.memory_analysis()`` of the real train step (jitted with the state donated,
as the runner does) for every model, table variant and optimizer, compiled for shapes only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from embedlab import config as config_lib
from embedlab.core import variants
from embedlab.models import registry
from embedlab.run import model_args
from embedlab.core import optim as optim_lib
from embedlab.run import build as build_lib
from embedlab.run import resources
from embedlab.core import sparse
from embedlab.run import steps as steps_lib
from embedlab.config import Config

ROWS, CLASSES, SEQ_LEN = 2000, 3, 20
SMALL = ["model.features=16", "model.num_filters=8", "model.lstm_hidden=8", "model.hidden=8",
         "train.batch_size=8", "train.eval_batch_size=8", "model.dropout=0.1"]
# settings that make each table variant smaller than the vocabulary, as it is used
TABLE_SETTINGS = {"plain": [], "hashed": ["model.table_buckets=200", "model.table_exact=300"],
                  "hash_embedding": ["model.table_buckets=200"], "qr": [],
                  "factorized": ["model.table_rank=4"]}
DENSE = tuple(resources.DENSE_SLOTS)  # every dense optax optimizer of embedlab.core.optim
SPARSE = tuple(sparse.SPARSE_OPTIMIZERS)


def _config(model, table, optimizer) -> Config:
  opt = ([f"optim.tables={optimizer}"] if optimizer in SPARSE else [f"optim.name={optimizer}"])
  return config_lib.apply_overrides(Config(), SMALL + TABLE_SETTINGS[table] + opt + [
      f"model.name={model}", f"model.table={table}"])


def _compiled_step(cfg):
  """The train step of ``cfg`` (``steps_lib.make_train_step``, as ``build_lib.build`` sets it up),
  jitted with the state donated and compiled for shapes only."""
  model = model_args.make_model(cfg.model, ROWS, CLASSES, oob="clip")
  key = jax.eval_shape(jax.random.PRNGKey, 0)
  params = jax.eval_shape(model.init, key)
  table_opt = None
  if cfg.optim.tables == "dense":
    opt = optim_lib.make_optimizer(cfg.optim.name, params, 100, **build_lib.dense_optimizer_options(cfg))
    opt_state = jax.eval_shape(opt.init, params)
  else:
    table_opt = sparse.get_sparse_optimizer(cfg.optim.tables, 0.1)
    table, dense = steps_lib.split_table(params)
    opt = optim_lib.make_optimizer(cfg.optim.name, dense, 100, **build_lib.dense_optimizer_options(cfg))
    opt_state = {"dense": jax.eval_shape(opt.init, dense),
                 "table": jax.eval_shape(table_opt.init, table)}
  state = steps_lib.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, opt_state, key)
  step = steps_lib.make_train_step(model, opt, table_optimizer=table_opt, oob="clip")
  batch = cfg.train.batch_size
  return jax.jit(step, donate_argnums=0).lower(
      state, jax.ShapeDtypeStruct((batch, SEQ_LEN), jnp.int32),
      jax.ShapeDtypeStruct((batch,), jnp.int32)).compile()


def _cases():
  """Every model with every table variant (the dense optimizers taken in turn), and every
  row-sparse optimizer once: each entry of each registry at least once, one compilation each."""
  cases = [(model, table, DENSE[(i * len(TABLE_SETTINGS) + j) % len(DENSE)])
           for i, model in enumerate(registry.MODELS) for j, table in enumerate(TABLE_SETTINGS)]
  row_tables = [t for t in TABLE_SETTINGS if t in variants.TABLES.names_with("row_sparse")]
  for k, optimizer in enumerate(SPARSE):
    cases.append((list(registry.MODELS)[k % len(registry.MODELS)], row_tables[k % len(row_tables)],
                  optimizer))
  return cases


def test_the_cases_cover_every_registry_entry():
  cases = _cases()
  assert {m for m, _, _ in cases} == set(registry.MODELS)
  assert {t for _, t, _ in cases} == set(variants.TABLES) == set(TABLE_SETTINGS)
  assert {o for _, _, o in cases} == set(DENSE) | set(SPARSE)


@pytest.mark.parametrize("model,table,optimizer", _cases())
def test_estimate_is_within_1_5x_of_xla(model, table, optimizer):
  cfg = _config(model, table, optimizer)
  estimate = resources.estimate_bytes(cfg, ROWS, CLASSES, SEQ_LEN)
  xla = resources.compiled_bytes(_compiled_step(cfg))
  ratio = estimate["total"] / xla["total"]
  print(f"{model} {table} {optimizer}: estimate {estimate['total']:,} B, XLA {xla['total']:,} B, "
        f"ratio {ratio:.2f}")
  assert 1 / 1.5 <= ratio <= 1.5, (estimate, xla, ratio)


def test_check_step_fits_refuses_with_xla_numbers_and_returns_the_same_program():
  cfg = _config("bilstm", "plain", "adam")
  model = model_args.make_model(cfg.model, ROWS, CLASSES, oob="clip")
  params = model.init(jax.random.key(0))
  opt = optim_lib.make_optimizer(cfg.optim.name, params, 100, **build_lib.dense_optimizer_options(cfg))
  state = steps_lib.TrainState(jnp.array(0, jnp.int32), params, opt.init(params),
                           jax.random.PRNGKey(0))
  step = jax.jit(steps_lib.make_train_step(model, opt, oob="clip"))
  ids = jax.random.randint(jax.random.key(1), (8, SEQ_LEN), 0, ROWS, jnp.int32)
  labels = jnp.arange(8, dtype=jnp.int32) % CLASSES
  compiled, need = resources.check_step_fits(step, state, ids, labels)
  assert need == resources.compiled_bytes(compiled) and need["temporaries"] > 0
  new, sums = compiled(state, ids, labels)
  ref, ref_sums = step(state, ids, labels)
  for a, b in zip(jax.tree.leaves((new, sums)), jax.tree.leaves((ref, ref_sums))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(resources.ResourceError) as e:
    resources.check_step_fits(step, state, ids, labels, available=need["total"] // 2)
  msg = str(e.value)
  assert f"needs {resources.human(need['total'])} by XLA's memory analysis" in msg
  assert "Nothing was allocated" in msg and "train.batch_size" in msg
