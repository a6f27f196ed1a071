"""embedlab against fastText on SST-2 and IMDB, whole jobs, same files, same tokens, 2 threads.

  pip install -e '.[bench]'          # the fasttext package (fasttext-wheel)
  python benchmarks/vs_fasttext.py [--repeats 3] [--datasets sst2 imdb]

Each job starts from the raw files in EMBEDLAB_DATA and ends with a test accuracy:

* fastText: read the files (csv module), tokenize them with embedlab's tokenizer, write them in
  fastText's format, ``fasttext.train_supervised`` (word + bigram buckets, the settings below,
  2 threads), ``model.test``. Run in this process (fastText has no start-up cost to speak of).
* embedlab: ``embedlab train experiments/<dataset>_fasttext.py`` in a fresh process (so the
  Python and JAX start-up count), 2 CPU threads. Reported: the whole wall time, and from the
  run's ``results.json`` the phases (data, setup, first dispatch = compilation + one block,
  train loop, test) and the rest of the wall time (``outside_phases``: interpreter start,
  imports, waiting for the forked data encoder, the end of the run, exit), the compilation
  seconds, and the JAX import time measured in an empty process.

Repeat i runs seed i on both sides (fastText's ``seed``, embedlab's ``--set seed=i``), so the
median test accuracy is over independent trainings on both sides, not one embedlab run repeated
(embedlab is deterministic; fastText's 2 threads are not, whatever the seed).

"cold" runs start with an empty encoded-data cache, an empty Hugging Face datasets cache and an
empty JAX compilation cache (``EMBEDLAB_COMPILE_CACHE``), so they compile every program; "warm"
runs reuse all three (the caches of the cold run of the same seed). ``compile_seconds`` (from
JAX's own compile events, inside the phases) is the tracing, lowering and XLA compilation (or,
warm, the cache reads) of the run.

``cpu_seconds``: the job's user + system CPU time over all its processes and threads (fastText:
this process's time over the job, its training threads included; embedlab: the child process,
its forked data encoder and that one's tokenizing workers). Divided by ``--threads`` it is the
least wall time the job's work allows on that many cores, however well it overlaps.

Prints a table per dataset and ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import harness
from harness import DATA, DATASETS, children_cpu, run_embedlab

TABLE = harness.Table([("", "16"), ("test acc", ">9.4f"), ("mean", ">7.4f"),
                       ("seconds", ">9.2f"), ("ratio", ">7.2f"), ("CPU s", ">7.2f"),
                       ("CPU s / threads", ">16.2f")], sep=" ")


def fasttext_job(name: str, settings: dict, threads: int, seed: int) -> dict:
  spec = DATASETS[name]
  start, cpu_start = time.perf_counter(), time.process_time()
  with tempfile.TemporaryDirectory() as tmp:
    files = {}
    for split in ("train", "test"):
      rows = harness.read_rows(DATA / spec[split], spec["delimiter"])
      files[split] = pathlib.Path(tmp) / f"{split}.txt"
      harness.write_fasttext_file(files[split], [label for label, _ in rows],
                                  harness.fasttext_lines([t for _, t in rows]))
    prepared = time.perf_counter()
    model = harness.train_fasttext(files["train"], settings, threads, seed)
    trained = time.perf_counter()
    _, accuracy, _ = model.test(str(files["test"]))
  end = time.perf_counter()
  # process_time counts every thread of this process: fastText's training threads included
  return {"test_accuracy": accuracy, "seconds": end - start,
          "cpu_seconds": time.process_time() - cpu_start,
          "data_seconds": prepared - start, "train_seconds": trained - prepared,
          "test_seconds": end - trained}


def embedlab_job(name: str, threads: int, cache: pathlib.Path, cold: bool, seed: int) -> dict:
  if cold and cache.exists():
    shutil.rmtree(cache)
  with tempfile.TemporaryDirectory() as workdir:
    start, cpu_start = time.perf_counter(), children_cpu()
    results = run_embedlab(name, workdir, cache, threads, seed)
    seconds = time.perf_counter() - start
    cpu = children_cpu() - cpu_start
  timings = results["timings"]
  phases = sum(v for k, v in timings.items() if k != "compile_seconds")
  # the rest of the wall time: interpreter start, imports, the wait for the forked data
  # encoder, the end of the run after the test phase, process exit
  return {"test_accuracy": results["test_accuracy"], "seconds": seconds, "cpu_seconds": cpu,
          **timings, "outside_phases_seconds": seconds - phases}


def jax_startup_seconds() -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", "import jax, jax.numpy as jnp; "
                  "jnp.zeros(1).block_until_ready(); import embedlab"], check=True)
  return time.perf_counter() - start


def median(runs: list[dict], key: str) -> float:
  return statistics.median(r[key] for r in runs)


def phase_medians(runs: list[dict]) -> dict[str, float]:
  return {k: round(median(runs, k), 3) for k in runs[0]
          if k.endswith("_seconds") and k != "cpu_seconds"}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
  args = parser.parse_args()
  figures = {"machine": f"{os.cpu_count()} CPUs", "threads": args.threads,
             "python_jax_embedlab_import_seconds": round(jax_startup_seconds(), 3)}
  for name in args.datasets:
    seeds = range(args.repeats)  # repeat i: seed i on both sides
    ft = [fasttext_job(name, DATASETS[name]["fasttext"], args.threads, seed) for seed in seeds]
    with tempfile.TemporaryDirectory() as cache_dir:
      # one cache per seed (the encoded data's key holds the seed): empty for its cold run,
      # then reused by its warm run
      caches = [pathlib.Path(cache_dir) / f"cache{seed}" for seed in seeds]
      cold = [embedlab_job(name, args.threads, caches[seed], True, seed) for seed in seeds]
      warm = [embedlab_job(name, args.threads, caches[seed], False, seed) for seed in seeds]
    row = {"fasttext": ft, "embedlab_cold": cold, "embedlab_warm": warm}
    summary = {k: {"test_accuracy": median(v, "test_accuracy"),
                   "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in v),
                   "seconds": round(median(v, "seconds"), 3),
                   "cpu_seconds": round(median(v, "cpu_seconds"), 3)} for k, v in row.items()}
    summary["ratio_cold"] = round(summary["embedlab_cold"]["seconds"] /
                                  summary["fasttext"]["seconds"], 2)
    summary["ratio_warm"] = round(summary["embedlab_warm"]["seconds"] /
                                  summary["fasttext"]["seconds"], 2)
    summary["embedlab_phases_warm"] = phase_medians(warm)
    summary["embedlab_phases_cold"] = phase_medians(cold)
    figures[name] = {**summary, "runs": row, "fasttext_settings": DATASETS[name]["fasttext"]}
    print(f"\n{name}: median of {args.repeats} (whole job, seconds; test accuracy also the mean)")
    print(TABLE.header())
    for key, label in (("fasttext", "fastText"), ("embedlab_cold", "embedlab cold"),
                       ("embedlab_warm", "embedlab warm")):
      ratio = None if key == "fasttext" else summary["ratio_" + key.split("_")[1]]
      print(TABLE.row(label, summary[key]["test_accuracy"], summary[key]["test_accuracy_mean"],
                      summary[key]["seconds"], ratio, summary[key]["cpu_seconds"],
                      summary[key]["cpu_seconds"] / args.threads))
    print("embedlab phases (warm):", summary["embedlab_phases_warm"])
    print("embedlab phases (cold):", summary["embedlab_phases_cold"])
  print(f"python + jax + embedlab import: {figures['python_jax_embedlab_import_seconds']} s")
  harness.emit(figures)


if __name__ == "__main__":
  main()
