"""SST-2 with a bag of word and bigram embeddings (fastText's model, Joulin et al. 2017).

What it reproduces: fastText-style sentiment classification on GLUE SST-2 (67,349 train
phrases, 872 dev, 1,821 labelled test sentences from ../shared/data/sst2): the mean of word and
hashed-bigram embeddings, then a linear classifier. Goal: test accuracy >= 81%.

Measured on a 2-core CPU (RESULTS.md): dev 0.8142, test 0.8237 (best dev at step 1,500 of
5,260); 20 s of training with row-sparse SGD (dense Adam on the same table: 7.5 min).

Command:
  embedlab train experiments/sst2_bag.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="sst2_bag",
      seed=0,
      data=DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                      test="sst2/test.tsv.gz", max_len=64, ngrams=2, num_buckets=131072),
      model=ModelConfig(name="bag", features=64, init="normal", init_scale=0.05,
                        pooling="mean"),
      optim=OptimConfig(name="sgd", learning_rate=5.0, schedule="linear", tables="sparse_sgd"),
      train=TrainConfig(batch_size=64, num_epochs=5, eval_every=500, log_every=100),
  )
