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


def test_train_encodes_its_data_on_a_forked_process_while_jax_loads(tmp_path):
  # a fresh interpreter, as the command runs: the config and data modules load no JAX, so the
  # data is encoded into the cache by a forked process while the command imports JAX
  import os, subprocess, sys  # noqa: E401, PLC0415
  (tmp_path / "train.tsv").write_text("label\ttext\n" + "".join(
      f"{i % 2}\tdoc {i} word{i % 7}\n" for i in range(200)))
  (tmp_path / "bad.tsv").write_text("label\ttext\n1\tfine\n0\ttoo\tmany\n")
  script = tmp_path / "ahead.py"
  script.write_text(f"""
import os, sys
from embedlab import cli, config
from embedlab.data import cache as cache_lib
assert "jax" not in sys.modules
cfg = config.load_config({QUICK!r}, ["data.source=files", "data.train=train.tsv",
                                      "data.dev_fraction=0.2"])
assert not cache_lib.is_cached(cfg.data, cfg.seed)
pid = cli._encode_ahead(cfg)
assert pid is not None and "jax" not in sys.modules
cli._wait(pid)
assert cache_lib.is_cached(cfg.data, cfg.seed)
assert cli._encode_ahead(cfg) is None  # cached: nothing to do
bad = config.load_config({QUICK!r}, ["data.source=files", "data.train=bad.tsv"])
pid = cli._encode_ahead(bad)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 1  # the error is left to train
assert not cache_lib.is_cached(bad.data, bad.seed)
import jax
jax.devices()  # JAX's backends run: no fork any more
other = config.load_config({QUICK!r}, ["data.source=files", "data.train=train.tsv", "seed=5"])
assert cli._encode_ahead(other) is None and not cache_lib.is_cached(other.data, other.seed)
print("ahead ok")
""")
  env = dict(os.environ, EMBEDLAB_DATA=str(tmp_path), EMBEDLAB_CACHE=str(tmp_path / "cache"),
             EMBEDLAB_COMPILE_CACHE="off")
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=300, env=env)
  assert done.returncode == 0 and "ahead ok" in done.stdout, done.stderr[-3000:]
  # the whole command: a bad row still ends in the one-line error, from train in the main process
  env["EMBEDLAB_CACHE"] = str(tmp_path / "cache2")
  done = subprocess.run([sys.executable, "-m", "embedlab.cli", "train", QUICK, "--workdir",
                         str(tmp_path / "run"), "--no-progress", "--set", "data.source=files",
                         "--set", "data.train=bad.tsv"], capture_output=True, text=True,
                        timeout=300, env=env)
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "bad.tsv, line 3: malformed row" in lines[0], done.stderr[-3000:]
  done = subprocess.run([sys.executable, "-m", "embedlab.cli", "train", QUICK, "--workdir",
                         str(tmp_path / "run"), "--no-progress"] + SMALL, capture_output=True,
                        text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((tmp_path / "run" / "results.json").read_text())["test_accuracy"] > 0.5


def test_compilation_cache_is_set_without_importing_jax(tmp_path):
  # the setting must not import JAX (that would serialize its import before the forked
  # encoding); set before the import it reaches JAX through its environment, after it through
  # jax.config; the command itself fills the cache directory
  import os, subprocess, sys  # noqa: E401, PLC0415
  where = tmp_path / "jax-cache"
  script = tmp_path / "cache.py"
  script.write_text(f"""
import sys
from embedlab import cli
if sys.argv[1] == "after":
  import jax
cli._enable_compilation_cache()
assert ("jax" in sys.modules) == (sys.argv[1] == "after")
import jax
assert jax.config.jax_compilation_cache_dir == {str(where)!r}, jax.config.jax_compilation_cache_dir
assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.05
print("cache ok")
""")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env["EMBEDLAB_COMPILE_CACHE"] = str(where)
  for when in ("before", "after"):
    done = subprocess.run([sys.executable, str(script), when], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0 and "cache ok" in done.stdout, (when, done.stderr[-3000:])
  assert not where.exists()
  done = subprocess.run([sys.executable, "-m", "embedlab.cli", "train", QUICK, "--workdir",
                         str(tmp_path / "run"), "--no-progress"] + SMALL, capture_output=True,
                        text=True, timeout=300, env=dict(env, EMBEDLAB_CACHE=str(tmp_path / "c")))
  assert done.returncode == 0, done.stderr[-3000:]
  assert any(where.iterdir())


@pytest.mark.parametrize("argv,message", [
    (["predict", "RUN", "-k", "0", "a text"], "argument -k/--k: 0 is below 1"),
    (["inspect", "RUN", "--word", "film", "-k", "-3"], "argument -k: -3 is below 1"),
    (["inspect", "RUN", "-k", "x"], "argument -k: 'x' is not an integer"),
    (["inspect", "RUN", "--top", "1"], "argument --top: 1 is below 2"),
])
def test_counts_out_of_range_are_usage_errors_before_any_work(tmp_path, capsys, argv, message):
  # no run directory is read (RUN does not exist): the count is checked first
  argv = [str(tmp_path / "missing") if a == "RUN" else a for a in argv]
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2 and message in capsys.readouterr().err
