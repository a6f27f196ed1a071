"""Row-sparse optimizers (embedlab/core/sparse.py) against dense optax and numpy references, under jit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedlab as el
from embedlab.core import sparse
from embedlab.core import sparse_rules
from embedlab.core.localize import localize, sum_duplicates

ROWS, FEATURES, PAD = 13, 4, 0


def batches(steps, seed=0, batch=3, bag_len=6):
  """Batches with duplicates (within and across bags), padding and an empty bag."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(steps):
    ids = rng.integers(1, 8, size=(batch, bag_len)).astype(np.int32)  # rows 8.. never used
    ids[0, 3:] = PAD
    ids[1, 1] = ids[1, 0]
    ids[-1] = PAD if len(out) % 2 else ids[-1]
    weights = rng.uniform(0.5, 2.0, size=ids.shape).astype(np.float32)
    out.append((jnp.asarray(ids), jnp.asarray(weights)))
  return out


def initial_table(seed=0):
  table = np.random.default_rng(seed).normal(size=(ROWS, FEATURES)).astype(np.float32)
  table[PAD] = 0
  return jnp.asarray(table)


def loss_fn(params, ids, weights):
  pooled = el.bag(params, ids, mode="mean", weights=weights, padding_id=PAD)
  return jnp.sum(jnp.sin(pooled) * jnp.arange(1.0, pooled.shape[-1] + 1))


def train_dense(tx, steps, seed=0):
  params = {"table": initial_table()}
  state = tx.init(params)

  @jax.jit
  def step(params, state, ids, weights):
    grads = jax.grad(loss_fn)(params, ids, weights)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for ids, weights in batches(steps, seed):
    params, state = step(params, state, ids, weights)
  return params["table"]


def make_sparse_step(opt, localize_strategy="auto", **update_kwargs):
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(table, state, ids, weights):
    local = localize(table, ids, padding_id=PAD, strategy=localize_strategy)
    grads = jax.grad(loss_fn)(local.params, local.ids, weights)
    return opt.update(table, state, local.row_ids, grads["table"], unique=True, **update_kwargs)
  return step


def train_sparse(opt, steps, seed=0, **update_kwargs):
  table = initial_table()
  state = opt.init(table)
  step = make_sparse_step(opt, **update_kwargs)
  for ids, weights in batches(steps, seed):
    table, state = step(table, state, ids, weights)
  return table, state


# (localize strategy, update strategy): the table's own rows and a dense update (what "auto"
# takes for these 13-row tables), and the batch's rows gathered with a sparse update
BOTH = [("table", "dense"), ("rows", "rows")]


@pytest.mark.parametrize("localize_strategy,strategy", BOTH)
def test_sparse_sgd_equals_dense_sgd(localize_strategy, strategy):
  dense = train_dense(optax.sgd(0.3), steps=6)
  table, _ = train_sparse(sparse.sparse_sgd(0.3), steps=6, localize_strategy=localize_strategy,
                          strategy=strategy)
  # the rows strategy scatter-adds -lr * g, the dense one (and optax) may fuse a multiply-add
  np.testing.assert_allclose(table, dense, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(table[PAD], 0)
  np.testing.assert_array_equal(table[8:], initial_table()[8:])


def test_update_sums_duplicate_ids_like_the_dense_gradient():
  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(-1, ROWS + 2, size=40).astype(np.int32))  # dups, out of range
  grads = jnp.asarray(rng.normal(size=(40, FEATURES)).astype(np.float32))
  valid = (ids >= 0) & (ids < ROWS)
  dense_grad = jnp.zeros((ROWS, FEATURES)).at[jnp.where(valid, ids, ROWS)].add(grads, mode="drop")
  opt = sparse.sparse_sgd(1.0)
  table, _ = jax.jit(opt.update)(initial_table(), opt.init(initial_table()), ids, grads)
  np.testing.assert_array_equal(table, initial_table() - dense_grad)
  unique, summed = jax.jit(sum_duplicates, static_argnums=2)(ids, grads, ROWS)
  real = np.asarray(unique) < ROWS
  assert sorted(np.asarray(unique)[real]) == sorted(set(np.asarray(ids)[np.asarray(valid)]))
  np.testing.assert_array_equal(np.asarray(summed)[real], np.asarray(dense_grad)[unique[real]])
  np.testing.assert_array_equal(np.asarray(summed)[~real], 0)


