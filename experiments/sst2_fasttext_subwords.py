"""SST-2, embedlab's fastText with subwords: words, hashed bigrams and character 3-6-grams.

What it reproduces: `fasttext supervised -minn 3 -maxn 6` (Bojanowski et al. 2017's character
n-grams in Joulin et al. 2017's classifier) on GLUE SST-2: experiments/sst2_fasttext.py with every
word's character 3- to 6-grams added to its bag, hashed with fastText's hash into the same 2M
buckets (165,218 of them used: a 179,055 x 100 table). Unseen words get vectors (Run.embed).

Measured on a 2-core CPU shared with other jobs (BENCHMARKS.md, seeds 0-2): test 0.8342 median
(fastText with the same settings 0.8342; without subwords 0.8369 and 0.8418): subwords do not
help on SST-2. The whole job takes 18.7 s warm, 25.0 s cold, against fastText's 21.5 s.

Command:
  embedlab train experiments/sst2_fasttext_subwords.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="sst2_fasttext_subwords",
      seed=0,
      data=DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                      test="sst2/test.tsv.gz", max_len=56, ngrams=2, num_buckets=2097152,
                      prune_buckets=True,
                      # fastText's features: every text ends with </s> (dev, seeds 0-3: 0.8163
                      # with it, 0.8131 without; train's longest text, 55 tokens, keeps it)
                      eos=True,
                      # fastText's subwords: every word's character 3- to 6-grams, hashed into
                      # the bigrams' buckets (only those train uses keep a row)
                      minn=3, maxn=6),
      model=ModelConfig(name="bag", features=100, init="uniform", init_scale=0.01,
                        pooling="mean"),
      optim=OptimConfig(name="sgd", learning_rate=6.4, schedule="linear", tables="sparse_sgd"),
      # blocks of 4 steps per dispatch, and every boundary (log, eval, the epoch's 1052 steps)
      # a multiple of 4: one block size, so the block step compiles once; ragged batches
      # (train.ragged_batches) read the real ids only, 17% of the padded [64, 112] slots.
      # Dev is evaluated once, at the end, so test scores the final model, as fastText's:
      # the best of 7 evaluations (every 520 steps) had lifted dev 0.7 points over the final
      # model's (seeds 0-5: 0.8282 vs 0.8213), a selection on dev's noise, not a better model
      train=TrainConfig(batch_size=64, num_epochs=3, eval_every=3156, log_every=260,
                        steps_per_dispatch=4, ragged_batches=True, eval_batch_size=1024,
                        keep_checkpoints=1,
                        # a job of seconds: one resumable checkpoint, at the end (the best-dev
                        # one is still saved at each improvement); no end-of-run plots
                        # (`embedlab compare RUN --plots DIR` draws them from metrics.jsonl)
                        checkpoint_every=1_000_000, plots=False),
  )
