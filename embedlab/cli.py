"""The ``embedlab`` command. The only place where process-wide settings (logging, JAX) are made.

  embedlab train EXPERIMENT [--set K=V ...] [--workdir DIR] [--restart]
  embedlab config EXPERIMENT [--set K=V ...]
  embedlab tune EXPERIMENT --budget SECONDS [--metric dev_accuracy|dev_loss] [--workdir DIR]
  embedlab eval RUN_DIR [--split test] [--quantize int8|int4|int2]
  embedlab predict RUN_DIR [TEXT...] [--file PATH|-] [--k K] [--threshold T]
  embedlab summary EXPERIMENT [--set K=V ...]
  embedlab compare RUN_DIR... [--plots DIR]
  embedlab inspect RUN_DIR [--word W ...] [--analogy A B C] [-k K] [--plots [DIR]]
  embedlab export RUN_DIR --format word2vec|projector|npy OUT
  embedlab export RUN_DIR --quantize int8|int4|int2 OUT

Errors end with a one-line message and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import pathlib
import sys
import threading


_DESCRIPTION = """\
Train, evaluate and look inside embedding-table text classifiers.

An experiment is a Python file whose get_config() returns the whole config
(experiments/*.py); `--set KEY=VALUE` changes one key for one run. A run directory
(default runs/<experiment>) holds the config, vocabulary, metrics, checkpoints, plots
and results.json; running the same command again resumes it."""

_EPILOG = """\
examples:
  embedlab train experiments/quickstart.py
  embedlab config experiments/sst2_bag.py          # every key, its type, value and choices
  embedlab train experiments/sst2_bag.py --set optim.learning_rate=0.3 --workdir runs/lr03
  embedlab eval runs/sst2_bag --split test
  embedlab tune experiments/sst2_fasttext.py --budget 120
  embedlab predict runs/sst2_bag "a gorgeous , witty , seductive movie ."

Errors print one line; --debug shows the traceback. Settings: EMBEDLAB_DATA (data
directory), EMBEDLAB_CACHE (encoded datasets), EMBEDLAB_COMPILE_CACHE (compiled programs,
"off" to disable)."""


def _at_least(low: int):
  """An argparse type: an integer >= ``low`` (its error names the value and the bound)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"{value} is below {low}")
    return value
  parse.__name__ = f"integer >= {low}"
  return parse


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="embedlab", description=_DESCRIPTION, epilog=_EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--debug", action="store_true", help="show tracebacks")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  train = sub.add_parser(
      "train", help="train an experiment (resumes the run in its directory)",
      description="Train an experiment. Running the same command again resumes from the latest "
      "checkpoint; a finished run is left as it is. A run directory holding a different config "
      "is refused: choose another --workdir, or pass --restart to delete that run first.",
      epilog="List every config key, its type, value and allowed values with: embedlab config "
      "EXPERIMENT [--set K=V ...]")
  train.add_argument("experiment", help="experiments/NAME.py, or NAME")
  train.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                     help="change a config key, e.g. --set train.batch_size=256 (repeatable; "
                     "`embedlab config EXPERIMENT` lists the keys)")
  train.add_argument("--workdir", help="run directory (default runs/<experiment>)")
  train.add_argument("--restart", action="store_true",
                     help="delete the run in the run directory (only what embedlab wrote "
                     "there; refused where it holds no embedlab run) and train from step 0")
  train.add_argument("--no-progress", action="store_true", help="no progress bar")

  tu = sub.add_parser(
      "tune", help="search an experiment's settings on dev within a time budget, then train "
      "the best", description="Search the settings that matter for the experiment's model "
      "(learning rate, epochs, features, n-grams, buckets, batch size, dropout) on the dev split "
      "with Optuna's TPE sampler, within --budget seconds; the test split is not read. Writes "
      "WORKDIR/best_experiment.py (an experiment `embedlab train` runs), prints the trials and "
      "trains the best config, reporting its test accuracy.")
  _experiment_arguments(tu)
  tu.add_argument("--budget", type=float, required=True, metavar="SECONDS",
                  help="wall-clock seconds for the search, e.g. 120")
  tu.add_argument("--metric", default="dev_accuracy",
                  help="dev_accuracy (default, maximized) or dev_loss (minimized)")
  tu.add_argument("--workdir", help="where best_experiment.py, trials.json and the best run go "
                  "(default runs/<experiment>_tune; must not hold a tuning run)")
  tu.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
  tu.add_argument("--no-final", action="store_true",
                  help="write the best config but do not train it")

  cf = sub.add_parser("config", help="list every config key: type, value, allowed values",
                      description="Print the experiment's config, one key a line: its type, its "
                      "value (after --set) and the values it allows. The keys are what --set "
                      "takes.")
  _experiment_arguments(cf)

  ev = sub.add_parser("eval", help="evaluate a run's best checkpoint on a split",
                      description="Accuracy and loss of a run's best checkpoint on a split, "
                      "encoded with the run's own vocabulary and labels.")
  ev.add_argument("run_dir")
  ev.add_argument("--split", default="test", choices=("train", "dev", "test"))
  ev.add_argument("--quantize", choices=("int8", "int4", "int2"),
                  help="evaluate with the embedding quantized row-wise (as export --quantize)")

  pr = sub.add_parser("predict", help="classify texts with a run's best checkpoint",
                      description="Classify texts with a run's best checkpoint: one JSON line a "
                      "text, with its most probable labels and their probabilities (a softmax "
                      "over the classes, or for a multi-label run each label's sigmoid). Texts "
                      "come from the arguments, --file, or standard input when neither is given.")
  pr.add_argument("run_dir", help="a run directory (runs/<experiment>)")
  pr.add_argument("texts", nargs="*", help="the texts, each one argument (quote it)")
  pr.add_argument("--file", metavar="PATH", help="also classify each line of PATH ('-' reads "
                  "standard input, as does giving no texts at all); a line's leading labels "
                  "(fastText's __label__NAME, the run's data.label_prefix) are left out")
  pr.add_argument("-k", "--k", type=_at_least(1), default=1, help="labels per text, most probable "
                  "first (default 1)")
  pr.add_argument("--threshold", type=float, default=0.0,
                  help="leave out labels less probable than this (default 0)")

  sm = sub.add_parser("summary", help="what the experiment's model looks like",
                      description="The experiment's tables, their weights and bytes with the "
                      "optimizer's slots, and the shapes at each stage of the model (reads the "
                      "data, trains nothing).")
  _experiment_arguments(sm)

  cp = sub.add_parser("compare", help="a table of the results of several runs")
  cp.add_argument("run_dirs", nargs="+")
  cp.add_argument("--plots", metavar="DIR", help="also write DIR/curves.png: loss and dev "
                  "accuracy of the runs side by side")

  ins = sub.add_parser("inspect", help="look inside a run's embedding table: summary, "
                       "neighbours, analogies, pictures")
  ins.add_argument("run_dir")
  ins.add_argument("--word", dest="words", nargs="+", default=[], metavar="W",
                   help="print the nearest neighbours (cosine) of these words")
  ins.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"),
                   help="print the words nearest to A - B + C (king man woman -> queen)")
  ins.add_argument("-k", type=_at_least(1), default=10, help="neighbours per query (default 10)")
  ins.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  ins.add_argument("--plots", nargs="?", const="", metavar="DIR",
                   help="write embedding.png (PCA of the words: the --word words and their "
                   "neighbours, else the --top most frequent), norms.png and curves.png to DIR "
                   "(default RUN_DIR/plots)")
  ins.add_argument("--top", type=_at_least(2), default=500, help="words in embedding.png (default 500)")

  ex = sub.add_parser("export", help="write a run's table as word2vec text, TensorBoard "
                      "projector files or numpy")
  ex.add_argument("run_dir")
  ex.add_argument("--format", choices=("word2vec", "projector", "npy"),
                  help="required, except with --quantize (which writes npy arrays)")
  ex.add_argument("out", help="output file (word2vec: .txt or .txt.gz; npy: .npy) or "
                  "directory (projector)")
  ex.add_argument("--checkpoint", default="best", choices=("best", "latest"))
  ex.add_argument("--quantize", choices=("int8", "int4", "int2"),
                  help="write the stored embedding quantized row-wise (int8, or packed 4-bit or "
                  "2-bit values, and a float32 scale per row) as OUT.npz")
  return parser


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
  """An experiment and its ``--set`` overrides (``config`` and ``summary``)."""
  parser.add_argument("experiment", help="experiments/NAME.py, or NAME")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V",
                      help="change a config key first")


def _train(args) -> int:
  from embedlab import config as config_lib  # noqa: PLC0415 - no JAX yet

  module = config_lib.load_experiment(args.experiment)
  base = pathlib.Path(args.workdir or pathlib.Path("runs") / pathlib.Path(args.experiment).stem)
  sweep = getattr(module, "get_sweep", lambda: None)()
  runs = [(base, list(args.overrides))]
  if sweep:
    runs = [(base / _sweep_name(extra), list(args.overrides) + list(extra)) for extra in sweep]
  configs = [config_lib.load_config(args.experiment, overrides) for _, overrides in runs]
  _check_run_dirs(args, runs, configs)
  first = configs[0]
  encoder = _encode_ahead(first)
  try:
    from embedlab.run import report  # noqa: PLC0415 - JAX loads meanwhile
    from embedlab.core import meshes  # noqa: PLC0415 - JAX loads meanwhile
    from embedlab.run import placement  # noqa: PLC0415
    from embedlab.run import train  # noqa: PLC0415 - JAX loads meanwhile
  finally:
    _wait(encoder)
  # before anything starts JAX's backends: join the other processes of a multi-host run
  placement.initialize_distributed(first.mesh)
  done = []
  for (workdir, overrides), cfg in zip(runs, configs):
    print(f"== {cfg.name} -> {workdir}" + (f"  ({' '.join(overrides)})" if overrides else ""))
    results = train.train(cfg, workdir, restart=args.restart, progress=not args.no_progress)
    planted = None
    # show what the embedding layer learned (one process writes the run directory)
    if cfg.data.source == "synthetic" and meshes.is_primary():
      from embedlab.run import inspection  # noqa: PLC0415
      planted = inspection.record_planted_structure(workdir)
      results = json.loads((pathlib.Path(workdir) / "results.json").read_text())
    print(json.dumps(results, indent=2))
    if planted is not None:
      check, picture = planted
      print(f"planted structure: {check}; picture: {picture}")
    done.append(workdir)
  if len(done) > 1:
    print(report.compare_table(done))
  return 0


def _check_run_dirs(args, runs, configs) -> None:
  """Refuses at once, before any data is read, a run whose directory cannot take it (another
  config there, in use, ``--restart`` of a directory that holds no run): nothing is written."""
  from embedlab.run import rundir  # noqa: PLC0415 - no JAX yet

  for (workdir, _), cfg in zip(runs, configs):
    if not (cfg.mesh.coordinator_address or cfg.mesh.num_processes > 1):
      rundir.run_dir_state(workdir, cfg, restart=args.restart)


def _encode_ahead(cfg) -> int | None:
  """Forks a process that encodes ``cfg``'s data into the cache (``cache.encode_splits``) while
  this one imports JAX, so the two overlap on a cold start (SST-2: reading and tokenizing, ~1 CPU
  second, against ~0.9 s of imports); ``train`` then reads the cache. Returns its
  pid, or None where the data is cached already or forking is not safe (JAX already started, a
  multi-process run, not Linux). Should it fail, ``train`` encodes again and reports the error.
  """
  from embedlab.data import workers as _fork  # noqa: PLC0415 - numpy only, no JAX
  from embedlab.data import cache as cache_lib  # noqa: PLC0415 - numpy only, no JAX

  multi_process = cfg.mesh.coordinator_address or cfg.mesh.num_processes > 1
  if multi_process or not _fork.can_fork() or cache_lib.is_cached(cfg.data, cfg.seed):
    return None
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid:
    return pid
  code = 1
  try:
    cache_lib.encode_splits(cfg.data, cfg.seed)
    code = 0
  except BaseException:  # noqa: BLE001 - the main process encodes again and reports it
    pass
  finally:
    os._exit(code)  # pylint: disable=protected-access


def _wait(pid: int | None) -> None:
  if pid is not None:
    os.waitpid(pid, 0)


def _sweep_name(overrides) -> str:
  name = "_".join(o.replace("=", "-").split(".")[-1] for o in overrides) or "base"
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _tune(args) -> int:
  from embedlab.run import tune  # noqa: PLC0415 - JAX and Optuna load here

  tune.check_arguments(args.budget, args.metric)
  stem = pathlib.Path(args.experiment).stem
  workdir = args.workdir or pathlib.Path("runs") / f"{stem}_tune"
  tune.tune(args.experiment, args.budget, workdir, overrides=args.overrides,
            metric=args.metric, seed=args.seed, final=not args.no_final)
  return 0


def _summary(args) -> int:
  from embedlab import config as config_lib  # noqa: PLC0415
  from embedlab.data import cache as cache_lib  # noqa: PLC0415
  from embedlab.run import report  # noqa: PLC0415
  from embedlab.run import build as build_lib  # noqa: PLC0415

  cfg = config_lib.load_config(args.experiment, args.overrides)
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  _, steps = build_lib.total_steps(cfg, len(data.train_labels))
  print(report.summary_text(cfg, data, build_lib.build(cfg, data, steps)))
  return 0


def _text_lines(source: str) -> list[str]:
  """The non-blank lines of ``source`` (a path, or ``-`` for standard input), read as the data
  files are (``embedlab.data.files.decode_lines``); a file that cannot be read or is not UTF-8
  is an error naming it and the line."""
  from embedlab.data import files  # noqa: PLC0415

  name = "standard input" if source == "-" else source
  try:
    if source == "-":
      data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
      data = pathlib.Path(source).read_bytes()
  except OSError as e:
    raise ValueError(f"predict: cannot read --file {name}: {e.strerror or e}.") from None
  lines, bad = files.decode_lines(data)
  if bad:
    first = min(bad)
    raise ValueError(f"predict: {name}, line {first}: {bad[first]}.")
  return [line.rstrip("\r") for line in lines if line.strip()]


def _predict(args) -> int:
  from embedlab.data import files  # noqa: PLC0415
  from embedlab.run import loaded  # noqa: PLC0415

  texts = list(args.texts)
  piped = (not texts and sys.stdin is not None and not sys.stdin.closed
           and not sys.stdin.isatty())  # no texts given: read them from a pipe or file
  source = args.file or ("-" if piped else None)
  lines = _text_lines(source) if source else []
  if not texts and not lines:
    raise ValueError("predict: no texts; give them as arguments or with --file PATH (- for "
                     "standard input), one a line.")
  run = loaded.load_run(args.run_dir)
  # fastText lines (a test file): their leading labels are not text, as for fastText's predict
  texts += [files.split_labels(line, run.config.data.label_prefix)[1] for line in lines]
  for text, labels in zip(texts, run.predict(texts, k=args.k, threshold=args.threshold)):
    print(json.dumps({"text": text, "label": labels[0][0] if labels else None,
                      "labels": [{"label": n, "probability": round(p, 4)} for n, p in labels]}))
  return 0


def _inspect(args) -> int:
  import time  # noqa: PLC0415
  from embedlab.analysis import geometry, neighbours  # noqa: PLC0415
  from embedlab.run import inspection  # noqa: PLC0415
  from embedlab.run import report  # noqa: PLC0415

  emb = inspection.load_embedding(args.run_dir, args.checkpoint)
  print(f"run {emb.run_dir}: experiment {emb.config.name}, model {emb.config.model.name}, "
        f"{args.checkpoint} checkpoint (step {emb.step})")
  initial = None
  try:
    initial = inspection.initial_table(emb.config)
  except Exception as e:  # noqa: BLE001 - the summary goes on without the comparison
    print(f"(rows changed by training: unknown; the initial table could not be rebuilt: "
          f"{_one_line(e)})")
  summary = (inspection.summarize_run(emb, initial=initial) if initial is not None else
             geometry.summarize_table(emb.table, words=emb.num_words))
  from embedlab.core import variants  # noqa: PLC0415
  if not variants.TABLES.spec(emb.config.model.table).one_row_per_id:
    from embedlab.models import classifiers as models  # noqa: PLC0415
    from embedlab.run import model_args  # noqa: PLC0415
    embedder = model_args.make_embedder(emb.config.model, emb.table.shape[0])
    stored = models.table_summary(embedder, emb.embed)
    parts = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in sorted(emb.embed.items()))
    print(f"stored as {stored} ({parts}); the vectors below are every id looked up through it")
  print(summary)
  # with character n-grams: fastText's word vectors (a word's row and its n-grams' rows)
  words, tokens = inspection.vocabulary_vectors(emb), emb.tokens[:emb.num_words]
  found = []
  if args.words:
    start = time.perf_counter()
    found = inspection.word_neighbours(emb, args.words, k=args.k, vectors=words)
    took = time.perf_counter() - start
    print(f"nearest neighbours by cosine similarity ({len(tokens):,} words searched, "
          f"{took * 1000:.1f} ms):")
    for word, row in zip(args.words, found):
      print(f"  {word:<16} " + "  ".join(f"{w} {s:.3f}" for w, s in row))
  if args.analogy:
    a, b, c = args.analogy
    row = neighbours.analogy(words, tokens, a, b, c, k=args.k)
    print(f"{a} - {b} + {c} = " + "  ".join(f"{w} {s:.3f}" for w, s in row))
  if args.plots is not None:
    out = pathlib.Path(args.plots or emb.run_dir / "plots")
    selected = list(dict.fromkeys(args.words + [w for row in found for w, _ in row]))
    pictures = [
        inspection.plot_embedding(emb, out / "embedding.png", words=selected, top=args.top),
        inspection.plot_norms(emb, out / "norms.png", initial=initial),
        report.plot_training_curves([emb.run_dir], out / "curves.png")]
    print("pictures: " + ", ".join(str(p.path) for p in pictures))
  return 0


def _export(args) -> int:
  from embedlab.run import inspection  # noqa: PLC0415

  if args.format is None and not args.quantize:
    raise ValueError("export: choose --format word2vec, projector or npy (or --quantize int8).")
  if args.quantize:
    if args.format not in (None, "npy"):
      raise ValueError(f"export: --quantize writes numpy arrays; use --format npy (not "
                       f"{args.format}).")
    paths, info = inspection.export_quantized(args.run_dir, args.out, args.quantize,
                                              checkpoint=args.checkpoint)
    print("wrote " + ", ".join(str(p) for p in paths))
    print(info)
    return 0
  paths = inspection.export_run(args.run_dir, args.format, args.out, checkpoint=args.checkpoint)
  print("wrote " + ", ".join(str(p) for p in paths))
  if args.format == "word2vec":
    print(f"read it with gensim: KeyedVectors.load_word2vec_format({str(paths[0])!r}); start "
          f"another experiment's table from it: --set model.pretrained={paths[0].absolute()}")
  elif args.format == "projector":
    print(f"view it: tensorboard --logdir {paths[0].parent} (Projector tab), or load "
          f"tensors.tsv and metadata.tsv at https://projector.tensorflow.org")
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


def _enable_compilation_cache() -> None:
  """JAX's persistent compilation cache, so a second run of an experiment skips compiling its
  steps: ``EMBEDLAB_COMPILE_CACHE`` (default ``~/.cache/embedlab/jax``; ``off`` disables).

  Set through JAX's environment variables when JAX is not imported yet, so that importing it
  (~0.6 s) still overlaps ``_encode_ahead``'s forked encoding; through ``jax.config`` when it is.
  """
  where = os.environ.get("EMBEDLAB_COMPILE_CACHE", "~/.cache/embedlab/jax")
  if where.lower() in ("off", "0", "false", ""):
    return
  settings = {"jax_compilation_cache_dir": os.path.expanduser(where),
              "jax_persistent_cache_min_compile_time_secs": 0.05}
  jax = sys.modules.get("jax")
  for name, value in settings.items():
    if jax is not None:
      jax.config.update(name, value)
    else:
      os.environ[name.upper()] = str(value)


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  if extra:
    if args.command == "predict" and not any(e.startswith("-") and e != "-" for e in extra):
      # texts after an option (``predict RUN -k 3 "a text"``): argparse fills a positional
      # list from one run of arguments only, so the later ones come back unrecognized
      args.texts = [*args.texts, *extra]
    else:
      parser.error(f"unrecognized arguments: {' '.join(extra)}")
  logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax._src.xla_bridge"):
    logging.getLogger(noisy).setLevel(logging.ERROR)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  _enable_compilation_cache()
  try:
    if args.command == "train":
      return _train(args)
    if args.command == "summary":
      return _summary(args)
    if args.command == "tune":
      return _tune(args)
    if args.command == "config":
      from embedlab import config as config_lib  # noqa: PLC0415
      print(config_lib.describe_keys(config_lib.load_config(args.experiment, args.overrides)))
      return 0
    if args.command == "eval":
      from embedlab.run import loaded  # noqa: PLC0415
      print(json.dumps(loaded.evaluate_run(args.run_dir, args.split, quantize=args.quantize),
                       indent=2))
      return 0
    if args.command == "predict":
      return _predict(args)
    if args.command == "compare":
      from embedlab.run import report  # noqa: PLC0415
      print(report.compare_table(args.run_dirs))
      if args.plots:
        out = pathlib.Path(args.plots) / "curves.png"
        print(f"picture: {report.plot_training_curves(args.run_dirs, out).path}")
      return 0
    if args.command == "inspect":
      return _inspect(args)
    if args.command == "export":
      return _export(args)
  except KeyboardInterrupt:
    print("embedlab: interrupted; the last checkpoint is kept (run the same command to resume).",
          file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - one line for users, traceback with --debug
    if type(e).__name__ == "Stopped":  # train.Stopped: SIGTERM / SIGINT, checkpoint saved
      print(f"embedlab {args.command}: {e}", file=sys.stderr)
      return 128 + e.signum
    if args.debug:
      raise
    message = _one_line(e)
    print(f"embedlab {args.command}: error: {message}", file=sys.stderr)
    return 1
  return 2


def run() -> None:
  """The ``embedlab`` command: ``main()``, then the process ends.

  When nothing is left running (no thread but this one, no JAX distributed client), the exit
  handlers run and the process ends at once, skipping the interpreter's teardown of every
  module and of XLA's thread pools: ~0.3 s, a tenth of a warm SST-2 job. Everything a command
  writes is written and closed before ``main`` returns.
  """
  code = main()
  sys.stdout.flush()
  sys.stderr.flush()
  run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython
  from embedlab.data import workers as _fork  # noqa: PLC0415 - no JAX import

  if (run_exit_handlers is None or not _only_this_thread()
      or _fork.distributed_client_running()):
    sys.exit(code)
  run_exit_handlers()
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _only_this_thread() -> bool:
  return all(t is threading.current_thread() or t.daemon for t in threading.enumerate())


if __name__ == "__main__":
  run()