@pytest.mark.parametrize("localize_strategy,strategy", BOTH)
def test_sparse_adagrad_equals_dense_adagrad_and_leaves_untouched_rows(localize_strategy,
                                                                       strategy):
  dense = train_dense(optax.adagrad(0.2), steps=5)
  table, state = train_sparse(sparse.sparse_adagrad(0.2), steps=5,
                              localize_strategy=localize_strategy, strategy=strategy)
  np.testing.assert_allclose(table, dense, rtol=2e-6, atol=1e-7)
  np.testing.assert_array_equal(table[8:], initial_table()[8:])
  np.testing.assert_array_equal(state.sum_of_squares[8:], np.float32(0.1))
  np.testing.assert_array_equal(state.sum_of_squares[PAD], np.float32(0.1))


def reference_rows(name, steps, lr, weight_decay, b1=0.9, b2=0.999, eps=1e-8, seed=0):
  """numpy reference of the documented rules, from the numpy row gradients of each step."""
  table = np.asarray(initial_table(), np.float64)
  m, v = np.zeros_like(table), np.zeros_like(table)
  acc = np.zeros(ROWS) if name == "rowwise" else None
  for t, (ids, weights) in enumerate(batches(steps, seed), start=1):
    grad = np.asarray(jax.grad(loss_fn)({"table": jnp.asarray(table, jnp.float32)}, ids,
                                        weights)["table"], np.float64)
    touched = np.unique(np.asarray(ids)[np.asarray(ids) != PAD])
    g, w = grad[touched], table[touched]
    if name == "adam":
      m[touched] = b1 * m[touched] + (1 - b1) * g
      v[touched] = b2 * v[touched] + (1 - b2) * g * g
      step = np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[touched] / (np.sqrt(v[touched]) + eps)
    else:
      acc[touched] += (g * g).mean(1)
      step = g / (np.sqrt(acc[touched]) + eps)[:, None]
    table[touched] = w - lr * (step + weight_decay * w)
  return table


