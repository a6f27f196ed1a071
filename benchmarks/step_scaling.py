"""Train-step time against table size: dense optax Adam vs embedlab's row-sparse optimizers.

The model: mean bag of a [256, 64] batch of ids (about 1/4 padding) from a [V, 64] table, then a
dense [64, 16] layer and softmax cross-entropy. Dense: ``optax.adam`` on all parameters (the
table's gradient is a dense [V, 64] array). Sparse: ``embedlab.sparse.localize`` + lazy Adam or
row-wise Adagrad on the table (donated, updated in place), ``optax.adam`` on the dense layer.

  python benchmarks/step_scaling.py            # V = 2^14, 2^16, ..., 2^22
  python benchmarks/step_scaling.py --quick    # V = 2^14, 2^18

Prints a table, then one JSON line: ms/step per optimizer and size, and t(2^22) / t(2^14).
"""

import argparse
import functools
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import embedlab as el
from embedlab import sparse

FEATURES, BATCH, BAG_LEN, CLASSES, PAD = 64, 256, 64, 16, 0


def loss_fn(table_params, dense, ids, labels):
  pooled = el.bag(table_params, ids, mode="mean", padding_id=PAD)
  logits = pooled @ dense["w"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_dense_step():
  tx = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, ids, labels):
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn({"table": p["table"]}, p, ids, labels))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def init(table, w):
    params = {"table": table, "w": w}
    return (params, tx.init(params))

  return init, step


def make_sparse_step(opt):
  tx = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
  def step(table, table_state, dense, dense_state, ids, labels):
    local = sparse.localize(table, ids, padding_id=PAD)
    loss, (table_grads, dense_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
        local.params, dense, local.ids, labels)
    table, table_state = opt.update(table, table_state, local.row_ids, table_grads["table"],
                                    unique=True)
    updates, dense_state = tx.update(dense_grads, dense_state, dense)
    return table, table_state, optax.apply_updates(dense, updates), dense_state, loss

  def init(table, w):
    dense = {"w": w}
    return (table, opt.init(table), dense, tx.init(dense))

  return init, step


def random_table(rows, chunk_rows=1 << 16):
  """A N(0, 0.1^2) table [rows, FEATURES], filled in place chunk by chunk: generating it in one
  go would hold several table-sized temporaries (the random bits) and inflate peak memory."""

  @functools.partial(jax.jit, donate_argnums=0)
  def fill(table, start):
    key = jax.random.fold_in(jax.random.key(0), start)
    block = jax.random.normal(key, (min(chunk_rows, rows), FEATURES)) * 0.1
    return jax.lax.dynamic_update_slice(table, block, (start, 0))

  table = jnp.zeros((rows, FEATURES))
  for start in range(0, rows, chunk_rows):
    table = fill(table, start)
  return table


def time_steps(init, step, rows, batches, repeats):
  """Median ms/step over ``repeats`` steps after one compile-and-warm-up step."""
  table = random_table(rows)
  w = jax.random.normal(jax.random.key(1), (FEATURES, CLASSES)) * 0.1
  state = init(table, w)
  del table, w
  times = []
  for i in range(repeats + 1):
    ids, labels = batches[i % len(batches)]
    start = time.perf_counter()
    *state, loss = step(*state, ids, labels)
    jax.block_until_ready((state, loss))
    if i:
      times.append(time.perf_counter() - start)
  del state
  return 1e3 * float(np.median(times))


def make_batches(rows, count=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    ids = rng.integers(1, rows, size=(BATCH, BAG_LEN)).astype(np.int32)
    lengths = rng.integers(BAG_LEN // 2, BAG_LEN + 1, size=BATCH)
    ids[np.arange(BAG_LEN)[None, :] >= lengths[:, None]] = PAD
    labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
    out.append((jnp.asarray(ids), jnp.asarray(labels)))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  exponents = [14, 18] if args.quick else [14, 16, 18, 20, 22]
  methods = {
      "dense_adam": make_dense_step,
      "lazy_adam": lambda: make_sparse_step(sparse.sparse_lazy_adam(1e-3)),
      "rowwise_adagrad": lambda: make_sparse_step(sparse.sparse_rowwise_adagrad(1e-2)),
  }
  results = {name: {} for name in methods}
  print(f"{'rows':>10} " + " ".join(f"{name + ' ms':>20}" for name in methods))
  for e in exponents:
    rows = 1 << e
    batches = make_batches(rows)
    line = f"{'2^%d' % e:>10} "
    for name, make in methods.items():
      repeats = 30 if name != "dense_adam" else max(3, min(30, (1 << 22) // rows * 2 // 8))
      ms = time_steps(*make(), rows, batches, repeats)
      results[name][e] = ms
      line += f"{ms:>20.2f} "
    print(line, flush=True)
  lo, hi = exponents[0], exponents[-1]
  ratios = {name: r[hi] / r[lo] for name, r in results.items()}
  print(f"\nt(2^{hi}) / t(2^{lo}): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
  print(json.dumps({
      "benchmark": "step_scaling", "features": FEATURES, "batch": [BATCH, BAG_LEN],
      "ms_per_step": {k: {f"2^{e}": round(v, 3) for e, v in r.items()}
                      for k, r in results.items()},
      f"ratio_2^{hi}_over_2^{lo}": {k: round(v, 3) for k, v in ratios.items()},
      "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
      "jax": jax.__version__}))


if __name__ == "__main__":
  main()
