"""Data sources, splits, encoding (cached on disk) and batch index iterators. numpy only.

The flow is ``DataConfig -> load_splits -> encode_splits -> batch_indices / eval_batches``:

* ``load_splits`` reads texts and labels from one of four sources (``files``: local csv / tsv /
  jsonl / parquet files through Hugging Face ``datasets``; ``disk``: ``load_from_disk``; ``hub``:
  ``load_dataset``; ``synthetic``: generated here with a planted topic structure), maps labels to
  ids, carves a dev split out of train when asked and truncates to ``max_examples``.
* ``encode_splits`` tokenizes, builds the vocabulary on train only and encodes every split to a
  padded int32 id matrix, caching the result keyed by the config, the seed and the input files.
* ``batch_indices`` gives the example indices of every training batch of an epoch,
  deterministically from ``(seed, epoch)``, so a run can restart at any step; ``eval_batches``
  yields fixed-size, masked evaluation batches so a jitted eval step compiles once.

Rows of csv / tsv / jsonl files. A row ends at ``\n`` or ``\r\n``, and nowhere else: a bare
``\r`` (one not followed by ``\n``) in a tsv line, or in a csv line outside quotes, is a bad
row named by file and line (skipped and counted with ``skip_bad_rows``), since the csv reader
would split the row there. Inside a quoted csv field ``\r`` and ``\n`` are text; in a JSON
line ``\r`` is whitespace between values and must be escaped in strings.

Labels. Each label is read as text with surrounding spaces stripped. When every label of every
split is an integer in some spelling (``1``, ``01``, ``+1``, ``1.0``), labels are compared as
integers: ``1``, ``01`` and ``1.0`` are the class ``"1"``, and a warning names the other
spellings met. Otherwise labels are class names compared as exact text, and two spellings of one
integer among them (``1`` and ``01`` beside ``pos``) are an error naming file and line. A
missing or empty label, and ``NaN`` / ``inf`` in any case or sign, are bad rows named by file
and line. A ``ClassLabel`` feature (disk / hub data) keeps its own names.

The encoded cache carries a checksum of its arrays, its record and its vocabulary; a cache
that does not match it (a corrupted file) is encoded again, with a one-line warning.

Example:
  >>> from embedlab.data.options import DataConfig
  >>> from embedlab.data import datasets as data
  >>> cfg = DataConfig(source="synthetic", synthetic_train_size=64, synthetic_eval_size=16)
  >>> d = data.encode_splits(cfg, seed=0, cache=False)
  >>> d.train_ids.shape, d.label_names, d.num_embeddings == len(d.vocab)
  ((64, 64), ('0', '1', '2', '3'), True)
  >>> data.batch_indices(len(d.train_ids), 32, seed=0, epoch=0).shape
  (2, 32)
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import tempfile
import warnings
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from embedlab.data import workers as _fork
from embedlab.data import text as text_lib
from embedlab.data.options import DataConfig

# Bump when tokenizing, vocabulary building or encoding changes, so stale caches are not used.
CODE_VERSION = "embedlab-data-3"

_DEV_NAMES = ("dev", "validation", "valid", "val")
# Labels: integers in any spelling ("1", "01", "+1", "1.0") and values that are not numbers.
_INTEGER_LABEL = re.compile(r"[+-]?\d+(?:\.0*)?")
_NOT_A_NUMBER = frozenset(f"{sign}{word}" for sign in ("", "+", "-")
                          for word in ("nan", "inf", "infinity"))
_SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json",
                   ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}
_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "parquet": "parquet"}
# A text this long is almost surely a parse accident (an unclosed quote swallowing the rest of
# the file, a file that is not one example per row), not an example: it is a bad row.
MAX_TEXT_CHARS = 1_000_000

log = logging.getLogger("embedlab")


class DataError(ValueError):
  """Data that cannot be read or used: a missing file or column, a bad row, an unknown label."""


# ----------------------------------------------------------------------------- paths


def data_dirs() -> list[tuple[pathlib.Path, str]]:
  """Where the data directory is looked for, in order, each with how it was chosen.

  ``$EMBEDLAB_DATA`` alone if set; otherwise ``../shared/data`` from the current directory,
  ``shared/data`` beside the checkout embedlab runs from (an editable install), then
  ``~/.cache/embedlab/data``.
  """
  env = os.environ.get("EMBEDLAB_DATA")
  if env:
    return [(pathlib.Path(env).expanduser().absolute(), "$EMBEDLAB_DATA")]
  checkout = pathlib.Path(__file__).resolve().parent.parent
  found = [(pathlib.Path.cwd().parent / "shared" / "data", "../shared/data from the current "
            "directory"),
           (checkout.parent / "shared" / "data", "shared/data beside the embedlab checkout"),
           (pathlib.Path("~/.cache/embedlab/data").expanduser().absolute(), "the default")]
  unique: dict[pathlib.Path, str] = {}
  for path, why in found:
    unique.setdefault(path.resolve() if path.exists() else path, why)
  return list(unique.items())


def data_dir() -> pathlib.Path:
  """The directory relative data paths are resolved against: the first of ``data_dirs()`` that
  exists, else the last.

  Returns:
    An absolute path (which may not exist).

  Example:
    >>> import os; os.environ["EMBEDLAB_DATA"] = "/tmp/d"; str(data_dir())
    '/tmp/d'
    >>> del os.environ["EMBEDLAB_DATA"]
  """
  places = data_dirs()
  return next((path for path, _ in places if path.is_dir()), places[-1][0])


def where_data_was_looked_for(relative: str | os.PathLike) -> str:
  """A sentence naming every place ``relative`` was looked for, and how to point embedlab at
  the data (for 'not found' errors)."""
  tried = "; ".join(f"{path / relative} ({why})" for path, why in data_dirs())
  return (f"looked for {relative} in: {tried}. Set EMBEDLAB_DATA to the folder holding the data "
          f"(sst2/, imdb/, trec/, glove6b50d/), or give an absolute path; the README's Data "
          f"section says which experiment needs which folder")


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """An absolute path stays as it is; a relative one is taken under ``data_dir()``.

  Example:
    >>> str(resolve("/abs/train.tsv"))
    '/abs/train.tsv'
  """
  p = pathlib.Path(path).expanduser()
  return p if p.is_absolute() else data_dir() / p


# ----------------------------------------------------------------------------- splits


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a data set.

  Attributes:
    texts: the raw texts.
    labels: int32 ``[N]`` label ids (indices into ``label_names``).
    source: where it came from (a file path, a directory and split name, ...).
    skipped: rows skipped as malformed (only with ``skip_bad_rows``).
  """

  texts: tuple[str, ...]
  labels: np.ndarray
  source: str = ""
  skipped: int = 0

  def __len__(self) -> int:
    return len(self.texts)

  def take(self, indices: np.ndarray) -> "Split":
    """The rows at ``indices``, in that order."""
    return dataclasses.replace(self, texts=tuple(self.texts[i] for i in indices),
                               labels=self.labels[indices])


@dataclasses.dataclass
class _RawSplit:
  """A split as read, labels still strings (``None`` only for unlabelled rows of hub data)."""

  texts: list[str]
  labels: list[Any]
  source: str
  skipped: int = 0
  label_names: tuple[str, ...] | None = None  # from a datasets ClassLabel feature
  lines: list[int] | None = None  # the file line each row starts on (text files only)

  def where(self, i: int) -> str:
    """``row 3 (line 4)``: where row ``i`` (0-based) is, for messages."""
    line = f" (line {self.lines[i]})" if self.lines is not None and i < len(self.lines) else ""
    return f"row {i + 1}{line}"


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
    splits = synthetic_splits(cfg, seed)
    names = tuple(str(t) for t in range(cfg.synthetic_topics))
    return _finish_splits(splits, cfg, seed), names
  return _assemble(_load_raw(cfg), cfg, seed)


