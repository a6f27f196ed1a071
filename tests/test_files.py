"""Tests for embedlab.data.files: local csv / tsv / jsonl / parquet files, read without
Hugging Face ``datasets`` and checked line by line."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from embedlab.data import files as files_lib
from embedlab.data import splits as splits_lib
from embedlab.data.rows import DataError
from embedlab.config import DataConfig


def _shared_data_dir() -> pathlib.Path:
  """$EMBEDLAB_DATA, else ../shared/data next to the repository root (the parent of tests/)."""
  env = os.environ.get("EMBEDLAB_DATA")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# Read before the autouse fixture below points EMBEDLAB_DATA at each test's tmp_path.
_REAL_DATA = _shared_data_dir()


def _write(path: pathlib.Path, content: str) -> pathlib.Path:
  if path.suffix == ".gz":
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(content)
  else:
    path.write_text(content, encoding="utf-8")
  return path


def _files(tmp_path, **kwargs) -> DataConfig:
  """A files config; paths relative to tmp_path (made the data directory by the fixture)."""
  return DataConfig(source="files", **kwargs)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("EMBEDLAB_DATA", str(tmp_path))
  monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- files source

_ROWS = [("1", "a good film"), ("0", 'bad, "really" bad'), ("1", "NA"), ("0", "")]


@pytest.mark.parametrize("name", ["d.csv", "d.csv.gz", "d.tsv", "d.tsv.gz", "d.jsonl",
                                  "d.jsonl.gz", "d.parquet"])
def test_files_formats_read_exact_texts_and_labels(tmp_path, name):
  path = tmp_path / name
  if ".csv" in name:
    body = "label,text\n" + "".join(
        f'{l},"{t.replace(chr(34), chr(34) * 2)}"\n' if ("," in t or '"' in t) else f"{l},{t}\n"
        for l, t in _ROWS)
    _write(path, body)
  elif ".tsv" in name:
    _write(path, "label\ttext\n" + "".join(f"{l}\t{t}\n" for l, t in _ROWS))
  elif ".jsonl" in name:
    _write(path, "".join(json.dumps({"text": t, "label": int(l)}) + "\n" for l, t in _ROWS))
  else:
    import pandas as pd  # pylint: disable=import-outside-toplevel
    pd.DataFrame({"text": [t for _, t in _ROWS],
                  "label": [int(l) for l, _ in _ROWS]}).to_parquet(path)
  splits, names = splits_lib.load_splits(_files(tmp_path, train=name), seed=0)
  assert list(splits) == ["train"] and names == ("0", "1")
  assert splits["train"].texts == tuple(t for _, t in _ROWS)
  assert splits["train"].labels.tolist() == [1, 0, 1, 0]
  assert splits["train"].labels.dtype == np.int32


def test_files_format_override_and_unknown_suffix(tmp_path):
  _write(tmp_path / "d.txt", "label\ttext\nx\ta, b\n")
  splits, names = splits_lib.load_splits(_files(tmp_path, train="d.txt", format="tsv"), seed=0)
  assert splits["train"].texts == ("a, b",) and names == ("x",)
  with pytest.raises(DataError, match=r"cannot tell the format of .*d\.txt.*data\.format"):
    splits_lib.load_splits(_files(tmp_path, train="d.txt"), seed=0)


def test_labels_sorted_numerically_or_as_strings(tmp_path):
  _write(tmp_path / "n.tsv", "label\ttext\n10\ta\n2\tb\n-1\tc\n2\td\n")
  splits, names = splits_lib.load_splits(_files(tmp_path, train="n.tsv"), seed=0)
  assert names == ("-1", "2", "10") and splits["train"].labels.tolist() == [2, 1, 0, 1]
  _write(tmp_path / "s.tsv", "label\ttext\nLOC\ta\nABBR\tb\nHUM\tc\n")
  splits, names = splits_lib.load_splits(_files(tmp_path, train="s.tsv"), seed=0)
  assert names == ("ABBR", "HUM", "LOC") and splits["train"].labels.tolist() == [2, 0, 1]


def test_integer_labels_in_any_spelling_are_one_class_and_reported(tmp_path, caplog):
  _write(tmp_path / "t.tsv", "label\ttext\n1\ta\n01\tb\n0\tc\n1.0\td\n+1\te\n00\tf\n10\tg\n")
  _write(tmp_path / "d.tsv", "label\ttext\n1.0\ta\n0.00\tb\n10\tc\n")
  with caplog.at_level("WARNING", logger="embedlab"):
    splits, names = splits_lib.load_splits(_files(tmp_path, train="t.tsv", dev="d.tsv"), seed=0)
  assert names == ("0", "1", "10")
  assert splits["train"].labels.tolist() == [1, 1, 0, 1, 1, 0, 2]
  assert splits["dev"].labels.tolist() == [1, 0, 2]  # dev's 1.0 is train's 1
  note = caplog.text
  assert "compared as integers" in note and "'01' (" in note and "t.tsv, row 2 (line 3)" in note
  assert "'1.0'" in note and "'00'" in note and "is the class 0" in note
  # numbers in JSON: 1 and 1.0 are one class too
  _write(tmp_path / "n.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n'
         '{"text": "c", "label": 0}\n')
  splits, names = splits_lib.load_splits(_files(tmp_path, train="n.jsonl"), seed=0)
  assert names == ("0", "1") and splits["train"].labels.tolist() == [1, 1, 0]


def test_names_are_exact_and_integer_spellings_among_names_are_an_error(tmp_path):
  _write(tmp_path / "ok.tsv", "label\ttext\npos\ta\n1\tb\nPos\tc\n1.5\td\n")
  splits, names = splits_lib.load_splits(_files(tmp_path, train="ok.tsv"), seed=0)
  assert names == ("1", "1.5", "Pos", "pos") and splits["train"].labels.tolist() == [3, 0, 2, 1]
  _write(tmp_path / "mix.tsv", "label\ttext\npos\ta\n1\tb\nneg\tc\n01\td\n")
  with pytest.raises(DataError, match=r"mix\.tsv, row 4 \(line 5\): label '01' and label "
                                      r"'1' \(.*mix\.tsv, row 2 \(line 3\)\) are the same "
                                      r"integer.*not all integers \(e\.g\. '(pos|neg)'\).*"
                                      r"Write each class one way"):
    splits_lib.load_splits(_files(tmp_path, train="mix.tsv"), seed=0)


@pytest.mark.parametrize("name,content,line", [
    ("nan.tsv", "label\ttext\n1\ta\nNaN\tb\n0\tc\n", 3),
    ("nan.csv", "label,text\n1,a\n0,b\nnan,c\n", 4),
    ("inf.tsv", "label\ttext\n1\ta\n-inf\tb\n0\tc\n", 3),
    ("nan.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n'
                  '{"text": "c", "label": 0}\n', 2),
])
def test_nan_labels_are_bad_rows_naming_the_line(tmp_path, name, content, line):
  _write(tmp_path / name, content)
  with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}, row \d+: a label that "
                                      rf"is not a number.* \(line {line}\).*skip_bad_rows"):
    splits_lib.load_splits(_files(tmp_path, train=name), seed=0)
  splits, names = splits_lib.load_splits(_files(tmp_path, train=name, skip_bad_rows=True), seed=0)
  assert names == ("0", "1") and len(splits["train"]) == 2 and splits["train"].skipped == 1


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("row,what", [
    ('{"text": "b", "label": {"name": "pos"}}', r"a label that is a dict \(\{'name': 'pos'\}\)"),
    ('{"text": "b", "label": [["pos"]]}', r"a label that is a list \(\['pos'\]\)"),
    ('{"text": "b", "label": ["pos", {"x": 1}]}', r"a label that is a dict"),
    ('{"text": ["a", "film"], "label": "pos"}', r"a text that is a list, not a string"),
    ('{"text": {"en": "film"}, "label": "pos"}', r"a text that is a dict, not a string"),
])
def test_json_lists_and_objects_where_a_label_or_text_belongs_are_bad_rows(tmp_path, multilabel,
                                                                           row, what):
  _write(tmp_path / "t.jsonl", '{"text": "a", "label": "neg"}\n' + row + "\n")
  with pytest.raises(DataError, match=rf"t[.]jsonl, row 2: {what}.*\(line 2\).*skip_bad_rows"):
    splits_lib.load_splits(_files(tmp_path, train="t.jsonl", multilabel=multilabel), seed=0)
  splits, _ = splits_lib.load_splits(
      _files(tmp_path, train="t.jsonl", multilabel=multilabel, skip_bad_rows=True), seed=0)
  assert len(splits["train"]) == 1 and splits["train"].skipped == 1


def test_texts_read_as_numbers_or_bytes_become_strings_and_bad_bytes_are_bad_rows():
  from embedlab.data.rows import check_rows  # noqa: PLC0415
  raw = check_rows([12, "caf\u00e9".encode(), 1.5], ["a", "b", "a"], DataConfig(), "demo")
  assert raw.texts == ["12", "caf\u00e9", "1.5"]
  with pytest.raises(DataError, match=r"demo, row 2: a text of bytes that are not UTF-8 "
                                      r"\(invalid continuation byte at byte 3\)"):
    check_rows(["a", b"caf\xe9!", "c"], ["a", "b", "a"], DataConfig(), "demo")


def test_line_ends_crlf_and_quoted_carriage_returns_read_as_the_checker_counts(tmp_path):
  _write(tmp_path / "crlf.tsv", "label\ttext\r\n1\ta b\r\n0\tc\r\n")
  splits, names = splits_lib.load_splits(_files(tmp_path, train="crlf.tsv"), seed=0)
  assert splits["train"].texts == ("a b", "c") and names == ("0", "1")
  _write(tmp_path / "q.csv", 'label,text\r\n1,"a\rb"\r\n0,"c\nd"\n1,e\n')
  splits, names = splits_lib.load_splits(_files(tmp_path, train="q.csv"), seed=0)
  assert splits["train"].texts == ("a\rb", "c\nd", "e") and names == ("0", "1")
  assert splits["train"].labels.tolist() == [1, 0, 1]


def test_bare_carriage_returns_never_make_rows_or_classes(tmp_path):
  # datasets' reader would end a row at each bare \r: two such texts made four classes
  _write(tmp_path / "cr.tsv", "label\ttext\n1\tgood\r0 film\n0\tbad\rmovie\n1\tfine\n0\tdull\n")
  with pytest.raises(DataError, match=r"cr\.tsv, line 2: malformed row \(2 bad row\(s\) in "
                                      r"all: lines 2, 3; a bare carriage return \(\\r\) at "
                                      r"character 7"):
    splits_lib.load_splits(_files(tmp_path, train="cr.tsv"), seed=0)
  splits, names = splits_lib.load_splits(_files(tmp_path, train="cr.tsv", skip_bad_rows=True), 0)
  assert names == ("0", "1") and splits["train"].texts == ("fine", "dull")
  assert splits["train"].skipped == 2
  _write(tmp_path / "cr.csv", 'label,text\n1,good\r0 film\n0,"bad\rmovie"\n')
  with pytest.raises(DataError, match=r"cr\.csv, line 2: malformed row.*bare carriage"):
    splits_lib.load_splits(_files(tmp_path, train="cr.csv"), seed=0)
  splits, names = splits_lib.load_splits(_files(tmp_path, train="cr.csv", skip_bad_rows=True), 0)
  assert names == ("0",) and splits["train"].texts == ("bad\rmovie",)


def test_custom_columns(tmp_path):
  _write(tmp_path / "d.csv", "sentence,y,extra\nhello,pos,1\nbye,neg,2\n")
  cfg = _files(tmp_path, train="d.csv", text_column="sentence", label_column="y")
  splits, names = splits_lib.load_splits(cfg, seed=0)
  assert splits["train"].texts == ("hello", "bye") and names == ("neg", "pos")


# ----------------------------------------------------------------------------- real data


def test_sst2_row_and_label_counts(monkeypatch):
  root = _REAL_DATA
  if not (root / "sst2" / "train.tsv.gz").is_file():
    pytest.skip(f"SST-2 not found under {root} (set EMBEDLAB_DATA)")
  monkeypatch.setenv("EMBEDLAB_DATA", str(root))
  cfg = DataConfig(source="files", train="sst2/train.tsv.gz", dev="sst2/dev.tsv.gz",
                   test="sst2/test.tsv.gz")
  splits, names = splits_lib.load_splits(cfg, seed=0)
  assert names == ("0", "1")
  counts = {k: np.bincount(s.labels, minlength=2).tolist() for k, s in splits.items()}
  assert counts == {"train": [29780, 37569], "dev": [428, 444], "test": [912, 909]}
  assert {k: len(s) for k, s in splits.items()} == {"train": 67349, "dev": 872, "test": 1821}
  assert sum(any(ord(c) > 127 for c in t) for t in splits["train"].texts) == 438
  assert "does n't" in " ".join(splits["train"].texts[:2000])



# ----------------------------------------------------------------------------- against datasets


def _random_rows(rng, n, fmt):
  """``n`` (label, text) rows whose texts hold what each format allows: commas, quotes,
  newlines (quoted csv only), spaces at either end, non-ASCII letters, "NA", empty texts."""
  pieces = ["film", "a", "NA", "n/a", "null", "café", "日本", "don't", '"quoted"', "say \"hi\"",
            "1,2", ",", " ", "  lead", "trail  ", "x;y", "#", "'", "\\", "0", "-1.5", "None"]
  if fmt == "csv":
    pieces += ["two\nlines", "a\n\nb"]
  rows = []
  for _ in range(n):
    count = rng.integers(0, 6)
    text = " ".join(rng.choice(pieces, size=count)) if count else ""
    rows.append((str(rng.integers(0, 3)), text))
  return rows


def _write_rows(path, rows, fmt):
  import csv  # noqa: PLC0415
  import io  # noqa: PLC0415
  if fmt == "csv":
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["label", "text"])
    writer.writerows(rows)
    body = out.getvalue()
  elif fmt == "tsv":
    body = "label\ttext\n" + "".join(f"{l}\t{t}\n" for l, t in rows)
  else:
    body = "".join(json.dumps({"text": t, "label": int(l)}) + "\n" for l, t in rows)
  return _write(path, body)


@pytest.mark.parametrize("name", ["r.csv", "r.csv.gz", "r.tsv", "r.tsv.gz", "r.jsonl"])
@pytest.mark.parametrize("seed", [0, 1])
def test_texts_and_labels_match_what_datasets_reads(tmp_path, name, seed):
  """The reader gives the texts and labels that ``datasets.load_dataset`` (pandas for csv and
  tsv, pyarrow for JSON lines) gives for the same file, with the options embedlab used with
  it: strings as they are (no "NA" -> NaN), tsv fields unquoted."""
  import datasets  # noqa: PLC0415 - the reference
  fmt = {"r.csv": "csv", "r.csv.gz": "csv", "r.tsv": "tsv", "r.tsv.gz": "tsv"}.get(name, "json")
  rows = _random_rows(np.random.default_rng(seed), 300, fmt)
  path = _write_rows(tmp_path / name, rows, fmt)
  kwargs = {}
  if fmt in ("csv", "tsv"):
    kwargs = dict(na_filter=False, converters={"text": str, "label": str})
    if fmt == "tsv":
      kwargs.update(delimiter="\t", quoting=3)  # csv.QUOTE_NONE
  datasets.disable_progress_bars()
  ds = datasets.load_dataset("json" if fmt == "json" else "csv", data_files={"train": str(path)},
                             split="train", cache_dir=str(tmp_path / "hf"), **kwargs)
  raw = files_lib.read_file(path, _files(tmp_path, train=name), "train")
  assert raw.texts == ds["text"]
  assert raw.labels == [str(l).strip() for l in ds["label"]]
  assert raw.skipped == 0 and len(raw.texts) == len(rows)
  assert raw.texts == [t for _, t in rows]  # and both are what was written


def test_a_local_files_load_does_not_import_datasets(tmp_path):
  import pyarrow as pa  # noqa: PLC0415
  import pyarrow.parquet as pq  # noqa: PLC0415
  _write(tmp_path / "train.tsv.gz", "label\ttext\n1\ta good film\n0\ta bad film\n1\tfine\n")
  _write(tmp_path / "dev.csv", 'label,text\n1,"good, really"\n0,bad\n')
  _write(tmp_path / "test.jsonl", '{"text": "nice", "label": 1}\n{"text": "dull", "label": 0}\n')
  pq.write_table(pa.table({"text": ["ok", "meh"], "label": [1, 0]}), tmp_path / "more.parquet")
  script = """
