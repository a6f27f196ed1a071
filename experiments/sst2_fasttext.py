"""SST-2, embedlab's fastText: word + hashed-bigram embeddings, mean bag, linear classifier.

What it reproduces: fastText's supervised classifier (Joulin et al. 2017, "Bag of Tricks for
Efficient Text Classification") on GLUE SST-2 (../shared/data/sst2), measured side by side with
the `fasttext` package by `benchmarks/vs_fasttext.py` on the same files and tokens. Built for
speed as much as accuracy: row-sparse SGD on the table, 4 training steps per dispatch
(`lax.scan`), ragged batches, two evaluations per epoch, tokenizing on forked processes, cached
encoded data. Tuned on the dev split only (lazy Adam dev 0.795; 3 epochs dev 0.805; kept: 2
epochs of sparse SGD, dev 0.813). A 24-run grid (features, epochs, batch, lr) gave dev
0.799-0.823, all within one standard error (1.3 points). Bigger tables, session 5, mean dev
over seeds 0-3: 262,144 buckets x 32 features (kept) 0.8131, 1,048,576 x 64 0.8125,
2,097,152 x 64 0.8174: no gain that dev can see, so the experiment is unchanged.

Measured on a 2-core CPU (BENCHMARKS.md, session 5, `python benchmarks/vs_fasttext.py --repeats 3`,
median of 3): test accuracy 0.8270 (dev 0.8177), with fastText's end-of-text token (dev over
seeds 0-3: 0.8163 with it, 0.8131 without). The whole job takes 5.7 s with every cache cold
(data, Hugging Face, and the JAX compilation cache: 1.6 s of compiling), and 3.0 s warm (train
loop 1.2 s). fastText in the same benchmark: 0.8413 in 1.99 s.

Command:
  embedlab train experiments/sst2_fasttext.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="sst2_fasttext",
      seed=0,
      data=DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                      test="sst2/test.tsv.gz", max_len=56, ngrams=2, num_buckets=2097152,
                      prune_buckets=True,
                      # fastText's features: every text ends with </s> (dev, seeds 0-3: 0.8163
                      # with it, 0.8131 without; train's longest text, 55 tokens, keeps it)
                      eos=True),
      model=ModelConfig(name="bag", features=100, init="uniform", init_scale=0.01,
                        pooling="mean"),
      optim=OptimConfig(name="sgd", learning_rate=6.4, schedule="linear", tables="sparse_sgd"),
      # blocks of 4 steps per dispatch, and every boundary (log, eval, the epoch's 1052 steps)
      # a multiple of 4: one block size, so the block step compiles once; ragged batches
      # (train.ragged_batches) read the real ids only, 17% of the padded [64, 112] slots
      train=TrainConfig(batch_size=64, num_epochs=3, eval_every=520, log_every=260,
                        steps_per_dispatch=4, ragged_batches=True, eval_batch_size=1024,
                        keep_checkpoints=1,
                        # a job of seconds: one resumable checkpoint, at the end (the best-dev
                        # one is still saved at each improvement); no end-of-run plots
                        # (`embedlab compare RUN --plots DIR` draws them from metrics.jsonl)
                        checkpoint_every=1_000_000, plots=False),
  )
