"""Peak memory of training a 4M x 64 table with lazy Adam: no hidden dense gradient.

Each case runs in a fresh child process (so its peak RSS is its own; JAX's CPU buffers count in
RSS): build the table and its optimizer state, then run jitted train steps (step_scaling.py's
model: mean bag of [256, 64] ids, a [64, 16] layer) with the table and slots donated. The
parent reads the child's peak RSS with ``resource.getrusage(RUSAGE_CHILDREN)`` and compares it
with the bytes of the table and its two slots. Goal: at most 1.3 x.

  python benchmarks/sparse_memory.py            # lazy Adam, then dense optax Adam for contrast
  python benchmarks/sparse_memory.py --no-dense

Prints a table, then one JSON line.
"""

import argparse
import json
import resource
import subprocess
import sys

import harness

ROWS, FEATURES, STEPS = 1 << 22, 64, 5


def child(method: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import step_scaling  # pylint: disable=import-outside-toplevel  (beside this file: the model)
  from embedlab.core import sparse  # pylint: disable=import-outside-toplevel

  def rss_mib(field):
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field):
          return int(line.split()[1]) / 1024
    return float("nan")

  baseline = rss_mib("VmRSS")
  if method == "lazy_adam":
    init, step = step_scaling.make_sparse_step(sparse.sparse_lazy_adam(1e-3))
  else:
    init, step = step_scaling.make_dense_step()
  table = step_scaling.random_table(ROWS)
  w = jax.random.normal(jax.random.key(1), (FEATURES, step_scaling.CLASSES))
  state = init(table, w)
  del table, w
  batches = step_scaling.make_batches(ROWS)
  compiled = step.lower(*state, *batches[0]).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  after_init = rss_mib("VmHWM")
  for i in range(STEPS):
    *state, loss = step(*state, *batches[i % len(batches)])
  jax.block_until_ready((state, loss))
  harness.emit({"baseline_mib": baseline, "after_init_peak_mib": after_init,
                "peak_mib": rss_mib("VmHWM"), "step_temp_bytes": temp})


def run(method: str) -> dict:
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  out = subprocess.run([sys.executable, __file__, "--child", method], check=True,
                       capture_output=True, text=True).stdout
  after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
  figures = json.loads(out.strip().splitlines()[-1])
  # ru_maxrss of children is the max over all children so far: only exact while it grows.
  figures["ru_maxrss_mib"] = after / 1024 if after > before else None
  return figures


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--child")
  parser.add_argument("--no-dense", action="store_true")
  args = parser.parse_args()
  if args.child:
    child(args.child)
    return
  table_mib = ROWS * FEATURES * 4 / 2 ** 20
  budget_mib = 3 * table_mib  # table + mu + nu
  results = {"lazy_adam": run("lazy_adam")}
  if not args.no_dense:
    results["dense_adam"] = run("dense_adam")
  print(f"table {ROWS:,} x {FEATURES} float32 = {table_mib:.0f} MiB; with two Adam slots "
        f"{budget_mib:.0f} MiB")
  table = harness.Table([("method", "<12"), ("peak RSS MiB", ">14.0f"),
                         ("x (table+slots)", ">17.2f"), ("python+jax MiB", ">16.0f"),
                         ("step temp MiB", ">15.1f")])
  print(table.header())
  for name, r in results.items():
    r["ratio_to_table_and_slots"] = r["peak_mib"] / budget_mib
    print(table.row(name, r["peak_mib"], r["ratio_to_table_and_slots"], r["baseline_mib"],
                    r["step_temp_bytes"] / 2 ** 20))
  harness.emit({"benchmark": "sparse_memory", "rows": ROWS, "features": FEATURES,
                "table_and_slots_mib": budget_mib, "steps": STEPS, "results": results})


if __name__ == "__main__":
  main()