import sys
from embedlab.data import cache
from embedlab.config import DataConfig
d = cache.encode_splits(DataConfig(source="files", train="train.tsv.gz", dev="dev.csv",
                                   test="test.jsonl"), 0, cache=False)
assert d.train_ids.shape[0] == 3 and d.dev_labels.tolist() == [1, 0], d
d = cache.encode_splits(DataConfig(source="files", train="more.parquet", dev="dev.csv"), 0,
                        cache=False)
assert d.train_labels.tolist() == [1, 0], d
print("datasets" in sys.modules, "pyarrow.parquet" in sys.modules)
"""
  done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, EMBEDLAB_DATA=str(tmp_path)))
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ["False", "True"], done.stdout  # parquet needs pyarrow only


def test_parquet_class_labels_written_by_datasets_keep_their_names(tmp_path):
  import datasets  # noqa: PLC0415 - writes the file
  features = datasets.Features({"text": datasets.Value("string"),
                                "label": datasets.ClassLabel(names=["neg", "pos"])})
  datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]},
                             features=features).to_parquet(str(tmp_path / "d.parquet"))
  splits, names = splits_lib.load_splits(_files(tmp_path, train="d.parquet"), seed=0)
  assert names == ("neg", "pos") and splits["train"].labels.tolist() == [1, 0, 1]


def test_unreadable_parquet_names_the_file(tmp_path):
  (tmp_path / "d.parquet").write_bytes(b"PAR1 not really parquet")
  with pytest.raises(DataError, match=r"could not read .*d\.parquet as parquet.*data\.format"):
    splits_lib.load_splits(_files(tmp_path, train="d.parquet"), seed=0)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
  for name, body in (("b.tsv", "label\ttext\n1\ta\n0\tb\n"), ("b.csv", "label,text\n1,a\n0,b\n"),
                     ("b.jsonl", '{"label": 1, "text": "a"}\n{"label": 0, "text": "b"}\n')):
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    splits, names = splits_lib.load_splits(_files(tmp_path, train=name), seed=0)
    assert splits["train"].texts == ("a", "b") and names == ("0", "1"), name
