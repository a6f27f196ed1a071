r"""Local data files: csv, tsv, JSON lines, fastText's text format and parquet (each optionally
gzipped), one example a row, checked line by line.

Text files are read here with the standard library, in the pass that checks them: Python's
``csv`` module for csv (a quoted field may hold commas, newlines and doubled quotes), a split at
tabs for tsv (quotes are text), ``json.loads`` per line for JSON lines. Fields are kept as the
file spells them: ``NA`` is the text "NA", a label ``01`` the string "01". Parquet files are read
with ``pyarrow.parquet``, imported only then; Hugging Face ``datasets`` is never imported here.

Rows of csv / tsv / jsonl files. A row ends at ``\n`` or ``\r\n``, and nowhere else: a bare
``\r`` (one not followed by ``\n``) in a tsv line, or in a csv line outside quotes, is a bad
row named by file and line (skipped and counted with ``skip_bad_rows``), since most csv readers
would split the row there. Inside a quoted csv field ``\r`` and ``\n`` are text; in a JSON
line ``\r`` is whitespace between values and must be escaped in strings. Bytes that are not
UTF-8, a row whose field count differs from the header's, a quote never closed and a line that
is not a JSON object are bad rows too; the rows themselves are then checked by
``embedlab.data.rows.check_rows``.

fastText's format (``data.format=fasttext``; found by ``auto`` for ``.ft`` files, and for
``.txt`` files whose first line starts with the label prefix): one example a line, its labels
the leading whitespace-separated tokens that start with ``data.label_prefix`` (``__label__``,
fastText's ``-label``), the prefix dropped; the text is the rest of the line. A line without a
label is a bad row; a blank line is skipped. Unlike fastText, which takes a prefixed token
anywhere in the line for a label, one after the first word of text stays text. Several labels
a line need ``data.multilabel``. In csv / tsv a multi-label row's labels are one field split at
``data.label_separator`` (``pos|funny``), in JSON lines a JSON list (``["pos", "funny"]``).

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
import gzip
import json
import logging
import pathlib
import re

from embedlab.data import paths
from embedlab.data.options import DataConfig
from embedlab.data.rows import DataError, RawSplit, check_columns, check_rows

_SUFFIX_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json",
                   ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet", ".ft": "fasttext"}
_TOKEN = re.compile(r"\s*(\S+)")

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


def _file_format(path: pathlib.Path, fmt: str, prefix: str = "__label__") -> str:
  if fmt != "auto":
    return fmt
  suffixes = [s.lower() for s in path.suffixes]
  if suffixes and suffixes[-1] == ".gz":
    suffixes = suffixes[:-1]
  found = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
  if found is None and suffixes and suffixes[-1] == ".txt" and _starts_with(path, prefix):
    found = "fasttext"
  if found is None:
    raise DataError(f"data: cannot tell the format of {path} from its name (known endings: "
                    f"{', '.join(sorted(_SUFFIX_FORMATS))}, optionally + .gz; a .txt file whose "
                    f"first line starts with {prefix!r} is fastText's); set "
                    "data.format=csv|tsv|json|parquet|fasttext.")
  return found


def _starts_with(path: pathlib.Path, prefix: str) -> bool:
  """Whether the first non-blank line of ``path`` (gzipped when named ``.gz``) starts with
  ``prefix``; reads its first 64 KiB only."""
  try:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
      head = f.read(1 << 16).decode("utf-8", errors="replace").lstrip("\ufeff")
  except (OSError, EOFError):
    return False  # reading the file reports it
  return head.lstrip().startswith(prefix)


def read_file(path: pathlib.Path, cfg: DataConfig, split: str) -> RawSplit:
  """Reads one csv / tsv / json / parquet file, checked as the module docstring says.

  Text files are parsed here, by the same pass that checks them (Python's ``csv`` module for
  csv, a split at tabs for tsv, ``json.loads`` for JSON lines); parquet files through
  ``pyarrow.parquet``, imported then.

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
  fmt = _file_format(path, cfg.format, cfg.label_prefix)
  if fmt == "parquet":
    return _read_parquet(path, cfg)
  columns, records, lines, skipped = _read_text_rows(path, fmt, cfg)
  if fmt == "fasttext":
    return check_rows([text for _, text in records], [labels for labels, _ in records], cfg,
                      str(path), skipped=skipped, lines=lines)
  check_columns(columns, cfg, str(path))
  if fmt == "json":
    texts = [r.get(cfg.text_column) for r in records]
    labels = [r.get(cfg.label_column) for r in records]
  else:
    text_at, label_at = columns.index(cfg.text_column), columns.index(cfg.label_column)
    texts = [r[text_at] for r in records]
    labels = [r[label_at] for r in records]
  return check_rows(texts, labels, cfg, str(path), skipped=skipped, lines=lines)


