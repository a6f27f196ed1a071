"""From a data config to labelled splits: reading the rows, labels to ids, the dev split.

``load_splits`` reads texts and labels from one of four sources (``files``: local csv / tsv /
jsonl / parquet files, ``embedlab.data.files``; ``disk`` and ``hub``: Hugging Face ``datasets``,
``embedlab.data.sources``; ``synthetic``: ``embedlab.data.synthetic``), maps labels to ids,
carves a dev split out of train when asked and truncates to ``max_examples``.

Labels. Each label is read as text with surrounding spaces stripped. When every label of every
split is an integer in some spelling (``1``, ``01``, ``+1``, ``1.0``), labels are compared as
integers: ``1``, ``01`` and ``1.0`` are the class ``"1"``, and a warning names the other
spellings met. Otherwise labels are class names compared as exact text, and two spellings of one
integer among them (``1`` and ``01`` beside ``pos``) are an error naming file and line. A
missing or empty label, and ``NaN`` / ``inf`` in any case or sign, are bad rows named by file
and line (``embedlab.data.rows``). A ``ClassLabel`` feature (disk / hub data) keeps its own
names.

Multi-label data (``data.multilabel``): each row's labels are a tuple; the rule above applies to
the labels one by one, label names are every label of train, and a split's labels are a
multi-hot ``float32[N, num_classes]`` array (1 where the row has the label). Synthetic data's
single labels become one-hot rows.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re

import numpy as np

from embedlab.data import files
from embedlab.data import paths
from embedlab.data import sources
from embedlab.data import synthetic
from embedlab.data.options import DataConfig
from embedlab.data.rows import DataError, RawSplit, Split

# Labels: integers in any spelling ("1", "01", "+1", "1.0").
_INTEGER_LABEL = re.compile(r"[+-]?\d+(?:\.0*)?")

log = logging.getLogger("embedlab")


def load_splits(cfg: DataConfig, seed: int) -> tuple[dict[str, Split], tuple[str, ...]]:
  """Reads the splits ``cfg`` names and maps their labels to ids.

  Label names are the distinct labels of the whole train split as strings, sorted (numerically
  when all are integers, so "2" < "10"); a ``ClassLabel`` feature keeps its own names and order.
  Without a dev split, ``cfg.dev_fraction`` of train (a permutation from
  ``np.random.default_rng(seed)``) becomes dev and the rest, in permuted order, train.
  ``cfg.max_examples`` then keeps the first rows of every split.

  Args:
    cfg: the data config.
    seed: seeds the dev carve-out and synthetic data.

  Returns:
    ``(splits, label_names)``: ``splits`` has "train", "dev" and, when there is one, "test"
    (only a data set with neither dev nor test has no "dev").

  Raises:
    DataError: missing files or columns, malformed rows (unless ``cfg.skip_bad_rows``), a dev or
      test label not seen in train, or a test split without a dev split and no ``dev_fraction``.

  Example:
    >>> cfg = DataConfig(synthetic_train_size=8, synthetic_eval_size=4)
    >>> splits, names = load_splits(cfg, seed=0)
    >>> sorted(splits), len(splits["dev"]), names
    (['dev', 'test', 'train'], 4, ('0', '1', '2', '3'))
  """
  if cfg.source == "synthetic":
    splits = synthetic.synthetic_splits(cfg, seed)
    names = tuple(str(t) for t in range(cfg.synthetic_topics))
    if cfg.multilabel:
      eye = np.eye(len(names), dtype=np.float32)
      splits = {k: dataclasses.replace(s, labels=eye[s.labels]) for k, s in splits.items()}
    return finish_splits(splits, cfg, seed), names
  return assemble_splits(_load_raw(cfg), cfg, seed)


def assemble_splits(raw: dict[str, RawSplit], cfg: DataConfig,
                    seed: int) -> tuple[dict[str, Split], tuple[str, ...]]:
  """``load_splits``' work on splits already read: labels to ids (the label rule of the module
  docstring), then ``finish_splits``.

  Example:
    >>> raw = {"train": RawSplit(["a", "b", "c"], ["1", "01", "0"], "t.tsv")}
    >>> splits, names = assemble_splits(raw, DataConfig(), seed=0)
    >>> splits["train"].labels.tolist(), names
    ([1, 1, 0], ('0', '1'))
  """
  _normalise_labels(raw, cfg.multilabel)
  names = _label_names(raw["train"], cfg.multilabel)
  splits = {name: _to_split(r, names, cfg.skip_bad_rows, cfg.multilabel)
            for name, r in raw.items()}
  return finish_splits(splits, cfg, seed), names


def finish_splits(splits: dict[str, Split], cfg: DataConfig, seed: int) -> dict[str, Split]:
  """The dev split carved out of train (``cfg.dev_fraction``), then the first
  ``cfg.max_examples`` rows of every split.

  Example:
    >>> train = Split(tuple("abcdefghij"), np.arange(10, dtype=np.int32) % 2, "t.tsv")
    >>> out = finish_splits({"train": train}, DataConfig(dev_fraction=0.2, max_examples=5), 0)
    >>> len(out["train"]), len(out["dev"]), set(out["dev"].texts) & set(out["train"].texts)
    (5, 2, set())
  """
  splits = _carve_dev(splits, cfg, seed)
  if cfg.max_examples > 0:
    splits = {k: s.take(np.arange(min(len(s), cfg.max_examples))) for k, s in splits.items()}
  return splits


def _load_raw(cfg: DataConfig) -> dict[str, RawSplit]:
  if cfg.source == "files":
    if not cfg.train:
      raise DataError("data: data.source = 'files' needs data.train (a file under the data "
                      f"directory {paths.data_dir()}, e.g. sst2/train.tsv.gz).")
    return {name: files.read_split(cfg, name) for name in files.split_names(cfg)}
  if cfg.source == "disk":
    return sources.load_disk(cfg)
  if cfg.source == "hub":
    return sources.load_hub(cfg)
  raise DataError(f"data: data.source = {cfg.source!r} is not one of synthetic, files, disk, hub.")


def _canonical_integer(label: str) -> str | None:
  """``"01"``, ``"+1"``, ``"1.0"`` -> ``"1"``; None for a label that is not an integer."""
  if not _INTEGER_LABEL.fullmatch(label):
    return None
  return str(int(label.split(".")[0]))


def _normalise_labels(raw: dict[str, RawSplit], multilabel: bool = False) -> None:
  """Applies the label rule of the module docstring to every split's labels, in place (to each
  label of a row's tuple with ``multilabel``).

  Raises:
    DataError: two spellings of one integer among labels that are not all integers.
  """
  if any(r.label_names is not None for r in raw.values()):
    return  # a ClassLabel feature: the data set's own names
  every = [(r, i, label) for r in raw.values() for i, labels in enumerate(r.labels)
           for label in (labels if multilabel else (labels,))]
  canon = {label: _canonical_integer(label) for label in {label for _, _, label in every}}
  if canon and all(c is not None for c in canon.values()):
    merged = collections.defaultdict(list)  # class -> [(spelling, where)] of other spellings
    for r, i, label in every:
      if label != canon[label] and all(s != label for s, _ in merged[canon[label]]):
        merged[canon[label]].append((label, f"{r.source}, {r.where(i)}"))
    for r in raw.values():
      r.labels = ([tuple(dict.fromkeys(canon[label] for label in labels)) for labels in r.labels]
                  if multilabel else [canon[label] for label in r.labels])
    if any(merged.values()):
      shown = "; ".join(f"{s!r} ({where}) is the class {c}"
                        for c, spellings in sorted(merged.items(), key=lambda kv: int(kv[0]))
                        for s, where in spellings[:3])
      log.warning("data: the labels are integers, compared as integers: %s.", shown)
    return
  first: dict[str, tuple[str, str]] = {}  # integer -> (its first spelling, where)
  name = next(label for label, c in canon.items() if c is None)
  for r, i, label in every:
    c = canon[label]
    if c is None:
      continue
    spelling, where = first.setdefault(c, (label, f"{r.source}, {r.where(i)}"))
    if spelling != label:
      raise DataError(
          f"data: {r.source}, {r.where(i)}: label {label!r} and label {spelling!r} ({where}) "
          f"are the same integer, but the labels are not all integers (e.g. {name!r}), so they "
          "are compared as names and it is not clear whether they are one class. Write each "
          "class one way.")


def _label_names(train: RawSplit, multilabel: bool = False) -> tuple[str, ...]:
  if train.label_names is not None:
    return train.label_names
  distinct = ({label for labels in train.labels for label in labels} if multilabel else
              set(train.labels))
  if not distinct:
    raise DataError(f"data: {train.source} has no labelled rows.")
  if all(re.fullmatch(r"[+-]?\d+", s) for s in distinct):
    return tuple(sorted(distinct, key=int))
  return tuple(sorted(distinct))


def _multi_hot(raw: RawSplit, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, list]:
  """``(float32[N, C] multi-hot labels, rows with a label not in index, that label of each)``."""
  hot = np.zeros((len(raw.labels), len(index)), np.float32)
  unknown, missing = [], []
  for i, labels in enumerate(raw.labels):
    for label in labels:
      at = index.get(label)
      if at is None:
        unknown.append(i)
        missing.append(label)
        break
      hot[i, at] = 1.0
  return hot, np.asarray(unknown, np.int64), missing


def _to_split(raw: RawSplit, names: tuple[str, ...], skip_bad_rows: bool = False,
              multilabel: bool = False) -> Split:
  index = {name: i for i, name in enumerate(names)}
  if multilabel:
    ids, unknown, missing = _multi_hot(raw, index)
  else:
    ids = np.fromiter((index.get(label, -1) for label in raw.labels), dtype=np.int32,
                      count=len(raw.labels))
    unknown = np.flatnonzero(ids < 0)
    missing = [raw.labels[int(i)] for i in unknown]
  texts = tuple(raw.texts)
  if unknown.size and not skip_bad_rows:
    first = int(unknown[0])
    where = raw.where(first).replace("row ", "", 1)
    raise DataError(f"data: {raw.source}, row {where}: label {missing[0]!r} does not "
                    f"occur in train (known labels: {', '.join(names)}; {unknown.size} rows "
                    "have unknown labels). Fix the label, use a train file with every class, or "
                    "set data.skip_bad_rows=true to skip such rows (they are counted).")
  if unknown.size:
    log.warning("data: %s: skipped %d row(s) whose label does not occur in train (first: %s, "
                "label %r) because data.skip_bad_rows=true.", raw.source, unknown.size,
                raw.where(int(unknown[0])), missing[0])
    keep = np.ones(len(ids), bool)
    keep[unknown] = False
    texts = tuple(t for t, k in zip(texts, keep) if k)
    ids = ids[keep]
  return Split(texts, ids, raw.source, raw.skipped + int(unknown.size))


def _carve_dev(splits: dict[str, Split], cfg: DataConfig, seed: int) -> dict[str, Split]:
  if "dev" in splits:
    if cfg.dev_fraction > 0:
      raise DataError(f"data: data.dev_fraction = {cfg.dev_fraction} but the data has a dev "
                      f"split ({splits['dev'].source}); set data.dev_fraction=0 to use it, or "
                      "drop the dev file to carve dev out of train.")
    return splits
  if cfg.dev_fraction > 0:
    train = splits["train"]
    num_dev = int(round(len(train) * cfg.dev_fraction))
    if not 0 < num_dev < len(train):
      raise DataError(f"data: data.dev_fraction = {cfg.dev_fraction} of {len(train)} train rows "
                      f"({train.source}) leaves {num_dev} dev rows; use a fraction that leaves "
                      "both splits non-empty.")
    perm = np.random.default_rng(seed).permutation(len(train))
    out = dict(splits)
    out["dev"] = dataclasses.replace(train.take(perm[:num_dev]), skipped=0,
                                     source=f"{train.source} (dev_fraction={cfg.dev_fraction})")
    out["train"] = train.take(perm[num_dev:])
    return out
  if "test" in splits:
    raise DataError(f"data: there is no dev split (train: {splits['train'].source}, test: "
                    f"{splits['test'].source}) and data.dev_fraction = 0. Tuning on test overfits "
                    "it: set data.dev_fraction=0.1 to carve dev out of train, or name a dev file "
                    "with data.dev=...")
  return splits
