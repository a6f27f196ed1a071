"""Multi-label data and training: fastText's input format, label lists in csv / tsv / jsonl, the
one-vs-all loss and precision / recall at k against numpy, a small run that learns, predict."""

import io
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import embedlab as el
from embedlab import cli
from embedlab import config as config_lib
from embedlab.config import Config
from embedlab.data import files
from embedlab.data.cache import encode_splits
from embedlab.data.options import DataConfig
from embedlab.data.rows import DataError
from embedlab.data.splits import load_splits
from embedlab.run import steps
from embedlab.run import train

TOPICS = ("red", "green", "blue", "gold")


def _read(path, **kw):
  cfg = DataConfig(source="files", train=str(path), **kw)
  return files.read_file(pathlib.Path(path), cfg, "train")


# fastText's format


def test_fasttext_lines_give_labels_and_text(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text("__label__pos __label__funny  a fine , funny film \n\n"
                  "__label__neg\tdull\r\n__label__neg __label__pos __label__neg mixed\n")
  raw = _read(path, multilabel=True)
  assert raw.texts == ["a fine , funny film", "dull", "mixed"]
  assert raw.labels == [("pos", "funny"), ("neg",), ("neg", "pos")]
  assert raw.lines == [1, 3, 4]
  splits, names = load_splits(DataConfig(source="files", train=str(path), multilabel=True), 0)
  assert names == ("funny", "neg", "pos")
  np.testing.assert_array_equal(splits["train"].labels,
                                [[1, 0, 1], [0, 1, 0], [0, 1, 1]])
  assert splits["train"].labels.dtype == np.float32


def test_fasttext_prefix_is_configurable_and_a_later_prefixed_word_is_text(tmp_path):
  path = tmp_path / "d.ft"
  path.write_text("#a #b text with #c inside\n")
  raw = _read(path, multilabel=True, label_prefix="#")
  assert raw.labels == [("a", "b")] and raw.texts == ["text with #c inside"]


def test_a_fasttext_line_without_a_label_is_named_by_line(tmp_path):
  path = tmp_path / "train.ft"
  path.write_text("__label__a good\n__label__b bad\nforgot the label\n")
  with pytest.raises(DataError, match=r"train\.ft, line 3: malformed row .*no label.*"
                                      r"__label__NAME"):
    _read(path)
  raw = _read(path, skip_bad_rows=True)
  assert raw.texts == ["good", "bad"] and raw.skipped == 1


def test_a_fasttext_line_with_labels_only_has_an_empty_text(tmp_path, caplog):
  path = tmp_path / "train.txt"
  path.write_text("__label__a good\n__label__b\n")
  raw = _read(path)
  assert raw.texts == ["good", ""] and raw.labels == ["a", "b"]
  assert "empty text" in caplog.text
  assert _read(path, skip_bad_rows=True).texts == ["good"]


def test_several_labels_without_multilabel_are_a_bad_row(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text("__label__a good\n__label__a __label__b both\n")
  with pytest.raises(DataError, match=r"row 2: 2 labels .*\(line 2\).*data\.multilabel=true"):
    _read(path)


def test_single_label_fasttext_trains_on_the_same_data_as_a_tsv(tmp_path):
  rows = [("pos", "a fine film"), ("neg", "dull and slow"), ("pos", "fine fine"),
          ("neg", "slow")]
  ft, tsv = tmp_path / "d.txt.gz", tmp_path / "d.tsv"
  import gzip
  ft.write_bytes(gzip.compress("".join(f"__label__{l} {t}\n" for l, t in rows).encode()))
  tsv.write_text("label\ttext\n" + "".join(f"{l}\t{t}\n" for l, t in rows))
  a = encode_splits(DataConfig(source="files", train=str(ft)), 0, cache=False)
  b = encode_splits(DataConfig(source="files", train=str(tsv)), 0, cache=False)
  assert a.label_names == b.label_names == ("neg", "pos")
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  np.testing.assert_array_equal(a.train_ids, b.train_ids)
  assert a.train_labels.dtype == np.int32


def test_a_txt_file_that_is_not_fasttext_is_not_guessed(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("label\ttext\n1\tx\n")
  with pytest.raises(DataError, match="cannot tell the format.*fastText"):
    _read(path)


# label lists in csv / tsv / jsonl


def test_label_lists_in_jsonl_csv_and_tsv(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "x", "label": ["p", "q"]}\n'
                                    '{"text": "y", "label": "q"}\n')
  (tmp_path / "a.csv").write_text('label,text\n"p|q",x\nq,y\n')
  (tmp_path / "a.tsv").write_text("label\ttext\np ; q\tx\nq\ty\n")
  for name, extra in (("a.jsonl", {}), ("a.csv", {}), ("a.tsv", {"label_separator": ";"})):
    raw = _read(tmp_path / name, multilabel=True, **extra)
    assert raw.labels == [("p", "q"), ("q",)], name
  # without multilabel the csv field is one class name, and a JSON list of two a bad row
  assert _read(tmp_path / "a.csv").labels == ["p|q", "q"]
  with pytest.raises(DataError, match=r"a\.jsonl, row 1: 2 labels .*\(line 1\)"):
    _read(tmp_path / "a.jsonl")


def test_an_empty_label_in_a_list_is_a_bad_row(tmp_path):
  (tmp_path / "a.csv").write_text("label,text\np|q,x\np||q,y\n")
  with pytest.raises(DataError, match=r"row 2: an empty label in the label list 'p\|\|q' "
                                      r"\(labels are separated by '\|'.*\(line 3\)"):
    _read(tmp_path / "a.csv", multilabel=True)
  assert _read(tmp_path / "a.csv", multilabel=True, skip_bad_rows=True).labels == [("p", "q")]


def test_a_dev_label_unknown_to_train_is_named(tmp_path):
  (tmp_path / "t.txt").write_text("__label__a x\n__label__b y\n")
  (tmp_path / "d.txt").write_text("__label__a x\n__label__a __label__c y\n")
  cfg = DataConfig(source="files", train=str(tmp_path / "t.txt"), dev=str(tmp_path / "d.txt"),
                   multilabel=True)
  with pytest.raises(DataError, match=r"d\.txt, row 2 \(line 2\): label 'c' does not occur"):
    load_splits(cfg, 0)
  import dataclasses
  splits, _ = load_splits(dataclasses.replace(cfg, skip_bad_rows=True), 0)
  np.testing.assert_array_equal(splits["dev"].labels, [[1, 0]])
  assert splits["dev"].skipped == 1


def test_integer_labels_are_compared_as_integers_in_lists(tmp_path):
  (tmp_path / "t.csv").write_text("label,text\n1|02,x\n2,y\n")
  splits, names = load_splits(DataConfig(source="files", train=str(tmp_path / "t.csv"),
                                         multilabel=True), 0)
  assert names == ("1", "2")
  np.testing.assert_array_equal(splits["train"].labels, [[1, 1], [0, 1]])


# the loss and the metrics against numpy


class _Lookup:
  """A stand-in model: each row's logits are ``params[first id]``."""

  @staticmethod
  def apply(params, ids, train=False):
    del train
    return params[ids[:, 0]]


def _np_bce(logits, labels):
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1)


def test_ova_loss_and_precision_recall_at_k_match_numpy():
  rng = np.random.default_rng(0)
  n, c, k = 11, 6, 3
  logits = rng.normal(size=(n, c)).astype(np.float32) * 3
  labels = (rng.random((n, c)) < 0.3).astype(np.float32)
  labels[0] = 0  # a row without labels counts in precision only
  labels[1, :] = 1
  ids = np.arange(n, dtype=np.int32)[:, None]
  eval_step = steps.make_eval_step(_Lookup(), k=k)
  out = steps.evaluate(eval_step, jnp.asarray(logits), ids, labels, batch_size=4)
  order = np.argsort(-logits, axis=1)
  hits1 = labels[np.arange(n), order[:, 0]].sum()
  hitsk = np.take_along_axis(labels, order[:, :k], 1).sum()
  gold = labels.sum()
  assert out["count"] == n
  assert out["loss"] == pytest.approx(_np_bce(logits, labels).mean(), rel=1e-5)
  assert out["accuracy"] == out["precision_at_1"] == pytest.approx(hits1 / n)
  assert out["recall_at_1"] == pytest.approx(hits1 / gold)
  assert out[f"precision_at_{k}"] == pytest.approx(hitsk / (n * k))
  assert out[f"recall_at_{k}"] == pytest.approx(hitsk / gold)


def test_hand_worked_precision_and_recall():
  logits = np.array([[3., 2., 1.], [1., 2., 3.]], np.float32)
  labels = np.array([[1, 0, 1], [1, 0, 0]], np.float32)
  out = steps.evaluate(steps.make_eval_step(_Lookup(), k=2), jnp.asarray(logits),
                       np.array([[0], [1]], np.int32), labels, batch_size=2)
  # row 0: top-1 a (hit), top-2 a, b (1 hit); row 1: top-1 c (miss), top-2 c, b (no hit)
  assert (out["precision_at_1"], out["recall_at_1"]) == (0.5, pytest.approx(1 / 3))
  assert (out["precision_at_2"], out["recall_at_2"]) == (0.25, pytest.approx(1 / 3))


def test_single_label_evaluation_keeps_its_keys():
  logits = np.array([[3., 2.], [1., 2.]], np.float32)
  out = steps.evaluate(steps.make_eval_step(_Lookup(), k=2), jnp.asarray(logits),
                       np.array([[0], [1]], np.int32), np.array([0, 0], np.int32), 2)
  assert sorted(out) == ["accuracy", "count", "loss"] and out["accuracy"] == 0.5


# a small run that learns


def _write_multilabel(path, n, seed):
  """Texts of one or two topics' words (plus shared noise); the labels are the topics."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    topics = rng.choice(len(TOPICS), size=rng.integers(1, 3), replace=False)
    words = [f"{TOPICS[rng.choice(topics)]}{rng.integers(8)}" for _ in range(6)]
    words += [f"noise{rng.integers(30)}" for _ in range(4)]
    rng.shuffle(words)
    lines.append(" ".join(f"__label__{TOPICS[t]}" for t in topics) + " " + " ".join(words))
  path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("multilabel")
  _write_multilabel(d / "train.txt", 600, 0)
  _write_multilabel(d / "dev.txt", 100, 1)
  _write_multilabel(d / "test.txt", 200, 2)
  return d


def _config(d, *extra):
  base = Config(name="multilabel")
  return config_lib.apply_overrides(base, [
      "data.source=files", f"data.train={d / 'train.txt'}", f"data.dev={d / 'dev.txt'}",
      f"data.test={d / 'test.txt'}", "data.multilabel=true", "data.max_len=16",
      "model.features=16", "train.batch_size=32", "train.num_epochs=4", "train.eval_every=40",
      "train.log_every=20", "train.eval_k=2", "train.progress=false", "train.plots=false",
      "data.workers=1", *extra])


@pytest.mark.parametrize("tables", ["dense", "sparse_adagrad", "sparse_sgd"])
def test_a_multilabel_run_learns_in_every_step_kind(data_dir, tmp_path, tables):
  lr = {"dense": "optim.learning_rate=0.05", "sparse_adagrad": "optim.learning_rate=0.3",
        "sparse_sgd": "optim.learning_rate=2.0"}[tables]
  extra = [f"optim.tables={tables}", lr]
  if tables == "sparse_sgd":  # the scatter-add step, on ragged batches, 4 steps a dispatch
    extra += ["optim.name=sgd", "train.ragged_batches=true", "train.steps_per_dispatch=4"]
  cfg = _config(data_dir, *extra)
  results = train.train(cfg, tmp_path / "run", echo=lambda *_: None)
  assert results["table_update_path"] == {"dense": "dense", "sparse_adagrad": "dedup",
                                          "sparse_sgd": "scatter_add"}[tables]
  # chance: the top label is one of the row's 1.5 labels of 4 in 0.375 of rows
  assert results["test_precision_at_1"] == results["test_accuracy"] > 0.9
  assert results["test_recall_at_2"] > 0.9 and results["dev_precision_at_1"] > 0.9
  assert 0.5 < results["test_precision_at_2"] <= 0.76  # 1.5 labels a row: at most 0.75
  events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert any(e.get("split") == "test" and "recall_at_2" in e for e in events)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp("mlrun") / "run"
  train.train(_config(data_dir, "optim.learning_rate=0.05"), path, echo=lambda *_: None)
  return path


def test_predict_gives_sigmoid_probabilities_above_the_threshold(run_dir):
  run = el.load_run(run_dir)
  texts = ["red1 red2 red3 blue4 blue5 blue6", "green1 green2 green3 green4"]
  probs = run.probabilities(texts)
  assert probs.shape == (2, 4) and probs.sum(axis=1)[0] > 1.2  # sigmoids, not a softmax
  two = run.predict(texts, k=4, threshold=0.5)
  assert {n for n, _ in two[0]} == {"red", "blue"} and [n for n, _ in two[1]] == ["green"]
  top = run.predict(texts, k=1)
  assert [len(t) for t in top] == [1, 1] and top[1][0][0] == "green"
  names = list(run.label_names)
  assert top[1][0][1] == pytest.approx(float(probs[1, names.index("green")]))
  assert all(p >= 0.5 for row in two for _, p in row)
  above_red = float(probs[0, names.index("red")]) + 1e-6
  assert all(p >= above_red for _, p in run.predict(texts, k=4, threshold=above_red)[0])


def test_cli_predict_reads_standard_input_with_k_and_threshold(run_dir, capsys, monkeypatch):
  monkeypatch.setattr("sys.stdin", io.StringIO("red1 red2 gold3 gold4 gold5\n\nblue1 blue2\n"))
  assert cli.main(["predict", str(run_dir), "--k", "3", "--threshold", "0.5"]) == 0
  out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [o["text"] for o in out] == ["red1 red2 gold3 gold4 gold5", "blue1 blue2"]
  assert {l["label"] for l in out[0]["labels"]} == {"red", "gold"}
  assert out[1]["label"] == "blue"


def test_eval_of_a_multilabel_run_reports_precision_and_recall(run_dir, capsys):
  results = json.loads((run_dir / "results.json").read_text())
  assert cli.main(["eval", str(run_dir)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["precision_at_2"] == pytest.approx(results["test_precision_at_2"])
  assert out["recall_at_1"] == pytest.approx(results["test_recall_at_1"])


def _class_label_lists():
  import datasets  # noqa: PLC0415 - writes the data
  features = datasets.Features({"text": datasets.Value("string"),
                                "labels": datasets.List(datasets.ClassLabel(names=["x", "y",
                                                                                   "z"]))})
  return datasets.Dataset.from_dict({"text": ["a b", "c", "d e"], "labels": [[2, 0], [1], [0]]},
                                    features=features)


def test_a_list_of_class_labels_keeps_its_names_from_disk_and_parquet(tmp_path):
  # datasets' multi-label column, List(ClassLabel): the labels are class ids into its names
  ds = _class_label_lists()
  ds.save_to_disk(str(tmp_path / "saved"))
  ds.to_parquet(str(tmp_path / "d.parquet"))
  for cfg in (DataConfig(source="disk", path=str(tmp_path / "saved"), label_column="labels",
                         multilabel=True),
              DataConfig(source="files", train=str(tmp_path / "d.parquet"),
                         label_column="labels", multilabel=True)):
    splits, names = load_splits(cfg, 0)
    assert names == ("x", "y", "z"), cfg.source
    labels = splits["train"].labels
    rows = {t: tuple(names[j] for j in np.flatnonzero(l)) for t, l in
            zip(splits["train"].texts, labels)}
    assert rows == {"a b": ("x", "z"), "c": ("y",), "d e": ("x",)}, cfg.source
