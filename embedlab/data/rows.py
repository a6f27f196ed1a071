"""A split's rows: ``Split`` (labels as ids), ``RawSplit`` (as read, labels still text), and the
checks every source applies to the rows it reads.

A row with a missing or empty label, a ``NaN`` / ``inf`` label (in any case or sign), a label
that is a JSON object or a list inside the label list, a missing text, a text that is a list or
an object (a number is made a string, bytes are decoded as UTF-8) or a text over
``MAX_TEXT_CHARS`` is a bad row, named by source, row and file line: an
error, or with ``data.skip_bad_rows`` skipped and counted. An empty text is kept (it encodes to
padding only) with a warning, or skipped with ``skip_bad_rows``. A row's label may be a list
(a JSON list in jsonl, the labels of a fastText line): single-label data takes a list of one,
and a list of several is a bad row; with ``data.multilabel`` each label becomes a tuple of
distinct labels (a csv / tsv field split at ``data.label_separator``), and an empty label in it
(``a||b``) is a bad row.

Example:
  >>> from embedlab.data.options import DataConfig
  >>> raw = check_rows(["a film", "bad"], [1, " 0 "], DataConfig(), "demo.tsv", lines=[2, 3])
  >>> raw.texts, raw.labels, raw.where(1)
  (['a film', 'bad'], ['1', '0'], 'row 2 (line 3)')
  >>> check_rows(["a film", "bad", "odd"], [1, "nan", None], DataConfig(skip_bad_rows=True),
  ...            "demo.tsv").skipped
  2
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Sequence

import numpy as np

from embedlab.data.options import DataConfig

# A text this long is almost surely a parse accident (an unclosed quote swallowing the rest of
# the file, a file that is not one example per row), not an example: it is a bad row.
MAX_TEXT_CHARS = 1_000_000
_NOT_A_NUMBER = frozenset(f"{sign}{word}" for sign in ("", "+", "-")
                          for word in ("nan", "inf", "infinity"))

log = logging.getLogger("embedlab")


class DataError(ValueError):
  """Data that cannot be read or used: a missing file or column, a bad row, an unknown label."""


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a data set.

  Attributes:
    texts: the raw texts.
    labels: int32 ``[N]`` label ids (indices into ``label_names``), or for multi-label data
      (``data.multilabel``) float32 ``[N, num_classes]``, 1 where the row has the label.
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
class RawSplit:
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


def check_columns(columns: Iterable[str], cfg: DataConfig, source: str) -> None:
  """Raises ``DataError`` unless ``columns`` hold ``cfg.text_column`` and ``cfg.label_column``.

  Example:
    >>> check_columns(["label", "text", "id"], DataConfig(), "d.csv")
    >>> check_columns(["label", "sentence"], DataConfig(), "d.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    embedlab.data.rows.DataError: data: d.csv has no column 'text' (columns: label, sentence); ...
  """
  columns = list(columns)
  missing = [c for c in (cfg.text_column, cfg.label_column) if c not in columns]
  if missing:
    raise DataError(f"data: {source} has no column {missing[0]!r} (columns: "
                    f"{', '.join(columns)}); set data.text_column / data.label_column.")


def check_rows(texts: Sequence[Any], labels: Sequence[Any], cfg: DataConfig, source: str, *,
               skipped: int = 0, label_names: tuple[str, ...] | None = None,
               allow_unlabelled: bool = False, lines: list[int] | None = None) -> RawSplit:
  """The rows of one split as a ``RawSplit``, after the bad-row checks of the module docstring.

  Args:
    texts: ``[N]`` texts (``None`` for a missing one; other values are made strings).
    labels: ``[N]`` labels as read (``None`` for a missing one); each is made a string with its
      surrounding spaces stripped, unless ``label_names`` is given: then they are class ids,
      indices into it (``None`` or -1 for an unlabelled row).
    cfg: ``text_column``, ``label_column`` (for messages) and ``skip_bad_rows``.
    source: where the rows come from, for messages.
    skipped: rows already skipped while reading, added to the count.
    label_names: the data set's own class names (a ``datasets.ClassLabel`` feature).
    allow_unlabelled: a split whose labels are all missing (GLUE's test) comes back empty, its
      source marked "(unlabelled)", instead of being an error.
    lines: ``[N]`` the file line each row starts on, for messages.

  Raises:
    DataError: no rows, or a bad row without ``cfg.skip_bad_rows``.
  """
  if len(texts) == 0:
    raise DataError(f"data: {source} has no rows.")
  names = label_names
  problems: dict[int, str] = {}  # row -> what is wrong with its label
  labels = [_label_of(l, names, cfg, problems, i) for i, l in enumerate(labels)]
  read = list(texts)
  texts = [_text_of(t, problems, i) for i, t in enumerate(read)]
  at = RawSplit([], [], source, lines=lines).where
  bad = [i for i, (t, l) in enumerate(zip(texts, labels))
         if l is None or t is None or i in problems]
  if bad and allow_unlabelled and len(bad) == len(labels):
    return RawSplit([], [], source + " (unlabelled)", 0, names)
  if bad and not cfg.skip_bad_rows:
    i = bad[0]
    what = (problems[i] if i in problems else "missing label" if labels[i] is None else
            "missing text")
    where = f" (line {lines[i]})" if lines is not None and i < len(lines) else ""
    raise DataError(f"data: {source}, row {i + 1}: {what}{where} ({cfg.label_column!r} "
                    f"= {labels[i]!r}, {cfg.text_column!r} = {read[i]!r}); {len(bad)} rows have "
                    "a missing, NaN or infinite label or a missing text"
                    + (" or a bad label list" if cfg.multilabel else
                       " or several labels (multi-label data needs data.multilabel=true)")
                    + ". Fix them, or set data.skip_bad_rows=true to skip such rows (they are "
                    "counted).")
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
  return RawSplit(texts, labels, source, skipped + len(drop), names, lines)


_NAN_REASON = "a label that is not a number (NaN / inf) nor a class name"
_CONTAINERS = (dict, list, tuple, set)


def _text_of(value: Any, problems: dict[int, str], row: int) -> str | None:
  """Row ``row``'s text as ``check_rows`` keeps it: a string (a number made one, bytes decoded
  as UTF-8), or None when missing; a list, an object or bytes that are not UTF-8 put their reason
  in ``problems[row]``."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, (bytes, bytearray)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      problems.setdefault(row, f"a text of bytes that are not UTF-8 ({e.reason} at byte "
                               f"{e.start}); re-encode it as UTF-8")
      return None
  if isinstance(value, _CONTAINERS):
    problems.setdefault(row, f"a text that is a {type(value).__name__}, not a string (a JSON "
                             "list or object in the text column?)")
    return None
  return str(value)


def _label_of(value: Any, names: tuple[str, ...] | None, cfg: DataConfig,
              problems: dict[int, str], row: int):
  """Row ``row``'s label as ``check_rows`` keeps it: a string, or with ``cfg.multilabel`` a tuple
  of distinct strings in the order met; None when missing. A label that cannot be used has its
  reason put in ``problems[row]``.

  Example:
    >>> problems = {}
    >>> _label_of(" a| b|a", None, DataConfig(multilabel=True), problems, 0), problems
    (('a', 'b'), {})
    >>> _label_of(["a", "b"], None, DataConfig(), problems, 1), problems[1][:13]
    (['a', 'b'], '2 labels (a l')
  """
  if isinstance(value, (list, tuple)):
    parts = list(value)
  elif value is None:
    return None
  elif cfg.multilabel and names is None and isinstance(value, str):
    parts = value.split(cfg.label_separator)
  else:
    parts = [value]
  if names is None:
    nested = [p for p in parts if isinstance(p, _CONTAINERS)]
    if nested:
      problems[row] = (f"a label that is a {type(nested[0]).__name__} ({nested[0]!r}), not a "
                       "name or a number (a label list is one flat list of names)")
      return value
    parts = [None if p is None else str(p).strip() for p in parts]
  else:
    parts = [names[p] if p is not None and 0 <= p < len(names) else None for p in parts]
  if not parts or all(not p for p in parts):
    return None
  if not cfg.multilabel:
    if len(parts) > 1:
      problems[row] = (f"{len(parts)} labels (a list); a row of single-label data holds one. "
                       "For multi-label data set data.multilabel=true")
      return value
    label = parts[0]
    if label.lower() in _NOT_A_NUMBER:
      problems[row] = _NAN_REASON
    return label
  if any(not p for p in parts):
    problems[row] = (f"an empty label in the label list {value!r} (labels are separated by "
                     f"{cfg.label_separator!r} in csv / tsv, a JSON list in jsonl)")
  elif any(p.lower() in _NOT_A_NUMBER for p in parts):
    problems[row] = _NAN_REASON
  return tuple(dict.fromkeys(parts))