def _assemble(raw: dict[str, _RawSplit], cfg: DataConfig,
              seed: int) -> tuple[dict[str, Split], tuple[str, ...]]:
  _normalise_labels(raw)
  names = _label_names(raw["train"])
  splits = {name: _to_split(r, names, cfg.skip_bad_rows) for name, r in raw.items()}
  return _finish_splits(splits, cfg, seed), names


def _finish_splits(splits: dict[str, Split], cfg: DataConfig, seed: int) -> dict[str, Split]:
  splits = _carve_dev(splits, cfg, seed)
  if cfg.max_examples > 0:
    splits = {k: s.take(np.arange(min(len(s), cfg.max_examples))) for k, s in splits.items()}
  return splits


def _load_raw(cfg: DataConfig) -> dict[str, _RawSplit]:
  if cfg.source == "files":
    if not cfg.train:
      raise DataError("data: data.source = 'files' needs data.train (a file under the data "
                      f"directory {data_dir()}, e.g. sst2/train.tsv.gz).")
    return {name: _read_named_file(cfg, name) for name in _file_splits(cfg)}
  if cfg.source == "disk":
    return _load_disk(cfg)
  if cfg.source == "hub":
    return _load_hub(cfg)
  raise DataError(f"data: data.source = {cfg.source!r} is not one of synthetic, files, disk, hub.")


def _canonical_integer(label: str) -> str | None:
  """``"01"``, ``"+1"``, ``"1.0"`` -> ``"1"``; None for a label that is not an integer."""
  if not _INTEGER_LABEL.fullmatch(label):
    return None
  return str(int(label.split(".")[0]))


def _normalise_labels(raw: dict[str, _RawSplit]) -> None:
  """Applies the label rule of the module docstring to every split's labels, in place.

  Raises:
    DataError: two spellings of one integer among labels that are not all integers.
  """
  if any(r.label_names is not None for r in raw.values()):
    return  # a ClassLabel feature: the data set's own names
  every = [(r, i, label) for r in raw.values() for i, label in enumerate(r.labels)]
  canon = {label: _canonical_integer(label) for label in {label for _, _, label in every}}
  if canon and all(c is not None for c in canon.values()):
    merged = collections.defaultdict(list)  # class -> [(spelling, where)] of other spellings
    for r, i, label in every:
      if label != canon[label] and all(s != label for s, _ in merged[canon[label]]):
        merged[canon[label]].append((label, f"{r.source}, {r.where(i)}"))
    for r in raw.values():
      r.labels = [canon[label] for label in r.labels]
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


def _label_names(train: _RawSplit) -> tuple[str, ...]:
  if train.label_names is not None:
    return train.label_names
  distinct = set(train.labels)
  if not distinct:
    raise DataError(f"data: {train.source} has no labelled rows.")
  if all(re.fullmatch(r"[+-]?\d+", s) for s in distinct):
    return tuple(sorted(distinct, key=int))
  return tuple(sorted(distinct))


def _to_split(raw: _RawSplit, names: tuple[str, ...], skip_bad_rows: bool = False) -> Split:
  index = {name: i for i, name in enumerate(names)}
  ids = np.fromiter((index.get(label, -1) for label in raw.labels), dtype=np.int32,
                    count=len(raw.labels))
  unknown = np.flatnonzero(ids < 0)
  texts = tuple(raw.texts)
  if unknown.size and not skip_bad_rows:
    first = int(unknown[0])
    where = raw.where(first).replace("row ", "", 1)
    raise DataError(f"data: {raw.source}, row {where}: label {raw.labels[first]!r} does not "
                    f"occur in train (known labels: {', '.join(names)}; {unknown.size} rows "
                    "have unknown labels). Fix the label, use a train file with every class, or "
                    "set data.skip_bad_rows=true to skip such rows (they are counted).")
  if unknown.size:
    log.warning("data: %s: skipped %d row(s) whose label does not occur in train (first: %s, "
                "label %r) because data.skip_bad_rows=true.", raw.source, unknown.size,
                raw.where(int(unknown[0])), raw.labels[int(unknown[0])])
    keep = ids >= 0
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


# ----------------------------------------------------------------------------- files


def _file_format(path: pathlib.Path, fmt: str) -> str:
  if fmt != "auto":
    return fmt
  suffixes = [s.lower() for s in path.suffixes]
  if suffixes and suffixes[-1] == ".gz":
    suffixes = suffixes[:-1]
  found = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
  if found is None:
    raise DataError(f"data: cannot tell the format of {path} from its name (known endings: "
                    f"{', '.join(sorted(_SUFFIX_FORMATS))}, optionally + .gz); set "
                    "data.format=csv|tsv|json|parquet.")
  return found


def _is_empty(path: pathlib.Path) -> bool:
  if path.stat().st_size == 0:
    return True
  if path.suffix.lower() == ".gz":
    import gzip  # pylint: disable=import-outside-toplevel
    try:
      with gzip.open(path, "rb") as f:
        return not f.read(4096).strip()
    except (OSError, EOFError):
      return False  # a broken gzip file: reading it reports that
  return False


def _file_splits(cfg: DataConfig) -> list[str]:
  return [name for name in ("train", "dev", "test") if getattr(cfg, name)]


def _read_named_file(cfg: DataConfig, split: str) -> _RawSplit:
  return _read_file(resolve(getattr(cfg, split)), cfg, split)


def _read_file(path: pathlib.Path, cfg: DataConfig, split: str) -> _RawSplit:
  """Reads one csv / tsv / json / parquet file through ``datasets.load_dataset``."""
  if not path.is_file():
    given = getattr(cfg, split)
    where = (where_data_was_looked_for(given) if not pathlib.Path(given).expanduser().is_absolute()
             else "the path is absolute")
    raise DataError(f"data: data.{split} = {given!r}: file {path} not found ({where}).")
  fmt = _file_format(path, cfg.format)
  if fmt != "parquet" and _is_empty(path):
    raise DataError(f"data: {path} is empty; expected a {fmt} file with a header row and a "
                    f"'{cfg.text_column}' and a '{cfg.label_column}' column.")
  lines, source = None, path
  if fmt != "parquet":
    path, lines, skipped_lines, cleanup = _scan_text_file(path, fmt, cfg, split)
  else:
    skipped_lines, cleanup = 0, None
  kwargs: dict[str, Any] = {}
  if fmt in ("csv", "tsv"):
    # Strings as they are: no "NA" -> NaN, no 1 -> 1.0 when a label is missing.
    kwargs = dict(na_filter=False, converters={cfg.text_column: str, cfg.label_column: str})
    if fmt == "tsv":
      kwargs.update(delimiter="\t", quoting=3)  # csv.QUOTE_NONE
  try:
    ds, skipped = _load_file_dataset(path, fmt, kwargs, cfg.skip_bad_rows)
    raw = _raw_from_dataset(ds, cfg, str(source), skipped + skipped_lines,
                            allow_unlabelled=False, lines=lines if not skipped else None)
  finally:
    if cleanup is not None:
      cleanup.cleanup()
  return raw


