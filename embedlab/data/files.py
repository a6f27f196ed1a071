r"""Local data files: csv, tsv, JSON lines and parquet (each optionally gzipped), one example a
row, checked line by line.

Rows of csv / tsv / jsonl files. A row ends at ``\n`` or ``\r\n``, and nowhere else: a bare
``\r`` (one not followed by ``\n``) in a tsv line, or in a csv line outside quotes, is a bad
row named by file and line (skipped and counted with ``skip_bad_rows``), since the csv reader
would split the row there. Inside a quoted csv field ``\r`` and ``\n`` are text; in a JSON
line ``\r`` is whitespace between values and must be escaped in strings. Bytes that are not
UTF-8, a row whose field count differs from the header's and a quote never closed are bad rows
too; the rows themselves are then checked by ``embedlab.data.rows.check_rows``.

Example:
  >>> import pathlib, tempfile
  >>> from embedlab.data.options import DataConfig
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.tsv"
  >>> _ = path.write_text("label\ttext\n1\ta fine film\n0\tdull\n")
  >>> raw = read_file(path, DataConfig(source="files", train=str(path)), "train")
  >>> raw.texts, raw.labels, raw.lines
  (['a fine film', 'dull'], ['1', '0'], [2, 3])
"""

from __future__ import annotations

import csv
import json
import logging
import pathlib
import re
import tempfile
import warnings
from typing import Any

from embedlab.data import paths
from embedlab.data import sources
from embedlab.data.options import DataConfig
from embedlab.data.rows import DataError, RawSplit

_SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json",
                   ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet"}
_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "parquet": "parquet"}

log = logging.getLogger("embedlab")


def split_names(cfg: DataConfig) -> list[str]:
  """The splits ``cfg`` names a file for, of train, dev and test in that order.

  Example:
    >>> split_names(DataConfig(source="files", train="a.tsv", test="b.tsv"))
    ['train', 'test']
  """
  return [name for name in ("train", "dev", "test") if getattr(cfg, name)]


def read_split(cfg: DataConfig, split: str) -> RawSplit:
  """Reads the file ``cfg`` names for ``split`` (``cfg.train`` for "train"), resolved under the
  data directory (``paths.resolve``)."""
  return read_file(paths.resolve(getattr(cfg, split)), cfg, split)


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


def read_file(path: pathlib.Path, cfg: DataConfig, split: str) -> RawSplit:
  """Reads one csv / tsv / json / parquet file, checked as the module docstring says.

  Args:
    path: the file.
    cfg: ``format``, the columns and ``skip_bad_rows``.
    split: the split it holds (``train``, ``dev``, ``test``), for messages.

  Raises:
    DataError: naming the file, the first bad line, what is wrong and the fix.
  """
  if not path.is_file():
    given = getattr(cfg, split)
    where = (paths.where_data_was_looked_for(given)
             if not pathlib.Path(given).expanduser().is_absolute() else "the path is absolute")
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
    raw = sources.raw_from_dataset(ds, cfg, str(source), skipped + skipped_lines,
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
