"""Multi-label one-vs-all training: embedlab against fastText (``loss="ova"``) on TREC with two
labels a question (coarse + fine class; ``experiments/trec_multilabel.py``).

  python benchmarks/trec_ova.py [--repeats 3] [--threads 1]

Both sides train on the same rows (embedlab's train split: TREC train less its seeded 10% dev
carve-out, 4,907 questions) with the same tokens (embedlab's tokenizer, as fastText lines), and
are scored on TREC_10 (500 questions, 1,000 labels) by precision at 1 and recall at 2,
micro-averaged (fastText's ``model.test(file, k)``; embedlab's ``results.json``).

* fastText: ``fasttext.train_supervised(loss="ova")`` with the experiment's sizes: 50 features,
  word + bigram buckets (2M), 25 epochs, lr 0.5 decayed linearly; timed around training and
  ``test`` (in this process).
* embedlab: ``embedlab train experiments/trec_multilabel.py --set seed=i`` in a fresh process;
  reported: its wall time, and the train loop's seconds from ``results.json``.

Repeat i is seed i on both sides; the table shows each repeat and the medians.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import harness

FASTTEXT = dict(loss="ova", lr=0.5, dim=50, epoch=25, wordNgrams=2, bucket=2_097_152,
                minCount=1)


def _experiment():
  harness.setup_repo()
  from embedlab import config as config_lib  # noqa: PLC0415
  return config_lib.load_config(harness.REPO / "experiments" / "trec_multilabel.py")


def _fasttext_file(path: pathlib.Path, texts, labels, names) -> None:
  """``labels`` (multi-hot rows over ``names``) and ``texts`` as fastText lines."""
  lines = harness.fasttext_lines(list(texts))
  with path.open("w", encoding="utf-8") as f:
    for row, line in zip(labels, lines):
      f.write(" ".join(f"__label__{names[i]}" for i in row.nonzero()[0]) + f" {line}\n")


def fasttext_job(train_file, test_file, threads: int, seed: int) -> dict:
  start = time.perf_counter()
  model = harness.train_fasttext(train_file, FASTTEXT, threads, seed)
  _, p1, _ = model.test(str(test_file), k=1)
  _, p2, r2 = model.test(str(test_file), k=2)
  return {"seconds": time.perf_counter() - start, "p_at_1": p1, "r_at_2": r2, "p_at_2": p2}


def embedlab_job(workdir: str, cache: pathlib.Path, threads: int, seed: int) -> dict:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "embedlab.cli", "train", "experiments/trec_multilabel.py",
                  "--workdir", workdir, "--restart", "--no-progress", "--set", f"seed={seed}"],
                 cwd=harness.REPO, env=harness.embedlab_env(cache, threads), check=True,
                 stdout=subprocess.DEVNULL)
  seconds = time.perf_counter() - start
  r = json.loads((pathlib.Path(workdir) / "results.json").read_text())
  return {"seconds": seconds, "train_loop": r["timings"]["train_loop_seconds"],
          "p_at_1": r["test_precision_at_1"], "r_at_2": r["test_recall_at_2"],
          "p_at_2": r["test_precision_at_2"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=1)
  args = parser.parse_args()
  cfg = _experiment()
  from embedlab.data import splits as splits_lib  # noqa: PLC0415
  table = harness.Table([("side", "<9"), ("seed", ">4"), ("P@1", ">7.4f"), ("R@2", ">7.4f"),
                         ("P@2", ">7.4f"), ("seconds", ">8.2f"), ("train loop", ">11.2f")])
  print(table.header())
  out = {"fasttext": [], "embedlab": []}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    for seed in range(args.repeats):
      splits, names = splits_lib.load_splits(cfg.data, seed)
      _fasttext_file(tmp / "train.txt", splits["train"].texts, splits["train"].labels, names)
      _fasttext_file(tmp / "test.txt", splits["test"].texts, splits["test"].labels, names)
      ft = fasttext_job(tmp / "train.txt", tmp / "test.txt", args.threads, seed)
      el = embedlab_job(str(tmp / f"run{seed}"), tmp / f"cache{seed}", args.threads, seed)
      out["fasttext"].append(ft)
      out["embedlab"].append(el)
      print(table.row("fastText", seed, ft["p_at_1"], ft["r_at_2"], ft["p_at_2"], ft["seconds"],
                      ft["seconds"]))
      print(table.row("embedlab", seed, el["p_at_1"], el["r_at_2"], el["p_at_2"], el["seconds"],
                      el["train_loop"]))
  medians = {side: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
             for side, runs in out.items()}
  for side, m in medians.items():
    print(table.row(side, "med", m["p_at_1"], m["r_at_2"], m["p_at_2"], m["seconds"],
                    m.get("train_loop", m["seconds"])))
  harness.emit({"benchmark": "trec_ova", "threads": args.threads, "medians": medians,
                "runs": out, "fasttext_settings": FASTTEXT})


if __name__ == "__main__":
  main()
