"""``embedlab tune``: dev-only search (test never read), the budget, the best-config file, the CLI."""

import json
import pathlib

import numpy as np
import pytest

from embedlab import cli
from embedlab import config as config_lib
from embedlab.data import cache as data_lib
from embedlab.data.rows import DataError
from embedlab.run import train as train_lib
from embedlab.run import tune as tune_lib

WORDS = {"1": ["good", "great", "fine", "superb", "fun"],
         "0": ["bad", "awful", "dull", "poor", "boring"]}
FILLER = ["the", "a", "movie", "film", "plot", "was", "is", "and"]


def _write(path: pathlib.Path, rows) -> None:
  path.write_text("label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows))


def _rows(n: int, seed: int):
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = str(rng.integers(2))
    words = list(rng.choice(FILLER, 5)) + list(rng.choice(WORDS[label], 2))
    rng.shuffle(words)
    rows.append((label, " ".join(words)))
  return rows


@pytest.fixture()
def experiment(tmp_path):
  """A tiny files experiment whose test split raises if encoded (a label train never has)."""
  _write(tmp_path / "train.tsv", _rows(256, 0))
  _write(tmp_path / "dev.tsv", _rows(64, 1))
  _write(tmp_path / "test.tsv", [("7", "a label train never saw")])
  exp = tmp_path / "tiny.py"
  exp.write_text(f'''
from embedlab.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

def get_config():
  return Config(name="tiny", data=DataConfig(source="files", train={str(tmp_path / "train.tsv")!r},
                dev={str(tmp_path / "dev.tsv")!r}, test={str(tmp_path / "test.tsv")!r},
                max_len=12, ngrams=2, num_buckets=4096, workers=1),
                model=ModelConfig(features=8), optim=OptimConfig(name="adam", learning_rate=0.05),
                train=TrainConfig(batch_size=32, num_epochs=2, eval_every=1000, log_every=1000,
                                  progress=False, plots=False))
''')
  return exp


class FakeClock:
  """Seconds that move only when a trial says so."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


def test_bad_budget_and_metric_name_the_fix():
  with pytest.raises(ValueError, match="--budget -5 must be a positive number of seconds"):
    tune_lib.check_arguments(-5, "dev_accuracy")
  with pytest.raises(ValueError, match="unknown metric 'f1'; use --metric dev_accuracy or "
                     "--metric dev_loss"):
    tune_lib.check_arguments(60, "f1")


@pytest.mark.parametrize("budget, seconds, expected", [(1000, 400, 2), (1000, 150, 6),
                                                       (100, 300, 1)])
def test_stops_starting_trials_the_next_would_pass_the_budget(experiment, tmp_path, budget,
                                                              seconds, expected):
  clock = FakeClock()
  seen = []

  def trial(cfg):
    seen.append(cfg)
    clock.now += seconds
    return 0.5 + 0.01 * cfg.model.features / 64, 0.7

  result = tune_lib.tune(experiment, budget, tmp_path / "tune", final=False, clock=clock,
                         echo=lambda _: None, trial_fn=trial)
  # trials start while the time used plus the mean trial so far fits in the budget
  assert len(result.trials) == len(seen) == expected
  assert result.search_seconds == expected * seconds
  assert expected == 1 or (expected - 1) * seconds + seconds <= budget
  assert expected * seconds + seconds > budget
  # the first trial is the experiment itself; no trial names a test file
  assert seen[0].optim.learning_rate == 0.05 and seen[0].model.features == 8
  assert all(cfg.data.test == "" for cfg in seen)
  best = max(result.trials, key=lambda t: t.dev_accuracy)
  assert result.best.number == best.number


def test_search_reads_no_test_and_the_best_file_reproduces_its_dev_accuracy(experiment,
                                                                            tmp_path,
                                                                            monkeypatch):
  encoded = []
  real_encode = data_lib.encode_splits

  def spy(cfg, seed, **kwargs):
    encoded.append(cfg)
    return real_encode(cfg, seed, **kwargs)

  monkeypatch.setattr(data_lib, "encode_splits", spy)
  clock = FakeClock()

  def trial(cfg):
    clock.now += 40
    return tune_lib.run_trial(cfg)

  # 3 trials of 40 fake seconds fit in 130; the test file would raise DataError if encoded
  result = tune_lib.tune(experiment, 130, tmp_path / "tune", final=False, clock=clock,
                         echo=lambda _: None, trial_fn=trial)
  assert len(result.trials) == 3 and encoded
  assert all(cfg.test == "" for cfg in encoded)
  with pytest.raises(DataError, match="7"):
    real_encode(config_lib.load_config(experiment).data, 0)
  # the best config: a loadable experiment that reproduces the best trial's dev accuracy
  _write(pathlib.Path(config_lib.load_config(experiment).data.test), _rows(32, 2))
  cfg = config_lib.load_config(result.best_file)
  assert cfg.name == "tiny_tuned"
  flat = config_lib.flatten(cfg)
  for key, value in result.best.params.items():
    assert flat[key] == pytest.approx(value)
  results = train_lib.train(cfg, tmp_path / "again", progress=False, echo=lambda _: None)
  assert results["dev_accuracy"] == result.best.dev_accuracy
  assert 0.0 <= results["test_accuracy"] <= 1.0
  saved = json.loads((tmp_path / "tune" / "trials.json").read_text())
  assert [t["dev_accuracy"] for t in saved["trials"]] == [t.dev_accuracy
                                                          for t in result.trials]


def test_cli_prints_the_trial_table_and_trains_the_best(experiment, tmp_path, capsys):
  test_file = pathlib.Path(config_lib.load_config(experiment).data.test)
  _write(test_file, _rows(32, 2))
  out_dir = tmp_path / "cli"
  # a budget the first trial uses up: one trial, then the best config trained with test
  assert cli.main(["tune", str(experiment), "--budget", "0.01", "--workdir", str(out_dir)]) == 0
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if "dev acc" in line)
  assert header.split()[:3] == ["#", "learning_rate", "num_epochs"] and "seconds" in header
  assert "search: 1 trials in" in out and "of the 0.01 s budget" in out
  results = json.loads((out_dir / "best" / "results.json").read_text())
  assert f"test accuracy {results['test_accuracy']:.4f}" in out
  assert (out_dir / "best_experiment.py").is_file()
  # a second tune into the same directory is refused; nothing is deleted
  assert cli.main(["tune", str(experiment), "--budget", "5", "--workdir", str(out_dir)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "already holds a tuning run" in err[0]
  assert (out_dir / "best" / "results.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--budget", "0"], "--budget 0 must be a positive number of seconds, e.g. --budget 120"),
    (["--budget", "10", "--metric", "f1"], "unknown metric 'f1'; use --metric dev_accuracy"),
])
def test_cli_bad_arguments_are_one_line(experiment, capsys, argv, message):
  assert cli.main(["tune", str(experiment)] + argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]


def test_refuses_data_it_cannot_keep_test_out_of(experiment, tmp_path):
  synthetic = tmp_path / "synthetic.py"
  synthetic.write_text("from embedlab.config import Config\n\ndef get_config():\n"
                       "  return Config()\n")
  with pytest.raises(config_lib.ConfigError, match="tune needs data.source = 'files'"):
    tune_lib.tune(synthetic, 10, tmp_path / "a", final=False, echo=lambda _: None)
  with pytest.raises(config_lib.ConfigError, match="no dev split to score trials on; set "
                     "data.dev to a file or --set data.dev_fraction=0.1"):
    tune_lib.tune(experiment, 10, tmp_path / "b", overrides=["data.dev="], final=False,
                  echo=lambda _: None)
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
