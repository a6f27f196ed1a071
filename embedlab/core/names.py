"""The names of core's optimizer and schedule registries, readable without JAX.

``embedlab.config`` checks a config before JAX loads, so the choices it offers come from here;
``embedlab.core.optim`` and ``embedlab.core.sparse`` build their registries over these names
(and check at import that they match), and ``embedlab.run.resources`` reads the slot counts.

  >>> from embedlab.core import names
  >>> tuple(names.DENSE_OPTIMIZERS)
  ('sgd', 'momentum', 'adam', 'adamw', 'adagrad')
  >>> names.TABLE_OPTIMIZERS["sparse_lazy_adam"]
  (2, 0)
"""

from __future__ import annotations

import typing
from typing import Literal

# dense optax optimizers: name -> optimizer slots per weight (adam: the two moments)
DENSE_OPTIMIZERS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2, "adagrad": 1}
# row-sparse table optimizers: name -> (slots per table weight, slots per table row)
TABLE_OPTIMIZERS = {"sparse_sgd": (0, 0), "sparse_adagrad": (1, 0),
                    "sparse_rowwise_adagrad": (0, 1), "sparse_lazy_adam": (2, 0)}
SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")

DenseOptimizerName = Literal["sgd", "momentum", "adam", "adamw", "adagrad"]
TableOptimizerName = Literal["sparse_sgd", "sparse_adagrad", "sparse_rowwise_adagrad",
                             "sparse_lazy_adam"]
ScheduleName = Literal["constant", "cosine", "linear", "warmup_cosine"]
# the Literal types are written out for type checkers; they must name the registries' entries
assert typing.get_args(DenseOptimizerName) == tuple(DENSE_OPTIMIZERS)
assert typing.get_args(TableOptimizerName) == tuple(TABLE_OPTIMIZERS)
assert typing.get_args(ScheduleName) == SCHEDULES