def import_readers(cfg: DataConfig) -> None:
  """Imports what reading ``cfg``'s files needs beyond the standard library (``pyarrow.parquet``
  for parquet files), so processes forked afterwards share it instead of each importing it."""
  for split in split_names(cfg):
    try:
      fmt = _file_format(paths.resolve(getattr(cfg, split)), cfg.format, cfg.label_prefix)
    except DataError:
      continue  # reading the file reports it
    if fmt == "parquet":
      import pyarrow.parquet  # noqa: F401, PLC0415  pylint: disable=import-outside-toplevel
      return


def _read_parquet(path: pathlib.Path, cfg: DataConfig) -> RawSplit:
  """The text and label columns of a parquet file (optionally gzipped); a label column that
  ``datasets`` wrote as a ``ClassLabel`` keeps its class names."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  source = pa.BufferReader(_read_bytes(path)) if path.suffix.lower() == ".gz" else path
  try:
    parquet = pq.ParquetFile(source)
    check_columns(parquet.schema_arrow.names, cfg, str(path))
    table = parquet.read(columns=[cfg.text_column, cfg.label_column])
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f"data: could not read {path} as parquet ({type(e).__name__}: {e}). Check "
                    "the file, or set data.format to the right one of csv, tsv, json, "
                    "parquet.") from e
  return check_rows(table.column(cfg.text_column).to_pylist(),
                    table.column(cfg.label_column).to_pylist(), cfg, str(path),
                    label_names=_class_names(parquet.schema_arrow.metadata, cfg.label_column))


def _class_names(metadata: dict[bytes, bytes] | None, column: str) -> tuple[str, ...] | None:
  """The class names of ``column`` when ``datasets`` wrote it as a ``ClassLabel`` or a list of
  them (its features travel in the parquet metadata under ``huggingface``)."""
  try:
    features = json.loads(metadata[b"huggingface"])["info"]["features"]
    feature = features[column]
    if isinstance(feature, list) and len(feature) == 1:  # [ClassLabel]: a list of labels
      feature = feature[0]
    elif feature.get("_type") in ("List", "Sequence", "LargeList"):  # multi-label
      feature = feature["feature"]
    if feature.get("_type") == "ClassLabel":
      return tuple(feature["names"])
  except (TypeError, KeyError, ValueError, AttributeError):
    pass
  return None


def _read_bytes(path: pathlib.Path) -> bytes:
  """The file's bytes, decompressed when its name ends in ``.gz``."""
  raw = path.read_bytes()
  if path.suffix.lower() != ".gz":
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise DataError(f"data: {path} is not a readable gzip file ({e}); it may be truncated. "
                    "Download or compress it again.") from e


