"""A split's rows: ``Split`` (labels as ids), ``RawSplit`` (as read, labels still text), and the
checks every source applies to the rows it reads.

A row with a missing or empty label, a ``NaN`` / ``inf`` label (in any case or sign), a missing
text or a text over ``MAX_TEXT_CHARS`` is a bad row, named by source, row and file line: an
error, or with ``data.skip_bad_rows`` skipped and counted. An empty text is kept (it encodes to
padding only) with a warning, or skipped with ``skip_bad_rows``.

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
  if names is None:
    labels = [None if l is None else str(l).strip() for l in labels]
    labels = [l if l else None for l in labels]
  else:
    labels = [names[l] if l is not None and 0 <= l < len(names) else None for l in labels]
  texts = list(texts)
  at = RawSplit([], [], source, lines=lines).where
  bad = [i for i, (t, l) in enumerate(zip(texts, labels))
         if l is None or t is None or l.lower() in _NOT_A_NUMBER]
  if bad and allow_unlabelled and len(bad) == len(labels):
    return RawSplit([], [], source + " (unlabelled)", 0, names)
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
  return RawSplit(texts, labels, source, skipped + len(drop), names, lines)
