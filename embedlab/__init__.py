"""embedlab: the embedding table as a first-class, fast, honest tool in JAX.

An embedding layer is a trainable lookup table: ``V`` rows (one per token id) of ``D`` numbers,
``V x D`` weights; ids ``[batch, seq_len]`` come out as ``[batch, seq_len, D]``. It equals a
dense layer without bias on one-hot ids (``one_hot(ids) @ table``), computed as a row gather.

The API at a glance (params are a pytree, functions are pure):

  Tables         init_table, lookup, bag, attend, num_params, describe, check_ids,
                 offsets_to_segment_ids, renorm_rows
  Training       value_and_row_grad, row_sparse, apply_updates, RowGrad (row-sparse updates in
                 any optax chain); sparse_sgd, sparse_adagrad, sparse_rowwise_adagrad,
                 sparse_lazy_adam, localize; freeze, freeze_rows, path_mask
  Flax           Embed (nnx), LinenEmbed (linen)
  Many devices   make_mesh, shard_table, sharded_lookup, sharded_bag
  Vectors        load_vectors, read_vectors, save_vectors
  Trained runs   load_run -> Run (predict, probabilities, embed); load_embedding, neighbours,
                 analogy, summarize_run, plot_embedding, export_run

  >>> import jax, jax.numpy as jnp, embedlab as el
  >>> params = el.init_table(jax.random.key(0), 1000, 16, padding_id=0)
  >>> el.lookup(params, jnp.array([[5, 7, 0]]), padding_id=0).shape
  (1, 3, 16)

Experiments run from the command line: ``embedlab train experiments/quickstart.py``.
Each public name loads its module on first use, so ``import embedlab`` starts no JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
  from embedlab.core.tables import (  # noqa: F401
      INIT_NAMES, TableSummary, attend, bag, describe, init_table, lookup,
      num_params, offsets_to_segment_ids, renorm_rows)
  from embedlab.core.ids import check_ids  # noqa: F401
  from embedlab.core import variants  # noqa: F401
  from embedlab.core.variants import TABLES  # noqa: F401
  from embedlab.core.variants.contract import TableVariant  # noqa: F401
  from embedlab.data.vectors import (  # noqa: F401
      load_vectors, read_vectors, save_vectors)
  from embedlab.analysis.exports import (  # noqa: F401
      export_npy, export_projector, export_word2vec)
  from embedlab.analysis.geometry import (  # noqa: F401
      EmbeddingSummary, TopicCheck, class_association, pca, summarize_table,
      topic_neighbour_accuracy)
  from embedlab.analysis.neighbours import (  # noqa: F401
      UnknownWordError, analogy, nearest_neighbours, neighbours, unit_rows)
  from embedlab.run.inspection import (  # noqa: F401
      RunEmbedding, export_run, load_embedding, plot_embedding, summarize_run)
  from embedlab.core.optim import (  # noqa: F401
      freeze, freeze_rows, path_mask)
  from embedlab.core.meshes import (  # noqa: F401
      make_mesh, shard_table)
  from embedlab.core.sharding import (  # noqa: F401
      sharded_bag, sharded_lookup)
  from embedlab.core.localize import (  # noqa: F401
      Localized, localize, sum_duplicates)
  from embedlab.core.sparse import (  # noqa: F401
      SPARSE_OPTIMIZERS, SparseAdagradState, SparseLazyAdamState, SparseOptimizer,
      SparseRowwiseAdagradState, SparseSgdState, get_sparse_optimizer, slot_bytes,
      sparse_adagrad, sparse_lazy_adam, sparse_rowwise_adagrad, sparse_sgd)
  from embedlab.models.flax_embed import (  # noqa: F401
      Embed, LinenEmbed)
  from embedlab.core.rowgrad import (  # noqa: F401
      RowGrad, apply_updates, row_sparse, value_and_row_grad)
  from embedlab.run.loaded import (  # noqa: F401
      Run, UnknownWordsError, load_run)

__version__ = "0.1.0"

# name -> the module that defines it
_MODULES = {
    "RowGrad": "embedlab.core.rowgrad",
    "apply_updates": "embedlab.core.rowgrad",
    "row_sparse": "embedlab.core.rowgrad",
    "value_and_row_grad": "embedlab.core.rowgrad",
    "INIT_NAMES": "embedlab.core.tables",
    "Run": "embedlab.run.loaded",
    "UnknownWordsError": "embedlab.run.loaded",
    "load_run": "embedlab.run.loaded",
    "TableSummary": "embedlab.core.tables",
    "attend": "embedlab.core.tables",
    "bag": "embedlab.core.tables",
    "check_ids": "embedlab.core.ids",
    "describe": "embedlab.core.tables",
    "init_table": "embedlab.core.tables",
    "lookup": "embedlab.core.tables",
    "num_params": "embedlab.core.tables",
    "offsets_to_segment_ids": "embedlab.core.tables",
    "renorm_rows": "embedlab.core.tables",
    "load_vectors": "embedlab.data.vectors",
    "read_vectors": "embedlab.data.vectors",
    "save_vectors": "embedlab.data.vectors",
    "EmbeddingSummary": "embedlab.analysis.geometry",
    "RunEmbedding": "embedlab.run.inspection",
    "TopicCheck": "embedlab.analysis.geometry",
    "UnknownWordError": "embedlab.analysis.neighbours",
    "analogy": "embedlab.analysis.neighbours",
    "class_association": "embedlab.analysis.geometry",
    "export_npy": "embedlab.analysis.exports",
    "export_projector": "embedlab.analysis.exports",
    "export_run": "embedlab.run.inspection",
    "export_word2vec": "embedlab.analysis.exports",
    "load_embedding": "embedlab.run.inspection",
    "nearest_neighbours": "embedlab.analysis.neighbours",
    "neighbours": "embedlab.analysis.neighbours",
    "pca": "embedlab.analysis.geometry",
    "plot_embedding": "embedlab.run.inspection",
    "summarize_run": "embedlab.run.inspection",
    "summarize_table": "embedlab.analysis.geometry",
    "topic_neighbour_accuracy": "embedlab.analysis.geometry",
    "unit_rows": "embedlab.analysis.neighbours",
    "freeze": "embedlab.core.optim",
    "freeze_rows": "embedlab.core.optim",
    "path_mask": "embedlab.core.optim",
    "make_mesh": "embedlab.core.meshes",
    "shard_table": "embedlab.core.meshes",
    "sharded_bag": "embedlab.core.sharding",
    "sharded_lookup": "embedlab.core.sharding",
    "SPARSE_OPTIMIZERS": "embedlab.core.sparse",
    "Localized": "embedlab.core.localize",
    "SparseAdagradState": "embedlab.core.sparse",
    "SparseLazyAdamState": "embedlab.core.sparse",
    "SparseOptimizer": "embedlab.core.sparse",
    "SparseRowwiseAdagradState": "embedlab.core.sparse",
    "SparseSgdState": "embedlab.core.sparse",
    "get_sparse_optimizer": "embedlab.core.sparse",
    "localize": "embedlab.core.localize",
    "slot_bytes": "embedlab.core.sparse",
    "sparse_adagrad": "embedlab.core.sparse",
    "sparse_lazy_adam": "embedlab.core.sparse",
    "sparse_rowwise_adagrad": "embedlab.core.sparse",
    "sparse_sgd": "embedlab.core.sparse",
    "sum_duplicates": "embedlab.core.localize",
    "TABLES": "embedlab.core.variants",
    "TableVariant": "embedlab.core.variants.contract",
    "Embed": "embedlab.models.flax_embed",  # flax: ~0.7 s to import
    "LinenEmbed": "embedlab.models.flax_embed",
}

__all__ = [
    "variants",
    "TABLES",
    "TableVariant",
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


_LAYERS = ("core", "data", "models", "analysis", "run", "config", "cli")
# modules that moved into the layer folders: the old attribute still works, with a warning
_MOVED = {
    "tables": "embedlab.core.tables", "pooling": "embedlab.core.pooling",
    "sparse": "embedlab.core.sparse, embedlab.core.localize, embedlab.core.sparse_rules",
    "optim": "embedlab.core.optim", "sharding": "embedlab.core.sharding, embedlab.core.meshes",
    "flax_adapter": "embedlab.models.flax_embed",
    "text": "embedlab.data.text, embedlab.data.ngrams, embedlab.data.encoding",
    "pretrained": "embedlab.data.vectors",
    "models": "embedlab.models.classifiers", "inspection": "embedlab.run.inspection",
    "train": "embedlab.run.train", "checkpoint": "embedlab.run.checkpoint",
}


def __getattr__(name):
  """Loads a public name's module on first use (then it is a plain attribute)."""
  if name in _LAYERS:
    return importlib.import_module(f"embedlab.{name}")
  if name == "variants":  # the table variants' registry and factories: el.variants.get("qr")
    return importlib.import_module("embedlab.core.variants")
  if name in _MOVED:
    import warnings  # noqa: PLC0415
    warnings.warn(f"embedlab.{name} moved to {_MOVED[name]}; import it from there.",
                  DeprecationWarning, stacklevel=2)
    homes = [importlib.import_module(m) for m in _MOVED[name].split(", ")]
    if len(homes) == 1:
      return homes[0]
    # one old module split in several: a namespace of their public names
    import types  # noqa: PLC0415
    merged = types.ModuleType(f"embedlab.{name}")
    for home in homes:
      merged.__dict__.update({k: v for k, v in vars(home).items() if not k.startswith("_")})
    return merged
  module = _MODULES.get(name)
  if module is None:
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")
  value = getattr(importlib.import_module(module), name)
  globals()[name] = value
  return value


def __dir__():
  # the public names and the layer packages, not this module's own imports
  return sorted(set(__all__) | set(_LAYERS) | {"variants"})
