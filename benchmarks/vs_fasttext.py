"""embedlab against fastText on SST-2 and IMDB, whole jobs, same files, same tokens, 2 threads.

  pip install -e '.[bench]'          # the fasttext package (fasttext-wheel)
  python benchmarks/vs_fasttext.py [--repeats 3] [--datasets sst2 imdb]
  python benchmarks/vs_fasttext.py --subwords 3,6 [--repeats 3] [--datasets sst2]
  python benchmarks/vs_fasttext.py --autotune [--budget 120] [--repeats 3] [--datasets sst2]

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

``--autotune``: both sides search their settings on the dev split within the same wall-clock
budget, then train the best and score it on test. fastText: ``fasttext.train_supervised(input=
train, autotuneValidationFile=dev, autotuneDuration=budget)`` (its own search space and metric,
f1, which for two balanced classes follows accuracy; then it trains the best model). embedlab:
``embedlab tune experiments/<dataset>_fasttext.py --budget B --seed i --set seed=i`` in a fresh
process. Both see the same train / dev texts (embedlab's split and tokens: SST-2's dev file,
IMDB's seeded 10% of train) and the same test file. Repeat i is seed i on both sides; the
difference embedlab - fastText is paired by seed, with a t interval over the seeds.

``--subwords MINN,MAXN``: both sides add every word's character n-grams of MINN..MAXN
characters (fastText's ``minn`` / ``maxn``; embedlab's ``--set data.minn=MINN --set
data.maxn=MAXN``), hashed into the same buckets as the bigrams, all other settings unchanged.

Prints a table per dataset and ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
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


def embedlab_job(name: str, threads: int, cache: pathlib.Path, cold: bool, seed: int,
                 overrides: tuple[str, ...] = ()) -> dict:
  if cold and cache.exists():
    shutil.rmtree(cache)
  with tempfile.TemporaryDirectory() as workdir:
    start, cpu_start = time.perf_counter(), children_cpu()
    results = run_embedlab(name, workdir, cache, threads, seed, overrides)
    seconds = time.perf_counter() - start
    cpu = children_cpu() - cpu_start
  timings = results["timings"]
  phases = sum(v for k, v in timings.items() if k != "compile_seconds")
  # the rest of the wall time: interpreter start, imports, the wait for the forked data
  # encoder, the end of the run after the test phase, process exit
  return {"test_accuracy": results["test_accuracy"], "seconds": seconds, "cpu_seconds": cpu,
          **timings, "outside_phases_seconds": seconds - phases}


def autotune_files(name: str, seed: int, tmp: pathlib.Path) -> dict[str, pathlib.Path]:
  """train / dev / test in fastText's format, the splits and tokens embedlab's experiment uses
  (its dev split: SST-2's file, IMDB's seeded carve-out of train)."""
  harness.setup_repo()
  from embedlab import config as config_lib  # noqa: PLC0415
  from embedlab.data import splits as datasets  # noqa: PLC0415

  cfg = config_lib.load_config(experiment_path(name), [f"seed={seed}"])
  splits, names = datasets.load_splits(cfg.data, cfg.seed)
  files = {}
  for split in ("train", "dev", "test"):
    files[split] = tmp / f"{split}.txt"
    harness.write_fasttext_file(files[split], [names[i] for i in splits[split].labels],
                                harness.fasttext_lines(list(splits[split].texts)))
  return files


def experiment_path(name: str) -> str:
  return str(harness.REPO / DATASETS[name]["experiment"])


@contextlib.contextmanager
def quiet_stderr():
  """File descriptor 2 sent to /dev/null (fastText's C++ writes there directly)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as null:
    os.dup2(null.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def fasttext_autotune_job(name: str, budget: float, threads: int, seed: int) -> dict:
  import fasttext  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as tmp:
    files = autotune_files(name, seed, pathlib.Path(tmp))
    start = time.perf_counter()
    with quiet_stderr():  # the autotune's progress line, rewritten many times a second
      model = fasttext.train_supervised(input=str(files["train"]),
                                        autotuneValidationFile=str(files["dev"]),
                                        autotuneDuration=int(budget), thread=threads,
                                        verbose=0, seed=seed)
    seconds = time.perf_counter() - start
    _, dev, _ = model.test(str(files["dev"]))
    _, test, _ = model.test(str(files["test"]))
  args = model.f.getArgs()
  chosen = {k: getattr(args, k) for k in ("lr", "dim", "epoch", "wordNgrams", "minCount",
                                          "bucket", "minn", "maxn") if hasattr(args, k)}
  return {"test_accuracy": test, "dev_accuracy": dev, "seconds": seconds, "settings": chosen}


def embedlab_tune_job(name: str, budget: float, threads: int, seed: int,
                      cache: pathlib.Path) -> dict:
  env = harness.embedlab_env(cache, threads)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "tune"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "embedlab.cli", "tune", DATASETS[name]["experiment"],
                    "--budget", str(budget), "--workdir", str(workdir), "--seed", str(seed),
                    "--set", f"seed={seed}"], cwd=harness.REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    results = json.loads((workdir / "best" / "results.json").read_text())
    trials = json.loads((workdir / "trials.json").read_text())
  best = next(t for t in trials["trials"] if t["number"] == trials["best_trial"])
  return {"test_accuracy": results["test_accuracy"], "dev_accuracy": results["dev_accuracy"],
          "seconds": seconds, "search_seconds": trials["search_seconds"],
          "trials": len(trials["trials"]), "settings": best["params"]}


# two-sided 95% t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}


def paired_interval(diffs: list[float]) -> tuple[float, float, float]:
  """Mean of the paired differences and its 95% t interval (needs two or more)."""
  mean = statistics.mean(diffs)
  if len(diffs) < 2:
    return mean, None, None
  half = _T95.get(len(diffs) - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(len(diffs))
  return mean, mean - half, mean + half


def autotune_main(args) -> None:
  figures = {"benchmark": "autotune", "machine": f"{os.cpu_count()} CPUs",
             "threads": args.threads, "budget_seconds": args.budget}
  for name in args.datasets:
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
      for seed in range(args.repeats):
        ft = fasttext_autotune_job(name, args.budget, args.threads, seed)
        el = embedlab_tune_job(name, args.budget, args.threads, seed,
                               pathlib.Path(cache_dir) / f"cache{seed}")
        rows.append({"seed": seed, "fasttext": ft, "embedlab": el})
        print(f"{name} seed {seed}: fastText test {ft['test_accuracy']:.4f} "
              f"({ft['seconds']:.0f} s, {ft['settings']}); embedlab test "
              f"{el['test_accuracy']:.4f} ({el['seconds']:.0f} s, {el['trials']} trials, "
              f"{el['settings']})", flush=True)
    diffs = [r["embedlab"]["test_accuracy"] - r["fasttext"]["test_accuracy"] for r in rows]
    mean, low, high = paired_interval(diffs)
    print(f"\n{name}: autotune, {args.budget:g} s budget, test accuracy by seed")
    table = harness.Table([("seed", ">4"), ("fastText", ">9.4f"), ("embedlab", ">9.4f"),
                           ("diff", "+8.4f"), ("fT s", ">7.1f"), ("el s", ">7.1f"),
                           ("el trials", ">9")], sep=" ")
    print(table.header())
    for r, d in zip(rows, diffs):
      print(table.row(r["seed"], r["fasttext"]["test_accuracy"], r["embedlab"]["test_accuracy"],
                      d, r["fasttext"]["seconds"], r["embedlab"]["seconds"],
                      r["embedlab"]["trials"]))
    ft_mean = statistics.mean(r["fasttext"]["test_accuracy"] for r in rows)
    el_mean = statistics.mean(r["embedlab"]["test_accuracy"] for r in rows)
    print(table.row("mean", ft_mean, el_mean, mean, None, None, None))
    interval = (f"95% paired t interval [{100 * low:+.2f}, {100 * high:+.2f}]"
                if low is not None else "no interval from one seed")
    print(f"embedlab - fastText: {100 * mean:+.2f} points, {interval} over {len(rows)} seeds")
    figures[name] = {"runs": rows, "fasttext_mean": ft_mean, "embedlab_mean": el_mean,
                     "diff_mean": mean, "diff_interval95": [low, high]}
  harness.emit(figures)


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
  parser.add_argument("--autotune", action="store_true",
                      help="fastText's autotune against `embedlab tune`, same budget")
  parser.add_argument("--budget", type=float, default=120.0,
                      help="--autotune: the search budget in seconds (default 120)")
  parser.add_argument("--subwords", default="", metavar="MINN,MAXN",
                      help="character n-grams of MINN..MAXN characters on both sides (e.g. 3,6)")
  args = parser.parse_args()
  subwords, overrides = {}, ()
  if args.subwords:
    minn, maxn = (int(x) for x in args.subwords.split(","))
    subwords, overrides = {"minn": minn, "maxn": maxn}, (f"data.minn={minn}", f"data.maxn={maxn}")
  if args.autotune:
    autotune_main(args)
    return
  figures = {"machine": f"{os.cpu_count()} CPUs", "threads": args.threads, **subwords,
             "python_jax_embedlab_import_seconds": round(jax_startup_seconds(), 3)}
  for name in args.datasets:
    seeds = range(args.repeats)  # repeat i: seed i on both sides
    settings = {**DATASETS[name]["fasttext"], **subwords}
    ft = [fasttext_job(name, settings, args.threads, seed) for seed in seeds]
    with tempfile.TemporaryDirectory() as cache_dir:
      # one cache per seed (the encoded data's key holds the seed): empty for its cold run,
      # then reused by its warm run
      caches = [pathlib.Path(cache_dir) / f"cache{seed}" for seed in seeds]
      cold = [embedlab_job(name, args.threads, caches[seed], True, seed, overrides)
              for seed in seeds]
      warm = [embedlab_job(name, args.threads, caches[seed], False, seed, overrides)
              for seed in seeds]
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
    figures[name] = {**summary, "runs": row, "fasttext_settings": settings,
                     "embedlab_overrides": list(overrides)}
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
