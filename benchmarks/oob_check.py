"""What the loud out-of-range id check costs under jit: lookup and bag with oob="error" (a
device-side reduction plus one host callback per call) against oob="clip" (unchecked).

  python benchmarks/oob_check.py

Prints a table and ends with one JSON line of figures.
"""

import jax
import jax.numpy as jnp
import numpy as np

import harness

import embedlab as el

TABLE = harness.Table([("fn", "<7"), ("ids", "<9"), ("oob=error ms", ">13.4f"),
                       ("oob=clip ms", ">12.4f"), ("overhead us", ">12.1f"), ("ratio", ">6.3f")],
                      sep=" ")


def main():
  params = el.init_table(jax.random.key(0), 100_000, 64)
  rows = []
  for batch, length in ((32, 20), (256, 64), (4096, 64)):
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100_000, (batch, length)), jnp.int32)
    for fn_name in ("lookup", "bag"):
      fn = getattr(el, fn_name)
      checked = jax.jit(lambda p, i, fn=fn: fn(p, i, oob="error"))
      unchecked = jax.jit(lambda p, i, fn=fn: fn(p, i, oob="clip"))
      t_err = harness.time_ms(checked, params, ids, repeats=50)
      t_clip = harness.time_ms(unchecked, params, ids, repeats=50)
      rows.append({"fn": fn_name, "ids": f"{batch}x{length}", "error_ms": round(t_err, 4),
                   "clip_ms": round(t_clip, 4), "overhead_us": round((t_err - t_clip) * 1e3, 1),
                   "ratio": round(t_err / t_clip, 3)})
  print(TABLE.header())
  for r in rows:
    print(TABLE.row(r["fn"], r["ids"], r["error_ms"], r["clip_ms"], r["overhead_us"], r["ratio"]))
  harness.emit({"benchmark": "oob_check", "backend": jax.default_backend(), "rows": rows})


if __name__ == "__main__":
  main()
