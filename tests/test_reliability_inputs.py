"""Fault injection on inputs: bad data files, bad ids and shapes, non-finite numbers, bad
configs and configs too big for the device. Each must fail with a message that names what was
wrong, where, and the fix - or, where the config says to skip bad rows, be counted - and never
be trained on silently."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import embedlab as el
from embedlab import config as config_lib
from embedlab.data import cache as cache_lib
from embedlab.data.rows import DataError
from embedlab.data import splits as splits_lib
from embedlab.run import model_args
from embedlab.run import resources
from embedlab.run import build as build_lib
from embedlab.run import steps as steps_lib
from embedlab.run import train
from embedlab.config import Config, DataConfig, ModelConfig


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("EMBEDLAB_DATA", str(tmp_path))
  monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))


def _write(path: pathlib.Path, content: str | bytes) -> pathlib.Path:
  raw = content.encode("utf-8") if isinstance(content, str) else content
  path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
  return path


# ----------------------------------------------------------------------------- data files

GOOD_TSV = "label\ttext\n1\ta good film\n0\ta bad film\n"
# name -> (content, the line the error must name, words the message must hold, rows kept when
# skipping)
BAD_FILES = {
    "extra_field.csv": ("label,text\n1,good\n0,one,two\n1,fine\n", 3, ["3 comma-separated"], 2),
    "missing_field.tsv": ("label\ttext\n1\tgood\n0\n1\tfine\n", 3, ["1 tab-separated"], 2),
    "extra_field.tsv.gz": ("label\ttext\n1\tgood\n1\tfine\n0\ta\tb\n", 4, ["3 tab-separated"], 2),
    "unclosed_quote.csv": ('label,text\n1,good\n0,"never closed\n1,fine\n', 3, ["quot"], 2),
    "text_after_quote.csv": ('label,text\n1,"quoted"tail\n0,fine\n', 2, ["quot"], 1),
    "latin1.tsv": (b"label\ttext\n1\tgood\n0\tcaf\xe9\n", 3, ["not UTF-8", "0xe9", "iconv"], 1),
    "latin1.jsonl.gz": (b'{"text": "good", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', 2,
                        ["not UTF-8"], 1),
    "latin1_header.csv": (b"label,t\xffxt\n1,good\n", 1, ["not UTF-8"], None),
    "broken_json.jsonl": ('{"text": "good", "label": 1}\n{"text": "b", "label"\n', 2,
                          ["malformed JSON row"], 1),
    "not_an_object.jsonl": ('{"text": "good", "label": 1}\n[1, 2]\n', 2, ["JSON object"], 1),
    "missing_label.tsv": ("label\ttext\n1\tgood\n\tno label\n", 3, ["missing label"], 1),
    "null_label.jsonl": ('{"text": "good", "label": 1}\n{"text": "x", "label": null}\n', 2,
                         ["missing label"], 1),
    "bare_cr.tsv": ("label\ttext\n1\tgood\n0\tbad\rmovie\n1\tfine\n", 3,
                    ["carriage return", "character 6"], 2),
    "bare_cr.csv.gz": ('label,text\n1,"quoted\rok"\n0,bad\rmovie\n1,fine\n', 3,
                       ["carriage return"], 2),
    "nan_label.tsv": ("label\ttext\n1\tgood\nnan\tx\n", 3, ["not a number"], 1),
    "very_long_text.tsv": ("label\ttext\n1\tgood\n0\t" + "w " * 600_000 + "\n", 3,
                           ["1,200,000 characters", "limit"], 1),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_rows_name_file_line_and_fix_or_are_skipped_and_counted(tmp_path, caplog, name):
  content, line, words, kept = BAD_FILES[name]
  _write(tmp_path / name, content)
  with pytest.raises(DataError) as e:
    splits_lib.load_splits(DataConfig(source="files", train=name), seed=0)
  msg = str(e.value)
  assert name in msg and f"line {line}" in msg, msg
  for word in words:
    assert word in msg, msg
  assert "skip_bad_rows=true" in msg or "iconv" in msg, msg
  if kept is None:  # a bad header cannot be skipped: it names every column
    return
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    cfg = DataConfig(source="files", train=name, skip_bad_rows=True)
    splits, _ = splits_lib.load_splits(cfg, 0)
  train_split = splits["train"]
  assert len(train_split) == kept and train_split.skipped >= 1
  assert "skipped" in caplog.text and name in caplog.text
  assert all(len(t) < 1000 for t in train_split.texts)


@pytest.mark.parametrize("name,content,match", [
    ("empty.tsv", "", r"empty\.tsv is empty"),
    ("empty.jsonl.gz", "", r"empty\.jsonl\.gz is empty"),
    ("blank_lines.csv", "\n\n  \n", r"blank_lines\.csv is empty"),
    ("header_only.tsv", "label\ttext\n", r"header_only\.tsv has no data rows"),
    ("no_text_column.csv", "sentence,label\nhi,1\n", r"no column 'text'.*data\.text_column"),
    ("no_label_column.jsonl", '{"text": "a"}\n', r"no column 'label'.*data\.label_column"),
    ("truncated.tsv.gz", None, r"truncated\.tsv\.gz is not a readable gzip file"),
    ("unknown_suffix.txt", "label\ttext\n1\ta\n", r"cannot tell the format.*data\.format"),
])
def test_unusable_files_fail_with_the_file_and_the_fix(tmp_path, name, content, match):
  if content is None:  # a gzip file cut short, as a failed download leaves it
    (tmp_path / name).write_bytes(gzip.compress(GOOD_TSV.encode() * 50)[:40])
  else:
    _write(tmp_path / name, content)
  with pytest.raises(DataError, match=match):
    splits_lib.load_splits(DataConfig(source="files", train=name, skip_bad_rows=True), seed=0)


def test_unknown_dev_label_fails_or_is_skipped_and_counted(tmp_path):
  _write(tmp_path / "train.tsv", GOOD_TSV)
  _write(tmp_path / "dev.tsv", "label\ttext\n1\ta\n7\tb\n0\tc\n")
  cfg = DataConfig(source="files", train="train.tsv", dev="dev.tsv")
  with pytest.raises(DataError, match=r"dev\.tsv, row 2 \(line 3\): label '7' does not "
                                      r"occur in train.*skip_bad_rows=true"):
    splits_lib.load_splits(cfg, seed=0)
  splits, _ = splits_lib.load_splits(dataclasses.replace(cfg, skip_bad_rows=True), seed=0)
  assert splits["dev"].labels.tolist() == [1, 0] and splits["dev"].skipped == 1


def test_empty_texts_are_reported_and_skipped_when_asked(tmp_path, caplog):
  _write(tmp_path / "d.tsv", "label\ttext\n1\tgood\n0\t  \n1\tfine\n")
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    splits, _ = splits_lib.load_splits(DataConfig(source="files", train="d.tsv"), seed=0)
  assert len(splits["train"]) == 3  # kept (an empty text is a valid, if useless, example) ...
  assert "1 row(s) have an empty text (first: row 2 (line 3))" in caplog.text  # ... but loud
  cfg = DataConfig(source="files", train="d.tsv", skip_bad_rows=True)
  splits, _ = splits_lib.load_splits(cfg, 0)
  assert splits["train"].texts == ("good", "fine") and splits["train"].skipped == 1


def test_skipped_rows_reach_results_json_and_the_log(tmp_path, caplog):
  rng = np.random.default_rng(0)
  rows = [f"{i % 2}\t{'good fine' if i % 2 else 'bad awful'} film {rng.integers(9)}"
          for i in range(40)]
  rows[5] = "1\tone\ttab too many"
  rows[9] = "7"
  _write(tmp_path / "train.tsv", "label\ttext\n" + "\n".join(rows) + "\n")
  _write(tmp_path / "dev.tsv", "label\ttext\n1\tgood film\n0\tbad film\n9\tunknown label\n")
  cfg = config_lib.apply_overrides(Config(name="files"), [
      "data.source=files", "data.train=train.tsv", "data.dev=dev.tsv", "data.skip_bad_rows=true",
      "model.features=4", "train.batch_size=8", "train.num_steps=4", "train.eval_every=4",
      "train.progress=false"])
  with caplog.at_level(logging.WARNING, logger="embedlab"):
    results = train.train(cfg, tmp_path / "run", echo=lambda *_: None)
  assert results["skipped_rows"] == {"train": 2, "dev": 1}
  saved = json.loads((tmp_path / "run" / "results.json").read_text())
  assert saved["skipped_rows"] == {"train": 2, "dev": 1}
  assert "skipped 2 bad row(s) (lines 7, 11" in caplog.text
  assert "skipped 1 row(s) whose label does not occur in train" in caplog.text


# ----------------------------------------------------------------------------- ids and shapes

TABLE = el.init_table(jax.random.key(0), 10, 4, padding_id=0)
OUT_OF_RANGE = {"past the end": [[1, 10]], "negative": [[1, -1]], "far negative": [[-7, 2]]}


@pytest.mark.parametrize("fn", ["lookup", "bag", "bag_under_jit", "lookup_under_grad"])
@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_ids_raise_in_every_table_function(fn, case):
  ids = np.array(OUT_OF_RANGE[case], np.int32)
  bad = int(ids[ids < 0].min()) if (ids < 0).any() else int(ids.max())
  calls = {
      "lookup": lambda: el.lookup(TABLE, ids),
      "bag": lambda: el.bag(TABLE, ids),
      "bag_under_jit": lambda: jax.block_until_ready(jax.jit(lambda i: el.bag(TABLE, i))(ids)),
      "lookup_under_grad": lambda: jax.block_until_ready(jax.grad(
          lambda p: el.lookup(p, jnp.asarray(ids)).sum())(TABLE)),
  }
  with pytest.raises(Exception, match=rf"id {bad} at position .* outside the table \(10 rows"):
    calls[fn]()


@pytest.mark.parametrize("fn", ["lookup", "bag", "bag_ragged"])
@pytest.mark.parametrize("ids", [np.array([[1.0, 2.0]]), np.array([[True, False]]),
                                 np.array([["a", "b"]])], ids=["float", "bool", "str"])
def test_non_integer_ids_raise_type_error(fn, ids):
  calls = {"lookup": lambda: el.lookup(TABLE, ids), "bag": lambda: el.bag(TABLE, ids),
           "bag_ragged": lambda: el.bag(TABLE, ids.reshape(-1), segment_ids=np.array([0, 0]),
                                        num_bags=1)}
  with pytest.raises(TypeError, match="ids must be integers"):
    calls[fn]()


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_bag_wrong_rank_names_the_shape(shape):
  with pytest.raises(ValueError, match=r"bag: ids must be 2-D .* got shape"):
    el.bag(TABLE, np.ones(shape, np.int32))


def test_empty_batches_and_bags_with_no_ids_are_zero_not_nan():
  assert el.lookup(TABLE, np.zeros((0, 3), np.int32)).shape == (0, 3, 4)
  for mode in ("sum", "mean", "max", "sqrtn"):
    assert el.bag(TABLE, np.zeros((0, 3), np.int32), mode=mode).shape == (0, 4)
    # bags of no ids at all ((2, 0)) with mode="max": tests/pending_test_resources_wiring.py
    for ids in ([np.zeros((2, 0), np.int32)] if mode != "max" else []) + [
        np.zeros((2, 3), np.int32)]:  # no ids / all padding
      out = el.bag(TABLE, ids, mode=mode, padding_id=0)
      np.testing.assert_array_equal(out, np.zeros((2, 4)))
    ragged = el.bag(TABLE, np.array([1, 2]), segment_ids=np.array([0, 0]), num_bags=3, mode=mode)
    np.testing.assert_array_equal(ragged[1:], np.zeros((2, 4)))  # bags 1 and 2 have no ids


def test_attend_and_table_errors_name_the_shapes():
  with pytest.raises(ValueError, match="attend: x has 5 features, the table has 4"):
    el.attend(TABLE, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match="padding_id 10 is outside the table"):
    el.init_table(jax.random.key(0), 10, 4, padding_id=10)
  for rows, features in ((0, 4), (-3, 4), (10, 0), (10, 2.5)):
    with pytest.raises(ValueError, match="must be a positive integer"):
      el.init_table(jax.random.key(0), rows, features)


@pytest.mark.parametrize("name", ["bag", "cnn", "bilstm"])
def test_models_refuse_bad_ids_and_give_finite_logits_for_empty_rows(name):
  model = model_args.make_model(ModelConfig(name=name, features=4, num_filters=3, lstm_hidden=4),
                            10, 3)
  params = model.init(jax.random.key(0))
  for ids in ([[1, 12]], [[1, -2]]):
    with pytest.raises(ValueError, match=r"id -?\d+ at position \(0, 1\) is outside the table"):
      model.apply(params, np.array(ids, np.int32))
  with pytest.raises(TypeError, match="ids must be integers"):
    model.apply(params, np.array([[1.0, 2.0]]))
  assert model.apply(params, np.zeros((0, 3), np.int32)).shape == (0, 3)
  assert np.isfinite(model.apply(params, np.zeros((2, 3), np.int32))).all()


def test_train_step_refuses_out_of_range_ids_under_jit():
  cfg = ModelConfig(features=4)
  model = model_args.make_model(cfg, 10, 3)  # oob="error": checked on the device
  params = model.init(jax.random.key(0))
  opt = optax.adam(1e-2)
  state = steps_lib.TrainState(jnp.array(0), params, opt.init(params), jax.random.PRNGKey(0))
  step = jax.jit(steps_lib.make_train_step(model, opt))
  with pytest.raises(Exception, match=r"id 10 at position \(1, 0\) is outside the table"):
    jax.block_until_ready(step(state, np.array([[1, 2], [10, 0]], np.int32), np.array([0, 1])))


def test_bad_ids_in_an_encoded_dataset_are_refused_before_training():
  d = cache_lib.encode_splits(DataConfig(synthetic_train_size=16, synthetic_eval_size=8), 0,
                              cache=False)
  ids = d.test_ids.copy()
  ids[2, 1] = -5
  with pytest.raises(ValueError, match=r"data \(test split\): id -5 at position \(2, 1\)"):
    build_lib.validate_ids(dataclasses.replace(d, test_ids=ids))
  with pytest.raises(TypeError, match=r"data \(dev split\): ids must be integers"):
    build_lib.validate_ids(dataclasses.replace(d, dev_ids=d.dev_ids.astype(np.float32)))


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("poison", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("tables", ["dense", "sparse_adagrad"])
def test_non_finite_loss_or_gradient_never_reaches_the_parameters(poison, tables):
  from embedlab.core import sparse
  cfg = ModelConfig(features=4)
  model = model_args.make_model(cfg, 10, 3, oob="clip")
  params = model.init(jax.random.key(0))
  value = float(poison)
  # a poisoned row: its gradient (and the loss of the batch that reads it) is not finite
  params["embed"]["table"] = params["embed"]["table"].at[5].set(value)
  opt = optax.sgd(0.1)
  if tables == "dense":
    step = steps_lib.make_train_step(model, opt)
    opt_state = opt.init(params)
  else:
    table_opt = sparse.get_sparse_optimizer(tables, 0.1)
    step = steps_lib.make_train_step(model, opt, table_optimizer=table_opt)
    dense = {k: v for k, v in params.items() if k != "embed"}
    opt_state = {"dense": opt.init(dense), "table": table_opt.init(params["embed"]["table"])}
  state = steps_lib.TrainState(jnp.array(7), params, opt_state, jax.random.PRNGKey(0))
  new, sums = jax.jit(step)(state, np.array([[1, 5], [2, 3]], np.int32), np.array([0, 1]))
  assert float(sums["nonfinite"]) == 1 and int(sums["first_nonfinite"]) == 7
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)  # the bad batch changed nothing
  for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(a, b)


def test_check_finite_names_the_step_or_counts_when_skipping():
  acc = {"nonfinite": jnp.array(2.0), "first_nonfinite": jnp.array(13)}
  with pytest.raises(steps_lib.NonFiniteError, match=r"NaN/inf at step 13 \(2 batch\(es\) up to step "
                                                 r"15\).*last good checkpoint is kept.*"
                                                 r"train\.skip_nonfinite=true"):
    train._check_finite(acc, config_lib.apply_overrides(Config(), []), 15)
  skip = config_lib.apply_overrides(Config(), ["train.skip_nonfinite=true"])
  assert train._check_finite(acc, skip, 15) == 2


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override,match", [
    ("train.batchsize=32", r"unknown config key 'train.batchsize' \(did you mean "
                           r"'train.batch_size'\?\)"),
    ("modle.features=8", r"unknown config key 'modle.features' \(did you mean 'model.features'"),
    ("train.batch_size=3.5", r"train.batch_size='3.5': cannot parse as int"),
    ("train.skip_nonfinite=maybe", r"cannot parse as bool"),
    ("model.features=-8", r"model.features = -8 must be positive"),
    ("model.features=0", r"model.features = 0 must be positive"),
    ("data.num_buckets=-1", r"data.num_buckets = -1 must be >= 0"),
    ("optim.learning_rate=-0.1", r"optim.learning_rate = -0.1 must be >= 0"),
    ("data.dev_fraction=1.5", r"data.dev_fraction = 1.5 must be in \[0, 1\)"),
    ("model.dropout=1", r"model.dropout = 1.0 must be in \[0, 1\)"),
    ("model.name=bagg", r"model.name = 'bagg' is not one of .* \(did you mean 'bag'\?\)"),
    ("optim.name=adamm", r"did you mean 'adam'"),
    ("data.ngrams=2", r"data.ngrams > 1 needs data.num_buckets > 0.*--set data.num_buckets"),
    ("model.filter_widths=0,3", r"model.filter_widths = \(0, 3\) must be positive widths"),
    ("batch_size", r"not of the form key=value"),
])
def test_bad_config_fails_before_any_work_with_a_suggestion(override, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.apply_overrides(Config(), [override])


def test_wrong_type_in_an_experiment_file_is_named():
  bad = dataclasses.replace(Config(), model=dataclasses.replace(ModelConfig(), features="64"))
  with pytest.raises(config_lib.ConfigError, match=r"model.features = '64' is a str, expected int"):
    config_lib.validate(bad)


# ----------------------------------------------------------------------------- resources


@pytest.mark.parametrize("model,optim,tables", [("bag", "adam", "dense"),
                                                ("cnn", "sgd", "dense"),
                                                ("bag", "momentum", "sparse_lazy_adam"),
                                                ("bilstm", "adagrad", "sparse_rowwise_adagrad")])
def test_memory_estimate_matches_the_real_parameters_and_slots(model, optim, tables):
  cfg = config_lib.apply_overrides(Config(), [
      f"model.name={model}", f"optim.name={optim}", f"optim.tables={tables}",
      "model.features=16", "model.num_filters=8", "model.lstm_hidden=8", "train.batch_size=8"])
  est = resources.estimate_bytes(cfg, 1000, 3, 20)
  m = model_args.make_model(cfg.model, 1000, 3)
  params = m.init(jax.random.key(0))
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))  # noqa: E731
  assert est["table"] == nbytes(params["embed"]) == 1000 * 16 * 4
  assert est["other_params"] == nbytes(params) - nbytes(params["embed"])
  from embedlab.core import optim as optim_lib
  from embedlab.core import sparse
  if tables == "dense":
    state = optim_lib.make_optimizer(cfg.optim.name, params, 10, **build_lib.dense_optimizer_options(cfg)).init(params)
    assert est["gradients"] == nbytes(params)
  else:
    dense = {k: v for k, v in params.items() if k != "embed"}
    state = (optim_lib.make_optimizer(cfg.optim.name, dense, 10, **build_lib.dense_optimizer_options(cfg)).init(dense),
             sparse.get_sparse_optimizer(tables, 0.1).init(params["embed"]["table"]))
    assert est["gradients"] < nbytes(params)  # only the rows of one batch
  # the estimate counts the slots, not the few scalar counters beside them
  assert 0 <= nbytes(state) - est["optimizer_slots"] <= 64
  assert est["total"] == sum(v for k, v in est.items() if k != "total")


def test_too_big_a_config_fails_early_with_both_numbers_and_settings_that_fit():
  cfg = config_lib.apply_overrides(Config(), ["data.ngrams=2", "data.num_buckets=2000000",
                                              "model.features=256"])
  rows = 50_000 + 2_000_000
  est = resources.estimate_bytes(cfg, rows, 2, 128)
  available = 2 * 2**30
  with pytest.raises(resources.ResourceError) as e:
    resources.check_fits(cfg, rows, 2, 128, available=available)
  msg = str(e.value)
  assert resources.human(est["total"]) in msg and "2.0 GiB is available" in msg
  assert "Nothing was allocated" in msg
  fixes = [part.strip() for part in msg.split("Settings that would fit: ")[1].rstrip(".").split(";")]
  assert any("optim.tables=sparse" in f for f in fixes) or any("features" in f for f in fixes)
  for fix in fixes:  # every suggestion really fits
    overrides = [s.strip() for s in fix.split("--set") if "=" in s]
    overrides = [o.split(" (")[0] for o in overrides]
    fixed = config_lib.apply_overrides(cfg, overrides)
    fixed_rows = 50_000 + fixed.data.num_buckets
    assert resources.estimate_bytes(fixed, fixed_rows, 2, 128)["total"] <= available * 0.8
  resources.check_fits(cfg, rows, 2, 128, available=100 * 2**30)  # fits: no error


def test_available_memory_is_read_from_the_device_or_the_host():
  n, source = resources.available_bytes()
  assert n is not None and n > 0 and ("MemAvailable" in source or "device" in source)
  est = resources.check_fits(Config(), 1000, 2, 16)  # a small config fits this machine
  assert est["total"] < n
  assert math.isclose(resources.HEADROOM, 0.8)
