"""Row-sparse gradients through optax (embedlab/core/rowgrad.py), against dense optax and against the
sparse optimizers' own ``update``, under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedlab as el
from embedlab.core.localize import localize

ROWS, FEATURES, CLASSES, PAD = 40, 4, 3, 0
STRATEGIES = ("rows", "table")  # localize's two ways; "table" gives a dense RowGrad


def batches(steps, seed=0, batch=4, bag_len=5):
  """Bags with duplicate ids (within and across bags) and padding; rows 20.. never used."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    ids = rng.integers(1, 20, size=(batch, bag_len)).astype(np.int32)
    ids[0, 2:] = PAD
    ids[1, 1] = ids[1, 0]
    out.append((jnp.asarray(ids), jnp.asarray(rng.integers(0, CLASSES, size=batch))))
  return out


def initial_params(seed=0):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
  table[PAD] = 0
  return {"embed": {"table": jnp.asarray(table)},
          "out": {"w": jnp.asarray(rng.normal(size=(FEATURES, CLASSES)).astype(np.float32)),
                  "b": jnp.zeros(CLASSES)}}


def loss_fn(params, ids, labels):
  pooled = el.bag(params["embed"], ids, mode="mean", padding_id=PAD)
  logits = pooled @ params["out"]["w"] + params["out"]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


LABELS = {"embed": {"table": "rows"}, "out": {"w": "dense", "b": "dense"}}


def train_dense(tx, steps):
  params = initial_params()
  state = tx.init(params)

  @jax.jit
  def step(params, state, ids, labels):
    grads = jax.grad(loss_fn)(params, ids, labels)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for ids, labels in batches(steps):
    params, state = step(params, state, ids, labels)
  return params


def train_row_sparse(tx, steps, strategy="auto", apply=el.apply_updates):
  params = initial_params()
  state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, ids, labels):
    loss, grads = el.value_and_row_grad(loss_fn, params, ids, labels, padding_id=PAD,
                                        strategy=strategy)
    updates, state = tx.update(grads, state, params)
    return apply(params, updates), state, loss

  for ids, labels in batches(steps):
    params, state, _ = step(params, state, ids, labels)
  return params, state


def assert_params_close(got, want, rtol=1e-6, atol=1e-7):
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_value_and_row_grad_is_the_dense_gradient_row_by_row(strategy):
  params = initial_params()
  ids, labels = batches(1)[0]
  want_loss = loss_fn(params, ids, labels)
  want = jax.grad(loss_fn)(params, ids, labels)

  @jax.jit
  def row_grad(params):  # a RowGrad stays inside the trace: return its arrays
    loss, grads = el.value_and_row_grad(loss_fn, params, ids, labels, padding_id=PAD,
                                        strategy=strategy)
    g = grads["embed"]["table"]
    assert isinstance(g, el.RowGrad) and g.dense == (strategy == "table")
    assert g.num_rows == ROWS
    return loss, g.ids, g.rows, grads["out"]

  loss, ids_np, rows, out_grads = row_grad(params)
  ids_np = np.asarray(ids_np)
  real = ids_np[ids_np < ROWS]
  assert len(set(real.tolist())) == len(real)  # distinct
  assert set(real.tolist()) == set(np.asarray(ids).ravel().tolist()) - {PAD}
  dense = np.zeros((ROWS, FEATURES), np.float32)
  np.add.at(dense, real, np.asarray(rows)[ids_np < ROWS])
  np.testing.assert_allclose(dense, np.asarray(want["embed"]["table"]), rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(rows)[ids_np >= ROWS] == 0)  # "no row" entries carry nothing
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-6)
  grads = {"out": out_grads}
  np.testing.assert_allclose(np.asarray(grads["out"]["w"]), np.asarray(want["out"]["w"]),
                             rtol=1e-6, atol=1e-7)
  # has_aux and the table named by path
  (loss2, aux), grads2 = el.value_and_row_grad(lambda p, i: (loss_fn(p, i, labels), 7), params,
                                               ids, table="embed/table", has_aux=True)
  assert aux == 7 and float(loss2) == pytest.approx(float(want_loss), rel=1e-6)


