"""Where a cold ``embedlab train`` job's time goes, segment by segment, wall and CPU seconds.

  python benchmarks/cold_profile.py [--experiment experiments/sst2_fasttext.py] [--repeats 2]

Runs the experiment as ``vs_fasttext.py`` does (a fresh process, every cache empty: encoded
data, Hugging Face, JAX compilation; 2 threads), with marks around library functions: the
command's wait for its forked data encoder (``cli._wait``), the encoder's file reading
(``files.read_file``: decompressing, decoding, checking and splitting the rows) and tokenizing,
``build.build`` (the init program), the dev evaluation and the end of the run. The marks are
timed with ``time.perf_counter`` (one monotonic clock for every process) and each process's CPU
time; nothing in the library changes. Prints one table per repeat: the main process's segments,
and beside them the encoder's (its CPU includes its tokenizing workers), and which of the heavy
readers (Hugging Face ``datasets``, ``pyarrow``, ``pandas``) the encoder had imported when it
finished.
Ends with one JSON line of all figures.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import harness  # standard library only: the profiled job imports no more than embedlab

MARKS = "EMBEDLAB_PROFILE_MARKS"
HEAVY_READERS = ("datasets", "pyarrow", "pandas")


def _cpu(who) -> float:
  usage = resource.getrusage(who)
  return usage.ru_utime + usage.ru_stime


def _mark(name: str) -> None:
  """One line ``pid name wall own_cpu children_cpu`` appended to the marks file."""
  line = (f"{os.getpid()} {name} {time.perf_counter():.6f} {_cpu(resource.RUSAGE_SELF):.6f} "
          f"{_cpu(resource.RUSAGE_CHILDREN):.6f}\n")
  with open(os.environ[MARKS], "a", encoding="utf-8") as f:
    f.write(line)


def _wrap(module, name: str) -> None:
  fn = getattr(module, name)

  def wrapped(*args, **kwargs):
    _mark(f"{name}>")
    try:
      return fn(*args, **kwargs)
    finally:
      _mark(f"{name}<")

  setattr(module, name, wrapped)


def _job(argv: list[str]) -> None:
  """The profiled process: ``embedlab train`` with its marks."""
  _mark("start")
  from embedlab import cli  # pylint: disable=import-outside-toplevel
  from embedlab.data import cache as cache_lib  # pylint: disable=import-outside-toplevel
  from embedlab.data import files as files_lib  # pylint: disable=import-outside-toplevel

  _wrap(cache_lib, "encode_splits")
  _wrap(files_lib, "read_file")
  encode = cache_lib.encode_splits

  def encode_then_list_imports(*args, **kwargs):
    try:
      return encode(*args, **kwargs)
    finally:
      for module in HEAVY_READERS:
        if module in sys.modules:
          _mark(f"imported:{module}")

  cache_lib.encode_splits = encode_then_list_imports
  from embedlab.data import encoding as encoding_lib  # pylint: disable=import-outside-toplevel

  _wrap(encoding_lib, "encode_corpus")
  wait = cli._wait  # pylint: disable=protected-access

  def wait_then_wrap(pid):
    _mark("wait>")
    wait(pid)
    _mark("wait<")
    train = sys.modules["embedlab.run.train"]  # imported while the encoder ran
    _wrap(sys.modules["embedlab.run.build"], "build")
    for name in ("_evaluate_dev", "_finish"):
      _wrap(train, name)

  cli._wait = wait_then_wrap  # pylint: disable=protected-access
  main_fn = cli.main

  def main_then_mark(argv=None):
    code = main_fn(argv)
    _mark("end")
    return code

  cli.main = main_then_mark
  sys.argv = [sys.argv[0]] + argv
  cli.run()  # as the embedlab command ends: exit handlers, then the process, no teardown


def _spans(marks: list[tuple], pid: int) -> dict[str, list[tuple[float, float, float, float]]]:
  """name -> [(wall start, wall end, cpu start, cpu end)] of ``pid``'s wrapped calls."""
  out, open_ = {}, {}
  for p, name, wall, own, children in marks:
    if p != pid:
      continue
    cpu = own + children
    if name.endswith(">"):
      open_[name[:-1]] = (wall, cpu)
    elif name.endswith("<"):
      start = open_.pop(name[:-1])
      out.setdefault(name[:-1], []).append((start[0], wall, start[1], cpu))
    else:
      out.setdefault(name, []).append((wall, wall, cpu, cpu))
  return out


