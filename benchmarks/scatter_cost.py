"""What the SST-2 fastText train step's row reads and writes cost: XLA:CPU against PyTorch.

  python benchmarks/scatter_cost.py [--experiment experiments/sst2_fasttext.py] [--blocks 100]

The step of ``experiments/sst2_fasttext.py`` reads one table row per id of a ragged batch
(``jnp.take``) and adds each id's gradient back into its row (``table.at[rows].add``, the
scatter-add of ``sparse_sgd``'s ``add``). This script takes that experiment's real batches (its
encoded SST-2 train split, 64 sentences, padded to the ragged length the train loop uses) and
times, per batch, on one thread each:

* XLA:CPU: the gather, the scatter-add (padding dropped as the step drops it), and the whole
  train step (``steps_lib.make_train_step``, in a ``lax.scan`` over the blocks, as the train loop
  runs it);
* PyTorch: ``index_select`` and ``index_add_`` on the same table and ids (padding added into a
  spare row), ``torch.set_num_threads(1)``.

Each at the experiment's table size and on a table of 1,024 rows (the same ids modulo 1,024),
which stays in the CPU's cache: the difference is the cost of reaching rows in memory. XLA runs
``--blocks`` batches in one ``lax.scan``; PyTorch runs them in a Python loop. Best of 5 runs.

Besides, the train step's all-finite check (``steps._all_finite``: each leaf's ``isfinite``
mask reduced as a uint8 minimum) against ``jnp.all(jnp.isfinite(x))``, on a per-occurrence
gradient (ragged length x features) and on a table-sized one, in a ``lax.scan`` over distinct
arrays, each made in the check's fusion (as the step's gradient is).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

# XLA:CPU's Eigen ops on one thread, as PyTorch's below (its gather and scatter are one loop)
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from embedlab import config as config_lib  # noqa: E402
from embedlab.data import batches as batch_lib  # noqa: E402
from embedlab.data import cache as cache_lib  # noqa: E402
from embedlab.run import build as build_lib
from embedlab.run import steps as steps_lib

SMALL_ROWS = 1024
REPEATS = 5


def batches(cfg, data, per_epoch: int, steps: int,
            blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(ids [K, T], segment_ids [K, T], labels [K, B])``: the first ``blocks`` ragged batches
  of the experiment's first epoch, as its train loop packs them."""
  pack = build_lib.ragged_packer(cfg, data, per_epoch, steps, None, None, print)  # pylint: disable=protected-access
  order = batch_lib.batch_indices(len(data.train_labels), cfg.train.batch_size, seed=cfg.seed,
                                  epoch=0)
  ragged = pack(data.train_ids[order[:blocks]])  # [K, T]: the run's ragged length
  return (np.asarray(ragged.ids), np.asarray(ragged.segment_ids),
          data.train_labels[order[:blocks]])


def best_of(fn) -> float:
  fn()  # compile / warm up
  times = []
  for _ in range(REPEATS):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def xla_costs(ids, rows: int, features: int) -> dict[str, float]:
  """Seconds per batch of XLA:CPU's gather and scatter-add of ``ids`` into a ``[rows, D]``
  table; padding (id 0) dropped from the scatter as the train step drops it."""
  k, t = ids.shape
  table = jnp.asarray(np.random.default_rng(0).normal(0, 0.01, (rows, features)), jnp.float32)
  ids_j = jnp.asarray(ids)

  def gather(carry, i):
    return carry + jnp.take(table, i, axis=0, mode="clip").sum(), None

  def scatter(tab, i):
    grads = jnp.full((t, features), 1e-7, jnp.float32)
    return tab.at[jnp.where(i == 0, rows, i)].add(grads, mode="drop"), None

  gather_fn = jax.jit(lambda xs: jax.lax.scan(gather, jnp.zeros(()), xs)[0])
  scatter_fn = jax.jit(lambda tab, xs: jax.lax.scan(scatter, tab, xs)[0], donate_argnums=0)
  state = {"table": table + 0}

  def run_scatter():
    state["table"] = scatter_fn(state["table"], ids_j)
    jax.block_until_ready(state["table"])

  return {"gather": best_of(lambda: gather_fn(ids_j).block_until_ready()) / k,
          "scatter_add": best_of(run_scatter) / k}


def torch_costs(ids, rows: int, features: int) -> dict[str, float]:
  """Seconds per batch of PyTorch's ``index_select`` and ``index_add_`` (one thread)."""
  import torch  # noqa: PLC0415 - the bench extra

  torch.set_num_threads(1)
  k, t = ids.shape
  table = torch.from_numpy(
      np.random.default_rng(0).normal(0, 0.01, (rows + 1, features)).astype(np.float32))
  index = [torch.from_numpy(np.where(i == 0, rows, i).astype(np.int64)) for i in ids]
  grads = torch.full((t, features), 1e-7)
  sink = [0.0]

  def gather():
    for i in index:
      sink[0] += float(table.index_select(0, i).sum())

  def scatter():
    for i in index:
      table.index_add_(0, i, grads)

  with torch.no_grad():
    return {"gather": best_of(gather) / k, "scatter_add": best_of(scatter) / k}


