"""SST-2 with Kim's CNN and a GloVe 6B 50d channel in the embedding table.

What it reproduces: Kim 2014's finding that pretrained vectors help the CNN (CNN-non-static),
here with the 50d GloVe vectors in ../shared/data/glove6b50d (100k most frequent words): the
table's first 50 columns start from GloVe (scaled by 0.3 to the random init's scale; 12,541 of
13,835 words found), the other 128 are sst2_cnn's random uniform(-0.25, 0.25) columns, and all
are fine-tuned. Goal: test accuracy above sst2_cnn's (0.8325).

Measured on a 2-core CPU (RESULTS.md): dev 0.8383, test 0.8364 (sst2_cnn: 0.8303 / 0.8325);
440 s of training, shared CPU. GloVe as the whole table did worse than random (test 0.793
fine-tuned, dev ~0.71 frozen): see RESULTS.md.

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
      model=ModelConfig(name="cnn", features=178, init="uniform", init_scale=0.25,
                        filter_widths=(3, 4, 5), num_filters=100, dropout=0.5,
                        pretrained="glove6b50d/glove.6B.50d.top100k.txt.gz",
                        pretrained_mode="finetune", pretrained_scale=0.3),
      optim=OptimConfig(name="adam", learning_rate=0.001),
      train=TrainConfig(batch_size=50, num_epochs=3, eval_every=250, log_every=100),
  )