def _segments(marks, begun: float, ended: float) -> tuple[list, list]:
  main_pid = marks[0][0]
  main = _spans(marks, main_pid)
  encoders = {m[0] for m in marks if m[0] != main_pid}

  def main_cpu(name, which):
    return [m[3] for m in marks if m[0] == main_pid and m[1] == name][which]

  def first(name, i):  # wall of a main mark: i = 0 start of the first call, 1 its end
    return main[name][0][i]

  rows = [("interpreter and imports (until the wait)", begun, first("wait", 0),
           0.0, main_cpu("wait>", 0))]
  rows.append(("wait for the data encoder", first("wait", 0), first("wait", 1),
               main_cpu("wait>", 0), main_cpu("wait<", 0)))
  later = [("read the encoded data", "encode_splits"), ("init program (build.build)", "build")]
  for label, name in later:
    if name in main:
      rows.append((label, first(name, 0), first(name, 1), main_cpu(f"{name}>", 0),
                   main_cpu(f"{name}<", 0)))
  rows.append(("train block compile and train loop", first("build", 1),
               first("_evaluate_dev", 0), main_cpu("build<", 0), main_cpu("_evaluate_dev>", -1)))
  rows.append(("dev evaluation (and its compile)", first("_evaluate_dev", 0),
               main["_evaluate_dev"][-1][1], main_cpu("_evaluate_dev>", -1),
               main_cpu("_evaluate_dev<", -1)))
  rows.append(("checkpoints, test, results", main["_evaluate_dev"][-1][1], first("end", 1),
               main_cpu("_evaluate_dev<", -1), main_cpu("end", 0)))
  rows.append(("process exit", first("end", 1), ended, main_cpu("end", 0), main_cpu("end", 0)))
  encoder_rows, imported = [], []
  for pid in sorted(encoders):
    spans = _spans(marks, pid)
    if "encode_splits" not in spans:
      continue
    (w0, w1, c0, c1), = spans["encode_splits"]
    reading = spans.get("read_file", [])
    imported = [name.split(":", 1)[1] for name in spans if name.startswith("imported:")]
    encoding = spans.get("encode_corpus", [])
    read = (sum(s[1] - s[0] for s in reading), sum(s[3] - s[2] for s in reading))
    enc = (sum(s[1] - s[0] for s in encoding), sum(s[3] - s[2] for s in encoding))
    encoder_rows = [
        ("encoder: reading the files (files.read_file)", *read),
        ("encoder: tokenizing and encoding (its workers' CPU included)", *enc),
        ("encoder: the rest (labels, bucket pruning, cache write)",
         (w1 - w0) - read[0] - enc[0], (c1 - c0) - read[1] - enc[1]),
        ("encoder: whole, from its fork", w1 - w0, c1 - c0)]
  return ([(label, end - start, cpu1 - cpu0) for label, start, end, cpu0, cpu1 in rows],
          encoder_rows, imported)


def profile(experiment: str, threads: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    marks_file = tmp / "marks.txt"
    env = {**harness.embedlab_env(tmp / "cache", threads), MARKS: str(marks_file)}
    cpu_before = harness.children_cpu()
    begun = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--job", "train", experiment, "--workdir",
                    str(tmp / "run"), "--restart", "--no-progress"],
                   cwd=harness.REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    ended = time.perf_counter()
    cpu = harness.children_cpu() - cpu_before
    marks = []
    for line in marks_file.read_text().splitlines():
      pid, name, *numbers = line.split()
      marks.append((int(pid), name, *map(float, numbers)))
  main_rows, encoder_rows, imported = _segments(marks, begun, ended)
  return {"seconds": ended - begun, "cpu_seconds": cpu,
          "main": [{"segment": s, "seconds": round(w, 3), "cpu_seconds": round(c, 3)}
                   for s, w, c in main_rows],
          "encoder": [{"segment": s, "seconds": round(w, 3), "cpu_seconds": round(c, 3)}
                      for s, w, c in encoder_rows],
          "encoder_imported": imported}


def main() -> None:
  if len(sys.argv) > 1 and sys.argv[1] == "--job":
    _job(sys.argv[2:])
  parser = argparse.ArgumentParser()
  parser.add_argument("--experiment", default="experiments/sst2_fasttext.py")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  runs = []
  for i in range(args.repeats):
    run = profile(args.experiment, args.threads)
    runs.append(run)
    print(f"\ncold job {i + 1}: {run['seconds']:.2f} s wall, {run['cpu_seconds']:.2f} CPU s "
          "(all processes)")
    table = harness.Table([("segment", "62"), ("seconds", ">8.2f"), ("CPU s", ">7.2f")], sep=" ")
    print(table.header())
    for row in run["main"] + run["encoder"]:
      print(table.row(row["segment"], row["seconds"], row["cpu_seconds"]))
    print(f"the encoder had imported: {', '.join(run['encoder_imported']) or 'none'} of "
          f"{', '.join(HEAVY_READERS)}")
  harness.emit({"experiment": args.experiment, "threads": args.threads, "runs": runs})


if __name__ == "__main__":
  main()
