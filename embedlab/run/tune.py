"""``tune(experiment, budget)``: fastText's autotune for an embedlab experiment.

Searches the settings that matter for the experiment's model (learning rate, epochs, features;
for bag models n-grams and buckets; batch size; dropout where the model applies it) by training
on train and scoring on **dev only**: every trial runs with ``data.test`` removed, so the test
file is never opened during the search. The search stops starting trials when the next one (its
time estimated as the mean of the trials so far) would end past the wall-clock budget. Then the
best settings are written as a runnable experiment (``WORKDIR/best_experiment.py``: the base
experiment with the tuned keys overridden) and trained once with the test split, which reports
its test accuracy.

Why Optuna rather than a hand-written random or grid search: its TPE sampler (seeded here, so a
search is repeatable given the trials' results) models which values did well and proposes near
them, which a fixed grid cannot; conditional spaces (buckets only when n-grams > 1) are plain
``if``s in the objective; ``study.optimize(timeout=...)`` and ``study.stop()`` give the budget;
and ``enqueue_trial`` makes the base experiment the first trial, so the result is never worse on
dev than what one started from. Pruners (stopping a poor trial early) need intermediate dev
scores, which the fastText experiments do not produce (they evaluate once, at the end), so none
is used. Optuna is imported only here (the ``tune`` extra: ``pip install 'embedlab[tune]'``).

Work reused between trials: the encoded data (``data.encode_splits``' on-disk cache: a trial
whose data settings were seen before reads them back; another n-gram or bucket count encodes
once), and compiled programs through JAX's persistent compilation cache (set up by the
``embedlab`` command; a trial whose shapes were compiled before reads its programs back).

Command:
  embedlab tune experiments/sst2_fasttext.py --budget 120 --workdir runs/sst2_tune
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
import tempfile
import time
from typing import Any, Callable

from embedlab import config as config_lib
from embedlab.models import registry as models_registry
from embedlab.run import steps as steps_lib
from embedlab.run import train as train_lib

METRICS = {"dev_accuracy": "maximize", "dev_loss": "minimize"}


@dataclasses.dataclass
class Trial:
  """One trial: its settings (dotted config keys), its dev score and how long it took."""

  number: int
  params: dict[str, Any]
  dev_accuracy: float | None
  dev_loss: float | None
  seconds: float
  error: str = ""
  timings: dict = dataclasses.field(default_factory=dict)  # the run's phases (compile included)


@dataclasses.dataclass
class TuneResult:
  """What ``tune`` found: every trial, the best one, the file written and the final run."""

  trials: list[Trial]
  best: Trial
  best_config: config_lib.Config
  best_file: pathlib.Path
  search_seconds: float
  budget: float
  final: dict | None  # the best config's results.json (test accuracy), unless final=False


def check_arguments(budget: float, metric: str) -> None:
  """Raises ``ValueError`` naming the fix for a budget or metric ``tune`` cannot use.

  Example:
    >>> check_arguments(60, "dev_accuracy")
    >>> check_arguments(0, "dev_accuracy")
    Traceback (most recent call last):
    ...
    ValueError: tune: --budget 0 must be a positive number of seconds, e.g. --budget 120.
  """
  if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
    raise ValueError(f"tune: --budget {budget:g} must be a positive number of seconds, e.g. "
                     "--budget 120.")
  if metric not in METRICS:
    raise ValueError(f"tune: unknown metric {metric!r}; use --metric "
                     f"{' or --metric '.join(METRICS)}.")


def search_space(cfg: config_lib.Config) -> dict[str, tuple]:
  """The keys searched for ``cfg``'s model and their ranges, around the experiment's values.

  Returns ``{key: ("log", low, high) | ("int", low, high) | ("choice", values)}``.

  Example:
    >>> space = search_space(config_lib.Config())
    >>> sorted(space)[:3]
    ['data.ngrams', 'data.num_buckets', 'model.features']
    >>> space["model.features"]
    ('choice', (16, 32, 64, 128))
  """
  m, t, o, d = cfg.model, cfg.train, cfg.optim, cfg.data
  # rates far above the experiment's diverge (SST-2's SGD at 6.4 x 8: NaN within 30 steps)
  space: dict[str, tuple] = {"optim.learning_rate": ("log", o.learning_rate / 8,
                                                      o.learning_rate * 4)}
  if t.num_steps == 0:
    base = max(1, round(t.num_epochs))
    space["train.num_epochs"] = ("int", 1, max(3, 2 * base))
  space["model.features"] = ("choice", tuple(sorted({max(4, m.features // 4),
                                                     max(4, m.features // 2), m.features,
                                                     2 * m.features})))
  if models_registry.MODELS.spec(m.name).bags:  # n-grams are hashed ids added to the bag; the sequence models read words
    space["data.ngrams"] = ("int", 1, max(2, d.ngrams))
    buckets = d.num_buckets or 2_097_152
    space["data.num_buckets"] = ("choice", tuple(sorted({buckets // 8, buckets // 2, buckets})))
  space["train.batch_size"] = ("choice", tuple(sorted({max(8, t.batch_size // 2), t.batch_size,
                                                       2 * t.batch_size})))
  if m.name in ("cnn", "bilstm") or m.hidden:
    space["model.dropout"] = ("choice", (0.0, 0.1, 0.25, 0.5))
  return space


def base_params(cfg: config_lib.Config, space: dict[str, tuple]) -> dict[str, Any]:
  """The experiment's own values of the searched keys (the first trial)."""
  flat = config_lib.flatten(cfg)
  params = {k: flat[k] for k in space}
  if "train.num_epochs" in params:
    params["train.num_epochs"] = max(1, round(params["train.num_epochs"]))
  if params.get("data.num_buckets") == 0:
    params["data.num_buckets"] = 2_097_152
  return params


