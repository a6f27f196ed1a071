"""What the benchmark scripts share: paths, timing, a table printer, the JSON line, and the
``embedlab train`` / fastText jobs of the fastText comparison.

Every script in ``benchmarks/`` runs as ``python benchmarks/<name>.py`` and imports this file
beside it (``import harness``). Importing it loads the standard library only (JAX, numpy and
the rest load inside the functions that need them), so a profiled or child process can import
it without changing what it measures.

  import harness
  ms = harness.time_ms(jitted_fn, table, ids, repeats=10)       # median, after one warm-up
  table = harness.Table([("case", "<44"), ("ms", ">10.2f")])
  print(table.header()); print(table.row("forward", ms))
  harness.emit({"benchmark": "name", "figures": [...]})        # the final JSON line
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = pathlib.Path(os.environ.get("EMBEDLAB_DATA", REPO.parent / "shared" / "data"))


# ------------------------------------------------------------------------------ set-up


def setup_repo() -> None:
  """Import ``embedlab`` from this checkout (without an install) and read data from ``DATA``
  (``EMBEDLAB_DATA``, default ``../shared/data`` beside the repository) unless set."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  os.environ.setdefault("EMBEDLAB_DATA", str(DATA))


def simulate_cpu_devices(count: int) -> None:
  """Make XLA:CPU show ``count`` devices. Call it before JAX is imported: the setting is read
  once, when JAX starts its CPU backend (so only entry points may set it)."""
  if "jax" in sys.modules:
    raise RuntimeError(f"simulate_cpu_devices({count}) called after `import jax`: call it at "
                       "the top of the script, before anything imports JAX")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={count}").strip()


# ------------------------------------------------------------------------------ timing


def time_ms(fn, *args, repeats: int = 5, warmup: int = 1, stat: str = "median") -> float:
  """Milliseconds per call of ``fn(*args)``: ``warmup`` untimed calls (compilation), then the
  median (``stat="median"``) or the best (``stat="min"``) of ``repeats`` timed calls. Each call
  waits for its result (``jax.block_until_ready``; results without it, such as PyTorch tensors
  or ``None``, are taken as ready)."""
  import statistics  # noqa: PLC0415

  import jax  # noqa: PLC0415

  reduce = {"median": statistics.median, "min": min}[stat]
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(reduce(times))


# ------------------------------------------------------------------------------ output


_SPEC = re.compile(r"^(?P<align>[<>^=]?)[+\- ]?#?0?(?P<width>\d*)[,_]?(?:\.\d+)?"
                   r"(?P<type>[a-zA-Z%]?)$")


class Table:
  """A fixed-width text table: each column a header and a format spec (``"<44"``,
  ``">10.2f"``, ``"+11.4f"``); a column whose spec is ``None`` prints its header on every line
  (a separator such as ``"|"``). Headers take the column's alignment and width (numbers right,
  text left); a cell of ``None`` is left blank.

  >>> t = Table([("case", "<8"), ("ms", ">7.2f"), ("|", None), ("ratio", ">6.2f")], sep=" ")
  >>> print(t.header()); print(t.row("fwd", 1.5, 0.25)); print(t.row(None, 12.0, 0.5))
  case          ms |  ratio
  fwd         1.50 |   0.25
             12.00 |   0.50
  """

  def __init__(self, columns, sep: str = ""):
    self.columns = list(columns)
    self.sep = sep

  def header(self) -> str:
    cells = []
    for title, spec in self.columns:
      if spec is None:
        cells.append(title)
        continue
      match = _SPEC.match(spec)
      align = match["align"] or (">" if match["type"] not in ("", "s") else "")
      cells.append(format(title, f"{align}{match['width']}"))
    return self.sep.join(cells)

  def row(self, *values) -> str:
    cells, values = [], list(values)
    for title, spec in self.columns:
      if spec is None:
        cells.append(title)
        continue
      value = values.pop(0)
      width = _SPEC.match(spec)["width"]
      cells.append(" " * int(width or 0) if value is None else format(value, spec))
    return self.sep.join(cells)


