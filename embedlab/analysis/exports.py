"""Writing a table for other tools: word2vec text, TensorBoard projector files, numpy arrays."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from embedlab.analysis.neighbours import skip_mask, token_list
from embedlab.data import vectors as pretrained_lib

EXPORT_FORMATS = ("word2vec", "projector", "npy")


def _check_same_length(table, tokens, where):
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"{where}: {len(tokens)} tokens for a table of {np.shape(table)[0]} rows; "
                     f"pass one token per row.")


def export_word2vec(path: str | os.PathLike, table: Any, tokens: Sequence[str], *,
                    skip: Sequence[str] = ("<pad>",)) -> int:
  """Writes word2vec text (``count dim`` header; gzip if ``path`` ends in ``.gz``).

  gensim reads it (``KeyedVectors.load_word2vec_format(path)``) and so does ``load_vectors``,
  so ``--set model.pretrained=/abs/path`` starts another experiment's table from it.

  Args:
    path: the output file.
    table: ``[V, D]``.
    tokens: ``V`` tokens.
    skip: tokens left out (the all-zero padding row by default).

  Returns:
    The number of vectors written.

  Example:
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "v.txt")
    >>> export_word2vec(path, np.eye(3, dtype=np.float32), ["<pad>", "a", "b"])
    2
  """
  _check_same_length(table, tokens, "export_word2vec")
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  return pretrained_lib.save_vectors(path, {"table": np.asarray(table)}, list(tokens),
                                     skip_special=token_list(skip))


def export_projector(out_dir: str | os.PathLike, table: Any, tokens: Sequence[str], *,
                     metadata: Mapping[str, Sequence[Any]] | None = None,
                     skip: Sequence[str] = ("<pad>",),
                     tensor_name: str = "embed/table") -> list[pathlib.Path]:
  """Writes the TensorBoard Embedding Projector's files into ``out_dir``.

  ``tensors.tsv`` (one row of tab-separated values per word, no header), ``metadata.tsv``
  (a header ``word<TAB>column...`` then one line per row of ``tensors.tsv``, same order),
  ``projector_config.pbtxt`` (for ``tensorboard --logdir out_dir``) and
  ``projector_config.json`` (for the standalone projector, projector.tensorflow.org).

  Args:
    out_dir: the directory (created).
    table: ``[V, D]``.
    tokens: ``V`` tokens.
    metadata: extra columns, each ``V`` values (e.g. ``{"topic": [...]}``).
    skip: tokens left out.
    tensor_name: the name the projector shows.

  Returns:
    The paths written.

  Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> paths = export_projector(out, np.eye(3, dtype=np.float32), ["<pad>", "a", "b"],
    ...                          metadata={"topic": [-1, 0, 1]})
    >>> open(os.path.join(out, "metadata.tsv")).read().splitlines()
    ['word\\ttopic', 'a\\t0', 'b\\t1']
  """
  _check_same_length(table, tokens, "export_projector")
  metadata = dict(metadata or {})
  for name, column in metadata.items():
    if len(column) != len(tokens):
      raise ValueError(f"export_projector: metadata column {name!r} has {len(column)} values "
                       f"for {len(tokens)} tokens; give one value per row.")
  keep = np.nonzero(~skip_mask(tokens, token_list(skip)))[0]
  header = ["word"] + list(metadata)
  lines = ["\t".join(header)]
  for i in keep.tolist():
    cells = [tokens[i]] + [str(metadata[name][i]) for name in metadata]
    for cell in cells:
      if "\t" in cell or "\n" in cell or "\r" in cell:
        raise ValueError(f"export_projector: row {i} ({tokens[i]!r}) has the value {cell!r}, "
                         f"which holds a tab or line break that TSV cannot represent; rename it.")
    lines.append("\t".join(cells))
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  values = np.asarray(table, np.float32)[keep]
  paths = [out / "tensors.tsv", out / "metadata.tsv", out / "projector_config.pbtxt",
           out / "projector_config.json"]
  with open(paths[0], "w", encoding="utf-8", newline="\n") as f:
    np.savetxt(f, values, fmt="%.9g", delimiter="\t")
  paths[1].write_text("\n".join(lines) + "\n", encoding="utf-8")
  paths[2].write_text(f'embeddings {{\n  tensor_name: "{tensor_name}"\n  tensor_path: '
                      f'"tensors.tsv"\n  metadata_path: "metadata.tsv"\n}}\n')
  paths[3].write_text(json.dumps({"embeddings": [{
      "tensorName": tensor_name, "tensorShape": list(values.shape),
      "tensorPath": "tensors.tsv", "metadataPath": "metadata.tsv"}]}, indent=2) + "\n")
  return paths


def export_npy(path: str | os.PathLike, table: Any, tokens: Sequence[str]) -> list[pathlib.Path]:
  """Writes the whole table as ``.npy`` (row = id) and its tokens beside it, one per line.

  Args:
    path: the ``.npy`` file (the suffix is added if missing); the tokens go to
      ``<path without .npy>.tokens.txt``.
    table: ``[V, D]``.
    tokens: ``V`` tokens.

  Returns:
    ``[npy_path, tokens_path]``.

  Example:
    >>> import tempfile
    >>> npy, _ = export_npy(os.path.join(tempfile.mkdtemp(), "t"), np.eye(2), ["<pad>", "a"])
    >>> np.load(npy).shape
    (2, 2)
  """
  _check_same_length(table, tokens, "export_npy")
  bad = [t for t in tokens if "\n" in t or "\r" in t]
  if bad:
    raise ValueError(f"export_npy: tokens {bad[:3]} contain a line break; they cannot be "
                     f"written one per line.")
  path = pathlib.Path(path)
  if path.suffix != ".npy":
    path = path.with_name(path.name + ".npy")
  path.parent.mkdir(parents=True, exist_ok=True)
  np.save(path, np.asarray(table))
  tokens_path = path.with_suffix(".tokens.txt")
  tokens_path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
  return [path, tokens_path]
