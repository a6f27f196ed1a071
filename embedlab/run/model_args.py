"""The config's ``model`` section turned into the models' plain arguments, in one place.

``embedlab.models`` never sees a config: its factories take an ``Embedder`` and keyword
options. This module reads a ``ModelConfig`` once and hands them over: the embedding's
settings (``embedder_arguments``), the table variant's options through the variant registry's
``Spec.fields``, and the model's own options through the model registry's ``Spec.fields``.

  >>> from embedlab.config import ModelConfig
  >>> cfg = ModelConfig(name="bag", features=16, table="factorized", table_rank=4, hidden=8)
  >>> embedder_arguments(cfg)["table_options"], model_arguments(cfg)
  ({'rank': 4}, {'pooling': 'mean', 'hidden': 8, 'dropout': 0.0})
  >>> make_model(cfg, num_embeddings=100, num_classes=3).stages(2, 5)[-2]
  ('hidden', (2, 8))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from embedlab import config as config_lib
from embedlab.core import variants
from embedlab.models import classifiers as models_lib
from embedlab.models import registry


def embedder_arguments(model: config_lib.ModelConfig) -> dict[str, Any]:
  """``models.make_embedder``'s keyword arguments (all but ``pretrained`` and ``oob``)."""
  values = dataclasses.asdict(model)
  return dict(table=model.table, table_options=variants.TABLES.spec(model.table).options(values),
              init=model.init, init_scale=model.init_scale, max_norm=model.max_norm,
              compute_dtype=model.compute_dtype, param_dtype=model.param_dtype)


def model_arguments(model: config_lib.ModelConfig) -> dict[str, Any]:
  """The options of the model ``model.name`` (``registry.MODELS[name].fields``)."""
  return {field: getattr(model, field) for field in registry.MODELS.spec(model.name).fields}


def make_embedder(model: config_lib.ModelConfig, num_embeddings: int, pretrained=None, *,
                  oob: str = "error") -> models_lib.Embedder:
  """The embedding a config's model reads its ids with."""
  return models_lib.make_embedder(num_embeddings, model.features, pretrained=pretrained, oob=oob,
                                  **embedder_arguments(model))


def make_model(model: config_lib.ModelConfig, num_embeddings: int, num_classes: int,
               pretrained=None, *, oob: str = "error") -> models_lib.Model:
  """The model of a config's ``model`` section for ``num_embeddings`` ids and ``num_classes``.

  ``oob`` is the id policy of the model's table reads (``embedlab.lookup``): ``"error"`` checks
  every call; the train loop validates the whole encoded dataset once up front and passes
  ``"clip"`` so the jitted steps carry no per-call host callback.
  """
  embedder = make_embedder(model, num_embeddings, pretrained, oob=oob)
  return models_lib.make_model(model.name, embedder, num_classes, **model_arguments(model))
