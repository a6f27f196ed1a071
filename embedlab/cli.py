"""The ``embedlab`` command. The only place where process-wide settings (logging, JAX) are made.

  embedlab train EXPERIMENT [--set K=V ...] [--workdir DIR] [--restart]
  embedlab eval RUN_DIR [--split test]
  embedlab predict RUN_DIR TEXT...
  embedlab summary EXPERIMENT [--set K=V ...]
  embedlab compare RUN_DIR...

Errors end with a one-line message and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="embedlab", description=__doc__.split("\n")[0])
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  sub = parser.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="train an experiment (resumes an existing run)")
  train.add_argument("experiment", help="experiments/NAME.py, or NAME")
  train.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                     help="override a config field, e.g. --set train.batch_size=256")
  train.add_argument("--workdir", help="run directory (default runs/<experiment>)")
  train.add_argument("--restart", action="store_true", help="start over in the run directory")
  train.add_argument("--no-progress", action="store_true", help="no progress bar")

  ev = sub.add_parser("eval", help="evaluate a run's best checkpoint")
  ev.add_argument("run_dir")
  ev.add_argument("--split", default="test", choices=("train", "dev", "test"))

  pr = sub.add_parser("predict", help="classify texts with a run's best checkpoint")
  pr.add_argument("run_dir")
  pr.add_argument("texts", nargs="+")

  sm = sub.add_parser("summary", help="what the experiment's model looks like")
  sm.add_argument("experiment")
  sm.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")

  cp = sub.add_parser("compare", help="a table of the results of several runs")
  cp.add_argument("run_dirs", nargs="+")
  return parser


def _train(args) -> int:
  from embedlab import config as config_lib, report, train  # noqa: PLC0415

  module = config_lib.load_experiment(args.experiment)
  base = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
  sweep = getattr(module, "get_sweep", lambda: None)()
  runs = [(base, list(args.overrides))]
  if sweep:
    runs = [(base / _sweep_name(extra), list(args.overrides) + list(extra)) for extra in sweep]
  done = []
  for workdir, overrides in runs:
    cfg = config_lib.load_config(args.experiment, overrides)
    print(f"== {cfg.name} -> {workdir}" + (f"  ({' '.join(overrides)})" if overrides else ""))
    results = train.train(cfg, workdir, restart=args.restart, progress=not args.no_progress)
    print(json.dumps(results, indent=2))
    done.append(workdir)
  if len(done) > 1:
    print(report.compare_table(done))
  return 0


def _sweep_name(overrides) -> str:
  name = "_".join(o.replace("=", "-").split(".")[-1] for o in overrides) or "base"
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _summary(args) -> int:
  from embedlab import config as config_lib, data as data_lib, report, train  # noqa: PLC0415

  cfg = config_lib.load_config(args.experiment, args.overrides)
  data = data_lib.encode_splits(cfg.data, cfg.seed)
  _, steps = train.total_steps(cfg, len(data.train_labels))
  print(report.summary_text(cfg, data, train.build(cfg, data, steps)))
  return 0


def _one_line(error: Exception) -> str:
  """The message a user needs; for errors raised inside a jitted computation (which arrive
  wrapped with a traceback), the original exception's last line."""
  text = str(error).strip()
  if not text:
    return type(error).__name__
  lines = text.splitlines()
  inner = [ln for ln in lines if ln.startswith(("ValueError: ", "TypeError: "))]
  return inner[-1].split(": ", 1)[1] if inner else lines[0]


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    if args.command == "train":
      return _train(args)
    if args.command == "summary":
      return _summary(args)
    if args.command == "eval":
      from embedlab import train  # noqa: PLC0415
      print(json.dumps(train.evaluate_run(args.run_dir, args.split), indent=2))
      return 0
    if args.command == "predict":
      from embedlab import train  # noqa: PLC0415
      for row in train.predict(args.run_dir, args.texts):
        print(json.dumps(row))
      return 0
    if args.command == "compare":
      from embedlab import report  # noqa: PLC0415
      print(report.compare_table(args.run_dirs))
      return 0
  except KeyboardInterrupt:
    print("embedlab: interrupted; the last checkpoint is kept (run the same command to resume).",
          file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - one line for users, traceback with --debug
    if args.debug:
      raise
    message = _one_line(e)
    print(f"embedlab {args.command}: error: {message}", file=sys.stderr)
    return 1
  return 2


if __name__ == "__main__":
  sys.exit(main())