@pytest.mark.parametrize("localize_strategy,strategy", BOTH)
def test_lazy_adam_matches_numpy_reference_of_its_rule(localize_strategy, strategy):
  schedule = optax.linear_schedule(0.05, 0.01, 4)
  table, state = train_sparse(sparse.sparse_lazy_adam(schedule, weight_decay=0.1), steps=4,
                              localize_strategy=localize_strategy, strategy=strategy)
  # The reference uses the schedule's values: count 0..3.
  expected = initial_table()
  ref = np.asarray(expected, np.float64)
  m, v = np.zeros_like(ref), np.zeros_like(ref)
  for t, (ids, weights) in enumerate(batches(4), start=1):
    grad = np.asarray(jax.grad(loss_fn)({"table": jnp.asarray(ref, jnp.float32)}, ids,
                                        weights)["table"], np.float64)
    touched = np.unique(np.asarray(ids)[np.asarray(ids) != PAD])
    lr = float(schedule(t - 1))
    g, w = grad[touched], ref[touched]
    m[touched] = 0.9 * m[touched] + 0.1 * g
    v[touched] = 0.999 * v[touched] + 0.001 * g * g
    step = np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m[touched] / (np.sqrt(v[touched]) + 1e-8)
    ref[touched] = w - lr * (step + 0.1 * w)
  np.testing.assert_allclose(table, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.mu, m, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(table[8:], initial_table()[8:])
  assert int(state.count) == 4


def test_lazy_adam_untouched_rows_keep_moments_unlike_dense_adam():
  opt = sparse.sparse_lazy_adam(0.1)
  table, state = initial_table(), opt.init(initial_table())
  update = jax.jit(opt.update)
  table, state = update(table, state, jnp.array([3]), jnp.ones((1, FEATURES)))
  moved = table[3]
  table, state = update(table, state, jnp.array([5]), jnp.ones((1, FEATURES)))
  np.testing.assert_array_equal(table[3], moved)        # dense Adam would move row 3 again
  np.testing.assert_allclose(state.mu[3], 0.1)           # and decay its momentum


def test_lazy_adam_equals_dense_adam_when_every_row_is_touched_and_eps_is_zero():
  rng = np.random.default_rng(4)
  opt, tx = sparse.sparse_lazy_adam(0.01, eps=0.0), optax.adam(0.01, eps=0.0)
  table, state = initial_table(), opt.init(initial_table())
  params, tx_state = initial_table(), tx.init(initial_table())
  ids = jnp.concatenate([jnp.arange(ROWS), jnp.arange(ROWS)])  # every row, duplicated
  for _ in range(5):
    g = jnp.asarray(rng.normal(size=(2 * ROWS, FEATURES)).astype(np.float32))
    table, state = jax.jit(opt.update)(table, state, ids, g)
    dense_grad = g[:ROWS] + g[ROWS:]
    updates, tx_state = tx.update(dense_grad, tx_state)
    params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(table, params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("localize_strategy,strategy", BOTH)
def test_rowwise_adagrad_matches_numpy_reference(localize_strategy, strategy):
  table, state = train_sparse(sparse.sparse_rowwise_adagrad(0.1, weight_decay=0.05), steps=4,
                              localize_strategy=localize_strategy, strategy=strategy)
  expected = reference_rows("rowwise", 4, lr=0.1, weight_decay=0.05)
  np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)
  assert state.sum_of_squares.shape == (ROWS,)


@pytest.mark.parametrize("name", sorted(sparse.SPARSE_OPTIMIZERS))
def test_frozen_and_skipped_rows_never_change(name):
  opt = sparse.get_sparse_optimizer(name, 0.5, weight_decay=0.3)
  frozen = jnp.zeros(ROWS, bool).at[jnp.array([2, 5])].set(True)
  table, state = initial_table(), opt.init(initial_table())
  ids = jnp.array([1, 2, 5, 5, 6, 6, 9, 9])
  grads = jnp.ones((8, FEATURES))
  new_table, new_state = jax.jit(
      functools.partial(opt.update, row_mask=~frozen, skip_ids=(9,)))(table, state, ids, grads)
  for row in (0, 2, 5, 9):
    np.testing.assert_array_equal(new_table[row], table[row])
    for before, after in zip(state[1:], new_state[1:]):
      np.testing.assert_array_equal(after[row], before[row])
  for row in (1, 6):
    assert not np.allclose(new_table[row], table[row])


def test_jitted_sparse_step_compiles_once_and_updates_in_place():
  traces = []
  opt = sparse.sparse_lazy_adam(0.01)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(table, state, ids, weights):
    traces.append(1)
    local = localize(table, ids, padding_id=PAD)
    grads = jax.grad(loss_fn)(local.params, local.ids, weights)
    return opt.update(table, state, local.row_ids, grads["table"], unique=True)

  rows, features = 1 << 16, 16
  table = jnp.zeros((rows, features))
  state = opt.init(table)
  ids0, w0 = batches(1)[0]
  compiled = step.lower(table, state, ids0, w0).compile()
  memory = compiled.memory_analysis()
  table_bytes = rows * features * 4
  assert memory.alias_size_in_bytes >= 3 * table_bytes      # table, mu, nu written in place
  assert memory.temp_size_in_bytes < table_bytes // 4        # no table-sized temporary
  for ids, weights in batches(5, seed=7):
    old = table
    table, state = step(table, state, ids, weights)
    assert old.is_deleted()                                  # donated buffer reused
  assert len(traces) == 1


def test_localize_gives_the_model_the_same_numbers():
  table = initial_table()
  ids = batches(1, seed=3)[0][0]
  local = localize(table, ids, padding_id=PAD, strategy="rows")
  assert local.params["table"].shape == (ids.size + 1, FEATURES)
  np.testing.assert_array_equal(el.lookup(local.params, local.ids, padding_id=PAD),
                                el.lookup({"table": table}, ids, padding_id=PAD))
  real_rows = np.asarray(local.row_ids) < ROWS
  np.testing.assert_array_equal(np.sort(np.asarray(local.row_ids)[real_rows]),
                                np.unique(np.asarray(ids)[np.asarray(ids) != PAD]))
  other = localize({"table": table}, jnp.array([[4, 3, 3]]), padding_id=3)
  np.testing.assert_array_equal(
      el.bag(other.params, other.ids, mode="sum", padding_id=3), table[4][None])
  unpadded = localize(table, jnp.array([4, 4, 0]), padding_id=None)
  np.testing.assert_array_equal(el.lookup(unpadded.params, unpadded.ids), table[jnp.array([4, 4, 0])])


def test_localize_table_strategy_uses_the_table_itself_and_marks_the_touched_rows():
  table = initial_table()
  ids = batches(1, seed=3)[0][0]
  assert localize(table, ids, padding_id=PAD).params["table"].shape == (ROWS, FEATURES)
  local = jax.jit(functools.partial(localize, padding_id=PAD, strategy="table"))(table, ids)
  np.testing.assert_array_equal(local.params["table"], table)
  np.testing.assert_array_equal(local.ids, ids)
  touched = np.isin(np.arange(ROWS), np.asarray(ids)[np.asarray(ids) != PAD])
  np.testing.assert_array_equal(local.row_ids, np.where(touched, np.arange(ROWS), ROWS))
  unpadded = localize(table, jnp.array([4, 4, 0]), padding_id=None, strategy="table")
  np.testing.assert_array_equal(np.asarray(unpadded.row_ids)[[0, 1, 4, 5]], [0, ROWS, 4, ROWS])
  # a bigger table than the batch has ids: the batch's rows gathered
  big = jnp.zeros((1000, FEATURES))
  assert localize(big, ids, padding_id=PAD).params["table"].shape == (ids.size + 1, FEATURES)
  assert localize(big, ids, gather=lambda t, i: jnp.take(t, i, axis=0, mode="fill",
                                                         fill_value=0),
                  padding_id=PAD).params["table"].shape == (ids.size + 1, FEATURES)


def test_update_strategy_rule():
  assert sparse_rules.choose_update_strategy(200, 100, "cpu") == "dense"
  assert sparse_rules.choose_update_strategy(201, 100, "cpu") == "rows"
  assert sparse_rules.choose_update_strategy(10, 100, "gpu") == "rows"
  opt = sparse.sparse_sgd(0.1)
  with pytest.raises(ValueError, match="strategy='sorted' is not 'auto' or one of rows, dense"):
    opt.update(initial_table(), opt.init(initial_table()), jnp.array([1]), jnp.ones((1, 4)),
               strategy="sorted")
  with pytest.raises(ValueError, match="strategy='sorted' is not 'auto', 'rows' or 'table'"):
    localize(initial_table(), jnp.array([1]), strategy="sorted")


def numpy_update(name, hyper, table, slots, count, ids, grads, row_mask=None, skip_ids=()):
  """One step of ``name``'s documented rule in numpy (float32, duplicates summed in the order
  of ``ids``), as a plain loop over the touched rows: ``(table, slots)``."""
  lr, wd = hyper["learning_rate"], hyper.get("weight_decay", 0.0)
  table, slots = table.copy(), [s.copy() for s in slots]
  rows = table.shape[0]
  summed = {}
  for i, g in zip(ids.tolist(), grads):
    if 0 <= i < rows and i not in skip_ids and (row_mask is None or row_mask[i]):
      summed[i] = summed[i] + g if i in summed else g.copy()
  f32 = np.float32
  t = count + 1
  for i, g in summed.items():
    w = table[i]
    if name == "sparse_sgd":
      step = g
    elif name == "sparse_adagrad":
      slots[0][i] = slots[0][i] + g * g
      step = g / np.sqrt(slots[0][i] + f32(1e-7))
    elif name == "sparse_rowwise_adagrad":
      slots[0][i] = slots[0][i] + np.mean(g * g)
      step = g / (np.sqrt(slots[0][i]) + f32(1e-8))
    else:
      slots[0][i] = f32(0.9) * slots[0][i] + f32(0.1) * g
      slots[1][i] = f32(0.999) * slots[1][i] + f32(0.001) * g * g
      scale = f32(np.sqrt(1 - f32(0.999) ** f32(t)) / (1 - f32(0.9) ** f32(t)))
      step = scale * slots[0][i] / (np.sqrt(slots[1][i]) + f32(1e-8))
    table[i] = w + f32(-lr) * (step + f32(wd) * w)
  return table, slots


@pytest.mark.parametrize("rows", [12, 40, 300])  # fewer, as many (40 ids) and more rows
@pytest.mark.parametrize("strategy", ["auto", "rows", "dense"])
@pytest.mark.parametrize("name", sorted(sparse.SPARSE_OPTIMIZERS))
def test_every_optimizer_and_strategy_matches_a_numpy_step(name, strategy, rows):
  hyper = {"learning_rate": 0.05, "weight_decay": 0.1 if rows == 12 else 0.0}
  opt = sparse.get_sparse_optimizer(name, **hyper)
  rng = np.random.default_rng(rows)
  table = rng.normal(size=(rows, FEATURES)).astype(np.float32)
  state = opt.init(jnp.asarray(table))
  slots = [np.asarray(s) for s in state[1:]]
  row_mask = rng.random(rows) > 0.1
  update = jax.jit(functools.partial(opt.update, skip_ids=(PAD,), strategy=strategy),
                   donate_argnums=(0, 1), static_argnames="unique")
  new_table, new_state = jnp.asarray(table), state
  for count in range(4):
    # duplicates (ids drawn from 20 rows), padding, out of range (-1, rows), every 4th step
    # with frozen rows; half the steps as distinct ids (unique=True)
    ids = rng.integers(-1, min(rows, 20) + 1, size=40).astype(np.int32)
    ids[ids == min(rows, 20)] = rows
    ids[:5] = PAD
    grads = rng.normal(size=(40, FEATURES)).astype(np.float32)
    unique = count % 2 == 1
    if unique:
      first = np.zeros(40, bool)
      first[np.unique(ids, return_index=True)[1]] = True
      ids = np.where(first, ids, rows)
    mask = row_mask if count == 3 else None
    table, slots = numpy_update(name, hyper, table, slots, count, ids, grads, mask, (PAD,))
    new_table, new_state = update(new_table, new_state, jnp.asarray(ids), jnp.asarray(grads),
                                  unique=unique,
                                  row_mask=None if mask is None else jnp.asarray(mask))
    assert int(new_state.count) == count + 1
    # float rounding: XLA may fuse a multiply-add (one rounding) where numpy rounds twice,
    # and the difference grows over the steps
    np.testing.assert_allclose(new_table, table, rtol=5e-6, atol=2e-7)
    for got, want in zip(new_state[1:], slots):
      np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-8)
  untouched = np.ones(rows, bool)
  untouched[:min(rows, 20)] = False
  untouched[PAD] = True
  np.testing.assert_array_equal(np.asarray(new_table)[untouched], table[untouched])


