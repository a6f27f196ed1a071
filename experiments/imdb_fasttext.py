"""IMDB, embedlab's fastText: word + hashed-bigram embeddings, mean bag, linear classifier.

What it reproduces: fastText's supervised classifier (Joulin et al. 2017) with bigrams on the
IMDB reviews (../shared/data/imdb; a seeded 10% of train is the dev split), compared side by
side with the `fasttext` package by `benchmarks/vs_fasttext.py` on the same files and tokens:
</s> ending every text, a factorized table (340,353 x 8 times 8 x 32), row-sparse lazy Adam,
ragged batches, one epoch.

Measured on a 2-core CPU (BENCHMARKS.md, commit 9a22ad2, seeds 0-2): test 0.8978 median (dev
0.9060), fastText 0.8934 (its 2-thread runs at lr 0.25 diverge about one time in three). The
whole job takes 10.58 s cold and 5.08 s warm, against fastText's 12.06 s (ratios 0.88 and
0.42). Tuning: RESULTS.md.

Command:
  embedlab train experiments/imdb_fasttext.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="imdb_fasttext",
      seed=0,
      data=DataConfig(source="files", train="imdb/train.csv.gz", test="imdb/test.csv.gz",
                      dev_fraction=0.1, max_len=512, ngrams=2, num_buckets=262144,
                      # fastText's features: every text ends with </s> (dev, seeds 0 and 1:
                      # 0.9060 / 0.9044 with it, 0.9052 / 0.9036 without)
                      eos=True),
      model=ModelConfig(name="bag", features=32, init="normal", init_scale=0.05,
                        pooling="mean", table="factorized", table_rank=8),
      optim=OptimConfig(name="adam", learning_rate=0.004, tables="sparse_lazy_adam"),
      # one epoch: within one standard error of the best dev (2 epochs), half the train loop;
      # blocks of 9 steps per dispatch, which divides every boundary (log 117, eval and epoch
      # 351): one block size, one compilation; ragged batches (train.ragged_batches) read the
      # real ids only, 48% of the padded [64, 1024] slots
      train=TrainConfig(batch_size=64, num_epochs=1, eval_every=351, log_every=117,
                        steps_per_dispatch=9, ragged_batches=True, eval_batch_size=1024,
                        keep_checkpoints=1,
                        # a job of seconds: one resumable checkpoint, at the end (the best-dev
                        # one is still saved at each improvement); no end-of-run plots
                        # (`embedlab compare RUN --plots DIR` draws them from metrics.jsonl)
                        checkpoint_every=1_000_000, plots=False),
  )
