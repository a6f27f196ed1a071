"""IMDB, embedlab's fastText: word + hashed-bigram embeddings, mean bag, linear classifier.

What it reproduces: fastText's supervised classifier (Joulin et al. 2017) with bigrams on the
IMDB reviews (../shared/data/imdb; a seeded 10% of train is the dev split used for tuning),
measured side by side with the `fasttext` package by `benchmarks/vs_fasttext.py` on the same
files and tokens. Row-sparse lazy Adam on the table, 16 steps per dispatch, one evaluation per
epoch, cached encoded data.

Measured on a 2-core CPU: see BENCHMARKS.md ("embedlab vs fastText").

Command:
  embedlab train experiments/imdb_fasttext.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="imdb_fasttext",
      seed=0,
      data=DataConfig(source="files", train="imdb/train.csv.gz", test="imdb/test.csv.gz",
                      dev_fraction=0.1, max_len=512, ngrams=2, num_buckets=262144),
      model=ModelConfig(name="bag", features=32, init="normal", init_scale=0.05,
                        pooling="mean"),
      optim=OptimConfig(name="adam", learning_rate=0.004, tables="sparse_lazy_adam"),
      train=TrainConfig(batch_size=64, num_epochs=2, eval_every=351, log_every=117,
                        steps_per_dispatch=16, eval_batch_size=1024, keep_checkpoints=1),
  )
