"""The embedlab command: one-line errors with a non-zero exit, summary, train/eval/compare."""

import json
import pathlib

import pytest

from embedlab import cli

REPO = pathlib.Path(__file__).resolve().parent.parent
QUICK = str(REPO / "experiments" / "quickstart.py")
SMALL = ["--set", "data.synthetic_train_size=256", "--set", "data.synthetic_eval_size=64",
         "--set", "train.num_epochs=1", "--set", "train.eval_every=4"]


def test_unknown_key_is_one_line_and_nonzero(capsys):
  assert cli.main(["train", QUICK, "--set", "train.batch_sise=3"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "did you mean 'train.batch_size'" in err[0]


def test_debug_shows_the_traceback():
  with pytest.raises(Exception, match="unknown config key"):
    cli.main(["--debug", "train", QUICK, "--set", "nope=1"])


def test_summary_shows_weights_bytes_and_stage_shapes(capsys):
  assert cli.main(["summary", QUICK]) == 0
  out = capsys.readouterr().out
  assert "rows x 16 features" in out and "optimizer slots" in out and "dense optax adam" in out
  assert "(64, 32)" in out and "(64, 32, 16)" in out and "(64, 16)" in out and "(64, 4)" in out


def test_train_eval_predict_compare(tmp_path, capsys):
  run = tmp_path / "run"
  assert cli.main(["train", QUICK, "--workdir", str(run), "--no-progress"] + SMALL) == 0
  results = json.loads((run / "results.json").read_text())
  capsys.readouterr()
  assert cli.main(["eval", str(run), "--split", "test"]) == 0
  assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(
      results["test_accuracy"])
  assert cli.main(["predict", str(run), "t0_w1 t0_w2 t0_w3"]) == 0
  assert json.loads(capsys.readouterr().out.splitlines()[0])["label"]
  assert cli.main(["compare", str(run), str(run)]) == 0
  assert "test_accuracy" in capsys.readouterr().out


def test_eval_of_a_missing_run_is_one_line(tmp_path, capsys):
  assert cli.main(["eval", str(tmp_path / "nothing")]) == 1
  assert "is not a run directory" in capsys.readouterr().err


def test_out_of_range_id_under_jit_reaches_the_user_as_one_line(capsys):
  def fail(args):
    import jax, jax.numpy as jnp  # noqa: E401
    import embedlab as el
    jax.block_until_ready(jax.jit(el.lookup)({"table": jnp.zeros((4, 2))}, jnp.array([9])))
  message = cli._one_line(_capture(fail))
  assert message.startswith("lookup: id 9 at position (0,) is outside the table (4 rows")


def _capture(fn):
  try:
    fn(None)
  except Exception as e:  # noqa: BLE001
    return e
  raise AssertionError("no error")


def test_get_sweep_runs_each_override_set_and_prints_a_comparison(tmp_path, capsys):
  experiment = tmp_path / "swept.py"
  experiment.write_text(
      (REPO / "experiments" / "quickstart.py").read_text() +
      '\n\ndef get_sweep():\n  return [["model.features=4"], ["model.features=8"]]\n')
  assert cli.main(["train", str(experiment), "--workdir", str(tmp_path / "sweep"),
                   "--no-progress"] + SMALL) == 0
  out = capsys.readouterr().out
  runs = sorted(p.name for p in (tmp_path / "sweep").iterdir())
  assert runs == ["features-4", "features-8"]
  for name, width in (("features-4", 4), ("features-8", 8)):
    cfg = json.loads((tmp_path / "sweep" / name / "config.json").read_text())
    assert cfg["model"]["features"] == width
  table = out[out.index("run  "):]
  assert "features-4" in table and "features-8" in table and "test_accuracy" in table
