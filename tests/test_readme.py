"""The README's commands are the ones CI runs, and every shell block in it works as written.

Every ```bash block is read in order. Each ``embedlab`` command in it must parse, resolve its
experiment, config and data, and name only run directories that an earlier README command
trains; no two ``train`` commands may send different configs to one run directory. The
commands on the synthetic quickstart (and the compressed-table block, on a slice of IMDB) are
run as written.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from embedlab import cli
from embedlab import config as config_lib
from embedlab.data import paths as paths_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def readme_text() -> str:
  return (REPO / "README.md").read_text()


def shell_blocks() -> list[list[str]]:
  """The commands of each ```bash block: comments dropped, continuation lines joined."""
  blocks = []
  for body in re.findall(r"```bash\n(.*?)```", readme_text(), re.S):
    commands, pending = [], ""
    for line in body.splitlines():
      line = pending + line
      if line.rstrip().endswith("\\"):
        pending = line.rstrip()[:-1] + " "
        continue
      pending = ""
      command = _strip_comment(line).strip()
      if command:
        commands.append(command)
    blocks.append(commands)
  return blocks


def _strip_comment(line: str) -> str:
  """The line up to a ``#`` that starts a shell comment (not one inside quotes)."""
  quote = None
  for i, c in enumerate(line):
    if quote:
      quote = None if c == quote else quote
    elif c in "'\"":
      quote = c
    elif c == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def readme_commands():
  return shell_blocks()[0]


def embedlab_argv(command: str) -> list[str] | None:
  """The arguments after ``embedlab`` in a shell command (also inside ``srun ...`` or a
  ``gcloud ... --command="cd x && embedlab ..."``), with ``$RANK`` as process 0."""
  words = shlex.split(command.replace("$RANK", "0"))
  for i, word in enumerate(words):
    if word == "embedlab":
      return words[i + 1:]
    if "embedlab " in word and word.startswith("--command="):
      return embedlab_argv(word.split("&&")[-1])
  return None


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one():
  commands = readme_commands()
  assert len(commands) == 2
  assert "embedlab train experiments/quickstart.py" in commands[0]
  ci = (REPO / ".ci" / "run").read_text()
  assert commands[1] in ci, f"{commands[1]!r} is not in .ci/run"


def test_readme_example_prints_what_it_says():
  text = readme_text()
  code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
  lines = out.getvalue().splitlines()
  assert lines[0] == "(10000, 64)" and lines[1] == "640000" and lines[2] == "(2, 4, 64)"
  assert lines[3] == "(2, 64)"
  assert "10,000 rows x 64 features = 640,000 weights" in lines[4]
  for line, comment in zip(lines[:4], re.findall(r"# (\(?[\d, ]+\)?)", code)):
    assert line.startswith(comment.split(" weights")[0].strip()), (line, comment)


def test_readme_one_hot_example_prints_what_it_says():
  code = re.findall(r"```python\n(.*?)```", readme_text(), re.S)[1]
  assert "one_hot" in code
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
  assert out.getvalue().split() == ["True", "6"]


def _run_dir_of(args) -> str:
  return args.workdir or str(pathlib.Path("runs") / pathlib.Path(args.experiment).stem)


def _data_files(cfg) -> list[str]:
  names = [getattr(cfg.data, s) for s in ("train", "dev", "test")] if cfg.data.source == "files" \
      else []
  return [n for n in names if n] + ([cfg.model.pretrained] if cfg.model.pretrained else [])


def test_every_readme_command_parses_resolves_and_uses_runs_trained_before_it(monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("PWD", str(REPO))
  trained: dict[str, dict] = {}  # run directory -> the config trained there
  seen = 0
  for block in shell_blocks():
    for command in block:
      argv = embedlab_argv(command)
      if argv is None:
        words = shlex.split(command)
        if words[:2] == ["pip", "install"]:  # the set-up commands: CI runs them as they are
          continue
        assert words[0] == "python" and (REPO / words[1]).is_file(), (
            f"README command not checked: {command}")
        continue
      argv = [os.path.expandvars(a) for a in argv]
      args = cli._parser().parse_args(argv)  # pylint: disable=protected-access
      seen += 1
      if args.command in ("train", "summary", "config"):
        cfg = config_lib.load_config(args.experiment, args.overrides)
        for name in _data_files(cfg):
          if name.startswith(str(REPO)):  # a file an earlier README command writes
            continue
          assert paths_lib.resolve(name).is_file(), f"{command}: {name} not found"
      if args.command == "train":
        run, snapshot = _run_dir_of(args), config_lib.to_dict(cfg)
        assert trained.setdefault(run, snapshot) == snapshot, (
            f"{command}: {run} already holds another README run; give it its own --workdir")
      for run in getattr(args, "run_dirs", None) or [getattr(args, "run_dir", None)]:
        if run is not None:
          assert run in trained, f"{command}: no README command before it trains {run}"
  assert seen >= 25


def _cli(argv: list[str]) -> str:
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main(argv)
  assert code == 0, (argv, out.getvalue()[-2000:])
  return out.getvalue()


def _argvs(block: list[str], cwd: pathlib.Path) -> list[list[str]]:
  os.environ["PWD"] = str(cwd)
  return [[os.path.expandvars(a) for a in embedlab_argv(c)] for c in block]


@pytest.fixture()
def readme_dir(tmp_path, monkeypatch):
  """A directory laid out as the repository root (experiments/), where the commands write."""
  (tmp_path / "experiments").symlink_to(REPO / "experiments")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("EMBEDLAB_COMPILE_CACHE", "off")
  old_pwd = os.environ.get("PWD")
  yield tmp_path
  if old_pwd is not None:
    os.environ["PWD"] = old_pwd


def _block_with(text: str) -> list[str]:
  return next(b for b in shell_blocks() if any(text in c for c in b))


@pytest.mark.slow
def test_readme_quickstart_blocks_run_as_written(readme_dir):
  setup = readme_commands()[0].split("&&")[-1].split()
  out = _cli(setup[1:] + ["--no-progress"])
  assert "planted structure: 100.0%" in out
  look = _block_with("embedlab inspect runs/quickstart --word")
  outputs = [_cli(a) for a in _argvs(look, readme_dir)]
  assert "finished at step 186" in outputs[0]  # the same run: nothing trained again
  assert "t0_w1 - t0_w2 + t1_w3 = t1_w" in outputs[1]
  assert all((readme_dir / "docs" / "quickstart" / f).is_file()
             for f in ("embedding.png", "norms.png", "curves.png"))
  exports = _argvs(_block_with("--format word2vec vectors.txt"), readme_dir)
  for argv in exports[:-1]:
    _cli(argv)
  assert (readme_dir / "vectors.txt").is_file() and (readme_dir / "table.npy").is_file()
  assert (readme_dir / "projector").is_dir()
  _cli(exports[-1] + ["--no-progress"])
  results = json.loads((readme_dir / "runs/quickstart_from_vectors/results.json").read_text())
  assert results["pretrained_rows_found"] == 401  # as the README's comment says


@pytest.mark.slow
def test_readme_mesh_example_trains_its_own_run_on_the_mesh(readme_dir):
  command = next(c for c in _block_with("xla_force_host_platform_device_count")
                 if c.startswith("XLA_FLAGS"))
  assert embedlab_argv(command)[0] == "train"
  env = {**os.environ, "EMBEDLAB_COMPILE_CACHE": "off"}
  done = subprocess.run(["bash", "-c", command.replace("embedlab train", f"{sys.executable} -m "
                                                       "embedlab.cli train", 1)
                         + " --no-progress"], cwd=readme_dir, env=env, capture_output=True,
                        text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((readme_dir / "runs/quickstart_mesh/results.json").read_text())
  assert results["mesh"]["data"] == 4 and results["mesh"]["model"] == 2
  assert results["steps"] == 186 and results["test_accuracy"] > 0.9
  metrics = (readme_dir / "runs/quickstart_mesh/metrics.jsonl").read_text().splitlines()
  assert [json.loads(m)["step"] for m in metrics if '"train"' in m][0] == 25  # trained from 0


@pytest.mark.slow
def test_readme_compressed_table_block_runs_on_a_slice_of_imdb(readme_dir):
  """The block's commands as written, each train on 400 IMDB reviews for 10 steps: every
  variant trains into its own run directory, and eval, export and compare read them."""
  small = ["--set", "data.max_examples=400", "--set", "train.num_steps=10", "--set",
           "train.eval_every=10", "--set", "train.log_every=5", "--no-progress"]
  for argv in _argvs(_block_with("model.table=factorized"), readme_dir):
    _cli(argv + (small if argv[0] == "train" else []))
    if argv[0] == "train":
      args = cli._parser().parse_args(argv)  # pylint: disable=protected-access
      results = json.loads((readme_dir / _run_dir_of(args) / "results.json").read_text())
      assert results["steps"] == 10
      assert results["table"] == config_lib.load_config(args.experiment,
                                                        args.overrides).model.table
  assert (readme_dir / "table.npz").is_file()


def test_readme_python_training_loop_reaches_its_stated_accuracy(monkeypatch, tmp_path):
  """The "Use it from Python" block as written: a Flax nnx model on SST-2 with optax and
  row-sparse updates for the table, one epoch; it prints the test accuracy its comment states."""
  code = next(c for c in re.findall(r"```python\n(.*?)```", readme_text(), re.S)
              if "value_and_row_grad" in c)
  stated = float(re.search(r"# test accuracy: (0\.\d+)", code).group(1))
  assert f"It prints `test accuracy: {stated:.3f}`" in readme_text()
  monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path))  # encoded from the files, not a cache
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
  accuracy = float(re.fullmatch(r"test accuracy: (0\.\d+)\n", out.getvalue()).group(1))
  assert accuracy >= 0.77  # well above the majority class (0.50)
  assert abs(accuracy - stated) <= 0.01, (accuracy, stated)
