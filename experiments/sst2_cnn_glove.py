"""SST-2 with Kim's CNN on GloVe 6B 50d vectors, fine-tuned (Kim's CNN-non-static, smaller).

What it reproduces: Kim 2014's finding that pretrained vectors help (CNN-non-static, 87.2% with
300d word2vec), here with the 50d GloVe vectors in ../shared/data/glove6b50d (100k most frequent
words): the table starts from GloVe where the word is found and is fine-tuned; the rest of the
model is sst2_cnn's. Goal (issue 3): test accuracy above sst2_cnn's.

Measured on a 2-core CPU: see RESULTS.md.

Command:
  embedlab train experiments/sst2_cnn_glove.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="sst2_cnn_glove",
      seed=0,
      data=DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                      test="sst2/test.tsv.gz", max_len=56, bucket_by_length=True),
      model=ModelConfig(name="cnn", features=50, filter_widths=(3, 4, 5), num_filters=100,
                        dropout=0.5, pretrained="glove6b50d/glove.6B.50d.top100k.txt.gz",
                        pretrained_mode="finetune"),
      optim=OptimConfig(name="adam", learning_rate=0.001),
      train=TrainConfig(batch_size=50, num_epochs=3, eval_every=500, log_every=100),
  )
