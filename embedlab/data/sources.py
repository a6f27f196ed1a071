"""Hugging Face ``datasets`` sources: ``disk`` (``load_from_disk``) and ``hub`` (``load_dataset``).

``datasets`` is imported by these functions only, on first use. A data set with splits keeps
``train``, takes its dev split from the first of ``dev``, ``validation``, ``valid``, ``val``, and
``test``; a split whose labels are all missing (GLUE's test: label -1) is left out. A
``ClassLabel`` feature keeps its own class names.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from embedlab.data import paths
from embedlab.data import rows
from embedlab.data.options import DataConfig

_DEV_NAMES = ("dev", "validation", "valid", "val")


def _column(ds, name: str) -> list[Any]:
  import datasets  # pylint: disable=import-outside-toplevel
  if isinstance(ds.features[name], datasets.Value):
    return ds.with_format("arrow")[name].to_pylist()  # 10x faster than list(ds[name])
  return list(ds[name])


def _raw_from_dataset(ds, cfg: DataConfig, source: str, skipped: int, allow_unlabelled: bool,
                      lines: list[int] | None = None) -> rows.RawSplit:
  """Texts and string labels of a ``datasets.Dataset``, checked by ``rows.check_rows``.

  Raises:
    DataError: a missing column, no rows, or a bad row (see ``rows.check_rows``).
  """
  import datasets  # pylint: disable=import-outside-toplevel
  rows.check_columns(ds.column_names, cfg, source)
  if len(ds) == 0:
    raise rows.DataError(f"data: {source} has no rows.")
  texts = _column(ds, cfg.text_column)
  labels = _column(ds, cfg.label_column)
  feature = ds.features[cfg.label_column]
  # a ClassLabel, or a list of them (multi-label: List / Sequence(ClassLabel), [ClassLabel])
  inner = feature[0] if isinstance(feature, list) and len(feature) == 1 else \
      getattr(feature, "feature", feature)
  names = tuple(inner.names) if isinstance(inner, datasets.ClassLabel) else None
  return rows.check_rows(texts, labels, cfg, source, skipped=skipped, label_names=names,
                         allow_unlabelled=allow_unlabelled, lines=lines)


def _splits_of(obj, cfg: DataConfig, where: str) -> dict[str, rows.RawSplit]:
  import datasets  # pylint: disable=import-outside-toplevel
  if isinstance(obj, datasets.Dataset):
    return {"train": _raw_from_dataset(obj, cfg, where, 0, allow_unlabelled=False)}
  keys = list(obj.keys())
  if "train" not in keys:
    raise rows.DataError(f"data: {where} has splits {keys} but no 'train' split.")
  out = {"train": _raw_from_dataset(obj["train"], cfg, f"{where}[train]", 0, False)}
  dev_key = next((k for k in _DEV_NAMES if k in keys), None)
  for name, key in (("dev", dev_key), ("test", "test" if "test" in keys else None)):
    if key is not None:
      raw = _raw_from_dataset(obj[key], cfg, f"{where}[{key}]", 0, allow_unlabelled=True)
      if raw.texts:  # an all-unlabelled split (GLUE test: label -1) is left out
        out[name] = raw
  return out


def load_disk(cfg: DataConfig) -> dict[str, rows.RawSplit]:
  """The splits of ``cfg.path``, a directory written by ``Dataset.save_to_disk`` /
  ``DatasetDict.save_to_disk``."""
  import datasets  # pylint: disable=import-outside-toplevel
  path = paths.resolve(cfg.path)
  if not path.exists():
    where = (paths.where_data_was_looked_for(cfg.path)
             if not pathlib.Path(cfg.path).is_absolute() else "the path is absolute")
    raise rows.DataError(f"data: data.path = {cfg.path!r}: directory {path} not found (write it "
                         f"with Dataset.save_to_disk / DatasetDict.save_to_disk; {where}).")
  try:
    obj = datasets.load_from_disk(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise rows.DataError(f"data: could not load {path} with datasets.load_from_disk ({e}); it "
                         "must be a directory written by Dataset.save_to_disk.") from e
  return _splits_of(obj, cfg, str(path))


def _hub_error(name: str) -> rows.DataError:
  return rows.DataError(
      f"data: could not load {name!r} from the Hugging Face hub (offline?). Download it where "
      "you have network and save it with Dataset.save_to_disk, then set data.source=disk "
      "data.path=DIR; or point data.source=files data.train=... at local csv/tsv/jsonl/parquet "
      "files.")


def load_hub(cfg: DataConfig) -> dict[str, rows.RawSplit]:
  """``datasets.load_dataset(path)``; ``path`` may name a config as ``name:config`` (glue:sst2)."""
  import datasets  # pylint: disable=import-outside-toplevel
  offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
                for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
  if offline:
    raise _hub_error(cfg.path)
  name, _, config_name = cfg.path.partition(":")
  try:
    obj = datasets.load_dataset(name, config_name or None)
  except Exception as e:  # pylint: disable=broad-except
    raise _hub_error(cfg.path) from e
  return _splits_of(obj, cfg, f"hub:{cfg.path}")
