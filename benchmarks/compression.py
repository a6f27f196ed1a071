"""Test accuracy against embedding bytes: every ``model.table`` variant at several sizes, and the
trained plain table quantized row-wise to int8, 4 bits and 2 bits, on the IMDB and SST-2 bag
experiments.

  python benchmarks/compression.py [--datasets imdb sst2] [--out runs/compression] [--set K=V]

Each row trains ``experiments/<dataset>_bag.py`` with one config change (``model.table`` and its
size; nothing else is tuned per variant), keeps the best-dev checkpoint and evaluates it on test.
Hashed and factorized tables keep the experiment's row-sparse optimizer; hash embeddings and
quotient-remainder tables share each weight between many ids, have no rows to update sparsely,
and train with dense Adam (lr 0.002, IMDB's setting) on both datasets. The quantized rows
(int8, int4, int2) re-evaluate the trained plain table with ``embedlab eval --quantize``. Goals:
a variant at least 10x smaller than the plain table loses at most 0.5 test points on
IMDB; int8 loses at most 0.2 points.

Prints a table per dataset, writes ``<out>/compression.png`` (test accuracy against bytes, log
scale) and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time

import harness
from harness import REPO

harness.setup_repo()  # embedlab from this checkout, data from EMBEDLAB_DATA or ../shared/data

DENSE_ADAM = ("optim.tables=dense", "optim.name=adam", "optim.learning_rate=0.002",
              "optim.schedule=constant")


def variants(num_embeddings: int) -> list[tuple[str, tuple[str, ...]]]:
  """``(label, overrides)`` of each run: sizes chosen for about 10x, 20x and more."""
  v = num_embeddings
  out = [("plain", ())]
  for ratio in (10, 30):
    exact = min(10000, v // (2 * ratio))  # the most frequent words keep a row of their own
    out.append((f"hashed 1/{ratio}", ("model.table=hashed", f"model.table_exact={exact}",
                                      f"model.table_buckets={v // ratio - exact}")))
  for rank in (6, 3):
    out.append((f"factorized r={rank}", ("model.table=factorized", f"model.table_rank={rank}")))
  for div in (16, 64):
    out.append((f"hash emb B=V/{div}", ("model.table=hash_embedding",
                                        f"model.table_buckets={v // div}") + DENSE_ADAM))
  for m in (12, 0):
    label = f"qr m={m}" if m else f"qr m=sqrt(V)={math.isqrt(v - 1) + 1}"
    out.append((label, ("model.table=qr", f"model.table_collisions={m}") + DENSE_ADAM))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", nargs="+", default=["imdb", "sst2"])
  parser.add_argument("--out", default=str(REPO / "runs" / "compression"))
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                      help="a config override for every run (e.g. train.num_steps=50 to try it)")
  args = parser.parse_args()

  import logging  # noqa: PLC0415
  logging.getLogger("absl").setLevel(logging.ERROR)
  import jax  # noqa: PLC0415
  from embedlab import config as config_lib  # noqa: PLC0415
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  from embedlab.run import loaded, train  # noqa: PLC0415

  out = pathlib.Path(args.out)
  figures: dict[str, list[dict]] = {}
  for dataset in args.datasets:
    experiment = REPO / "experiments" / f"{dataset}_bag.py"
    base = config_lib.load_config(experiment, [])
    data = cache_lib.encode_splits(base.data, base.seed)
    plain_bytes = data.num_embeddings * base.model.features * 4
    rows = []
    for label, overrides in variants(data.num_embeddings):
      cfg = config_lib.load_config(experiment, ["train.progress=false", *args.overrides,
                                                *overrides])
      workdir = out / dataset / label.replace(" ", "_").replace("/", "_").replace("=", "")
      start = time.perf_counter()
      results = train.train(cfg, workdir, restart=True, echo=lambda *_: None)
      row = {"variant": label, "bytes": results["embedding_bytes"],
             "ratio": plain_bytes / results["embedding_bytes"],
             "dev": results["dev_accuracy"], "test": results["test_accuracy"],
             "seconds": time.perf_counter() - start, "overrides": list(overrides)}
      rows.append(row)
      print(f"{dataset}: {label:<22} {row['bytes'] / 2**20:8.2f} MiB  test {row['test']:.4f}",
            flush=True)
      if label == "plain":
        for quant in ("int8", "int4", "int2"):
          q = loaded.evaluate_run(workdir, "test", quantize=quant)
          rows.append({"variant": f"plain, {quant} after training", "bytes": q["quantized_bytes"],
                       "ratio": plain_bytes / q["quantized_bytes"], "dev": None,
                       "test": q["accuracy"], "seconds": 0.0, "overrides": [f"--quantize {quant}"]})
    plain_test = rows[0]["test"]
    for row in rows:
      row["delta_points"] = round(100 * (row["test"] - plain_test), 2)
    figures[dataset] = rows
    print(table(dataset, rows, plain_bytes))
    jax.clear_caches()
  picture = plot(figures, out / "compression.png")
  print(f"picture: {picture}")
  summary = {"device": jax.devices()[0].device_kind, "datasets": figures}
  for dataset, rows in figures.items():
    int8 = next(r for r in rows if r["variant"].startswith("plain, int8"))
    for key, trained_only in (("best_10x_trained", True), ("best_10x", False)):
      small = [r for r in rows if r["ratio"] >= 10
               and not (trained_only and "after training" in r["variant"])]
      best = max(small, key=lambda r: r["test"], default=None)
      summary[f"{dataset}_{key}"] = None if best is None else {
          "variant": best["variant"], "ratio": round(best["ratio"], 1),
          "delta_points": best["delta_points"]}
    summary[f"{dataset}_int8_delta_points"] = int8["delta_points"]
  harness.emit(summary)


def table(dataset: str, rows: list[dict], plain_bytes: int) -> str:
  lines = [f"\n{dataset}: test accuracy against embedding bytes (plain float32 table "
           f"{plain_bytes / 2**20:.1f} MiB)",
           f"{'variant':<28} {'bytes':>11} {'smaller':>8} {'dev':>7} {'test':>7} {'Δ pts':>7} "
           f"{'seconds':>8}"]
  for r in rows:
    dev = "" if r["dev"] is None else f"{r['dev']:.4f}"
    lines.append(f"{r['variant']:<28} {r['bytes'] / 2**20:>7.2f} MiB {r['ratio']:>7.1f}x "
                 f"{dev:>7} {r['test']:>7.4f} {r['delta_points']:>+7.2f} {r['seconds']:>8.1f}")
  return "\n".join(lines)


def plot(figures: dict[str, list[dict]], path: pathlib.Path) -> pathlib.Path:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, len(figures), figsize=(6.5 * len(figures), 4.5), squeeze=False)
  for ax, (dataset, rows) in zip(axes[0], figures.items()):
    families: dict[str, list[dict]] = {}
    for r in rows:
      family = r["variant"].rsplit(" ", 1)[0] if " " in r["variant"] else r["variant"]
      if "after training" in r["variant"]:
        family = r["variant"].split(", ")[1].split(" ")[0]
      families.setdefault(family, []).append(r)
    for family, points in families.items():
      points = sorted(points, key=lambda r: r["bytes"])
      ax.plot([p["bytes"] / 2**20 for p in points], [100 * p["test"] for p in points],
              marker="o", label=family)
    plain = rows[0]
    ax.axhline(100 * plain["test"] - 0.5, color="grey", ls=":", lw=1, label="plain - 0.5 pt")
    ax.axvline(plain["bytes"] / 2**20 / 10, color="grey", ls="--", lw=1, label="10x smaller")
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes (MiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy against table size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


if __name__ == "__main__":
  main()
