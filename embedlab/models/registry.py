"""The classifiers: one registry, ``MODELS``, the only list of their names and options.

A model is a factory ``make(embedder, num_classes, **options) -> Model``
(``embedlab.models.classifiers``): it gets its embedding already built (an ``Embedder``, the
table variant with its settings bound) and its own options as plain keyword arguments. This
module is read without JAX (``embedlab.config`` takes ``model.name``'s choices and each model's
fields from it before JAX loads); ``Spec.factory()`` imports the model's module on first use.

  >>> from embedlab.models import registry
  >>> registry.MODELS.names
  ('bag', 'cnn', 'bilstm')
  >>> registry.MODELS["cnn"].fields
  ('filter_widths', 'num_filters', 'dropout')
  >>> registry.MODELS.names_with("bags")
  ('bag',)

Adding a model: write its factory (``classifiers.bag_model`` is the shape) and add its ``Spec``
here; config choices, validation (``fields`` must be fields of the config's ``model`` section)
and ``embedlab.run.build.model_arguments`` then cover it.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any, Callable, Literal, NamedTuple


class Spec(NamedTuple):
  """One registry entry, readable without JAX.

  Attributes:
    name: the ``model.name`` value.
    target: ``"module:function"`` of the factory ``make(embedder, num_classes, **options)``.
    fields: the model's own options, named as the config's ``model`` fields they come from
      (the embedding's options are the ``Embedder``'s, shared by every model).
    bags: pools each sequence into one bag vector (``embedder.bag``): ragged batches and the
      row-sparse step's own gather-and-pool apply to it.
    title: what the model is, in a few words (``embedlab describe``).
  """

  name: str
  target: str
  fields: tuple[str, ...]
  bags: bool = False
  title: str = ""

  def factory(self) -> Callable[..., Any]:
    """The factory (imports its module, and with it JAX)."""
    module, function = self.target.split(":")
    return getattr(importlib.import_module(module), function)


class Registry(dict):
  """``{name: Spec}`` in a fixed order."""

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self)

  def names_with(self, capability: str) -> tuple[str, ...]:
    """The names whose ``Spec`` has ``capability`` (``"bags"``)."""
    return tuple(n for n, s in self.items() if getattr(s, capability))

  def spec(self, name: str) -> Spec:
    """The entry of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in self:
      raise ValueError(f"model.name={name!r} is not a known model; choose one of "
                       f"{', '.join(self)}.")
    return self[name]


_CLASSIFIERS = "embedlab.models.classifiers"
MODELS = Registry((s.name, s) for s in (
    Spec("bag", f"{_CLASSIFIERS}:bag_model", ("pooling", "hidden", "dropout"), bags=True,
         title="fastText: pooled embeddings, an optional hidden layer, a linear classifier"),
    Spec("cnn", f"{_CLASSIFIERS}:cnn_model", ("filter_widths", "num_filters", "dropout"),
         title="Kim (2014): convolutions, max over time, a linear classifier"),
    Spec("bilstm", f"{_CLASSIFIERS}:bilstm_model", ("lstm_hidden", "dropout"),
         title="a bidirectional LSTM with attention pooling"),
))

ModelName = Literal["bag", "cnn", "bilstm"]
# the Literal type is written out for type checkers; it must name the registry's entries
assert typing.get_args(ModelName) == MODELS.names, (typing.get_args(ModelName), MODELS.names)