def _scan_text_file(path: pathlib.Path, fmt: str, cfg: DataConfig, split: str):
  """Checks a csv / tsv / jsonl file line by line before ``datasets`` reads it: bytes that are
  not UTF-8, rows whose field count differs from the header's, quotes never closed.

  Returns ``(path to read, start line of each data row, bad rows skipped, temporary directory
  or None)``; with bad rows and ``cfg.skip_bad_rows`` the path is a cleaned copy without them.

  Raises:
    DataError: naming the file, the first bad line, what is wrong and the fix.
  """
  raw = path.read_bytes()
  if path.suffix.lower() == ".gz":
    import gzip  # pylint: disable=import-outside-toplevel
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise DataError(f"data: {path} is not a readable gzip file ({e}); it may be truncated. "
                      "Download or compress it again.") from e
  texts, bad = [], {}  # bad: 1-based line -> reason
  try:  # the whole file at once (one C call); line by line only to find the bad lines
    texts = raw.decode("utf-8").split("\n")
  except UnicodeDecodeError:
    for i, piece in enumerate(raw.split(b"\n"), 1):
      try:
        texts.append(piece.decode("utf-8"))
      except UnicodeDecodeError as e:
        bad[i] = (f"bytes that are not UTF-8 (0x{piece[e.start]:02x} at byte {e.start + 1} of "
                  "the line); re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
        texts.append("")
  if fmt == "json":
    rows = []
    for i, t in enumerate(texts, 1):
      if not t.strip() or i in bad:
        continue
      try:
        ok = isinstance(json.loads(t), dict)
      except ValueError:
        ok = False
      if ok:
        rows.append(i)
      else:
        bad[i] = "each line must hold one JSON object"
    bad_lines = {i: {i} for i in bad}
  else:
    rows, bad_lines = _delimited_rows(texts, fmt, bad)
  if bad_lines:
    first = min(bad_lines)
    reason = bad.get(first) or next(bad[i] for i in sorted(bad_lines[first]) if i in bad)
    numbers = sorted(bad_lines)
    listed = ", ".join(str(n) for n in numbers[:10]) + (", ..." if len(numbers) > 10 else "")
    if not cfg.skip_bad_rows:
      kind = "malformed JSON row" if "JSON object" in reason else "malformed row"
      raise DataError(f"data: {path}, line {first}: {kind} ({len(numbers)} bad row(s) in all: "
                      f"lines {listed}; {reason}). Fix them, or set data.skip_bad_rows=true to "
                      "skip such rows (they are counted).")
    log.warning("data: %s: skipped %d bad row(s) (lines %s; first: %s) because "
                "data.skip_bad_rows=true.", path, len(numbers), listed, reason)
    drop = set().union(*bad_lines.values())
    tmp = tempfile.TemporaryDirectory()
    clean = pathlib.Path(tmp.name) / path.name.removesuffix(".gz").removesuffix(".GZ")
    clean.write_text("\n".join(t for i, t in enumerate(texts, 1) if i not in drop),
                     encoding="utf-8")
    kept = [r for r in rows if r not in drop]
    return clean, kept, len(numbers), tmp
  return path, rows, 0, None


def _delimited_rows(texts: list[str], fmt: str, bad: dict[int, str]):
  """``(start line of each good data row, {start line of a bad row: its lines})`` of a csv /
  tsv file split into lines; fills ``bad`` with the reasons."""
  bad_lines = {i: {i} for i in bad}
  header_at = next((i for i, t in enumerate(texts, 1) if t.strip() and i not in bad), None)
  if header_at is None:
    return [], bad_lines
  if fmt == "tsv":
    for i, t in enumerate(texts, 1):
      at = _bare_cr(t)
      if at is not None and i not in bad:
        bad[i] = _BARE_CR_REASON.format(at=at)
        bad_lines[i] = {i}
    header_at = next((i for i, t in enumerate(texts, 1) if t.strip() and i not in bad), None)
    if header_at is None:
      return [], bad_lines
    width = texts[header_at - 1].rstrip("\r").count("\t") + 1
    rows = []
    for i, t in enumerate(texts, 1):
      if i <= header_at or i in bad or not t.strip():
        continue
      n = t.rstrip("\r").count("\t") + 1
      if n != width:
        bad[i] = (f"{n} tab-separated fields, the header has {width} "
                  f"({texts[header_at - 1].strip()!r})")
        bad_lines[i] = {i}
      else:
        rows.append(i)
    return rows, bad_lines
  rows, width, start = [], None, header_at
  while start <= len(texts):
    chunk = [t + "\n" for t in texts[start - 1:]]
    reader = csv.reader(chunk, strict=True)
    line = start - 1  # lines consumed so far
    try:
      for record in reader:
        first = line + 1
        line = start - 1 + reader.line_num
        if not record or first in bad:
          continue
        if width is None:
          width = len(record)
          continue
        if len(record) != width:
          bad[first] = f"{len(record)} comma-separated fields, the header has {width}"
          bad_lines[first] = set(range(first, line + 1))
        elif any(i in bad for i in range(first, line + 1)):
          bad_lines.setdefault(first, set()).update(range(first, line + 1))
        else:
          rows.append(first)
      break
    except csv.Error as e:
      first = line + 1
      at = _bare_cr(texts[first - 1]) if first <= len(texts) else None
      if at is not None and "new-line character" in str(e):
        bad[first] = _BARE_CR_REASON.format(at=at)
      else:
        bad[first] = (f"bad quoting ({e}: a quote opened here is never closed, or text follows "
                      "a closing quote); quote the whole field and double inner quotes (\"\")")
      bad_lines[first] = {first}
      start = first + 1
  return rows, bad_lines


# A row ends at "\n" (a "\r" just before it is part of the line end). A bare "\r" anywhere else
# would end the row for datasets' csv reader (pandas) but not for the line checks: outside the
# quotes of a csv field it is a bad row.
_BARE_CR_REASON = ("a bare carriage return (\\r) at character {at} of the line, which the csv / "
                   "tsv reader would take for the end of the row; remove it or replace it with a "
                   "space (a file with old Mac line ends: tr '\\r' '\\n' < FILE > NEW)")


def _bare_cr(line: str) -> int | None:
  """The 1-based position of the first carriage return of ``line`` that does not end it."""
  at = line.find("\r")
  return None if at < 0 or at == len(line) - 1 else at + 1


def _load_file_dataset(path: pathlib.Path, fmt: str, kwargs: dict[str, Any],
                       skip_bad_rows: bool):
  """``(dataset, rows skipped)``; malformed rows raise or, with ``skip_bad_rows``, are counted."""
  import datasets  # pylint: disable=import-outside-toplevel
  datasets.disable_progress_bars()

  def load(file, cache_dir=None, **extra):
    return datasets.load_dataset(_BUILDERS[fmt], data_files={"train": str(file)}, split="train",
                                 cache_dir=cache_dir, **kwargs, **extra)

  try:
    return load(path), 0
  except Exception as e:  # pylint: disable=broad-except
    error = e
  parser_error = _find_cause(error, "ParserError")
  if parser_error is not None:
    line = _line_of(str(parser_error))
    if skip_bad_rows and "Expected" in str(parser_error):
      # A fresh cache directory, so pandas parses again and reports every skipped line.
      with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load(path, cache_dir=tmp, on_bad_lines="warn", keep_in_memory=True)
      skipped = sum(str(w.message).count("Skipping line") for w in caught)
      return ds, skipped
    raise DataError(f"data: {path}, line {line}: malformed row ({str(parser_error).strip()}). "
                    "Fix the row, or set data.skip_bad_rows=true to skip such rows (they are "
                    "counted).") from error
  if fmt == "json":
    bad = _bad_json_lines(path)
    if bad and skip_bad_rows:
      with tempfile.TemporaryDirectory() as tmp:
        good = pathlib.Path(tmp, "good.jsonl")
        lines = _read_text(path).split("\n")
        skip = set(bad)
        good.write_text("\n".join(l for i, l in enumerate(lines, 1) if i not in skip),
                        encoding="utf-8")
        return load(good, cache_dir=tmp, keep_in_memory=True), len(bad)
    if bad:
      raise DataError(f"data: {path}, line {bad[0]}: malformed JSON row ({len(bad)} bad lines in "
                      "all). Fix the row, or set data.skip_bad_rows=true to skip such rows (they "
                      "are counted).") from error
  if "corresponds to no data" in str(error):
    raise DataError(f"data: {path} has no data rows (only a header?).") from error
  if _find_cause(error, "EmptyDataError") is not None:
    raise DataError(f"data: {path} is empty; expected a {fmt} file with a header row.") from error
  raise DataError(f"data: could not read {path} as {fmt} through datasets.load_dataset "
                  f"({type(error).__name__}: {error}). Check the file, or set data.format to "
                  "the right one of csv, tsv, json, parquet.") from error


def _find_cause(error: BaseException, type_name: str) -> BaseException | None:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if any(t.__name__ == type_name for t in type(error).__mro__):
      return error
    error = error.__cause__ or error.__context__
  return None


def _line_of(message: str) -> str:
  m = re.search(r"(?:line|row) (\d+)", message)
  return m.group(1) if m else "?"


def _read_text(path: pathlib.Path) -> str:
  if path.suffix.lower() == ".gz":
    import gzip  # pylint: disable=import-outside-toplevel
    with gzip.open(path, "rt", encoding="utf-8") as f:
      return f.read()
  return path.read_text(encoding="utf-8")


def _bad_json_lines(path: pathlib.Path) -> list[int]:
  """1-based numbers of the lines of a JSON-lines file that are not JSON objects."""
  bad = []
  for i, line in enumerate(_read_text(path).split("\n"), 1):
    if not line.strip():
      continue
    try:
      ok = isinstance(json.loads(line), dict)
    except ValueError:
      ok = False
    if not ok:
      bad.append(i)
  return bad


def _column(ds, name: str) -> list[Any]:
  import datasets  # pylint: disable=import-outside-toplevel
  if isinstance(ds.features[name], datasets.Value):
    return ds.with_format("arrow")[name].to_pylist()  # 10x faster than list(ds[name])
  return list(ds[name])


def _raw_from_dataset(ds, cfg: DataConfig, source: str, skipped: int,
                      allow_unlabelled: bool, lines: list[int] | None = None) -> _RawSplit:
  """Texts and string labels of a ``datasets.Dataset``; checks columns and missing values."""
  import datasets  # pylint: disable=import-outside-toplevel
  missing = [c for c in (cfg.text_column, cfg.label_column) if c not in ds.column_names]
  if missing:
    raise DataError(f"data: {source} has no column {missing[0]!r} (columns: "
                    f"{', '.join(ds.column_names)}); set data.text_column / data.label_column.")
  if len(ds) == 0:
    raise DataError(f"data: {source} has no rows.")
  texts = _column(ds, cfg.text_column)
  labels = _column(ds, cfg.label_column)
  feature = ds.features[cfg.label_column]
  names = None
  if isinstance(feature, datasets.ClassLabel):
    names = tuple(feature.names)
    labels = [names[l] if l is not None and 0 <= l < len(names) else None for l in labels]
  else:
    labels = [None if l is None else str(l).strip() for l in labels]
    labels = [l if l else None for l in labels]
  at = _RawSplit([], [], source, lines=lines).where
  bad = [i for i, (t, l) in enumerate(zip(texts, labels))
         if l is None or t is None or l.lower() in _NOT_A_NUMBER]
  if bad and allow_unlabelled and len(bad) == len(labels):
    return _RawSplit([], [], source + " (unlabelled)", 0, names)
  if bad and not cfg.skip_bad_rows:
    i = bad[0]
    what = ("missing label" if labels[i] is None else "missing text" if texts[i] is None else
            "a label that is not a number (NaN / inf) nor a class name")
    where = f" (line {lines[i]})" if lines is not None and i < len(lines) else ""
    raise DataError(f"data: {source}, row {i + 1}: {what}{where} ({cfg.label_column!r} "
                    f"= {labels[i]!r}, {cfg.text_column!r} = {texts[i]!r}); {len(bad)} rows have "
                    "a missing, NaN or infinite label or a missing text. Fix them, or set "
                    "data.skip_bad_rows=true to skip such rows (they are counted).")
  texts = [t if isinstance(t, str) or t is None else str(t) for t in texts]
  long = [i for i, t in enumerate(texts) if t is not None and len(t) > MAX_TEXT_CHARS]
  if long and not cfg.skip_bad_rows:
    i = long[0]
    raise DataError(f"data: {source}, {at(i)}: a text of {len(texts[i]):,} characters (the "
                    f"limit is {MAX_TEXT_CHARS:,}; {len(long)} such rows), probably a quote "
                    "never closed or a file that is not one example per row. Fix the file, or "
                    "set data.skip_bad_rows=true to skip such rows (they are counted).")
  empty = [i for i, t in enumerate(texts) if t is not None and not t.strip()]
  if empty and not cfg.skip_bad_rows:
    log.warning("data: %s: %d row(s) have an empty text (first: %s); they are kept and encode "
                "to padding only (the model sees no words). Set data.skip_bad_rows=true to skip "
                "them (they are counted).", source, len(empty), at(empty[0]))
  drop = set(bad) | set(long) | (set(empty) if cfg.skip_bad_rows else set())
  if drop:
    if cfg.skip_bad_rows:
      log.warning("data: %s: skipped %d row(s) (%d missing a label or text or with a NaN label, "
                  "%d with an empty "
                  "text, %d longer than %s characters; first: %s) because "
                  "data.skip_bad_rows=true.", source, len(drop), len(bad),
                  len(set(empty) - set(bad)), len(long), f"{MAX_TEXT_CHARS:,}", at(min(drop)))
    texts = [t for i, t in enumerate(texts) if i not in drop]
    labels = [l for i, l in enumerate(labels) if i not in drop]
    lines = None if lines is None else [n for i, n in enumerate(lines) if i not in drop]
  return _RawSplit(texts, labels, source, skipped + len(drop), names, lines)


# ----------------------------------------------------------------------------- disk / hub


def _splits_of(obj, cfg: DataConfig, where: str) -> dict[str, _RawSplit]:
  import datasets  # pylint: disable=import-outside-toplevel
  if isinstance(obj, datasets.Dataset):
    return {"train": _raw_from_dataset(obj, cfg, where, 0, allow_unlabelled=False)}
  keys = list(obj.keys())
  if "train" not in keys:
    raise DataError(f"data: {where} has splits {keys} but no 'train' split.")
  out = {"train": _raw_from_dataset(obj["train"], cfg, f"{where}[train]", 0, False)}
  dev_key = next((k for k in _DEV_NAMES if k in keys), None)
  for name, key in (("dev", dev_key), ("test", "test" if "test" in keys else None)):
    if key is not None:
      raw = _raw_from_dataset(obj[key], cfg, f"{where}[{key}]", 0, allow_unlabelled=True)
      if raw.texts:  # an all-unlabelled split (GLUE test: label -1) is left out
        out[name] = raw
  return out


def _load_disk(cfg: DataConfig) -> dict[str, _RawSplit]:
  import datasets  # pylint: disable=import-outside-toplevel
  path = resolve(cfg.path)
  if not path.exists():
    where = (where_data_was_looked_for(cfg.path) if not pathlib.Path(cfg.path).is_absolute()
             else "the path is absolute")
    raise DataError(f"data: data.path = {cfg.path!r}: directory {path} not found (write it with "
                    f"Dataset.save_to_disk / DatasetDict.save_to_disk; {where}).")
  try:
    obj = datasets.load_from_disk(str(path))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"data: could not load {path} with datasets.load_from_disk ({e}); it must "
                    "be a directory written by Dataset.save_to_disk.") from e
  return _splits_of(obj, cfg, str(path))


