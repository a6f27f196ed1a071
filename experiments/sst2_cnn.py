"""SST-2 with Kim's (2014) CNN, embeddings learned from scratch (CNN-rand).

What it reproduces: Kim 2014, "Convolutional Neural Networks for Sentence Classification",
CNN-rand on binary SST (reported 82.7% test accuracy), on GLUE SST-2 phrases for training
(../shared/data/sst2): filter widths 3, 4, 5 with 100 maps each, max-over-time pooling,
dropout 0.5. Goal: test accuracy >= 82.7%.

Measured on a 2-core CPU (RESULTS.md): dev 0.8303, test 0.8325 (best dev at step 3,750 of
4,038); 370 s of training on a CPU shared with other work.

Command:
  embedlab train experiments/sst2_cnn.py
"""

from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
  return Config(
      name="sst2_cnn",
      seed=0,
      data=DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                      test="sst2/test.tsv.gz", max_len=56, bucket_by_length=True),
      model=ModelConfig(name="cnn", features=128, init="uniform", init_scale=0.25,
                        filter_widths=(3, 4, 5), num_filters=100, dropout=0.5),
      optim=OptimConfig(name="adam", learning_rate=0.001),
      train=TrainConfig(batch_size=50, num_epochs=3, eval_every=250, log_every=100),
  )
