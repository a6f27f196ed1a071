"""Padded-bag pooling strategies (embedlab/core/pooling.py) on this backend: forward, forward+backward.

  python benchmarks/pooling.py

For each shape (table rows V, features D, bags B, bag length L) and strategy, the median time of
a jitted ``pool_padded`` (mode sum, weighted) and of its gradient with respect to the table; the
shape with V = B*L + 1 is the localized table of a sparse train step. Prints a table and what
``choose_strategy`` picks, then one JSON line.
"""

import jax
import jax.numpy as jnp

import harness

from embedlab.core import pooling

SHAPES = [  # V, D, B, L
    (16385, 64, 256, 64),        # the sparse step's localized table (step_scaling.py)
    (100_000, 16, 1024, 32),
    (262_145, 128, 4096, 64),
    (1 << 20, 128, 16384, 64),   # the large pooling case of vs_torch.py
]


TABLE = harness.Table([("V x D, B x L", "<28"), ("strategy", ">10"), ("fwd ms", ">10.2f"),
                       ("fwd+bwd ms", ">12.2f"), ("auto", ">8")])


def main():
  figures = []
  print(TABLE.header())
  for rows, features, batch, bag_len in SHAPES:
    table = jax.random.normal(jax.random.key(0), (rows, features))
    ids = jax.random.randint(jax.random.key(1), (batch, bag_len), 1, rows)
    w = jax.random.uniform(jax.random.key(2), (batch, bag_len))
    mask = ids != 0
    auto = pooling.choose_strategy(batch, bag_len, features, 4, "sum")
    for strategy in pooling.STRATEGIES:
      def fwd(t, s=strategy):
        return pooling.pool_padded(t, ids, w, mask, "sum", strategy=s)
      grad = jax.jit(jax.grad(lambda t, f=fwd: jnp.sum(f(t) ** 2)))
      f_ms = harness.time_ms(jax.jit(fwd), table)
      g_ms = harness.time_ms(grad, table, repeats=3)
      name = f"{rows} x {features}, {batch} x {bag_len}"
      figures.append({"rows": rows, "features": features, "batch": batch, "bag_len": bag_len,
                      "strategy": strategy, "fwd_ms": round(f_ms, 3), "fwd_bwd_ms": round(g_ms, 3),
                      "auto": auto})
      print(TABLE.row(name, strategy, f_ms, g_ms, auto), flush=True)
  harness.emit({"benchmark": "pooling", "backend": jax.default_backend(),
                "jax": jax.__version__, "figures": figures})


if __name__ == "__main__":
  main()
