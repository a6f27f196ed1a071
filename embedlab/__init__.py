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

__version__ = "0.1.0"

__all__ = [
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
