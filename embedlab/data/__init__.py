"""Host data (numpy, no JAX): text, sources, synthetic data, encoded cache, batches, pretrained vectors."""
