"""TREC questions as multi-label data: each question has two labels, its coarse and fine class.

What it reproduces: fastText's one-vs-all training (`-loss ova`) on a real multi-label set made
from ../shared/data/trec: each question's labels are its coarse class (6, e.g. HUM) and its fine
class (50, e.g. HUM:ind), written as fastText lines (`__label__HUM __label__HUM:ind Who ...`);
56 sigmoids, a bag of word + hashed-bigram embeddings. Dev: 10% of train; test: TREC_10 (500).
Compared with `fasttext.train_supervised(loss="ova")` by `benchmarks/trec_ova.py`.

Measured on a 2-core CPU, one core (BENCHMARKS.md, seeds 0-2, median): test P@1 0.902, R@2
0.851 (fastText ova: 0.888, 0.847); train loop 2.3 s, the whole command 5.7 s (fastText 1.4 s).

Command:
  embedlab train experiments/trec_multilabel.py
"""

import gzip
import os
import pathlib

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

PREFIX = "__label__"


def fasttext_lines(split: str) -> list[str]:
  """TREC's ``split`` (train / test) as fastText lines: coarse label, fine label, question."""
  data = pathlib.Path(os.environ.get("EMBEDLAB_DATA") or pathlib.Path(__file__).resolve()
                      .parent.parent.parent / "shared" / "data")
  with gzip.open(data / "trec" / f"{split}.tsv.gz", "rt", encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]  # label, fine_label, text
  return [f"{PREFIX}{coarse} {PREFIX}{fine} {text}\n" for coarse, fine, text in rows]


def write_files(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  """Writes ``train.txt`` and ``test.txt`` into ``directory`` (only when their content changes,
  so the encoded data's cache, keyed by the files' mtimes, stays valid); their paths."""
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for split in ("train", "test"):
    path, text = directory / f"{split}.txt", "".join(fasttext_lines(split))
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
      path.write_text(text, encoding="utf-8")
    out[split] = path
  return out


def files_dir() -> pathlib.Path:
  cache = os.environ.get("EMBEDLAB_CACHE") or "~/.cache/embedlab/encoded"
  return pathlib.Path(cache).expanduser() / "trec_multilabel"


def get_config() -> Config:
  paths = write_files(files_dir())
  return Config(
      name="trec_multilabel",
      seed=0,
      data=DataConfig(source="files", train=str(paths["train"]), test=str(paths["test"]),
                      format="fasttext", multilabel=True, dev_fraction=0.1, max_len=40,
                      ngrams=2, num_buckets=2097152, prune_buckets=True),
      model=ModelConfig(name="bag", features=50, init="uniform", init_scale=0.02,
                        pooling="mean"),
      optim=OptimConfig(name="sgd", learning_rate=8.0, schedule="linear", tables="sparse_sgd"),
      train=TrainConfig(batch_size=16, num_epochs=25, eval_every=767, log_every=307,
                        eval_k=2, keep_checkpoints=1, checkpoint_every=1_000_000, plots=False),
  )
