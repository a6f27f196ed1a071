"""The public optax path against the ``localize`` + ``opt.update`` path: the same bag step.

The model (as ``benchmarks/step_scaling.py``): mean bag of a [256, 64] batch of ids (about 1/4
padding) from a [V, 64] table, a dense [64, 16] layer, softmax cross-entropy; the table trained
row-sparsely, ``optax.adam`` on the dense layer, every buffer donated. Two ways to write it:

* ``localize``: ``embedlab.core.localize.localize`` + ``jax.value_and_grad`` on the local table +
  ``opt.update(table, state, row_ids, grads, unique=True)``, the dense layer's optax update
  beside it;
* ``optax``: ``embedlab.value_and_row_grad`` + one ``optax.multi_transform`` of
  ``embedlab.row_sparse(opt)`` for the table and ``optax.adam`` for the layer +
  ``embedlab.apply_updates``.

Both take the strategies the library chooses (at 2^14 rows, one masked pass over the table; at
2^22, the touched rows gathered and scattered). For lazy Adam and row-wise Adagrad, at V = 2^14
and 2^22: the best ms/step of each path over several rounds, the two taking turns round by round
(the machine is shared: the minimum is the figure least disturbed by other work), and the ratio
optax / localize.

  taskset -c 1 python benchmarks/rowgrad_path.py
  taskset -c 1 python benchmarks/rowgrad_path.py --quick     # fewer rounds

Prints a table, then one JSON line.
"""

import argparse
import functools
import platform
import time

import harness

harness.setup_repo()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import embedlab as el  # noqa: E402
from embedlab.core.localize import localize  # noqa: E402

FEATURES, BATCH, BAG_LEN, CLASSES, PAD = 64, 256, 64, 16, 0
SIZES = (1 << 14, 1 << 22)
OPTIMIZERS = {
    "lazy_adam": lambda: el.sparse_lazy_adam(1e-3),
    "rowwise_adagrad": lambda: el.sparse_rowwise_adagrad(1e-2),
}


def loss_fn(params, ids, labels, oob="error"):
  pooled = el.bag(params["embed"], ids, mode="mean", padding_id=PAD, oob=oob)
  return optax.softmax_cross_entropy_with_integer_labels(pooled @ params["w"], labels).mean()


def localize_path(opt):
  """``init(params) -> state``, ``step(*state, ids, labels) -> (*state, loss)``."""
  adam = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
  def step(table, table_state, w, w_state, ids, labels):
    local = localize(table, ids, padding_id=PAD)
    loss, (g_table, g_w) = jax.value_and_grad(
        lambda t, w: loss_fn({"embed": t, "w": w}, local.ids, labels, "clip"), argnums=(0, 1))(
            local.params, w)
    table, table_state = opt.update(table, table_state, local.row_ids, g_table["table"],
                                    unique=True)
    updates, w_state = adam.update(g_w, w_state, w)
    return table, table_state, optax.apply_updates(w, updates), w_state, loss

  def init(params):
    table, w = params["embed"]["table"], params["w"]
    return [table, opt.init(table), w, adam.init(w)]

  return init, step


def optax_path(opt):
  tx = optax.multi_transform({"rows": el.row_sparse(opt), "dense": optax.adam(1e-3)},
                             {"embed": {"table": "rows"}, "w": "dense"})

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, ids, labels):
    loss, grads = el.value_and_row_grad(
        lambda p, i: loss_fn(p, i, labels, "clip"), params, ids, padding_id=PAD)
    updates, state = tx.update(grads, state, params)
    return el.apply_updates(params, updates), state, loss

  def init(params):
    return [params, tx.init(params)]

  return init, step


def make_params(rows):
  table = jax.random.normal(jax.random.key(0), (rows, FEATURES)) * 0.1
  return {"embed": {"table": table},
          "w": jax.random.normal(jax.random.key(1), (FEATURES, CLASSES)) * 0.1}


def make_batches(rows, count=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    ids = rng.integers(1, rows, size=(BATCH, BAG_LEN)).astype(np.int32)
    lengths = rng.integers(BAG_LEN // 2, BAG_LEN + 1, size=BATCH)
    ids[np.arange(BAG_LEN)[None, :] >= lengths[:, None]] = PAD
    out.append((jnp.asarray(ids), jnp.asarray(rng.integers(0, CLASSES, size=BATCH))))
  return out


def runner(path, opt, rows):
  init, step = path(opt)
  holder = {"state": init(make_params(rows))}

  def run(ids, labels):
    *holder["state"], loss = step(*holder["state"], ids, labels)
    return holder["state"], loss

  return run, holder.clear


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="3 rounds of 5 steps, not 8 of 10")
  args = parser.parse_args()
  rounds, steps = (3, 5) if args.quick else (8, 10)
  table = harness.Table([("optimizer", "<17"), ("rows", ">9"), ("localize ms", ">13.2f"),
                         ("optax ms", ">10.2f"), ("optax/localize", ">16.3f")])
  print(f"best ms/step over {rounds} rounds of {steps} steps; jax {jax.__version__}, "
        f"{jax.default_backend()}, {platform.processor() or platform.machine()}")
  print(table.header())
  figures = []
  for name, make in OPTIMIZERS.items():
    for rows in SIZES:
      batches = make_batches(rows)
      runs = {"localize": runner(localize_path, make(), rows),
              "optax": runner(optax_path, make(), rows)}
      best = {k: float("inf") for k in runs}
      for k, (run, _) in runs.items():
        jax.block_until_ready(run(*batches[0]))  # compile
      for r in range(rounds):
        for k, (run, _) in runs.items():
          for i in range(steps):
            ids, labels = batches[(r * steps + i) % len(batches)]
            start = time.perf_counter()
            jax.block_until_ready(run(ids, labels))
            best[k] = min(best[k], time.perf_counter() - start)
      for _, close in runs.values():
        close()
      ms = {k: 1e3 * v for k, v in best.items()}
      ratio = ms["optax"] / ms["localize"]
      print(table.row(name, rows, ms["localize"], ms["optax"], ratio), flush=True)
      figures.append({"optimizer": name, "rows": rows, "localize_ms": round(ms["localize"], 3),
                      "optax_ms": round(ms["optax"], 3), "ratio": round(ratio, 3)})
  harness.emit({"benchmark": "rowgrad_path", "rounds": rounds, "steps": steps,
                "figures": figures,
                "max_ratio": max(f["ratio"] for f in figures)})


if __name__ == "__main__":
  main()
