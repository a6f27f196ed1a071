"""``embedlab.load_run``: a trained run in Python (predict with k and threshold, embed) and the
CLI's predict over a file or standard input."""

import io
import json
import re

import numpy as np
import pytest

import embedlab as el
from embedlab import cli
from embedlab.run import inspection
from embedlab.run import train
from embedlab.data import synthetic as synthetic_lib
from test_train import quiet, tiny


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("loaded") / "run"
  train.train(tiny("train.num_epochs=4"), path, echo=quiet)
  return path


def test_predict_gives_the_top_k_labels_above_the_threshold(run_dir):
  run = el.load_run(run_dir)
  words = synthetic_lib.synthetic_word_topics(run.config.data)
  texts = [" ".join([w for w, t in words.items() if t == topic][:8]) for topic in range(4)]
  probs = run.probabilities(texts)
  np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
  top = run.predict(texts, k=3)
  for row, p in zip(top, probs):
    order = np.argsort(-p)[:3]
    assert [n for n, _ in row] == [run.label_names[i] for i in order]
    np.testing.assert_allclose([q for _, q in row], p[order], rtol=1e-6)
  assert [row[0][0] for row in run.predict(texts)] == list(run.label_names)  # topic i -> "i"
  for row, p in zip(run.predict(texts, k=4, threshold=0.05), probs):
    assert [q for _, q in row] == sorted((float(q) for q in p if q >= 0.05), reverse=True)
  with pytest.raises(ValueError, match="threshold"):
    run.predict(texts, threshold=1.5)
  with pytest.raises(TypeError, match="list of texts"):
    run.predict("one text")


@pytest.mark.parametrize("call", ["predict", "probabilities", "encode"])
def test_texts_that_are_not_strings_are_named_and_bytes_are_read(run_dir, call):
  run = el.load_run(run_dir)
  fn = getattr(run, call)
  for bad, shown in ((None, "None (NoneType)"), (3, "3 (int)"), (["a"], "['a'] (list)")):
    with pytest.raises(TypeError, match=re.escape(f"Run.{call}: text 1 is {shown}; texts must "
                                                  "be strings")):
      fn(["a film", bad])
  with pytest.raises(ValueError, match=rf"Run\.{call}: text 0 is bytes that are not UTF-8 "
                                       r"\(0xe9 at byte 4\)"):
    fn([b"caf\xe9"])
  np.testing.assert_array_equal(np.asarray(fn([b"caf\xc3\xa9 film"])),
                                np.asarray(fn(["caf\u00e9 film"])))


@pytest.mark.parametrize("options", [{"k": True}, {"k": 0}, {"k": 1.5}, {"threshold": "0.5"},
                                     {"threshold": float("nan")}, {"threshold": True}])
def test_predict_names_an_option_it_cannot_use(run_dir, options):
  with pytest.raises(ValueError, match=rf"predict: {next(iter(options))}="):
    el.load_run(run_dir).predict(["a film"], **options)


def test_embed_gives_the_trained_rows_and_names_unknown_words(run_dir):
  run = el.load_run(run_dir)
  emb = inspection.load_embedding(run_dir)
  got = run.embed(["t0_w1", "s0"])
  np.testing.assert_array_equal(got[0], emb.table[emb.tokens.index("t0_w1")])
  np.testing.assert_array_equal(got[1], emb.table[emb.tokens.index("s0")])
  with pytest.raises(el.UnknownWordsError, match="'zebra'"):
    run.embed(["t0_w1", "zebra"])


def test_cli_predict_reads_a_file_and_standard_input(run_dir, tmp_path, capsys, monkeypatch):
  (tmp_path / "texts.txt").write_text("t0_w1 t0_w2 t0_w3\n\nt1_w1 t1_w2 t1_w3\n")
  assert cli.main(["predict", str(run_dir), "--file", str(tmp_path / "texts.txt"), "-k",
                   "2"]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["label"] for r in rows] == ["0", "1"]
  assert all(len(r["labels"]) == 2 for r in rows)
  monkeypatch.setattr("sys.stdin", io.StringIO("t2_w1 t2_w2\n"))
  assert cli.main(["predict", str(run_dir), "--file", "-"]) == 0
  assert json.loads(capsys.readouterr().out)["label"] == "2"
  assert cli.main(["predict", str(run_dir)]) == 1
  assert "no texts" in capsys.readouterr().err


def test_cli_predict_takes_texts_after_options_and_fasttext_lines(run_dir, tmp_path, capsys):
  # texts after an option, as users type them: the same rows as texts given first
  assert cli.main(["predict", str(run_dir), "-k", "2", "t0_w1 t0_w2", "t1_w1 t1_w2"]) == 0
  after = capsys.readouterr().out
  assert cli.main(["predict", str(run_dir), "t0_w1 t0_w2", "t1_w1 t1_w2", "-k", "2"]) == 0
  assert capsys.readouterr().out == after and len(after.splitlines()) == 2
  with pytest.raises(SystemExit):  # an unknown option is still argparse's usage error
    cli.main(["predict", str(run_dir), "t0_w1", "--bogus"])
  assert "unrecognized arguments: --bogus" in capsys.readouterr().err
  # a fastText test file: the leading labels are not text (fastText's predict ignores them)
  (tmp_path / "test.ft").write_text("__label__0 __label__x t0_w1 t0_w2\n__label__1 t1_w1 t1_w2\n")
  assert cli.main(["predict", str(run_dir), "--file", str(tmp_path / "test.ft")]) == 0
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["text"] for r in rows] == ["t0_w1 t0_w2", "t1_w1 t1_w2"]
  assert [r["label"] for r in rows] == ["0", "1"]


@pytest.mark.parametrize("content,message", [
    (None, r"cannot read --file .*missing\.txt: No such file"),
    (b"t0_w1\ncaf\xe9 t1_w1\n", r"bad\.txt, line 2: bytes that are not UTF-8 .*iconv"),
])
def test_cli_predict_names_a_file_it_cannot_read(run_dir, tmp_path, capsys, content, message):
  path = tmp_path / ("missing.txt" if content is None else "bad.txt")
  if content is not None:
    path.write_bytes(content)
  assert cli.main(["predict", str(run_dir), "--file", str(path)]) == 1
  assert re.search(message, capsys.readouterr().err)


def test_loading_a_run_warns_of_nothing(run_dir, caplog):
  # the run is opened read-only on purpose: orbax's "directory is read only" notice is not shown
  with caplog.at_level("WARNING"):
    el.load_run(run_dir).predict(["t0_w1"])
  assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