def trial_config(base: config_lib.Config, params: dict[str, Any]) -> config_lib.Config:
  """``base`` with a trial's values; buckets only where n-grams use them."""
  updates = dict(params)
  if "train.num_epochs" in updates:
    updates["train.num_epochs"] = float(updates["train.num_epochs"])
  # character n-grams use the buckets whatever the word n-grams
  if updates.get("data.ngrams", base.data.ngrams) < 2 and not base.data.subwords:
    updates["data.num_buckets"] = base.data.num_buckets if base.data.ngrams < 2 else 0
    updates["data.prune_buckets"] = False
  elif "data.ngrams" in updates:
    updates["data.prune_buckets"] = base.data.prune_buckets
  return config_lib.validate(config_lib.replace(base, updates))


def without_test(cfg: config_lib.Config) -> config_lib.Config:
  """``cfg`` reading no test split, and quiet: what each trial trains."""
  if cfg.data.source != "files":
    raise config_lib.ConfigError(
        f"tune: data.source = {cfg.data.source!r}; tune needs data.source = 'files' (train, "
        "dev or data.dev_fraction, test files) so that the search reads no test data.")
  if not cfg.data.dev and cfg.data.dev_fraction == 0:
    raise config_lib.ConfigError(
        "tune: the experiment has no dev split to score trials on; set data.dev to a file or "
        "--set data.dev_fraction=0.1 (a seeded part of train).")
  return config_lib.replace(cfg, {"data.test": "", "train.progress": False,
                                  "train.plots": False, "train.checkpoint_every": 1 << 30,
                                  "train.keep_checkpoints": 1})


def _dev_loss(run_dir: pathlib.Path, step: int) -> float | None:
  """The dev loss of the evaluation at ``step`` (the best one), from the run's metrics."""
  found = None
  path = run_dir / "metrics.jsonl"
  for line in path.read_text().splitlines() if path.is_file() else []:
    record = json.loads(line)
    if record.get("event") == "eval" and record.get("split") == "dev":
      if record.get("step") == step or found is None:
        found = record["loss"]
  return found


def run_trial(cfg: config_lib.Config) -> tuple[float, float | None, dict]:
  """Trains ``cfg`` (no test split) in a temporary directory; ``(dev accuracy, dev loss,
  timings)``, the timings the run's phases in seconds (``results.json``'s ``timings``)."""
  with tempfile.TemporaryDirectory(prefix="embedlab-tune-") as tmp:
    results = train_lib.train(cfg, pathlib.Path(tmp) / "run", progress=False,
                              echo=lambda _: None)
    if "test_accuracy" in results:  # never: the trial's config names no test file
      raise RuntimeError("tune: a trial read the test split.")
    return (results["dev_accuracy"], _dev_loss(pathlib.Path(tmp) / "run", results["best_step"]),
            results.get("timings", {}))


