"""Models over embedding tables: the text classifiers and the Flax modules."""