def _hub_error(name: str) -> DataError:
  return DataError(
      f"data: could not load {name!r} from the Hugging Face hub (offline?). Download it where "
      "you have network and save it with Dataset.save_to_disk, then set data.source=disk "
      "data.path=DIR; or point data.source=files data.train=... at local csv/tsv/jsonl/parquet "
      "files.")


def _load_hub(cfg: DataConfig) -> dict[str, _RawSplit]:
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


# ----------------------------------------------------------------------------- synthetic


def _synthetic_vocab(cfg: DataConfig) -> list[str]:
  words = [f"t{t}_w{j}" for t in range(cfg.synthetic_topics)
           for j in range(cfg.synthetic_words_per_topic)]
  return words + [f"s{j}" for j in range(cfg.synthetic_shared_words)]


def synthetic_word_topics(cfg: DataConfig) -> dict[str, int]:
  """The planted truth of ``synthetic_splits``: each word's topic (= class), -1 for shared words.

  Example:
    >>> truth = synthetic_word_topics(DataConfig(synthetic_topics=2, synthetic_words_per_topic=3,
    ...                                          synthetic_shared_words=2))
    >>> truth
    {'t0_w0': 0, 't0_w1': 0, 't0_w2': 0, 't1_w0': 1, 't1_w1': 1, 't1_w2': 1, 's0': -1, 's1': -1}
  """
  per = cfg.synthetic_words_per_topic
  return {w: (i // per if i < cfg.synthetic_topics * per else -1)
          for i, w in enumerate(_synthetic_vocab(cfg))}


# Of a document's tokens, about this share come from its own topic's words, this share from the
# other topics' words (so single words are evidence, not proof), and the rest from shared words.
_OWN_TOPIC_SHARE = 0.35
_OTHER_TOPIC_SHARE = 0.10


def synthetic_splits(cfg: DataConfig, seed: int) -> dict[str, Split]:
  """Generates train / dev / test documents with a planted topic structure.

  Each class is a latent topic with ``synthetic_words_per_topic`` words ``t{topic}_w{j}``; there
  are ``synthetic_shared_words`` shared words ``s{j}`` with Zipf frequencies. A document of
  class c has ``synthetic_length // 2 .. synthetic_length * 3 // 2`` tokens: about 35% drawn
  uniformly from topic c's words, 10% from the other topics' words, the rest shared words.
  A bag-of-words model reaches ~95%+ accuracy, but needs to learn which words carry the topic.

  Args:
    cfg: sizes come from the ``synthetic_*`` fields.
    seed: the same seed gives the same documents; each split has its own random stream.

  Returns:
    ``{"train", "dev", "test"}`` splits; labels are topic ids.

  Example:
    >>> s = synthetic_splits(DataConfig(synthetic_train_size=3, synthetic_eval_size=2), seed=1)
    >>> len(s["train"]), len(s["dev"]), s["train"].labels.dtype
    (3, 2, dtype('int32'))
  """
  topics, per = cfg.synthetic_topics, cfg.synthetic_words_per_topic
  num_shared = cfg.synthetic_shared_words
  words = np.array(_synthetic_vocab(cfg), dtype=object)
  shared_p = 1.0 / np.arange(1, num_shared + 1)
  shared_p /= shared_p.sum() if num_shared else 1.0
  sizes = {"train": cfg.synthetic_train_size, "dev": cfg.synthetic_eval_size,
           "test": cfg.synthetic_eval_size}
  out = {}
  for stream, (name, size) in enumerate(sizes.items()):
    rng = np.random.default_rng([seed, stream])
    labels = rng.integers(0, topics, size=size).astype(np.int32)
    low = max(1, cfg.synthetic_length // 2)
    lengths = rng.integers(low, max(low, cfg.synthetic_length * 3 // 2) + 1, size=size)
    label_of_token = np.repeat(labels, lengths)
    total = len(label_of_token)
    u = rng.random(total)
    topic = label_of_token
    if topics > 1:
      other = (u >= _OWN_TOPIC_SHARE) & (u < _OWN_TOPIC_SHARE + _OTHER_TOPIC_SHARE)
      shift = rng.integers(1, topics, size=total)
      topic = np.where(other, (label_of_token + shift) % topics, label_of_token)
    idx = topic * per + rng.integers(0, per, size=total)
    if num_shared:  # without shared words the rest comes from the document's own topic
      shared = u >= _OWN_TOPIC_SHARE + _OTHER_TOPIC_SHARE
      idx = np.where(shared, topics * per + rng.choice(num_shared, size=total, p=shared_p), idx)
    tokens = words[idx]
    ends = np.cumsum(lengths)
    texts = tuple(" ".join(tokens[e - n:e]) for e, n in zip(ends, lengths))
    out[name] = Split(texts, labels, f"synthetic[{name}, seed={seed}]")
  return out


# ----------------------------------------------------------------------------- encoding + cache


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedData:
  """Every split as padded int32 ids (see ``embedlab.data.text.encode`` for the row layout).

  Attributes:
    train_ids, dev_ids, test_ids: int32 ``[N, max_len * ngrams]``; ``dev_ids`` is None only for
      data with neither dev nor test, ``test_ids`` when there is no test split.
    train_labels, dev_labels, test_labels: int32 ``[N]`` (None with the ids).
    vocab: the vocabulary, built on train.
    label_names: class names; label id i is ``label_names[i]``.
    num_embeddings: rows the embedding table needs: ``table_rows(cfg, len(vocab), kept_buckets)``.
    skipped: malformed rows skipped per split (with ``skip_bad_rows``).
    kept_buckets: with ``prune_buckets``, the n-gram ids of the buckets train uses
      (``text.seen_buckets``), which the ids are renumbered by (``text.remap_buckets``); None
      otherwise.
  """

  train_ids: np.ndarray
  train_labels: np.ndarray
  dev_ids: np.ndarray | None
  dev_labels: np.ndarray | None
  test_ids: np.ndarray | None
  test_labels: np.ndarray | None
  vocab: text_lib.Vocab
  label_names: tuple[str, ...]
  num_embeddings: int
  skipped: dict[str, int]
  kept_buckets: np.ndarray | None = None

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def train_lengths(self) -> np.ndarray:
    """Non-padding ids per train row, for ``batch_indices(..., lengths=...)``."""
    return (self.train_ids != text_lib.PAD_ID).sum(axis=1)

  def split(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(ids, labels)`` of "train", "dev" or "test"."""
    if name not in ("train", "dev", "test"):
      raise KeyError(f"EncodedData.split: unknown split {name!r}; use train, dev or test.")
    return getattr(self, f"{name}_ids"), getattr(self, f"{name}_labels")


def table_rows(cfg: DataConfig, vocab_size: int, kept_buckets: np.ndarray | None = None) -> int:
  """Rows of the embedding table for data encoded with ``cfg``: the vocabulary, then with
  ``ngrams > 1`` the ``num_buckets`` hashed buckets, or with ``prune_buckets`` the buckets kept
  plus one row for all the others.

  Example:
    >>> table_rows(DataConfig(ngrams=2, num_buckets=100), 50)
    150
    >>> table_rows(DataConfig(ngrams=2, num_buckets=100, prune_buckets=True), 50, np.arange(50, 60))
    61
  """
  if cfg.ngrams < 2:
    return vocab_size
  if cfg.pruned:
    if kept_buckets is None:
      raise ValueError("table_rows: data.prune_buckets needs the kept buckets (the run's "
                       "buckets.npy, or EncodedData.kept_buckets).")
    return vocab_size + len(kept_buckets) + 1
  return vocab_size + cfg.num_buckets


def encode_texts(cfg: DataConfig, vocab: text_lib.Vocab, texts: Sequence[str],
                 kept_buckets: np.ndarray | None = None) -> np.ndarray:
  """Ids ``int32[N, L]`` of raw ``texts`` with a trained run's vocabulary (and its kept n-gram
  buckets), tokenized and encoded as its training data was (``predict``, ``eval``)."""
  tokens = text_lib.tokenize_many(list(texts), cfg.lowercase, eos=cfg.eos)
  ids = text_lib.encode(tokens, vocab, max_len=cfg.max_len, ngrams=cfg.ngrams,
                        num_buckets=cfg.num_buckets)
  return prune_ids(cfg, ids, len(vocab), kept_buckets)


def prune_ids(cfg: DataConfig, ids: np.ndarray, vocab_size: int,
              kept_buckets: np.ndarray | None) -> np.ndarray:
  """``ids`` encoded with ``cfg`` as the table of ``table_rows`` reads them: renumbered by
  ``text.remap_buckets`` with ``prune_buckets``, unchanged otherwise (``predict`` uses it)."""
  if not cfg.pruned:
    return ids
  return text_lib.remap_buckets(ids, kept_buckets, max_len=cfg.max_len, vocab_size=vocab_size,
                                num_buckets=cfg.num_buckets)


def default_cache_dir() -> pathlib.Path:
  """``$EMBEDLAB_CACHE`` or ``~/.cache/embedlab/encoded``."""
  return pathlib.Path(os.environ.get("EMBEDLAB_CACHE") or "~/.cache/embedlab/encoded").expanduser()


def _input_files(cfg: DataConfig) -> list[pathlib.Path]:
  if cfg.source == "files":
    return [resolve(getattr(cfg, n)) for n in ("train", "dev", "test") if getattr(cfg, n)]
  if cfg.source == "disk":
    root = resolve(cfg.path)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
  return []


def cache_key(cfg: DataConfig, seed: int) -> str:
  """sha256 of the config, the seed, each input file's path, size and mtime, and ``CODE_VERSION``.

  Example:
    >>> cache_key(DataConfig(), 0) == cache_key(DataConfig(), 0) != cache_key(DataConfig(), 1)
    True
  """
  files = []
  for p in _input_files(cfg):
    try:
      st = p.stat()
      files.append([str(p.absolute()), st.st_size, st.st_mtime_ns])
    except OSError:
      files.append([str(p.absolute()), None, None])
  settings = dataclasses.asdict(cfg)
  settings.pop("workers")  # how many processes encode does not change the result
  payload = json.dumps({"config": settings, "seed": seed, "files": files,
                        "code": CODE_VERSION}, sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def is_cached(cfg: DataConfig, seed: int, *, cache_dir: str | os.PathLike | None = None) -> bool:
  """Whether ``encode_splits(cfg, seed)`` would read its result from the cache.

  Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> cfg = DataConfig(synthetic_train_size=10, synthetic_eval_size=5, max_len=8)
    >>> before = is_cached(cfg, 0, cache_dir=d)
    >>> _ = encode_splits(cfg, 0, cache_dir=d)
    >>> before, is_cached(cfg, 0, cache_dir=d)
    (False, True)
  """
  directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  key = cache_key(cfg, seed)
  return (directory / f"{key}.npz").is_file() and (directory / f"{key}.vocab.txt").is_file()


def encode_workers(cfg: DataConfig) -> int:
  """Processes that tokenize and encode: ``cfg.workers``, or with 0 the CPU cores this process
  may use, at most 8.

  Example:
    >>> encode_workers(DataConfig(workers=3))
    3
  """
  if cfg.workers:
    return cfg.workers
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(8, cores or 1))


def encode_splits(cfg: DataConfig, seed: int, *, cache_dir: str | os.PathLike | None = None,
                  cache: bool = True) -> EncodedData:
  """Loads, tokenizes and encodes every split; the vocabulary is built on train only.

  The result is cached as ``<key>.npz`` + ``<key>.vocab.txt`` under ``cache_dir`` (default
  ``default_cache_dir()``), keyed by ``cache_key``; a second call with the same config, seed and
  unchanged input files reads the cache without tokenizing.

  Args:
    cfg: the data config (``lowercase``, ``min_freq``, ``max_vocab``, ``max_len``, ``ngrams``,
      ``num_buckets`` shape the encoding).
    seed: as for ``load_splits``.
    cache_dir: where the cache lives.
    cache: False neither reads nor writes the cache.

  Returns:
    An ``EncodedData``.

  Example:
    >>> d = encode_splits(DataConfig(synthetic_train_size=10, synthetic_eval_size=5, max_len=8),
    ...                   seed=0, cache=False)
    >>> d.train_ids.shape, d.dev_labels.shape, d.test_ids.dtype
    ((10, 8), (5,), dtype('int32'))
  """
  directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  key = cache_key(cfg, seed)
  if cache:
    found = _read_cache(directory, key)
    if found is not None:
      return found
  workers = encode_workers(cfg)
  if _by_file(cfg, workers):
    splits, label_names, vocab, ids = _encode_by_file(cfg, seed, workers)
  else:
    splits, label_names = load_splits(cfg, seed)
    vocab, ids = text_lib.encode_corpus(
        {name: s.texts for name, s in splits.items()}, vocab_split="train",
        max_len=cfg.max_len, lowercase=cfg.lowercase, min_freq=cfg.min_freq,
        max_size=cfg.max_vocab, ngrams=cfg.ngrams, num_buckets=cfg.num_buckets, workers=workers,
        eos=cfg.eos)
  labels = {name: s.labels for name, s in splits.items()}
  kept = None
  if cfg.pruned:
    kept = text_lib.seen_buckets(ids["train"], max_len=cfg.max_len, vocab_size=len(vocab),
                                 num_buckets=cfg.num_buckets)
    ids = {name: prune_ids(cfg, split_ids, len(vocab), kept) for name, split_ids in ids.items()}
  data = EncodedData(
      train_ids=ids["train"], train_labels=labels["train"],
      dev_ids=ids.get("dev"), dev_labels=labels.get("dev"),
      test_ids=ids.get("test"), test_labels=labels.get("test"),
      vocab=vocab, label_names=tuple(label_names),
      num_embeddings=table_rows(cfg, len(vocab), kept),
      skipped={name: s.skipped for name, s in splits.items()}, kept_buckets=kept)
  if cache:
    _write_cache(directory, key, data, cfg)
  return data


# A file this big or bigger is worth a process of its own (IMDB's are 12 MB, SST-2's dev and
# test 0.1 MB).
_MIN_FILE_BYTES = 4 << 20


def _by_file(cfg: DataConfig, workers: int) -> bool:
  """Whether each file gets a process that reads and tokenizes it: files data with at least as
  many big files as workers (IMDB's train and test on 2 cores), and forking possible. Otherwise
  the files are read here and the tokenizing is split by slices (``text.encode_corpus``)."""
  if cfg.source != "files" or workers < 2 or not _fork.can_fork():
    return False
  big = 0
  for name in _file_splits(cfg):
    try:
      big += resolve(getattr(cfg, name)).stat().st_size >= _MIN_FILE_BYTES
    except OSError:
      return False  # reading it reports what is wrong
  return big >= workers


def _read_and_tokenize(cfg: DataConfig, split: str) -> tuple[_RawSplit, text_lib.Shard]:
  raw = _read_named_file(cfg, split)
  shard = text_lib.tokenize_parts({split: raw.texts}, lowercase=cfg.lowercase, eos=cfg.eos)
  raw.texts = []  # not sent back: the ids stand for them
  return raw, shard


def _encode_by_file(cfg: DataConfig, seed: int, workers: int):
  """``encode_splits``' work with one forked process per file reading and tokenizing it; here,
  the labels, the dev carve-out and ``max_examples`` pick rows, then ``text.encode_shards``."""
  names = _file_splits(cfg)
  import datasets  # noqa: F401, PLC0415  pylint: disable=import-outside-toplevel,unused-import
  # (imported once, here: the forked processes inherit it, a second each)
  done = _fork.fork_map(functools.partial(_read_and_tokenize, cfg), names, workers)
  raw, bases, base = {}, [], 0
  for name, (split, (_, parts)) in zip(names, done):
    rows = len(parts[name][1])
    split.texts = list(range(base, base + rows))  # a text is its row number over all files
    raw[name] = split
    bases.append(base)
    base += rows
  splits, label_names = _assemble(raw, cfg, seed)
  layout = {}
  for name, split in splits.items():
    rows = np.asarray(split.texts, dtype=np.int64)
    files = np.searchsorted(bases, rows, side="right") - 1
    cuts = np.flatnonzero(np.diff(files)) + 1
    layout[name] = [(int(f[0]), names[int(f[0])], r - bases[int(f[0])])
                    for f, r in zip(np.split(files, cuts), np.split(rows, cuts)) if r.size]
  vocab, ids = text_lib.encode_shards(
      [shard for _, shard in done], layout, vocab_split="train", max_len=cfg.max_len,
      min_freq=cfg.min_freq, max_size=cfg.max_vocab, ngrams=cfg.ngrams,
      num_buckets=cfg.num_buckets, threads=workers)
  return splits, label_names, vocab, ids


def _read_cache(directory: pathlib.Path, key: str) -> EncodedData | None:
  npz, vocab_file = directory / f"{key}.npz", directory / f"{key}.vocab.txt"
  if not npz.is_file() or not vocab_file.is_file():
    return None
  try:
    with np.load(npz, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("checksum") != _cache_digest(arrays, meta, vocab_file.read_bytes()):
      log.warning("data: the encoded cache %s does not match its checksum (a corrupted or "
                  "changed file); encoding the data again.", npz)
      return None
    vocab = text_lib.Vocab.load(vocab_file)
    kept = arrays.pop("kept_buckets", None)
    for name in ("train", "dev", "test"):
      if f"{name}_words" in arrays:
        arrays[f"{name}_ids"] = _unpack_ids(arrays.pop(f"{name}_words"),
                                            arrays.pop(f"{name}_lengths"), meta, len(vocab), kept)
  except Exception as e:  # pylint: disable=broad-except
    log.warning("data: the encoded cache %s is unreadable (%s: %s); encoding the data again.",
                npz, type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e) else "")
    return None
  return EncodedData(
      train_ids=arrays["train_ids"], train_labels=arrays["train_labels"],
      dev_ids=arrays.get("dev_ids"), dev_labels=arrays.get("dev_labels"),
      test_ids=arrays.get("test_ids"), test_labels=arrays.get("test_labels"), vocab=vocab,
      label_names=tuple(meta["label_names"]), num_embeddings=int(meta["num_embeddings"]),
      skipped=dict(meta["skipped"]), kept_buckets=kept)


def _write_cache(directory: pathlib.Path, key: str, data: EncodedData,
                 cfg: DataConfig) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for name in ("train", "dev", "test"):
    ids, labels = data.split(name)
    if ids is None:
      continue
    arrays[f"{name}_labels"] = labels
    packed = _pack_ids(ids, cfg.max_len)
    if packed is None:
      arrays[f"{name}_ids"] = ids
    else:
      arrays[f"{name}_words"], arrays[f"{name}_lengths"] = packed
  if data.kept_buckets is not None:
    arrays["kept_buckets"] = data.kept_buckets
  meta = {"label_names": list(data.label_names), "num_embeddings": data.num_embeddings,
          "skipped": data.skipped, "code": CODE_VERSION, "max_len": cfg.max_len,
          "ngrams": cfg.ngrams, "num_buckets": cfg.num_buckets}
  meta["checksum"] = _cache_digest(arrays, meta, "".join(t + "\n" for t in data.vocab.tokens)
                                   .encode("utf-8"))
  arrays["meta"] = np.array(json.dumps(meta))
  # tmp file + os.replace: a reader never sees a half-written file; the npz goes last, so its
  # presence means the vocabulary is complete too.
  _atomic_write(directory / f"{key}.vocab.txt", data.vocab.save)
  _atomic_write(directory / f"{key}.npz", lambda p: _save_npz(p, arrays))


def _cache_digest(arrays: dict[str, np.ndarray], meta: dict, vocab: bytes) -> str:
  """A blake2b digest of the cache's arrays (names, dtypes, shapes, bytes), its record (without
  the digest) and its vocabulary file's bytes."""
  h = hashlib.blake2b(digest_size=16)
  h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"},
                      sort_keys=True).encode("utf-8"))
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"|{name}:{a.dtype.str}:{a.shape}|".encode("utf-8"))
    h.update(a.reshape(-1).view(np.uint8))
  h.update(vocab)
  return h.hexdigest()


def _pack_ids(ids: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray] | None:
  """The cache keeps right-padded word ids only, as one flat array and the row lengths (IMDB:
  a fifth of the bytes); the n-gram columns are hashed again on reading (0.1 s). None when the
  rows are not right-padded word ids (then the matrix is stored as it is)."""
  words = ids[:, :max_len]
  present = words != text_lib.PAD_ID
  lengths = present.sum(axis=1)
  if not np.array_equal(present, np.arange(words.shape[1]) < lengths[:, None]):
    return None
  return words[present], lengths.astype(np.int32)


def _unpack_ids(flat: np.ndarray, lengths: np.ndarray, meta: dict, vocab_size: int,
                kept: np.ndarray | None) -> np.ndarray:
  """``_pack_ids``' inverse: the n-grams hashed again and, if pruned, renumbered again."""
  ids = text_lib.padded_ids(flat, lengths, meta["max_len"], ngrams=meta["ngrams"],
                            num_buckets=meta["num_buckets"], offset=vocab_size,
                            threads=os.cpu_count() or 1)
  if kept is None:
    return ids
  return text_lib.remap_buckets(ids, kept, max_len=meta["max_len"], vocab_size=vocab_size,
                                num_buckets=meta["num_buckets"])


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _atomic_write(path: pathlib.Path, write) -> None:
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ----------------------------------------------------------------------------- batches


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
  """Batches per epoch of ``n`` examples.

  Example:
    >>> num_batches(10, 4), num_batches(10, 4, drop_last=False)
    (2, 3)
  """
  if batch_size <= 0:
    raise ValueError(f"num_batches: batch_size = {batch_size} must be positive.")
  return n // batch_size if drop_last else -(-n // batch_size)


# Length bucketing sorts pools of this many batches by length, so batches hold similar lengths
# while the pools, and the batch order, stay random.
_POOL_BATCHES = 32


def batch_indices(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True, lengths: np.ndarray | None = None) -> np.ndarray:
  """Example indices of every batch of one epoch, a pure function of ``(seed, epoch)``.

  A run restarting at step s of epoch e reads ``batch_indices(..., epoch=e)[s]`` and on.

  Args:
    n: number of examples.
    batch_size: examples per batch.
    seed: the run's seed; the permutation comes from ``np.random.default_rng([seed, epoch])``.
    epoch: the epoch number.
    shuffle: False keeps the order 0..n-1.
    drop_last: drop the last, partial batch; otherwise it is padded with -1 (mask those out).
    lengths: ``[n]`` example lengths (``EncodedData.train_lengths``) to group similar lengths
      into batches (``bucket_by_length``): pools of 32 batches are sorted by length, cut into
      batches, and the batches shuffled.

  Returns:
    int64 ``[num_batches(n, batch_size, drop_last), batch_size]``.

  Example:
    >>> batch_indices(5, 2, seed=0, epoch=0, shuffle=False, drop_last=False)
    array([[ 0,  1],
           [ 2,  3],
           [ 4, -1]])
  """
  count = num_batches(n, batch_size, drop_last)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n) if shuffle else np.arange(n)
  if lengths is not None:
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
      raise ValueError(f"batch_indices: lengths has shape {lengths.shape}, expected ({n},).")
    pool = batch_size * _POOL_BATCHES
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.split(order, np.arange(pool, n, pool))] or [order])
  order = order[:count * batch_size]
  order = np.concatenate([order, np.full(count * batch_size - len(order), -1, order.dtype)])
  batches = order.reshape(count, batch_size).astype(np.int64)
  if lengths is not None and shuffle:
    batches = batches[rng.permutation(count)]
  return batches