def best_experiment_text(experiment: str | pathlib.Path, overrides: list[str],
                         params: dict[str, Any], note: str) -> str:
  """The source of a runnable experiment: ``experiment`` with ``overrides``, then ``params``."""
  base = pathlib.Path(experiment).resolve()
  lines = "".join(f"    {k!r}: {v!r},\n" for k, v in params.items())
  return (f'"""Tuned {base.stem}: {note}\n\nCommand:\n  embedlab train THIS_FILE\n"""\n\n'
          "from embedlab import config as config_lib\n\n"
          f"BASE = {str(base)!r}\n"
          f"BASE_OVERRIDES = {list(overrides)!r}\n"
          f"TUNED = {{\n{lines}}}\n\n\n"
          "def get_config() -> config_lib.Config:\n"
          "  cfg = config_lib.load_config(BASE, BASE_OVERRIDES)\n"
          "  return config_lib.replace(cfg, {**TUNED, 'name': cfg.name + '_tuned'})\n")


def trial_table(trials: list[Trial], keys: list[str], best: int | None = None) -> str:
  """The trials as a text table: number, each searched key, dev accuracy and loss, seconds."""
  short = [k.split(".")[-1] for k in keys]
  widths = [max(len(s), 10) for s in short]
  head = "  #  " + " ".join(s.rjust(w) for s, w in zip(short, widths)) + "   dev acc  dev loss  seconds"
  rows = [head]
  for t in trials:
    cells = []
    for k, w in zip(keys, widths):
      v = t.params.get(k, "-")
      cells.append((f"{v:.4g}" if isinstance(v, float) else str(v)).rjust(w))
    score = (f"{t.dev_accuracy:9.4f} {t.dev_loss:9.4f}" if t.dev_loss is not None else
             f"{t.dev_accuracy:9.4f}          ") if t.dev_accuracy is not None else \
        f"{'failed':>9} {'':9}"
    mark = " *" if t.number == best else ""
    rows.append(f"{t.number:3d}  " + " ".join(cells) + f" {score} {t.seconds:8.1f}{mark}"
                + (f"  ({t.error})" if t.error else ""))
  return "\n".join(rows)


