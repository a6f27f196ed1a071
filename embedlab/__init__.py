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
from embedlab.optim import freeze, freeze_rows, path_mask
from embedlab.flax_adapter import Embed, LinenEmbed
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

__all__ = [
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
