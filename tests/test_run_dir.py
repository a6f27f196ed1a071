"""The run directory: what a re-run may do there, --restart, the lock, failed starts, signals,
and the data a run was trained on."""

import hashlib
import json
import os
import signal

import jax
import numpy as np
import pytest

from embedlab import config as config_lib
from embedlab.run import report
from embedlab.data import cache as cache_lib
from embedlab.run import rundir
from embedlab.run import build as build_lib
from embedlab.run import loaded
from embedlab.run import resources, train
from test_train import final_params, metric_values, quiet, tiny


def test_rerun_of_a_finished_run_trains_and_writes_nothing(tmp_path):
  run = tmp_path / "run"
  first = train.train(tiny(), run, echo=quiet)
  before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
  events = (run / "metrics.jsonl").read_text()
  messages = []
  second = train.train(tiny(), run, echo=messages.append)
  assert second == first
  assert any("finished at step 20" in m and "--restart" in m for m in messages), messages
  assert (run / "metrics.jsonl").read_text() == events  # no second test event
  assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("change", ["model.features=9", "mesh.data=4"])
def test_a_finished_run_refuses_another_config_and_names_both_choices(tmp_path, change):
  run = tmp_path / "run"
  train.train(tiny(), run, echo=quiet)
  before = sorted(p.name for p in run.rglob("*"))
  key = change.split("=")[0]
  with pytest.raises(rundir.RunDirError, match=rf"{key}: .* there, .* now.*nothing was changed"
                     r".*another --workdir.*--restart to delete that run \(config.json, "):
    train.train(tiny(change), run, echo=quiet)
  assert sorted(p.name for p in run.rglob("*")) == before
  assert "mesh" not in json.loads((run / "results.json").read_text())


def test_restart_deletes_only_what_embedlab_wrote_and_says_so(tmp_path):
  run = tmp_path / "run"
  train.train(tiny(), run, echo=quiet)
  (run / "notes.txt").write_text("mine")
  messages = []
  results = train.train(tiny("model.features=9"), run, restart=True, echo=messages.append)
  said = next(m for m in messages if m.startswith("--restart"))
  assert "checkpoints/" in said and "config.json" in said and "notes.txt" not in said
  assert (run / "notes.txt").read_text() == "mine"
  assert results["features"] == 9


