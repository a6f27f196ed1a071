"""What the loud out-of-range id check costs under jit: lookup and bag with oob="error" (a
device-side reduction plus one host callback per call) against oob="clip" (unchecked).

  python benchmarks/oob_check.py

Prints a table and ends with one JSON line of figures.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import embedlab as el


def median_ms(fn, *args, repeats=50):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return float(np.median(times))


def main():
  params = el.init_table(jax.random.key(0), 100_000, 64)
  rows = []
  for batch, length in ((32, 20), (256, 64), (4096, 64)):
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100_000, (batch, length)), jnp.int32)
    for fn_name in ("lookup", "bag"):
      fn = getattr(el, fn_name)
      checked = jax.jit(lambda p, i, fn=fn: fn(p, i, oob="error"))
      unchecked = jax.jit(lambda p, i, fn=fn: fn(p, i, oob="clip"))
      t_err, t_clip = median_ms(checked, params, ids), median_ms(unchecked, params, ids)
      rows.append({"fn": fn_name, "ids": f"{batch}x{length}", "error_ms": round(t_err, 4),
                   "clip_ms": round(t_clip, 4), "overhead_us": round((t_err - t_clip) * 1e3, 1),
                   "ratio": round(t_err / t_clip, 3)})
  print(f"{'fn':<7} {'ids':<9} {'oob=error ms':>13} {'oob=clip ms':>12} {'overhead us':>12} "
        f"{'ratio':>6}")
  for r in rows:
    print(f"{r['fn']:<7} {r['ids']:<9} {r['error_ms']:>13.4f} {r['clip_ms']:>12.4f} "
          f"{r['overhead_us']:>12.1f} {r['ratio']:>6.3f}")
  print(json.dumps({"benchmark": "oob_check", "backend": jax.default_backend(), "rows": rows}))


if __name__ == "__main__":
  main()