def test_errors_say_what_and_how_to_fix():
  table = initial_table()
  with pytest.raises(ValueError, match=r"id 13 at position \(0, 1\) is outside the table"):
    localize(table, jnp.array([[1, 13]]))
  with pytest.raises(ValueError, match="padding_id 5 must be in 0..2"):
    localize(table, jnp.array([1, 2]), padding_id=5)
  opt = sparse.sparse_sgd(0.1)
  with pytest.raises(ValueError, match="Flatten the batch's ids"):
    opt.update(table, opt.init(table), jnp.ones((2, 2), jnp.int32), jnp.ones((4, FEATURES)))
  with pytest.raises(ValueError, match="use one of sparse_adagrad, sparse_lazy_adam"):
    sparse.slot_bytes("adam", (3, 2))


@pytest.mark.parametrize("name", sorted(sparse.SPARSE_OPTIMIZERS))
def test_slot_bytes_match_the_state(name):
  state = sparse.get_sparse_optimizer(name, 0.1).init(jnp.zeros((100, 8)))
  actual = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
  assert sparse.slot_bytes(name, (100, 8)) == actual


@pytest.mark.parametrize("name", ["sparse_sgd", "sparse_adagrad", "sparse_rowwise_adagrad",
                                  "sparse_lazy_adam"])
