"""Pure JAX: tables, pooling, table variants, row-sparse and dense optimizer helpers, sharding. No config, no files."""
