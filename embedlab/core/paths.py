"""Parameter paths: ``"embed/table"`` for a pytree leaf, glob patterns over them (with or
without Flax's trailing ``/value``), and Flax ``nnx`` variables read by value. Freezing,
weight-decay masks and the row-sparse gradient all name parameters this way."""

from __future__ import annotations

import fnmatch
import sys
from typing import Any
import jax


def path_of(key_path) -> str:
  """``"embed/table"`` for a pytree key path like ``(DictKey('embed'), DictKey('table'))``."""
  parts = []
  for k in key_path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def values_of(params: Any) -> Any:
  """``params`` with each Flax ``nnx.Variable`` replaced by its value (others as they are).

  ``nnx.Optimizer`` initialises its optax state from the model's variables and updates it with
  their values; masks and labels built on the values fit both trees (as a prefix).
  """
  nnx = sys.modules.get("flax.nnx")  # no Variable can exist before flax is imported
  if nnx is None:
    return params
  return jax.tree.map(lambda x: x.get_value() if isinstance(x, nnx.Variable) else x, params,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def path_matches(path: str, pattern: str) -> bool:
  """A glob ``pattern`` matches a leaf ``path``, with or without Flax's trailing ``/value``
  (``"embed/embedding"`` matches ``"embed/embedding/value"`` and the other way round).

  Example:
    >>> path_matches("embed/embedding/value", "embed/embedding"), path_matches("out/b", "out/w")
    (True, False)
  """
  def bare(p):
    return p[:-len("/value")] if p.endswith("/value") else p
  return any(fnmatch.fnmatchcase(p, q)
             for p in {path, bare(path)} for q in {pattern, bare(pattern)})


def param_paths(params: Any) -> list[str]:
  """All leaf paths of a params pytree, e.g. ``["embed/table", "out/b", "out/w"]``; a Flax
  ``nnx.Param``'s path is its attribute path, ``"embed/embedding"``."""
  return [path_of(p) for p, _ in jax.tree_util.tree_flatten_with_path(values_of(params))[0]]