def emit(figures: dict) -> None:
  """The final line of every benchmark: all its figures as one JSON object."""
  print(json.dumps(figures), flush=True)


# ------------------------------------------------------------------------------ jobs


def children_cpu() -> float:
  """User + system CPU seconds of every finished child process waited for, their own children
  included (embedlab's forked data encoder and its tokenizing workers)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def embedlab_env(cache: pathlib.Path, threads: int) -> dict[str, str]:
  """The environment of an ``embedlab train`` job: its caches (encoded data, Hugging Face, JAX
  compilation) under ``cache`` (empty: a cold job), the data directory, ``threads``."""
  return dict(os.environ, EMBEDLAB_CACHE=str(cache / "encoded"),
              HF_DATASETS_CACHE=str(cache / "hf"), EMBEDLAB_COMPILE_CACHE=str(cache / "jax"),
              EMBEDLAB_DATA=str(DATA),
              OMP_NUM_THREADS=str(threads))  # XLA:CPU uses the machine's cores (2 here)


# The fastText comparison (vs_fasttext.py, fasttext_paired.py): each data set's files, the
# embedlab experiment, and fastText's settings.
DATASETS = {
    "sst2": {"train": "sst2/train.tsv.gz", "test": "sst2/test.tsv.gz", "delimiter": "\t",
             "experiment": "experiments/sst2_fasttext.py",
             # the best on SST-2 dev of fastText's documented settings tried (lr 0.05-0.5,
             # dim 10/100, 5/10 epochs, bigrams, 2M buckets): dev 0.8245
             "fasttext": dict(lr=0.1, dim=100, epoch=5, wordNgrams=2, bucket=2_000_000,
                              minCount=1)},
    "imdb": {"train": "imdb/train.csv.gz", "test": "imdb/test.csv.gz", "delimiter": ",",
             "experiment": "experiments/imdb_fasttext.py",
             # best on a seeded 10% dev carve-out of train, same grid: dev 0.910
             "fasttext": dict(lr=0.25, dim=10, epoch=10, wordNgrams=2, bucket=2_000_000,
                              minCount=1)},
}


def run_embedlab(name: str, workdir: str, cache: pathlib.Path, threads: int, seed: int,
                 overrides: tuple[str, ...] = ()) -> dict:
  """``embedlab train experiments/<name>_fasttext.py`` with seed ``seed`` (and ``--set`` each of
  ``overrides``) in a fresh process, its caches under ``cache`` (``embedlab_env``); its
  results.json."""
  env = embedlab_env(cache, threads)
  sets = [x for o in (f"seed={seed}", *overrides) for x in ("--set", o)]
  subprocess.run([sys.executable, "-m", "embedlab.cli", "train", DATASETS[name]["experiment"],
                  "--workdir", workdir, "--restart", "--no-progress", *sets],
                 cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def read_rows(path: pathlib.Path, delimiter: str) -> list[tuple[str, str]]:
  """``(label, text)`` of each row of a gzipped csv / tsv file with those two columns."""
  import csv  # noqa: PLC0415
  import gzip  # noqa: PLC0415

  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
    return [(r["label"], r["text"]) for r in reader]


def fasttext_lines(texts: list[str]) -> list[str]:
  """Each text as fastText reads it: embedlab's tokens, joined by spaces."""
  from embedlab.data import text  # noqa: PLC0415

  return [" ".join(tokens) for tokens in text.tokenize_many(texts)]


def write_fasttext_file(path: pathlib.Path, labels: list[str], lines: list[str]) -> None:
  """A file in fastText's supervised format: ``__label__<label> <tokens>`` per line."""
  path.write_text("".join(f"__label__{label} {line}\n" for label, line in zip(labels, lines)))


def train_fasttext(train_file: pathlib.Path, settings: dict, threads: int, seed: int):
  """``fasttext.train_supervised`` on ``train_file`` (the ``bench`` extra: fasttext-wheel)."""
  import fasttext  # noqa: PLC0415

  return fasttext.train_supervised(str(train_file), thread=threads, verbose=0, seed=seed,
                                   **settings)