class RaggedBatch(NamedTuple):
  """Bags as one ragged id list each (PyTorch ``EmbeddingBag``'s layout), padded to a fixed length.

  Attributes:
    ids: int32 ``[..., T]``: the non-padding ids of bag 0, then of bag 1, ..., then padding
      (id 0) up to ``T``.
    segment_ids: int32 ``[..., T]``: the bag of each id, non-decreasing (padding slots name the
      last bag; being padding, they add nothing to it).
  """

  ids: np.ndarray
  segment_ids: np.ndarray


def ragged_length(counts: np.ndarray, batches: Iterable[np.ndarray], multiple: int = 128) -> int:
  """The fixed ragged length ``T`` that holds every batch: the largest batch's number of
  non-padding ids, rounded up to ``multiple`` (one shape, so one compilation, for the run).

  Args:
    counts: ``[N]`` non-padding ids per example (``EncodedData.train_lengths``).
    batches: index arrays ``[num_batches, B]`` (``batch_indices``), e.g. one per epoch.
    multiple: round up to a multiple of this.

  Example:
    >>> ragged_length(np.array([3, 1, 200]), [np.array([[0, 1], [2, 1]])], multiple=64)
    256
  """
  longest = 0
  for rows in batches:
    rows = np.asarray(rows)
    if rows.size:
      longest = max(longest, int(np.where(rows >= 0, counts[rows], 0).sum(axis=-1).max()))
  return max(multiple, -(-longest // multiple) * multiple)


def ragged_batches(ids: np.ndarray, length: int) -> RaggedBatch:
  """Packs padded bags ``[..., B, L]`` into ragged batches ``[..., length]`` (``RaggedBatch``).

  A bag model pooling a ragged batch (``embedlab.bag(..., segment_ids=..., num_bags=B)``) gets
  the same vectors as from the padded one while reading only the real ids: SST-2 phrases fill
  17% of their 112 padded slots.

  Args:
    ids: int ``[..., B, L]`` padded bags, 0 = padding (anywhere in a row).
    length: ``T``, at least the number of non-padding ids of every batch (``ragged_length``).

  Returns:
    A ``RaggedBatch`` of int32 ``[..., T]`` arrays.

  Raises:
    ValueError: a batch holds more than ``length`` non-padding ids.

  Example:
    >>> r = ragged_batches(np.array([[[5, 0, 7], [0, 0, 0], [2, 3, 0]]]), 6)
    >>> r.ids.tolist(), r.segment_ids.tolist()
    ([[5, 7, 2, 3, 0, 0]], [[0, 0, 2, 2, 2, 2]])
  """
  ids = np.asarray(ids)
  if ids.ndim < 2:
    raise ValueError(f"ragged_batches: ids must be [..., B, L], got shape {ids.shape}.")
  *lead, bags, _ = ids.shape
  flat_ids = ids.reshape(-1, bags, ids.shape[-1])
  mask = flat_ids != text_lib.PAD_ID
  totals = mask.sum(axis=(1, 2))
  if totals.size and totals.max() > length:
    raise ValueError(f"ragged_batches: a batch holds {int(totals.max())} non-padding ids, more "
                     f"than the ragged length {length}; compute it with ragged_length over "
                     "every batch of the run.")
  batch, bag, _ = np.nonzero(mask)  # row-major: batch by batch, bag by bag, in position order
  starts = np.cumsum(totals) - totals
  slot = np.arange(len(batch)) - np.repeat(starts, totals)
  out_ids = np.zeros((len(flat_ids), length), np.int32)
  out_seg = np.full((len(flat_ids), length), bags - 1, np.int32)
  out_ids[batch, slot] = flat_ids[mask]
  out_seg[batch, slot] = bag
  return RaggedBatch(out_ids.reshape(*lead, length), out_seg.reshape(*lead, length))


def eval_batches(ids: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Fixed-size evaluation batches, in order; the last one padded with zeros and mask 0.

  Padded rows are all padding ids, so models must not divide by a zero count when pooling.

  Args:
    ids: int32 ``[N, L]``.
    labels: int32 ``[N]``.
    batch_size: rows per batch (every batch has exactly this many).

  Yields:
    ``(ids [B, L], labels [B], mask float32 [B])``, mask 1 for real rows.

  Example:
    >>> batches = list(eval_batches(np.ones((3, 2), np.int32), np.arange(3), 2))
    >>> [b[2].tolist() for b in batches]
    [[1.0, 1.0], [1.0, 0.0]]
  """
  if len(ids) != len(labels):
    raise ValueError(f"eval_batches: {len(ids)} id rows but {len(labels)} labels.")
  if batch_size <= 0:
    raise ValueError(f"eval_batches: batch_size = {batch_size} must be positive.")
  for start in range(0, len(ids), batch_size):
    ids_b, labels_b = ids[start:start + batch_size], labels[start:start + batch_size]
    real = len(ids_b)
    mask = np.zeros(batch_size, np.float32)
    mask[:real] = 1.0
    if real < batch_size:
      ids_b = np.concatenate([ids_b, np.zeros((batch_size - real,) + ids.shape[1:], ids.dtype)])
      labels_b = np.concatenate([labels_b, np.zeros(batch_size - real, labels.dtype)])
    yield ids_b, labels_b, mask