def test_restart_refuses_a_directory_that_holds_no_run(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "thesis.tex").write_text("years of work")
  with pytest.raises(rundir.RunDirError, match=r"holds no embedlab run.*thesis.tex.*nothing"):
    train.train(tiny(), mine, restart=True, echo=quiet)
  assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
  assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_config_json_that_is_not_embedlabs_is_never_overwritten(tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  (other / "config.json").write_text('{"lr": 3}')
  with pytest.raises(rundir.RunDirError, match="not an embedlab run config"):
    train.train(tiny(), other, echo=quiet)
  assert (other / "config.json").read_text() == '{"lr": 3}'


@pytest.mark.parametrize("bad, message", [
    # a relative path not under the data directory
    ("model.pretrained=no/such/vectors.txt", r"no/such/vectors.txt.*not found \(looked for"),
    # the memory check refuses it
    ("model.features=100000", r"resources: this config needs about .* Nothing was allocated"),
])
def test_a_start_that_fails_writes_no_run_directory_and_the_fix_then_runs(tmp_path, bad, message,
                                                                        monkeypatch):
  run = tmp_path / "run"
  if "features" in bad:  # a budget too small for 100k features, on any machine
    monkeypatch.setattr(resources, "available_bytes", lambda *a: (64 << 20, "test budget"))
  with pytest.raises(Exception, match=message):
    train.train(tiny(bad), run, echo=quiet)
  assert not run.exists()
  monkeypatch.undo()
  assert train.train(tiny(), run, echo=quiet)["steps"] == 20


def test_a_start_stopped_before_its_first_checkpoint_takes_the_corrected_config(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(json.loads(
      config_lib.to_json(tiny("model.features=5")))))
  results = train.train(tiny(), run, echo=quiet)
  assert results["features"] == 8
  assert json.loads((run / "config.json").read_text())["model"]["features"] == 8


def test_a_second_process_in_a_run_directory_is_refused_naming_the_holder(tmp_path):
  run = tmp_path / "run"
  holder = report.RunDir(run, tiny(), echo=quiet)
  try:
    with pytest.raises(rundir.RunDirError, match=rf"process {os.getpid()} is training there"):
      rundir.run_dir_state(run, tiny())
    with pytest.raises(rundir.RunDirError, match="in use"):
      train.train(tiny(), run, restart=True, echo=quiet)
    assert (run / "config.json").exists()
  finally:
    holder.close()
  assert rundir.run_dir_state(run, tiny()) == "resume"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_at_the_step_and_the_resumed_run_is_identical(
    tmp_path, monkeypatch, signum):
  cfg = tiny("train.checkpoint_every=100")  # no periodic checkpoint before the end
  train.train(cfg, tmp_path / "straight", echo=quiet)

  real_log = report.RunDir.log_train

  def log_then_signal(self, step, sums, bar=None):
    real_log(self, step, sums, bar)
    if step == 9:
      signal.raise_signal(signum)  # arrives mid-run, as a preemption would

  monkeypatch.setattr(report.RunDir, "log_train", log_then_signal)
  with pytest.raises(train.Stopped, match=rf"{signal.Signals(signum).name} at step (9|1[0-3])"):
    train.train(cfg, tmp_path / "resumed", echo=quiet)
  monkeypatch.setattr(report.RunDir, "log_train", real_log)
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
  messages = []
  train.train(cfg, tmp_path / "resumed", echo=messages.append)
  assert any("resuming" in m for m in messages)
  a, b = final_params(tmp_path / "straight", cfg), final_params(tmp_path / "resumed", cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert metric_values(tmp_path / "straight") == metric_values(tmp_path / "resumed")


def _write_data(folder, words):
  """A small two-class data set: class 1 texts use ``words[:3]``, class 0 ``words[3:6]``."""
  rng = np.random.default_rng(0)
  for name, n in (("train", 200), ("dev", 40), ("test", 40)):
    rows = []
    for _ in range(n):
      label = int(rng.integers(2))
      pool = words[:3] if label else words[3:6]
      rows.append(f"{label}\t{' '.join(rng.choice(pool, 5))} filler")
    (folder / f"{name}.tsv").write_text("label\ttext\n" + "\n".join(rows) + "\n")


def _files_cfg(folder, *extra):
  return tiny("data.source=files", f"data.train={folder}/train.tsv",
              f"data.dev={folder}/dev.tsv", f"data.test={folder}/test.tsv", *extra)


def test_eval_reads_the_data_with_the_runs_own_vocabulary_after_the_files_change(tmp_path):
  folder = tmp_path / "data"
  folder.mkdir()
  _write_data(folder, ["good", "great", "fine", "bad", "awful", "poor"])
  run = tmp_path / "run"
  results = train.train(_files_cfg(folder, "train.num_epochs=5"), run, echo=quiet)
  assert results["test_accuracy"] == 1.0
  # a new train file: other words come first, so a fresh vocabulary would renumber every id
  (folder / "train.tsv").write_text("label\ttext\n" + "".join(
      f"{i % 2}\tzebra{i} yak{i}\n" for i in range(300)))
  again = loaded.evaluate_run(run, "test")
  assert again["accuracy"] == results["test_accuracy"]


def test_resuming_on_changed_data_is_refused_naming_the_change(tmp_path):
  folder = tmp_path / "data"
  folder.mkdir()
  _write_data(folder, ["good", "great", "fine", "bad", "awful", "poor"])
  run = tmp_path / "run"
  cfg = _files_cfg(folder)
  train.train(cfg, run, echo=quiet)
  recorded = json.loads((run / "data.json").read_text())
  assert [f["path"] for f in recorded["files"]] == [str(folder / f"{s}.tsv")
                                                    for s in ("train", "dev", "test")]
  assert recorded["files"][0]["sha256"] == hashlib.sha256(
      (folder / "train.tsv").read_bytes()).hexdigest()
  assert recorded["labels"] == ["0", "1"]
  (run / "results.json").unlink()  # as if it had stopped after a checkpoint
  before = sorted(p.name for p in run.rglob("*"))
  _write_data(folder, ["good", "great", "fine", "bad", "awful", "dreadful"])
  with pytest.raises(rundir.RunDirError, match=r"trained on other data: vocabulary of .* "
                     r"\(new: dreadful\).*another --workdir.*--restart"):
    train.train(cfg, run, echo=quiet)
  assert sorted(p.name for p in run.rglob("*")) == before


def test_resuming_on_the_same_words_in_a_changed_file_says_so(tmp_path):
  folder = tmp_path / "data"
  folder.mkdir()
  words = ["good", "great", "fine", "bad", "awful", "poor"]
  _write_data(folder, words)
  run = tmp_path / "run"
  cfg = _files_cfg(folder)
  train.train(cfg, run, echo=quiet)
  (run / "results.json").unlink()
  with open(folder / "test.tsv", "a") as f:  # one more test row, no new word or label
    f.write("1\tgood great filler\n")
  messages = []
  train.train(cfg, run, echo=messages.append)
  assert any(m.startswith("note:") and "test.tsv changed" in m for m in messages), messages


def test_near_the_memory_budget_xla_s_count_of_the_step_is_checked_before_the_run_starts(
    tmp_path, monkeypatch):
  cfg = tiny()
  estimate = build_lib.build(cfg, cache_lib.encode_splits(cfg.data, cfg.seed), 1)
  total = estimate.memory_estimate["total"]
  # a budget the fast estimate passes, but only just: the compiled step is checked too
  monkeypatch.setattr(resources, "available_bytes",
                      lambda *a: (int(total / resources.HEADROOM * 1.2), "test budget"))
  real = resources.compiled_bytes
  counted = []

  def inflated(compiled):  # as if XLA needed 100x what it counts
    counted.append(1)
    return {k: v * 100 if k != "aliased" else v for k, v in real(compiled).items()}

  monkeypatch.setattr(resources, "compiled_bytes", inflated)
  with pytest.raises(resources.ResourceError, match=r"the train step needs .* by XLA's "
                     r"memory analysis.*Nothing was allocated"):
    train.train(cfg, tmp_path / "run", echo=quiet)
  assert counted and not (tmp_path / "run").exists()
  # far from the budget, no second compilation
  monkeypatch.setattr(resources, "available_bytes", lambda *a: (1 << 40, "test budget"))
  counted.clear()
  train.train(cfg, tmp_path / "run", echo=quiet)
  assert not counted