@pytest.mark.parametrize("strategy", ["rows", "dense"])
def test_a_row_whose_update_overflows_is_not_written(name, strategy):
  table = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
  opt = sparse.get_sparse_optimizer(name, 1e10)
  ids = jnp.array([1, 2])
  # finite gradients; row 2's squares (the adaptive optimizers' state) or, for SGD, its change
  # (1e10 x 1e30) overflow float32
  grads = jnp.array([[1e-3, 0.0, 0.0], [1e30, 5e29, 2e29]], jnp.float32)
  new, state = opt.update(table, opt.init(table), ids, grads, unique=True, strategy=strategy)
  new = np.asarray(new)
  assert np.isfinite(new).all()
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))
  np.testing.assert_array_equal(new[2], np.asarray(table)[2])  # left as it was
  np.testing.assert_array_equal(np.delete(new, [1, 2], 0), np.delete(np.asarray(table), [1, 2], 0))
  if opt.add is not None:
    added, _ = opt.add(table, opt.init(table), ids, grads)
    assert np.isfinite(np.asarray(added)).all()
    np.testing.assert_array_equal(np.asarray(added)[2], np.asarray(table)[2])


@pytest.mark.parametrize("name", sorted(sparse.SPARSE_OPTIMIZERS))
@pytest.mark.parametrize("whole_table", [False, True])
def test_a_rules_cheaper_check_keeps_the_rows_the_full_check_keeps(name, whole_table):
  # a Rule's ``check`` (lazy Adam: the squared gradients) stands in for checking the gradients
  # and the new slots: on finite old slots and gradients with every kind of bad value, the
  # same rows are kept, with the same change and slots
  opt = sparse.get_sparse_optimizer(name, 0.5)
  rng = np.random.default_rng(3)
  rows = 64
  grads = rng.normal(size=(rows, FEATURES)).astype(np.float32)
  # lazy Adam's check of float32 squares rejects |g| in (1.8e19, 5.8e20), where its moments
  # would stay finite: left out here, tested on its own below
  bad = [np.nan, np.inf, -np.inf, 1e19, -1.8e19, 6e20, 1e30, 3.4e38, 1e-30]
  for i, value in enumerate(bad):  # rows 0..8 one bad value, rows 9..17 a whole bad row
    grads[i, i % FEATURES] = value
    grads[len(bad) + i] = value
  state = opt.init(jnp.zeros((rows, FEATURES)))
  slots = tuple(jnp.asarray(rng.uniform(0.0, 1e3, np.shape(s)), s.dtype) for s in state[1:])
  args = (jnp.asarray(grads), slots, jnp.asarray(3), jnp.asarray(0.5, jnp.float32))
  full = opt.rule._replace(check=None)
  got = sparse_rules.apply_rule(opt.rule, *args, whole_table=whole_table)
  want = sparse_rules.apply_rule(full, *args, whole_table=whole_table)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  assert not np.asarray(want[1])[:len(bad) * 2 - 1].all(axis=1).all()  # some rows rejected
  for g, w in zip(jax.tree.leaves((got[0], got[2])), jax.tree.leaves((want[0], want[2]))):
    kept = np.asarray(want[1])[:, 0]
    np.testing.assert_array_equal(np.asarray(g)[kept], np.asarray(w)[kept])


