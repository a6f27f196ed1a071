"""embedlab: the embedding table as a first-class, fast, honest tool in JAX.

The public API is the names in ``__all__``; tests and users import them from here. Each loads
its module on first use (PEP 562), so ``import embedlab.config`` or ``embedlab.data`` does not
start JAX: ``embedlab train`` encodes its data on a forked process while JAX loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
  from embedlab.tables import (  # noqa: F401
      INIT_NAMES, TableSummary, attend, bag, check_ids, describe, init_table, lookup,
      num_params, offsets_to_segment_ids, renorm_rows)
  from embedlab.pretrained import (  # noqa: F401
      load_vectors, read_vectors, save_vectors)
  from embedlab.inspection import (  # noqa: F401
      EmbeddingSummary, RunEmbedding, TopicCheck, UnknownWordError, analogy,
      class_association, export_npy, export_projector, export_run, export_word2vec,
      load_embedding, nearest_neighbours, neighbours, pca, plot_embedding, summarize_run,
      summarize_table, topic_neighbour_accuracy, unit_rows)
  from embedlab.optim import (  # noqa: F401
      freeze, freeze_rows, path_mask)
  from embedlab.sharding import (  # noqa: F401
      make_mesh, shard_table, sharded_bag, sharded_lookup)
  from embedlab.sparse import (  # noqa: F401
      SPARSE_OPTIMIZERS, Localized, SparseAdagradState, SparseLazyAdamState, SparseOptimizer,
      SparseRowwiseAdagradState, SparseSgdState, get_sparse_optimizer, localize, slot_bytes,
      sparse_adagrad, sparse_lazy_adam, sparse_rowwise_adagrad, sparse_sgd, sum_duplicates)
  from embedlab.flax_adapter import (  # noqa: F401
      Embed, LinenEmbed)
  from embedlab.rowgrad import (  # noqa: F401
      RowGrad, apply_updates, row_sparse, value_and_row_grad)
  from embedlab.loaded import (  # noqa: F401
      Run, UnknownWordsError, load_run)

__version__ = "0.1.0"

# name -> the module that defines it
_MODULES = {
    "INIT_NAMES": "embedlab.tables",
    "Run": "embedlab.loaded",
    "UnknownWordsError": "embedlab.loaded",
    "load_run": "embedlab.loaded",
    "TableSummary": "embedlab.tables",
    "attend": "embedlab.tables",
    "bag": "embedlab.tables",
    "check_ids": "embedlab.tables",
    "describe": "embedlab.tables",
    "init_table": "embedlab.tables",
    "lookup": "embedlab.tables",
    "num_params": "embedlab.tables",
    "offsets_to_segment_ids": "embedlab.tables",
    "renorm_rows": "embedlab.tables",
    "load_vectors": "embedlab.pretrained",
    "read_vectors": "embedlab.pretrained",
    "save_vectors": "embedlab.pretrained",
    "EmbeddingSummary": "embedlab.inspection",
    "RunEmbedding": "embedlab.inspection",
    "TopicCheck": "embedlab.inspection",
    "UnknownWordError": "embedlab.inspection",
    "analogy": "embedlab.inspection",
    "class_association": "embedlab.inspection",
    "export_npy": "embedlab.inspection",
    "export_projector": "embedlab.inspection",
    "export_run": "embedlab.inspection",
    "export_word2vec": "embedlab.inspection",
    "load_embedding": "embedlab.inspection",
    "nearest_neighbours": "embedlab.inspection",
    "neighbours": "embedlab.inspection",
    "pca": "embedlab.inspection",
    "plot_embedding": "embedlab.inspection",
    "summarize_run": "embedlab.inspection",
    "summarize_table": "embedlab.inspection",
    "topic_neighbour_accuracy": "embedlab.inspection",
    "unit_rows": "embedlab.inspection",
    "freeze": "embedlab.optim",
    "freeze_rows": "embedlab.optim",
    "path_mask": "embedlab.optim",
    "make_mesh": "embedlab.sharding",
    "shard_table": "embedlab.sharding",
    "sharded_bag": "embedlab.sharding",
    "sharded_lookup": "embedlab.sharding",
    "SPARSE_OPTIMIZERS": "embedlab.sparse",
    "Localized": "embedlab.sparse",
    "SparseAdagradState": "embedlab.sparse",
    "SparseLazyAdamState": "embedlab.sparse",
    "SparseOptimizer": "embedlab.sparse",
    "SparseRowwiseAdagradState": "embedlab.sparse",
    "SparseSgdState": "embedlab.sparse",
    "get_sparse_optimizer": "embedlab.sparse",
    "localize": "embedlab.sparse",
    "slot_bytes": "embedlab.sparse",
    "sparse_adagrad": "embedlab.sparse",
    "sparse_lazy_adam": "embedlab.sparse",
    "sparse_rowwise_adagrad": "embedlab.sparse",
    "sparse_sgd": "embedlab.sparse",
    "sum_duplicates": "embedlab.sparse",
    "Embed": "embedlab.flax_adapter",  # flax: ~0.7 s to import
    "LinenEmbed": "embedlab.flax_adapter",
    "RowGrad": "embedlab.rowgrad",
    "apply_updates": "embedlab.rowgrad",
    "row_sparse": "embedlab.rowgrad",
    "value_and_row_grad": "embedlab.rowgrad",
}

__all__ = [
    "EmbeddingSummary",
    "RunEmbedding",
    "TopicCheck",
    "UnknownWordError",
    "analogy",
    "class_association",
    "export_npy",
    "export_projector",
    "export_run",
    "export_word2vec",
    "load_embedding",
    "nearest_neighbours",
    "neighbours",
    "pca",
    "plot_embedding",
    "summarize_run",
    "summarize_table",
    "topic_neighbour_accuracy",
    "unit_rows",
    "make_mesh",
    "shard_table",
    "sharded_bag",
    "sharded_lookup",
    "SPARSE_OPTIMIZERS",
    "Localized",
    "SparseAdagradState",
    "SparseLazyAdamState",
    "SparseOptimizer",
    "SparseRowwiseAdagradState",
    "SparseSgdState",
    "get_sparse_optimizer",
    "localize",
    "slot_bytes",
    "sparse_adagrad",
    "sparse_lazy_adam",
    "sparse_rowwise_adagrad",
    "sparse_sgd",
    "sum_duplicates",
    "Embed",
    "LinenEmbed",
    "RowGrad",
    "apply_updates",
    "row_sparse",
    "value_and_row_grad",
    "Run",
    "UnknownWordsError",
    "load_run",
    "freeze",
    "freeze_rows",
    "load_vectors",
    "path_mask",
    "read_vectors",
    "save_vectors",
    "INIT_NAMES",
    "TableSummary",
    "attend",
    "bag",
    "check_ids",
    "describe",
    "init_table",
    "lookup",
    "num_params",
    "offsets_to_segment_ids",
    "renorm_rows",
]


def __getattr__(name):
  """Loads a public name's module on first use (then it is a plain attribute)."""
  module = _MODULES.get(name)
  if module is None:
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