def _read_text_rows(path: pathlib.Path, fmt: str, cfg: DataConfig):
  """Reads and checks a csv / tsv / jsonl file line by line: bytes that are not UTF-8, rows
  whose field count differs from the header's, quotes never closed, bare carriage returns,
  lines that are not JSON objects.

  Returns ``(columns, records, start line of each record, bad rows skipped)``: a record is a
  list of fields (csv, tsv) or a dict (JSON lines); bad rows are skipped only with
  ``cfg.skip_bad_rows``.

  Raises:
    DataError: naming the file, the first bad line, what is wrong and the fix.
  """
  raw = _read_bytes(path)
  if not raw.strip() and fmt == "fasttext":
    raise DataError(f"data: {path} is empty; expected fastText lines ({cfg.label_prefix}NAME "
                    "then the text).")
  if not raw.strip():
    raise DataError(f"data: {path} is empty; expected a {fmt} file with a header row and a "
                    f"'{cfg.text_column}' and a '{cfg.label_column}' column.")
  texts, bad = decode_lines(raw)  # bad: 1-based line -> reason
  if fmt == "json":
    columns, records, rows = _json_rows(texts, bad)
    bad_lines = {i: {i} for i in bad}
  elif fmt == "fasttext":
    columns, records, rows = _fasttext_rows(texts, bad, cfg.label_prefix)
    bad_lines = {i: {i} for i in bad}
  elif fmt == "tsv":
    columns, records, rows, bad_lines = _tsv_rows(texts, bad)
  else:
    columns, records, rows, bad_lines = _csv_rows(texts, bad)
  skipped = 0
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
    keep = [k for k, line in enumerate(rows) if line not in drop]
    records, rows, skipped = [records[k] for k in keep], [rows[k] for k in keep], len(numbers)
  if columns is None and fmt == "json":
    raise DataError(f"data: {path} has no data rows (no line holds a JSON object).")
  if columns is None:
    raise DataError(f"data: {path} is empty; expected a {fmt} file with a header row.")
  if not records:
    raise DataError(f"data: {path} has no data rows (only a header?).")
  return columns, records, rows, skipped


def decode_lines(raw: bytes) -> tuple[list[str], dict[int, str]]:
  """The lines of ``raw`` (split at ``\\n``) as UTF-8 text, a leading byte order mark dropped,
  and ``{1-based line: reason}`` for the lines that are not UTF-8 (read as "").

  Example:
    >>> decode_lines(b"\\xef\\xbb\\xbfa\\ncaf\\xe9\\n")[0], decode_lines(b"a\\ncaf\\xe9")[1][2][:38]
    (['a', '', ''], 'bytes that are not UTF-8 (0xe9 at byte')
  """
  texts, bad = [], {}
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
  if texts[0].startswith("\ufeff"):  # a byte order mark, as some editors write
    texts[0] = texts[0][1:]
  return texts, bad


def _json_rows(texts: list[str], bad: dict[int, str]):
  """``(columns, records, start line of each)`` of a JSON-lines file split into lines; fills
  ``bad`` with the lines that are not JSON objects. The columns are every key, in the order
  first met; ``None`` when there is no record."""
  records, rows = [], []
  for i, t in enumerate(texts, 1):
    if not t.strip() or i in bad:
      continue
    try:
      record = json.loads(t)
    except ValueError:
      record = None
    if isinstance(record, dict):
      records.append(record)
      rows.append(i)
    else:
      bad[i] = "each line must hold one JSON object"
  columns = list(dict.fromkeys(key for record in records for key in record)) if records else None
  return columns, records, rows


def _fasttext_rows(texts: list[str], bad: dict[int, str], prefix: str):
  """``(columns, records, start line of each)`` of a fastText file split into lines, a record
  being ``(labels, text)`` (labels without the prefix); fills ``bad`` with the lines that hold
  no label. Blank lines are skipped; ``columns`` is ``["label", "text"]``.

  Example:
    >>> bad = {}
    >>> _fasttext_rows(["__label__a __label__b  a fine film ", "", "no label"], bad, "__label__")
    (['label', 'text'], [(['a', 'b'], 'a fine film')], [1])
    >>> bad[3][:8]
    'no label'
  """
  records, rows = [], []
  for i, line in enumerate(texts, 1):
    if not line.strip() or i in bad:
      continue
    labels, text = split_labels(line, prefix)
    if not labels:
      bad[i] = (f"no label: a fastText line starts with its label(s), {prefix}NAME, then the "
                f"text (this one starts {line.strip()[:40]!r}); add the label, or set "
                "data.label_prefix to the prefix the file uses")
      continue
    records.append((labels, text))
    rows.append(i)
  return ["label", "text"], records, rows