@pytest.mark.parametrize("dtype, gradient, kept", [
    (jnp.float32, 1.0e19, True), (jnp.float32, 1.9e19, False), (jnp.float32, 1e21, False),
    (jnp.float16, 300.0, True), (jnp.float16, 9000.0, False), (jnp.bfloat16, 1e19, True),
    (jnp.bfloat16, 1e20, True), (jnp.bfloat16, 1e36, False)])
def test_lazy_adam_rejects_a_row_whose_squared_gradient_overflows(dtype, gradient, kept):
  # float32/float64: the check reads the squares (rejects |g| > 1.8e19 in float32); 16-bit
  # tables: the moments themselves, (1 - b2) * g * g (float16: finite up to |g| ~ 8,000)
  opt = sparse.sparse_lazy_adam(0.1)  # a step bfloat16 can see on a weight of 1
  table = jnp.ones((4, 2), dtype)
  grads = jnp.array([[0.5, 0.5], [gradient, 0.0]], dtype)
  new, state = opt.update(table, opt.init(table), jnp.array([1, 2]), grads, unique=True)
  assert bool(jnp.all(jnp.isfinite(new))) and bool(jnp.all(jnp.isfinite(state.nu)))
  assert bool(jnp.any(new[2] != table[2])) == kept
  assert bool(jnp.any(new[1] != table[1]))


