"""IMDB with a bag of word and bigram embeddings (fastText / NBOW).

What it reproduces: the neural bag-of-words baseline on the IMDB Large Movie Review Dataset
(Maas et al. 2011; 25,000 train / 25,000 test reviews from ../shared/data/imdb), reported at
88.9% test accuracy by Iyyer et al. 2015 (NBOW), and fastText with bigrams. A dev split of 10%
is carved out of train by seed for model selection; test is used once at the end.
Goal: test accuracy >= 88.9%.

Measured on a 2-core CPU (RESULTS.md): dev 0.9104, test 0.9014 (best dev at step 1,500 of
2,109); 73 s of training with row-sparse lazy Adam on a CPU shared with other work.

Command:
  embedlab train experiments/imdb_bag.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="imdb_bag",
      seed=0,
      data=DataConfig(source="files", train="imdb/train.csv.gz", test="imdb/test.csv.gz",
                      dev_fraction=0.1, max_len=512, ngrams=2, num_buckets=262144),
      model=ModelConfig(name="bag", features=64, init="normal", init_scale=0.05,
                        pooling="mean"),
      optim=OptimConfig(name="adam", learning_rate=0.002, tables="sparse_lazy_adam"),
      train=TrainConfig(batch_size=32, num_epochs=3, eval_every=250, log_every=50),
  )