def test_value_and_row_grad_names_the_table_or_says_why_not():
  params = {"a": {"table": jnp.ones((4, 2))}, "b": {"table": jnp.ones((4, 2))}}
  with pytest.raises(ValueError, match=r"matched: a/table, b/table.*table='path/to/table'"):
    el.value_and_row_grad(lambda p, i: 0.0, params, jnp.array([1]))
  with pytest.raises(ValueError, match=r"table='c/\*' must name one parameter .*matched: none"):
    el.value_and_row_grad(lambda p, i: 0.0, params, jnp.array([1]), table="c/*")
  with pytest.raises(ValueError, match=r"lookup|outside the table"):
    el.value_and_row_grad(lambda p, i: 0.0, params, jnp.array([4]), table="a/table")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chain_of_clipping_schedule_and_row_sparse_sgd_trains_as_dense_sgd(strategy):
  """optax.chain(clip_by_global_norm, inject_hyperparams(schedule)) around a row-sparse SGD for
  the table gives dense SGD's parameters: the clip sees the same global norm."""
  schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.8)
  clip = 0.05  # below the gradients' norm: every step is clipped

  def lr_sgd(learning_rate):
    return el.row_sparse(el.sparse_sgd(learning_rate))

  sparse_tx = optax.chain(optax.clip_by_global_norm(clip), optax.multi_transform(
      {"rows": optax.inject_hyperparams(lr_sgd)(learning_rate=schedule),
       "dense": optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)}, LABELS))
  dense_tx = optax.chain(optax.clip_by_global_norm(clip),
                         optax.inject_hyperparams(optax.sgd)(learning_rate=schedule))
  got, state = train_row_sparse(sparse_tx, 6, strategy)
  want = train_dense(dense_tx, 6)
  assert_params_close(got, want)
  assert not np.allclose(np.asarray(got["embed"]["table"]),
                         np.asarray(initial_params()["embed"]["table"]))
  rows_state = state[1].inner_states["rows"].inner_state
  assert float(rows_state.hyperparams["learning_rate"]) == pytest.approx(float(schedule(5)))
  # optax's own apply_updates takes the RowGrad too (table + RowGrad is the scatter-add)
  got_optax, _ = train_row_sparse(sparse_tx, 6, strategy, apply=optax.apply_updates)
  assert_params_close(got_optax, got, rtol=0, atol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_multi_transform_row_sparse_lazy_adam_for_the_table_dense_adam_for_the_rest(strategy):
  tx = optax.multi_transform({"rows": el.row_sparse(el.sparse_lazy_adam(0.05)),
                              "dense": optax.adam(0.05)}, LABELS)
  got, _ = train_row_sparse(tx, 4, strategy)

  # reference: the sparse optimizer's own update on the table, optax.adam on the rest
  opt, adam = el.sparse_lazy_adam(0.05), optax.adam(0.05)
  params = initial_params()
  table, table_state = params["embed"]["table"], opt.init(params["embed"]["table"])
  rest = params["out"]
  rest_state = adam.init(rest)
  for ids, labels in batches(4):
    local = localize(table, ids, padding_id=PAD, strategy="rows")
    g_table, g_rest = jax.grad(
        lambda t, r: loss_fn({"embed": {"table": t}, "out": r}, local.ids, labels),
        argnums=(0, 1))(local.params["table"], rest)
    table, table_state = opt.update(table, table_state, local.row_ids, g_table, unique=True,
                                    strategy="rows")
    updates, rest_state = adam.update(g_rest, rest_state, rest)
    rest = optax.apply_updates(rest, updates)
  assert_params_close(got, {"embed": {"table": table}, "out": rest}, rtol=1e-5, atol=1e-6)
  untouched = np.arange(20, ROWS)
  np.testing.assert_array_equal(np.asarray(got["embed"]["table"])[untouched],
                                np.asarray(initial_params()["embed"]["table"])[untouched])


OPTIMIZERS = {
    "sparse_lazy_adam": lambda: el.sparse_lazy_adam(0.05, weight_decay=0.1),
    "sparse_adagrad": lambda: el.sparse_adagrad(optax.linear_schedule(0.3, 0.1, 5)),
    "sparse_rowwise_adagrad": lambda: el.sparse_rowwise_adagrad(0.3, weight_decay=0.01),
    "sparse_sgd": lambda: el.sparse_sgd(0.5),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_row_sparse_gives_the_sparse_optimizers_own_update(name, strategy):
  """The optax path and ``opt.update(table, state, row_ids, grads, unique=True)`` with the
  matching strategy: the same table and state over several steps."""
  opt = OPTIMIZERS[name]()
  tx = el.row_sparse(opt)
  params = {"table": initial_params()["embed"]["table"]}
  table, state = params["table"], opt.init(params["table"])
  tx_state = tx.init(params)

  def table_loss(p, ids):
    return jnp.sum(jnp.sin(el.bag(p, ids, mode="sum", padding_id=PAD)) * jnp.arange(1.0, 5.0))

  @jax.jit
  def optax_step(params, tx_state, ids):
    _, grads = el.value_and_row_grad(table_loss, params, ids, padding_id=PAD, strategy=strategy)
    updates, tx_state = tx.update(grads, tx_state, params)
    return el.apply_updates(params, updates), tx_state

  @jax.jit
  def own_step(table, state, ids):
    local = localize(table, ids, padding_id=PAD, strategy=strategy)
    grads = jax.grad(table_loss)(local.params, local.ids)["table"]
    return opt.update(table, state, local.row_ids, grads, unique=True,
                      strategy="dense" if strategy == "table" else "rows")

  for ids, _ in batches(5):
    params, tx_state = optax_step(params, tx_state, ids)
    table, state = own_step(table, state, ids)
  # the rows strategy: the same operations, bit for bit; the dense one: XLA may fuse the
  # multiply-add of the change into the table differently (float rounding)
  tol = {"rtol": 0, "atol": 0} if strategy == "rows" else {"rtol": 1e-6, "atol": 1e-7}
  np.testing.assert_allclose(np.asarray(params["table"]), np.asarray(table), **tol)
  for got, want in zip(jax.tree.leaves(tx_state["table"]), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
  assert int(tx_state["table"].count) == 5


def test_apply_if_finite_around_row_sparse_skips_a_non_finite_step():
  tx = optax.apply_if_finite(el.row_sparse(el.sparse_lazy_adam(0.05)), max_consecutive_errors=5)
  params = {"table": initial_params()["embed"]["table"]}
  state = tx.init(params)

  @jax.jit
  def step(params, state, ids, scale):
    _, grads = el.value_and_row_grad(
        lambda p, i: scale * jnp.sum(el.bag(p, i, padding_id=PAD) ** 2), params, ids,
        padding_id=PAD)
    updates, state = tx.update(grads, state, params)
    return el.apply_updates(params, updates), state

  (ids, _), (ids2, _) = batches(2)
  after, state = step(params, state, ids, 1.0)
  assert int(state.notfinite_count) == 0 and int(state.inner_state["table"].count) == 1
  moved = np.any(np.asarray(after["table"]) != np.asarray(params["table"]), axis=1)
  assert set(np.flatnonzero(moved).tolist()) == set(np.asarray(ids).ravel().tolist()) - {PAD}
  skipped, state2 = step(after, state, ids2, jnp.nan)
  np.testing.assert_array_equal(np.asarray(skipped["table"]), np.asarray(after["table"]))
  assert int(state2.notfinite_count) == 1 and bool(state2.last_finite) is False
  for a, b in zip(jax.tree.leaves(state2.inner_state), jax.tree.leaves(state.inner_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _step_with(tx):
  params = initial_params()
  ids, labels = batches(1)[0]

  @jax.jit
  def step(params):
    _, grads = el.value_and_row_grad(loss_fn, params, ids, labels, padding_id=PAD)
    updates, _ = tx.update(grads, tx.init(params), params)
    return el.apply_updates(params, updates)

  return step(params)


def test_multi_steps_says_it_cannot_accumulate_a_row_grad_and_what_to_do():
  tx = optax.multi_transform({"rows": optax.MultiSteps(el.row_sparse(el.sparse_sgd(0.1)), 2),
                              "dense": optax.sgd(0.1)}, LABELS)
  with pytest.raises(TypeError, match=r"embed/table is a .*not a RowGrad \(it came through "
                                      r"optax .*MultiSteps.*instead of optax.MultiSteps"):
    _step_with(tx)


def test_a_dense_optimizer_given_a_row_grad_names_itself_and_the_fix():
  with pytest.raises(ValueError, match=r"embedlab.RowGrad \(a row-sparse gradient, which optax "
                                       r".*scale_by_adam.* cannot take.*optax.multi_transform"):
    _step_with(optax.adam(0.1))
  with pytest.raises(ValueError, match=r"row_sparse.init: parameter out/b has shape \(3,\), not "
                                       r"a table"):
    _step_with(el.row_sparse(el.sparse_sgd(0.1)))
  with pytest.raises(TypeError, match=r"RowGrad: a row-sparse gradient met an operation"):
    _ = 2.0 * el.RowGrad(jnp.array([1]), jnp.ones((1, 2)), num_rows=3)
  with pytest.raises(TypeError, match=r"x \+ RowGrad` needs x to be the table of shape \(3, 2\)"):
    _ = jnp.ones((4, 2)) + el.RowGrad(jnp.array([1]), jnp.ones((1, 2)), num_rows=3)
  with pytest.raises(TypeError, match=r"row_sparse: expected one of embedlab.core.sparse's"):
    el.row_sparse(optax.sgd(0.1))


def test_freeze_rows_keeps_frozen_rows_of_a_row_grad_update():
  ids, labels = batches(1)[0]
  touched = sorted(set(np.asarray(ids).ravel().tolist()) - {PAD})
  trainable = np.ones(ROWS, bool)
  trainable[touched[:2]] = False
  tx = optax.multi_transform(
      {"rows": optax.chain(el.row_sparse(el.sparse_sgd(0.5)),
                           el.freeze_rows({"embed/table": trainable})),
       "dense": optax.sgd(0.5)}, LABELS)
  before = np.asarray(initial_params()["embed"]["table"])
  after = np.asarray(_step_with(tx)["embed"]["table"])
  moved = set(np.flatnonzero(np.any(after != before, axis=1)).tolist())
  assert moved == set(touched[2:])


def test_weight_decay_needs_params_and_row_sparse_keeps_non_finite_rows():
  tx = el.row_sparse(el.sparse_sgd(1.0, weight_decay=0.1))
  table = jnp.ones((3, 2))
  grads = {"t": el.RowGrad(jnp.array([0, 2]), jnp.array([[1.0, 1.0], [jnp.inf, 0.0]]),
                           num_rows=3)}
  with pytest.raises(ValueError, match=r"weight decay needs the params"):
    tx.update(grads, tx.init({"t": table}))
  updates, _ = tx.update(grads, tx.init({"t": table}), {"t": table})
  new = el.apply_updates({"t": table}, updates)["t"]
  np.testing.assert_allclose(np.asarray(new), [[-0.1, -0.1], [1, 1], [1, 1]], rtol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_row_mask_keeps_frozen_rows_and_their_state_as_the_optimizers_row_mask(strategy):
  """``value_and_row_grad(row_mask=...)`` + ``row_sparse``: frozen rows are read but neither
  they nor their slots change (``freeze_rows`` would still move the slots), as
  ``opt.update(..., row_mask=...)``; the trainable rows get that update's numbers."""
  opt = el.sparse_lazy_adam(0.05, weight_decay=0.1)
  tx = el.row_sparse(opt)
  trainable = np.arange(ROWS) % 3 != 1  # rows 1, 4, 7, ... frozen: some in every batch
  params = {"table": initial_params()["embed"]["table"]}
  table, state, tx_state = params["table"], opt.init(params["table"]), tx.init(params)
  start = np.asarray(table)

  def table_loss(p, ids):
    return jnp.sum(jnp.sin(el.bag(p, ids, mode="sum", padding_id=PAD)) * jnp.arange(1.0, 5.0))

  @jax.jit
  def optax_step(params, tx_state, ids):
    _, grads = el.value_and_row_grad(table_loss, params, ids, padding_id=PAD, strategy=strategy,
                                     row_mask=trainable)
    updates, tx_state = tx.update(grads, tx_state, params)
    return el.apply_updates(params, updates), tx_state

  @jax.jit
  def own_step(table, state, ids):
    local = localize(table, ids, padding_id=PAD, strategy=strategy)
    grads = jax.grad(table_loss)(local.params, local.ids)["table"]
    return opt.update(table, state, local.row_ids, grads, unique=True, row_mask=trainable,
                      strategy="dense" if strategy == "table" else "rows")

  used = set()
  for ids, _ in batches(4):
    used |= set(np.asarray(ids).ravel().tolist()) - {PAD}
    params, tx_state = optax_step(params, tx_state, ids)
    table, state = own_step(table, state, ids)
  got, mu, nu = (np.asarray(x) for x in (params["table"], tx_state["table"].mu,
                                         tx_state["table"].nu))
  frozen_used = sorted(i for i in used if not trainable[i])
  trained = sorted(i for i in used if trainable[i])
  assert frozen_used and trained
  np.testing.assert_array_equal(got[frozen_used], start[frozen_used])
  assert not np.any(mu[frozen_used]) and not np.any(nu[frozen_used])
  assert np.all(np.any(got[trained] != start[trained], axis=1)) and np.all(np.any(nu[trained], 1))
  tol = {"rtol": 0, "atol": 0} if strategy == "rows" else {"rtol": 1e-6, "atol": 1e-7}
  np.testing.assert_allclose(got, np.asarray(table), **tol)
  for a, b in zip(jax.tree.leaves(tx_state["table"]), jax.tree.leaves(state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **tol)


def test_row_mask_of_the_wrong_shape_says_what_it_needs():
  params = {"embed": {"table": jnp.ones((5, 2))}}
  with pytest.raises(ValueError, match=r"row_mask must be a bool array of shape \(5,\), one entry "
                                       r"per row of the table embed/table.*got shape \(4,\)"):
    el.value_and_row_grad(lambda p, i: 0.0, params, jnp.array([1]), row_mask=np.ones(4, bool))


@pytest.mark.parametrize("rows", [40, 4000])  # localize's "table" strategy, its "rows" one
def test_the_runners_row_sparse_step_is_the_optimizers_own_update_frozen_rows_kept(rows):
  """``embedlab.run.steps``' row-sparse step (through ``value_and_row_grad``, ``row_sparse``,
  ``apply_updates``) against a hand-written step on the optimizer's own ``update`` with its
  ``row_mask`` and ``skip_ids``: the same table and slots, with dropout, weight decay and
  frozen rows whose slots never move."""
  from embedlab.models import classifiers as models_lib
  from embedlab.run import steps as steps_lib
  model = models_lib.make_model("bag", models_lib.make_embedder(rows, FEATURES), CLASSES,
                                pooling="mean", hidden=6, dropout=0.3)
  params = model.init(jax.random.key(1))
  trainable = jnp.asarray(np.arange(rows) % 3 != 1)
  opt, dense_opt = el.sparse_lazy_adam(0.05, weight_decay=0.1), optax.sgd(0.1)
  table, dense = steps_lib.split_table(params)
  opt_state = {"dense": dense_opt.init(dense), "table": opt.init(table)}
  state = steps_lib.TrainState(jnp.array(0), params, opt_state, jax.random.key(2))
  step = jax.jit(steps_lib.make_train_step(model, dense_opt, table_optimizer=opt,
                                           row_mask=trainable, oob="clip"))

  @jax.jit
  def own_step(params, opt_state, step_count, ids, labels):
    rng = jax.random.fold_in(state.rng, step_count)
    table, dense = steps_lib.split_table(params)
    local = localize(table, ids, padding_id=PAD)

    def loss(dense, local_table):
      logits = model.apply(steps_lib.join_table(dense, local_table), local.ids, train=True,
                           rng=rng, rows=True)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.sum(losses * jnp.ones(labels.shape, jnp.float32)) / labels.shape[0]  # as steps

    g_dense, g_rows = jax.grad(loss, argnums=(0, 1))(dense, local.params["table"])
    updates, dense_state = dense_opt.update(g_dense, opt_state["dense"], dense)
    table, table_state = opt.update(table, opt_state["table"], local.row_ids, g_rows,
                                    unique=True, row_mask=trainable, skip_ids=(PAD,))
    return (steps_lib.join_table(optax.apply_updates(dense, updates), table),
            {"dense": dense_state, "table": table_state})

  own_params, own_state, used = params, opt_state, set()
  for i, (ids, labels) in enumerate(batches(3)):
    used |= set(np.asarray(ids).ravel().tolist()) - {PAD}
    state, sums = step(state, ids, labels)
    own_params, own_state = own_step(own_params, own_state, i, ids, labels)
    assert float(sums["nonfinite"]) == 0
  # up to float rounding: two programs, and XLA may contract a multiply-add in one of them only
  tol = {"rtol": 1e-6, "atol": 1e-7}
  for got, want in zip(jax.tree.leaves((state.params, state.opt_state)),
                       jax.tree.leaves((own_params, own_state))):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
  frozen = sorted(i for i in used if not trainable[i])
  assert frozen and int(state.opt_state["table"].count) == 3
  np.testing.assert_array_equal(np.asarray(state.params["embed"]["table"])[frozen],
                                np.asarray(table)[frozen])
  assert not np.any(np.asarray(state.opt_state["table"].nu)[frozen])


def test_a_sparse_optimizer_used_as_an_optax_transformation_says_how_to_wrap_it():
  # the optimizer's own (init, update) take a table and its touched rows: chained as optax
  # chains a transformation, each call names embedlab.row_sparse
  params = {"table": jnp.ones((5, 2)), "w": jnp.ones(2)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), el.sparse_lazy_adam(0.1))
  with pytest.raises(ValueError, match=r"got dict.*embedlab\.row_sparse\(<optimizer>\)"):
    tx.init(params)
  tx = optax.chain(optax.clip_by_global_norm(1.0), el.sparse_sgd(0.1))
  state = tx.init(params["table"])
  with pytest.raises(TypeError, match=r"not optax's \(updates, state, params\).*row_sparse"):
    tx.update(jnp.ones((5, 2)), state, params["table"])
