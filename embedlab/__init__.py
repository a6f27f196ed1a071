"""embedlab: the embedding table as a first-class, fast, honest tool in JAX.

The public API is the names in ``__all__``; tests and users import them from here.
"""

from embedlab.tables import (
    INIT_NAMES,
    TableSummary,
    attend,
    bag,
    check_ids,
    describe,
    init_table,
    lookup,
    num_params,
    offsets_to_segment_ids,
    renorm_rows,
)

from embedlab.pretrained import load_vectors, read_vectors, save_vectors
from embedlab.inspection import (
    EmbeddingSummary,
    RunEmbedding,
    TopicCheck,
    UnknownWordError,
    analogy,
    class_association,
    export_npy,
    export_projector,
    export_run,
    export_word2vec,
    load_embedding,
    nearest_neighbours,
    neighbours,
    pca,
    plot_embedding,
    summarize_run,
    summarize_table,
    topic_neighbour_accuracy,
    unit_rows,
)
from embedlab.optim import freeze, freeze_rows, path_mask
from embedlab.sharding import make_mesh, shard_table, sharded_bag, sharded_lookup
from embedlab.sparse import (
    SPARSE_OPTIMIZERS,
    Localized,
    SparseAdagradState,
    SparseLazyAdamState,
    SparseOptimizer,
    SparseRowwiseAdagradState,
    SparseSgdState,
    get_sparse_optimizer,
    localize,
    slot_bytes,
    sparse_adagrad,
    sparse_lazy_adam,
    sparse_rowwise_adagrad,
    sparse_sgd,
    sum_duplicates,
)

__version__ = "0.1.0"

_LAZY = {"Embed": "embedlab.flax_adapter", "LinenEmbed": "embedlab.flax_adapter"}


def __getattr__(name):
  """Names whose module is slow to import (flax: ~0.7 s) load on first use, so ``embedlab
  train`` and ``import embedlab`` do not pay for them."""
  if name in _LAZY:
    import importlib  # noqa: PLC0415
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'embedlab' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(__all__))

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