def tune(experiment: str | pathlib.Path, budget: float, workdir: str | pathlib.Path, *,
         overrides: list[str] | tuple[str, ...] = (), metric: str = "dev_accuracy",
         seed: int = 0, final: bool = True, clock: Callable[[], float] = time.monotonic,
         echo: Callable[[str], None] = print, trial_fn: Callable | None = None) -> TuneResult:
  """Searches ``experiment``'s settings on dev within ``budget`` seconds; writes and trains the best.

  Args:
    experiment: an experiment file (``experiments/sst2_fasttext.py``) or name.
    budget: wall-clock seconds for the search (the final training comes after it).
    workdir: a new directory (refused if it holds a tuning run): ``best_experiment.py``,
      ``trials.json`` and the final run (``best/``) go there; trials train in temporary
      directories, deleted after each.
    overrides: ``--set`` overrides applied to the experiment first.
    metric: ``dev_accuracy`` (maximized) or ``dev_loss`` (minimized).
    seed: the TPE sampler's seed.
    final: train the best config with its test split at the end.
    clock: seconds, monotonic (tests pass a fake one).
    echo: where lines are printed.
    trial_fn: ``cfg -> (dev accuracy, dev loss[, timings])`` for a trial (default
      ``run_trial``).

  Returns:
    A ``TuneResult``.
  """
  check_arguments(budget, metric)
  import optuna  # noqa: PLC0415 - only tune needs it

  workdir = pathlib.Path(workdir)
  best_file, final_dir = workdir / "best_experiment.py", workdir / "best"
  if best_file.exists() or final_dir.exists():
    raise FileExistsError(f"tune: {workdir} already holds a tuning run (best_experiment.py or "
                          "best/); choose another --workdir (tune deletes nothing).")
  base = config_lib.load_config(experiment, list(overrides))
  searched = without_test(base)
  space = search_space(base)
  keys = list(space)
  trial_fn = trial_fn or run_trial
  trials: list[Trial] = []
  start = clock()

  def objective(trial) -> float:
    params = {}
    for key, spec in space.items():
      if key == "data.num_buckets" and params.get("data.ngrams", 2) < 2 and not base.data.subwords:
        continue  # no n-grams: no buckets to choose
      if spec[0] == "log":
        params[key] = trial.suggest_float(key, spec[1], spec[2], log=True)
      elif spec[0] == "int":
        params[key] = trial.suggest_int(key, spec[1], spec[2])
      else:
        params[key] = trial.suggest_categorical(key, list(spec[1]))
    began = clock()
    record = Trial(trial.number, params, None, None, 0.0)
    trials.append(record)
    try:
      out = trial_fn(trial_config(searched, params))
      record.dev_accuracy, record.dev_loss = out[0], out[1]
      record.timings = dict(out[2]) if len(out) > 2 else {}
    except steps_lib.NonFiniteError as e:
      # a diverged trial is a result (too high a rate), not a fault: pruned, so the sampler
      # still learns from it
      record.error = "diverged: NaN/inf loss"
      raise optuna.TrialPruned(record.error) from e
    finally:
      record.seconds = clock() - began
      echo(trial_table([record], keys).splitlines()[1])
    value = record.dev_accuracy if metric == "dev_accuracy" else record.dev_loss
    if value is None:
      raise RuntimeError("tune: the trial recorded no dev loss.")
    return value

  def within_budget(study, _) -> None:
    done = [t.seconds for t in trials]
    used = clock() - start
    if used + statistics.mean(done) > budget:
      study.stop()

  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(direction=METRICS[metric],
                              sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
  study.enqueue_trial(base_params(base, space))
  echo(f"tune {base.name}: searching {', '.join(keys)} on dev for up to {budget:g} s "
       f"(test not read)")
  echo(trial_table([], keys))
  study.optimize(objective, timeout=budget, callbacks=[within_budget])
  search_seconds = clock() - start
  scored = [t for t in trials if t.dev_accuracy is not None]
  if not scored:
    raise RuntimeError("tune: no trial finished (every one diverged); lower the experiment's "
                       "optim.learning_rate and tune again.")
  best = next(t for t in trials if t.number == study.best_trial.number)
  best_cfg = trial_config(base, best.params)
  tuned = {k: v for k, v in config_lib.flatten(best_cfg).items()
           if v != config_lib.flatten(base)[k]}
  echo("\n" + trial_table(trials, keys, best.number))
  echo(f"search: {len(trials)} trials in {search_seconds:.1f} s of the {budget:g} s budget "
       f"({100 * search_seconds / budget:.0f}%); best trial {best.number}: dev accuracy "
       f"{best.dev_accuracy:.4f}")
  workdir.mkdir(parents=True, exist_ok=True)
  note = (f"the best of {len(trials)} trials of `embedlab tune` ({budget:g} s budget, "
          f"{metric}), dev accuracy {best.dev_accuracy:.4f}.")
  best_file.write_text(best_experiment_text(config_lib.resolve_experiment_path(experiment),
                                            list(overrides), tuned, note))
  (workdir / "trials.json").write_text(json.dumps(
      {"metric": metric, "budget_seconds": budget, "search_seconds": round(search_seconds, 3),
       "best_trial": best.number, "trials": [dataclasses.asdict(t) for t in trials]},
      indent=2) + "\n")
  echo(f"best config: {best_file} (embedlab train {best_file})")
  results = None
  if final:
    best_cfg = config_lib.load_config(best_file)
    results = train_lib.train(best_cfg, final_dir, progress=False, echo=lambda _: None)
    echo(f"best config trained in {final_dir}: dev accuracy {results['dev_accuracy']:.4f}"
         + (f", test accuracy {results['test_accuracy']:.4f}" if "test_accuracy" in results
            else ""))
  return TuneResult(trials, best, best_cfg, best_file, search_seconds, budget, results)
