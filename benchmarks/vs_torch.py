"""embedlab against PyTorch (CPU), side by side in one process, on step_scaling.py's shapes.

  * forward: ``torch.nn.functional.embedding_bag`` (mode mean, padding_idx 0) vs a jitted
    ``embedlab.bag`` on the full table;
  * step: ``EmbeddingBag(sparse=True)`` + ``SparseAdam`` (and ``Adam`` for a [64, 16] linear
    layer, softmax cross-entropy) vs ``embedlab.core.localize.localize`` + ``bag`` +
    ``sparse_lazy_adam`` (and ``optax.adam`` for the linear layer), donated and jitted; and the
    same step as a user writes it with optax (``value_and_row_grad`` + ``row_sparse`` in a
    ``multi_transform`` + ``apply_updates``), against the same SparseAdam step;
  * the large pooling case: forward of 16,384 bags of 64 ids from a 1M x 128 table.

  pip install torch==2.13.0   # the CPU wheel
  python benchmarks/vs_torch.py

Prints a table with embedlab / torch time ratios (below 1: embedlab faster), then one JSON line.
"""

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch

import harness
import step_scaling  # beside this file: the same model, batches and jitted sparse step

import embedlab as el
from embedlab.core import sparse

TABLE = harness.Table([("case", "<44"), ("embedlab ms", ">12.2f"), ("torch ms", ">10.2f"),
                       ("ratio", ">8.2f")])


def median_ms(fn, repeats):
  """Median ms of ``fn()`` (which waits for its own result) after two warm-up calls."""
  return harness.time_ms(fn, repeats=repeats, warmup=2)


def torch_forward(table, ids, repeats):
  table_t = torch.from_numpy(np.array(table))  # a writable copy
  ids_t = torch.from_numpy(np.asarray(ids)).long()
  with torch.no_grad():
    return median_ms(lambda: torch.nn.functional.embedding_bag(ids_t, table_t, mode="mean",
                                                               padding_idx=0), repeats)


def jax_forward(table, ids, repeats):
  fwd = jax.jit(lambda t, i: el.bag({"table": t}, i, mode="mean", padding_id=0, oob="clip"))
  return median_ms(lambda: fwd(table, ids).block_until_ready(), repeats)


def torch_step(rows, batches, repeats):
  torch.manual_seed(0)
  emb = torch.nn.EmbeddingBag(rows, step_scaling.FEATURES, mode="mean", sparse=True,
                              padding_idx=0)
  linear = torch.nn.Linear(step_scaling.FEATURES, step_scaling.CLASSES, bias=False)
  sparse_opt = torch.optim.SparseAdam(emb.parameters(), lr=1e-3)
  dense_opt = torch.optim.Adam(linear.parameters(), lr=1e-3)
  data = [(torch.from_numpy(np.asarray(i)).long(), torch.from_numpy(np.asarray(y)).long())
          for i, y in batches]
  counter = [0]

  def step():
    ids, labels = data[counter[0] % len(data)]
    counter[0] += 1
    sparse_opt.zero_grad()
    dense_opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(linear(emb(ids)), labels)
    loss.backward()
    sparse_opt.step()
    dense_opt.step()

  ms = median_ms(step, repeats)
  return ms


def jax_step(rows, batches, repeats, make=step_scaling.make_sparse_step):
  init, step = make(sparse.sparse_lazy_adam(1e-3))
  return step_scaling.time_steps(init, step, rows, batches, repeats)


def main():
  torch.set_num_threads(os.cpu_count() or 1)
  rows_list = [1 << 14, 1 << 18, 1 << 22]
  figures = []
  print(TABLE.header())
  for rows in rows_list:
    batches = step_scaling.make_batches(rows)
    table = jax.random.normal(jax.random.key(0), (rows, step_scaling.FEATURES))
    ids = batches[0][0]
    cases = [(f"forward bag V=2^{rows.bit_length() - 1} D=64 B=256 L=64",
              jax_forward(table, ids, 30), torch_forward(table, ids, 30))]
    del table
    theirs = torch_step(rows, batches, 20)
    cases.append((f"step lazy Adam vs SparseAdam V=2^{rows.bit_length() - 1}",
                   jax_step(rows, batches, 20), theirs))
    cases.append(("  the same through optax (public path)",
                   jax_step(rows, batches, 20, step_scaling.make_optax_step), theirs))
    for name, ours, theirs in cases:
      figures.append({"case": name, "embedlab_ms": round(ours, 3), "torch_ms": round(theirs, 3),
                      "ratio": round(ours / theirs, 3)})
      print(TABLE.row(name, ours, theirs, ours / theirs), flush=True)
  rng = np.random.default_rng(1)
  table = jax.random.normal(jax.random.key(0), (1 << 20, 128))
  ids = jnp.asarray(rng.integers(0, 1 << 20, size=(16384, 64)).astype(np.int32))
  name = "forward bag V=2^20 D=128 B=16384 L=64"
  ours, theirs = jax_forward(table, ids, 5), torch_forward(table, ids, 5)
  figures.append({"case": name, "embedlab_ms": round(ours, 3), "torch_ms": round(theirs, 3),
                  "ratio": round(ours / theirs, 3)})
  print(TABLE.row(name, ours, theirs, ours / theirs))
  harness.emit({"benchmark": "vs_torch", "figures": figures, "torch": torch.__version__,
                "jax": jax.__version__, "torch_threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine()})


if __name__ == "__main__":
  main()