@pytest.mark.parametrize("name", sorted(sparse.SPARSE_OPTIMIZERS))
@pytest.mark.parametrize("in_place", [True, False])
def test_dense_update_of_a_whole_table_of_gradients(name, in_place):
  # V ids for V rows, as localize's "table" strategy hands them over: each row's own id or V
  # (in place), or the same ids shuffled (scattered); the gradients of untouched rows are
  # anything, even non-finite, and never read; a touched row whose update overflows is kept
  rows = 9
  hyper = {"learning_rate": 2.0, "weight_decay": 0.1}
  opt = sparse.get_sparse_optimizer(name, **hyper)
  rng = np.random.default_rng(1)
  table = rng.normal(size=(rows, FEATURES)).astype(np.float32)
  state = opt.init(jnp.asarray(table))
  state = state._replace(count=jnp.asarray(2, jnp.int32),
                         **{f: jnp.asarray(rng.uniform(0.1, 1.0, np.shape(s)), s.dtype)
                            for f, s in zip(state._fields[1:], state[1:])})
  slots = [np.asarray(s) for s in state[1:]]
  touched = np.array([0, 1, 1, 0, 1, 1, 0, 1, 0], bool)
  ids = np.where(touched, np.arange(rows), rows).astype(np.int32)
  grads = rng.normal(size=(rows, FEATURES)).astype(np.float32)
  grads[[0, 3, 6, 8]] = np.array([np.nan, np.inf, -np.inf, 1e30])[:, None]  # untouched
  grads[5] = 1e22  # finite, but its square (the adaptive slots) overflows
  if name == "sparse_sgd":
    grads[5] = 3e38  # finite, but lr * (grad + decay * row) overflows the table
  healthy = ids.copy()
  healthy[5] = rows
  want_table, want_slots = numpy_update(name, hyper, table, slots, 2, healthy, grads)
  if not in_place:
    order = rng.permutation(rows)
    ids, grads = ids[order], grads[order]
  update = jax.jit(functools.partial(opt.update, unique=True, strategy="dense"))
  new_table, new_state = update(jnp.asarray(table), state, jnp.asarray(ids), jnp.asarray(grads))
  np.testing.assert_allclose(new_table, want_table, rtol=5e-6, atol=2e-7)
  for got, want in zip(new_state[1:], want_slots):
    np.testing.assert_allclose(got, want, rtol=5e-6, atol=1e-8)
  np.testing.assert_array_equal(np.asarray(new_table)[~touched | (np.arange(rows) == 5)],
                                table[~touched | (np.arange(rows) == 5)])


_HYPERS = {"sparse_sgd": ["weight_decay"],
           "sparse_adagrad": ["weight_decay", "eps", "initial_accumulator_value"],
           "sparse_rowwise_adagrad": ["weight_decay", "eps", "initial_accumulator_value"],
           "sparse_lazy_adam": ["weight_decay", "eps", "b1", "b2"]}


@pytest.mark.parametrize("name", list(_HYPERS))
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "0.1", True, None,
                                 jnp.array(-1.0)])
def test_a_hyperparameter_no_run_could_mean_is_named(name, bad):
  # a NaN learning rate kept every row as it was (the per-row finiteness check), in silence
  make = getattr(el, name)
  with pytest.raises((ValueError, TypeError), match=rf"{name}: learning_rate must be a finite "
                                                    r"number >= 0 or an optax schedule, got"):
    make(bad)
  for key in _HYPERS[name]:
    with pytest.raises((ValueError, TypeError), match=rf"{name}: {key} must be"):
      make(0.1, **{key: bad})


@pytest.mark.parametrize("name", list(_HYPERS))
def test_the_edges_of_each_hyperparameter_range_are_accepted(name):
  make = getattr(el, name)
  table = jnp.ones((4, 2))
  for opt in (make(0.0), make(optax.linear_schedule(0.1, 0.0, 10)), make(jnp.float32(0.1)),
              make(np.float64(0.1), **{k: 0.0 for k in _HYPERS[name]})):
    state = opt.init(table)
    new, _ = opt.update(table, state, jnp.array([1]), jnp.ones((1, 2)))
    assert np.all(np.isfinite(np.asarray(new)))
  with pytest.raises(ValueError, match="must be a number in \\[0, 1\\)"):
    el.sparse_lazy_adam(0.1, b2=1.0)


def test_a_traced_learning_rate_is_left_to_the_caller():
  table = jnp.ones((4, 2))

  @jax.jit
  def step(lr):
    opt = el.sparse_sgd(lr)
    return opt.update(table, opt.init(table), jnp.array([1]), jnp.ones((1, 2)))[0]

  np.testing.assert_allclose(np.asarray(step(0.5))[1], [0.5, 0.5])