def finite_check_costs(shape: tuple[int, int], arrays: int) -> dict[str, float]:
  """Seconds per array of the all-finite check, ``jnp.all`` of the bool mask against
  ``steps._all_finite``, on ``arrays`` distinct ``shape`` arrays in one scan: a random array
  times each step's scale, made in the check's own fusion as the step's gradient is."""
  base = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  scales = jnp.linspace(1.0, 2.0, arrays)
  checks = {"bool_all": lambda x: jnp.all(jnp.isfinite(x)), "uint8_min": steps_lib._all_finite}
  out = {}
  for name, check in checks.items():
    fn = jax.jit(lambda scales, check=check: jax.lax.scan(
        lambda n, c: (n + check(base * c).astype(jnp.int32), None), jnp.int32(0), scales)[0])
    out[name] = best_of(lambda fn=fn: fn(scales).block_until_ready()) / arrays
  return out


def step_cost(cfg, data, steps: int, ids, segment_ids, labels) -> float:
  """Seconds per batch of the experiment's whole train step (the scatter-add path), in one
  ``lax.scan`` over the blocks."""
  setup = build_lib.build(cfg, data, steps)
  step = steps_lib.make_train_step(setup.model, setup.optimizer,
                                   table_optimizer=setup.table_optimizer, oob="clip")
  multi = jax.jit(steps_lib.make_multi_step(step), donate_argnums=0)
  batch = batch_lib.RaggedBatch(jnp.asarray(ids), jnp.asarray(segment_ids))
  holder = {"state": build_lib.init_state(cfg, setup)}
  labels = jnp.asarray(labels)

  def run():
    holder["state"], sums = multi(holder["state"], batch, labels)
    jax.block_until_ready(sums)

  return best_of(run) / ids.shape[0]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--experiment", default="experiments/sst2_fasttext.py")
  parser.add_argument("--blocks", type=int, default=100, help="batches timed per run")
  args = parser.parse_args()
  cfg = config_lib.load_config(args.experiment)
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  per_epoch, steps = build_lib.total_steps(cfg, len(data.train_labels))
  rows, features = data.num_embeddings, cfg.model.features
  ids, segment_ids, labels = batches(cfg, data, per_epoch, steps, args.blocks)
  real = int((ids != 0).sum(1).mean())
  small = np.where(ids == 0, 0, 1 + ids % (SMALL_ROWS - 1))
  figures = {}
  for name, table_rows, batch_ids in (("table", rows, ids), ("small", SMALL_ROWS, small)):
    figures[name] = {"xla": xla_costs(batch_ids, table_rows, features),
                     "torch": torch_costs(batch_ids, table_rows, features)}
  step = step_cost(cfg, data, steps, ids, segment_ids, labels)
  finite = {"occurrences": finite_check_costs((ids.shape[1], features), args.blocks),
            "table": finite_check_costs((rows, features), 20)}
  print(f"{args.experiment}: {ids.shape[0]} batches of {cfg.train.batch_size} sentences, "
        f"ragged length {ids.shape[1]} ({real} real ids on average), {features} features; "
        f"one thread; us per batch, best of {REPEATS}")
  print(f"{'table':>22} {'op':>12} {'XLA:CPU':>9} {'PyTorch':>9} {'XLA/PyTorch':>12}")
  for name, table_rows in (("table", rows), ("small", SMALL_ROWS)):
    for op in ("gather", "scatter_add"):
      x, t = figures[name]["xla"][op], figures[name]["torch"][op]
      print(f"{f'{table_rows:,} x {features}':>22} {op:>12} {x * 1e6:9.1f} {t * 1e6:9.1f} "
            f"{x / t:12.2f}")
  print(f"whole train step (XLA:CPU, {rows:,} rows): {step * 1e6:.1f} us per batch")
  print("all-finite check, us per gradient: jnp.all of the bool mask / uint8 minimum "
        "(steps._all_finite)")
  for name, shape in (("occurrences", (ids.shape[1], features)), ("table", (rows, features))):
    a, b = finite[name]["bool_all"], finite[name]["uint8_min"]
    print(f"{f'{shape[0]:,} x {shape[1]}':>22} {a * 1e6:9.1f} / {b * 1e6:9.1f} ({a / b:.2f}x)")
  print(json.dumps({
      "experiment": args.experiment, "machine": platform.processor() or platform.machine(),
      "batches": ids.shape[0], "ragged_length": ids.shape[1], "real_ids_mean": real,
      "features": features, "table_rows": rows, "small_rows": SMALL_ROWS,
      "us_per_batch": {name: {lib: {op: round(v * 1e6, 1) for op, v in ops.items()}
                              for lib, ops in libs.items()} for name, libs in figures.items()},
      "train_step_us": round(step * 1e6, 1),
      "finite_check_us": {name: {k: round(v * 1e6, 1) for k, v in costs.items()}
                          for name, costs in finite.items()},
      "xla_over_torch": {name: {op: round(libs["xla"][op] / libs["torch"][op], 2)
                                for op in ("gather", "scatter_add")}
                         for name, libs in figures.items()}}))


if __name__ == "__main__":
  main()
