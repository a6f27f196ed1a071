"""The README's commands are the ones CI runs, and its example runs as printed."""

import contextlib
import io
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent


def readme_commands():
  text = (REPO / "README.md").read_text()
  block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
  return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one():
  commands = readme_commands()
  assert len(commands) == 2
  assert "embedlab train experiments/quickstart.py" in commands[0]
  ci = (REPO / ".ci" / "run").read_text()
  assert commands[1] in ci.splitlines(), f"{commands[1]!r} is not a line of .ci/run"


def test_readme_example_prints_what_it_says():
  text = (REPO / "README.md").read_text()
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
