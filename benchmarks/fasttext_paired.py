"""Is embedlab's accuracy gap to fastText on SST-2 larger than the test set's own noise?

  pip install -e '.[bench]'          # the fasttext package (fasttext-wheel)
  python benchmarks/fasttext_paired.py [--seeds 10] [--bootstrap 10000]

Trains fastText and ``experiments/sst2_fasttext.py`` with seeds 0..S-1 each (the settings and
tokens of ``benchmarks/vs_fasttext.py``), keeps every model's prediction for every dev and test
example, and compares the two systems example by example:

* accuracy: the mean over seeds, as ``vs_fasttext.py --repeats S`` reports it;
* disagreement: the share of examples on which the two systems' models of the same seed give
  different labels (mean over seeds);
* the difference embedlab - fastText with a 95% paired bootstrap interval over the examples:
  each resample draws N examples with replacement and recomputes both mean-over-seeds
  accuracies on them. Seeds average out the training noise; the bootstrap measures what is
  left, the sampling of the evaluation set. An interval that holds 0 means this set cannot
  tell the two systems apart.

This chooses nothing: the experiment is fixed (tuned on dev before); its test predictions are
only compared. Prints a table and ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np

import harness  # beside this file: fastText's settings, the data, both jobs

SPLITS = {"dev": "sst2/dev.tsv.gz", "test": "sst2/test.tsv.gz"}


def fasttext_predictions(seed: int, lines: dict[str, list[str]], files: dict[str, pathlib.Path],
                         threads: int) -> tuple[dict[str, list[str]], float]:
  """Each split's predicted labels, and the test accuracy fastText's own ``test`` reports."""
  model = harness.train_fasttext(files["train"], harness.DATASETS["sst2"]["fasttext"], threads,
                                 seed)
  _, reported, _ = model.test(str(files["test"]))
  return ({split: [labels[0].removeprefix("__label__")
                   for labels in model.predict(split_lines, k=1)[0]]
           for split, split_lines in lines.items()}, reported)


def embedlab_predictions(seed: int, texts: dict[str, list[str]], cache: pathlib.Path,
                         threads: int) -> tuple[dict[str, list[str]], float]:
  """Each split's predicted labels, and the test accuracy the run reported."""
  from embedlab.run import loaded  # noqa: PLC0415 - JAX, after fastText's files are written

  with tempfile.TemporaryDirectory() as workdir:
    reported = harness.run_embedlab("sst2", workdir, cache, threads, seed)["test_accuracy"]
    return ({split: [row["label"] for row in loaded.predict(workdir, raw)]
             for split, raw in texts.items()}, reported)


def _check(system: str, seed: int, labels: list[str], gold: np.ndarray, reported: float) -> None:
  """The predictions kept must score what the system itself reported on test."""
  accuracy = float(np.mean(np.array(labels) == gold))
  if abs(accuracy - reported) > 1e-9:
    raise SystemExit(f"{system}, seed {seed}: the predictions score {accuracy} on test, "
                     f"{system} reported {reported}")


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int,
                     seed: int = 0) -> tuple[float, float, float]:
  """Mean-over-seeds accuracy difference a - b (``[seeds, examples]`` 0/1 arrays) and its 95%
  bootstrap interval over the examples."""
  per_example = correct_a.mean(0) - correct_b.mean(0)
  rng = np.random.default_rng(seed)
  n = per_example.shape[0]
  draws = per_example[rng.integers(0, n, size=(resamples, n))].mean(1)
  low, high = np.percentile(draws, [2.5, 97.5])
  return float(per_example.mean()), float(low), float(high)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--bootstrap", type=int, default=10000)
  args = parser.parse_args()
  spec = harness.DATASETS["sst2"]
  gold, raw, lines = {}, {}, {}
  for split, path in SPLITS.items():
    rows = harness.read_rows(harness.DATA / path, spec["delimiter"])
    gold[split] = np.array([label for label, _ in rows])
    raw[split] = [t for _, t in rows]
    lines[split] = harness.fasttext_lines(raw[split])
  figures = {"seeds": args.seeds, "bootstrap_resamples": args.bootstrap,
             "fasttext_settings": spec["fasttext"]}
  predictions = {"fasttext": {s: [] for s in SPLITS}, "embedlab": {s: [] for s in SPLITS}}
  with tempfile.TemporaryDirectory() as tmp:
    files = {"train": pathlib.Path(tmp) / "train.txt", "test": pathlib.Path(tmp) / "test.txt"}
    train_rows = harness.read_rows(harness.DATA / spec["train"], spec["delimiter"])
    harness.write_fasttext_file(files["train"], [label for label, _ in train_rows],
                                harness.fasttext_lines([t for _, t in train_rows]))
    harness.write_fasttext_file(files["test"], list(gold["test"]), lines["test"])
    for seed in range(args.seeds):
      labels, reported = fasttext_predictions(seed, lines, files, args.threads)
      _check("fastText", seed, labels["test"], gold["test"], reported)
      for split, split_labels in labels.items():
        predictions["fasttext"][split].append(split_labels)
    for seed in range(args.seeds):
      labels, reported = embedlab_predictions(seed, raw, pathlib.Path(tmp) / "cache",
                                              args.threads)
      _check("embedlab", seed, labels["test"], gold["test"], reported)
      for split, split_labels in labels.items():
        predictions["embedlab"][split].append(split_labels)

  print(f"SST-2, {args.seeds} seeds per system, mean over seeds; difference embedlab - fastText "
        f"with a 95% paired bootstrap interval over the examples ({args.bootstrap} resamples)")
  table = harness.Table([("split", "6"), ("examples", ">8d"), ("fastText", ">9.4f"),
                         ("embedlab", ">9.4f"), ("disagree", ">9.3f"), ("difference", "+11.4f"),
                         ("95% interval", ">20")], sep=" ")
  print(table.header())
  for split in SPLITS:
    correct = {name: np.array(p[split]) == gold[split][None, :]
               for name, p in predictions.items()}
    disagree = float(np.mean(np.array(predictions["fasttext"][split]) !=
                             np.array(predictions["embedlab"][split])))
    diff, low, high = paired_bootstrap(correct["embedlab"], correct["fasttext"], args.bootstrap)
    row = {"examples": int(gold[split].shape[0]),
           "fasttext_accuracy": float(correct["fasttext"].mean()),
           "embedlab_accuracy": float(correct["embedlab"].mean()),
           "fasttext_accuracy_per_seed": correct["fasttext"].mean(1).round(4).tolist(),
           "embedlab_accuracy_per_seed": correct["embedlab"].mean(1).round(4).tolist(),
           "disagreement": disagree, "difference": diff, "interval_95": [low, high]}
    figures[split] = row
    print(table.row(split, row["examples"], row["fasttext_accuracy"], row["embedlab_accuracy"],
                    disagree, diff, f"[{low:+.4f}, {high:+.4f}]"))
  harness.emit(figures)


if __name__ == "__main__":
  main()