def split_labels(line: str, prefix: str = "__label__") -> tuple[list[str], str]:
  """A fastText line's leading labels (``prefix`` left out) and the text after them.

  Example:
    >>> split_labels("__label__a __label__b  a fine film ")
    (['a', 'b'], 'a fine film')
    >>> split_labels("a film __label__a")
    ([], 'a film __label__a')
  """
  labels, pos = [], 0
  while (m := _TOKEN.match(line, pos)) and m.group(1).startswith(prefix):
    labels.append(m.group(1)[len(prefix):])
    pos = m.end()
  return labels, line[pos:].strip()


def _tsv_rows(texts: list[str], bad: dict[int, str]):
  """``(header fields, records, start line of each good data row, {start line of a bad row:
  its lines})`` of a tsv file split into lines (``None`` for the header when there is none);
  fills ``bad`` with the reasons. Fields are the text between tabs, quotes included."""
  if any("\r" in t for t in texts):
    for i, t in enumerate(texts, 1):
      at = _bare_cr(t)
      if at is not None and i not in bad:
        bad[i] = _BARE_CR_REASON.format(at=at)
  bad_lines = {i: {i} for i in bad}
  header_at = next((i for i, t in enumerate(texts, 1) if t.strip() and i not in bad), None)
  if header_at is None:
    return None, [], [], bad_lines
  header = texts[header_at - 1].removesuffix("\r").split("\t")
  width = len(header)
  records, rows = [], []
  for i in range(header_at + 1, len(texts) + 1):
    t = texts[i - 1]
    if i in bad or not t.strip():
      continue
    fields = t.removesuffix("\r").split("\t")
    if len(fields) != width:
      bad[i] = (f"{len(fields)} tab-separated fields, the header has {width} "
                f"({texts[header_at - 1].strip()!r})")
      bad_lines[i] = {i}
    else:
      records.append(fields)
      rows.append(i)
  return header, records, rows, bad_lines


def _csv_rows(texts: list[str], bad: dict[int, str]):
  """``(header fields, records, start line of each good data row, {start line of a bad row:
  its lines})`` of a csv file split into lines (``None`` for the header when there is none);
  fills ``bad`` with the reasons. A quoted field may hold commas, newlines and ``""``."""
  bad_lines = {i: {i} for i in bad}
  header_at = next((i for i, t in enumerate(texts, 1) if t.strip() and i not in bad), None)
  if header_at is None:
    return None, [], [], bad_lines
  header, records, rows, start = None, [], [], header_at
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
        if header is None:
          header = record
          continue
        if len(record) != len(header):
          bad[first] = f"{len(record)} comma-separated fields, the header has {len(header)}"
          bad_lines[first] = set(range(first, line + 1))
        elif any(i in bad for i in range(first, line + 1)):
          bad_lines.setdefault(first, set()).update(range(first, line + 1))
        else:
          records.append(record)
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
  return header, records, rows, bad_lines


# A row ends at "\n" (a "\r" just before it is part of the line end). A bare "\r" anywhere else
# would end the row for most csv readers (pandas, pyarrow, a spreadsheet) but not for the line
# checks: outside the quotes of a csv field it is a bad row.
_BARE_CR_REASON = ("a bare carriage return (\\r) at character {at} of the line, which the csv / "
                   "tsv reader would take for the end of the row; remove it or replace it with a "
                   "space (a file with old Mac line ends: tr '\\r' '\\n' < FILE > NEW)")


def _bare_cr(line: str) -> int | None:
  """The 1-based position of the first carriage return of ``line`` that does not end it."""
  at = line.find("\r")
  return None if at < 0 or at == len(line) - 1 else at + 1
