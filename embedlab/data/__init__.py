"""Host data (numpy, no JAX): text, sources, synthetic data, encoded cache, batches, pretrained vectors.

The flow is ``DataConfig -> splits.load_splits -> cache.encode_splits -> batches``:

* ``paths``: the data directory (``EMBEDLAB_DATA``) relative paths are resolved against.
* ``rows``: ``Split``, ``RawSplit``, ``DataError`` and the checks every source applies to rows.
* ``files``: local csv / tsv / jsonl / parquet files; ``sources``: Hugging Face ``disk`` and
  ``hub`` data; ``synthetic``: generated data with a planted topic structure.
* ``splits``: ``load_splits``, from a config to labelled train / dev / test splits.
* ``text``: tokenizing, the vocabulary; ``ngrams``: fastText's hashed word and character n-grams;
  ``encoding``: token lists to padded id matrices, whole corpora on processes; ``cache``:
  ``encode_splits``, every split as padded ids, cached on disk.
* ``batches``: training batch indices, ragged batches, masked evaluation batches.
* ``vectors``: pretrained word vectors; ``atomic``: writing a file whole or not at all;
  ``workers``: forked processes; ``options``: ``DataConfig``.

Example:
  >>> from embedlab.data import batches, cache
  >>> from embedlab.data.options import DataConfig
  >>> d = cache.encode_splits(DataConfig(synthetic_train_size=64, synthetic_eval_size=16), seed=0,
  ...                         cache=False)
  >>> batches.batch_indices(len(d.train_ids), 32, seed=0, epoch=0).shape
  (2, 32)
"""
