"""Experiment configuration: frozen dataclasses, experiment files, command-line overrides.

Why frozen dataclasses rather than an ``ml_collections.ConfigDict``: they are typed (every
override is parsed by its field's declared type), immutable (``frozen=True`` makes the logged
config the config that ran), hashable (so they can be passed as static arguments to ``jit``),
and need nothing beyond the standard library.

Example:
  >>> from embedlab.config import Config, apply_overrides
  >>> cfg = apply_overrides(Config(), ["train.batch_size=256", "optim.learning_rate=0.3"])
  >>> cfg.train.batch_size, cfg.optim.learning_rate
  (256, 0.3)
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import os
import pathlib
import types
import typing
from typing import Any

from embedlab.core import names  # the optimizer and schedule names, without JAX
from embedlab.core import variants  # the table registry: names and capabilities, without JAX
from embedlab.data.options import DataConfig  # data's own options: the data layer sees no Config
from embedlab.models import registry as models  # the model registry, without JAX


class ConfigError(ValueError):
  """A configuration that cannot run: unknown key, wrong type or impossible value."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which model, and the shape of its embedding table.

  ``table`` picks the embedding, a variant of ``embedlab.core.variants.TABLES``
  (``embedlab.models.classifiers.make_embedder``): ``plain`` (one row per
  id), ``hashed`` (``table_exact`` rows for the most frequent ids plus ``table_buckets`` hashed
  rows shared by the rest), ``hash_embedding`` (a pool of ``table_buckets`` vectors, each id a
  learned mix of ``table_hashes`` of them), ``qr`` (quotient-remainder with ``table_collisions``
  rows in the remainder table, 0 = sqrt of the vocabulary, combined by ``table_combine``) or
  ``factorized`` (a rank-``table_rank`` table times a projection). ``param_dtype`` is the stored
  dtype of the embedding (``bfloat16``: half the bytes, for training too). On CPU a ``bfloat16``
  table is kept in ``float32`` unless ``compute_dtype`` is ``bfloat16`` too: XLA:CPU converts the
  whole ``bfloat16`` table to ``float32`` and back at every row update (one epoch of
  ``experiments/sst2_bag.py``: a 96 s train loop against 6.6 s; ``embedlab.models.classifiers.stored_dtype``).
  """

  name: str = "bag"
  features: int = 64
  init: str = "normal"
  init_scale: float = 0.1
  pooling: str = "mean"
  hidden: int = 0
  filter_widths: tuple[int, ...] = (3, 4, 5)
  num_filters: int = 100
  dropout: float = 0.0
  lstm_hidden: int = 128
  max_norm: float = 0.0
  pretrained: str = ""
  pretrained_mode: str = "finetune"
  pretrained_scale: float = 1.0
  compute_dtype: str = "float32"
  table: str = "plain"  # a name of variants.TABLES (variants.TableName)
  table_buckets: int = 0
  table_exact: int = 0
  table_hashes: int = 2
  table_collisions: int = 0
  table_combine: str = "mult"
  table_rank: int = 0
  param_dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer: dense optax for everything, or a row-sparse one for the tables."""

  name: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  momentum: float = 0.9
  weight_decay: float = 0.0
  clip_norm: float = 0.0
  tables: str = "dense"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How long to train, and how often to log, evaluate and checkpoint."""

  batch_size: int = 64
  num_epochs: float = 1.0
  num_steps: int = 0
  eval_every: int = 200
  log_every: int = 50
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  eval_batch_size: int = 512
  # multi-label data (data.multilabel): evaluation reports precision and recall at 1 and at
  # this k (fastText's `test FILE k`), micro-averaged as fastText's
  eval_k: int = 1
  steps_per_dispatch: int = 1
  skip_nonfinite: bool = False
  progress: bool = True
  plots: bool = True  # loss.png / accuracy.png at the end (~0.9 s); `embedlab compare --plots`
  # bag models: each training batch as one ragged id list of a fixed length (the run's longest
  # batch) instead of padded [B, L] rows, so a step reads only real ids (data.ragged_batches)
  ragged_batches: bool = False


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """How the run spreads over devices and hosts (``embedlab.core.meshes``).

  The devices form a ``data x model`` mesh: the batch is split over ``data``, every table's rows
  over ``model`` (padded with zero rows up to a multiple of ``model``). ``data=0`` puts every
  device not used by ``model`` on ``data``; with one device nothing is sharded and the run is the
  plain single-device program. ``table``: ``rows``, or ``rows_columns`` (columns also split over
  ``data``). ``dense``: ``replicate`` the other parameters, or ``model`` (split the last axis of
  each weight matrix over ``model`` where it divides). ``lookup``: how a row-sparse step gathers
  and updates the table's rows: ``shard_map`` (each shard serves the ids it owns, one ``psum``),
  ``xla`` (XLA's partitioner) or ``auto`` (the faster on the benchmark, see BENCHMARKS.md).
  ``distributed``: ``auto`` calls ``jax.distributed.initialize`` when ``coordinator_address`` is
  set or a cluster (SLURM, Open MPI, TPU pod, ``JAX_COORDINATOR_ADDRESS``) is detected; ``on``
  always; ``off`` never.
  """

  data: int = 0
  model: int = 1
  table: str = "rows"
  dense: str = "replicate"
  lookup: str = "auto"
  distributed: str = "auto"
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1


@dataclasses.dataclass(frozen=True)
class Config:
  """The whole experiment. ``get_config()`` in an experiment file returns one."""

  name: str = "experiment"
  seed: int = 0
  data: DataConfig = DataConfig()
  model: ModelConfig = ModelConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()


_CHOICES = {
    "data.source": ("synthetic", "files", "disk", "hub"),
    "model.name": models.MODELS.names,
    "data.format": ("auto", "csv", "tsv", "json", "parquet", "fasttext"),
    "model.init": ("normal", "uniform", "truncated_normal", "xavier_uniform", "xavier_normal",
                   "glorot_uniform", "glorot_normal", "lecun_normal", "lecun_uniform",
                   "he_normal", "he_uniform", "zeros"),
    "model.pooling": variants.BAG_MODES,
    "model.pretrained_mode": ("finetune", "freeze", "freeze_found"),
    "model.compute_dtype": ("float32", "bfloat16", "float16"),
    "model.table": variants.TABLES.names,
    **{f"model.{field}": values for spec in variants.TABLES.values()
       for field, values in spec.choices.items()},
    "model.param_dtype": ("float32", "bfloat16"),
    "optim.name": tuple(names.DENSE_OPTIMIZERS),
    "optim.schedule": names.SCHEDULES,
    "optim.tables": ("dense", *names.TABLE_OPTIMIZERS),
    "mesh.table": ("rows", "rows_columns"),
    "mesh.dense": ("replicate", "model"),
    "mesh.lookup": ("auto", "shard_map", "xla"),
    "mesh.distributed": ("auto", "on", "off"),
}
_POSITIVE = ("data.max_len", "data.min_freq", "data.ngrams", "model.features",
             "model.num_filters", "model.lstm_hidden", "model.table_hashes", "train.batch_size",
             "train.eval_every", "train.log_every", "train.keep_checkpoints",
             "train.eval_batch_size", "train.eval_k", "train.steps_per_dispatch",
             "data.synthetic_topics", "data.synthetic_words_per_topic", "data.synthetic_train_size",
             "data.synthetic_eval_size", "data.synthetic_length")
_NON_NEGATIVE = ("data.max_vocab", "data.num_buckets", "data.minn", "data.maxn",
                 "data.max_examples", "data.workers", "model.hidden",
                 "model.max_norm", "optim.learning_rate", "optim.warmup_steps",
                 "optim.weight_decay", "optim.clip_norm", "train.num_epochs",
                 "train.num_steps", "train.checkpoint_every", "data.synthetic_shared_words",
                 "model.init_scale", "model.pretrained_scale", "model.table_buckets",
                 "model.table_exact", "model.table_collisions", "model.table_rank",
                 "mesh.data", "mesh.num_processes")


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
  """``{"train.batch_size": 64, ...}`` for every leaf field of a config dataclass."""
  out = {}
  for f in dataclasses.fields(cfg):
    value = getattr(cfg, f.name)
    key = prefix + f.name
    if dataclasses.is_dataclass(value):
      out.update(flatten(value, key + "."))
    else:
      out[key] = value
  return out


def validate(cfg: Config) -> Config:
  """Checks every field's type and range; raises ``ConfigError`` naming the field and the fix."""
  flat = flatten(cfg)
  hints = _field_types()
  for key, value in flat.items():
    expected = hints[key]
    if not _is_instance(value, expected):
      raise ConfigError(f"config: {key} = {value!r} is a {type(value).__name__}, "
                        f"expected {_type_name(expected)}.")
  for key, choices in _CHOICES.items():
    if flat[key] not in choices:
      raise ConfigError(f"config: {key} = {flat[key]!r} is not one of {', '.join(choices)}"
                        f"{_closest_hint(str(flat[key]), choices)}.")
  for key, value in flat.items():
    if hints[key] is float and not math.isfinite(value):
      raise ConfigError(f"config: {key} = {value!r} is not a finite number; e.g. "
                        f"--set {key}={flatten(Config())[key]} (the default).")
  defaults = flatten(Config())
  for key in _POSITIVE:
    if flat[key] <= 0:
      raise ConfigError(f"config: {key} = {flat[key]!r} must be positive; e.g. "
                        f"--set {key}={defaults[key]} (the default).")
  for key in _NON_NEGATIVE:
    if flat[key] < 0:
      raise ConfigError(f"config: {key} = {flat[key]!r} must be >= 0; e.g. "
                        f"--set {key}={defaults[key]} (the default).")
  if not 0.0 <= cfg.data.dev_fraction < 1.0:
    raise ConfigError(f"config: data.dev_fraction = {cfg.data.dev_fraction} must be in [0, 1).")
  if not 0.0 <= cfg.model.dropout < 1.0:
    raise ConfigError(f"config: model.dropout = {cfg.model.dropout} must be in [0, 1).")
  if not 0.0 <= cfg.optim.momentum < 1.0:
    raise ConfigError(f"config: optim.momentum = {cfg.optim.momentum} must be in [0, 1), e.g. "
                      "--set optim.momentum=0.9.")
  if cfg.optim.learning_rate == 0:
    raise ConfigError("config: optim.learning_rate = 0 trains nothing; set a positive rate, "
                      "e.g. --set optim.learning_rate=0.001.")
  if cfg.data.ngrams > 1 and cfg.data.num_buckets == 0:
    raise ConfigError("config: data.ngrams > 1 needs data.num_buckets > 0 "
                      "(n-grams are hashed into that many buckets), e.g. "
                      "--set data.num_buckets=2000000.")
  if (cfg.data.minn == 0) != (cfg.data.maxn == 0) or cfg.data.minn > cfg.data.maxn:
    raise ConfigError(f"config: data.minn = {cfg.data.minn}, data.maxn = {cfg.data.maxn}: "
                      "character n-grams need 0 < data.minn <= data.maxn (their lengths in "
                      "characters), or both 0 for none; fastText's are --set data.minn=3 "
                      "--set data.maxn=6.")
  if cfg.data.subwords and cfg.data.num_buckets == 0:
    raise ConfigError("config: data.minn / data.maxn (character n-grams) need "
                      "data.num_buckets > 0 (they are hashed into that many buckets, shared "
                      "with word n-grams), e.g. --set data.num_buckets=2000000.")
  if cfg.data.prune_buckets and not cfg.data.hashed:
    raise ConfigError("config: data.prune_buckets prunes hashed n-gram buckets, but "
                      f"data.ngrams = {cfg.data.ngrams} and data.minn = 0 hash none; set "
                      "data.ngrams=2 (or data.minn / data.maxn) or data.prune_buckets=false.")
  for key in ("label_prefix", "label_separator"):
    if not getattr(cfg.data, key).strip():
      raise ConfigError(f"config: data.{key} = {getattr(cfg.data, key)!r} must hold a "
                        f"character that is not a space, e.g. "
                        f"--set data.{key}={getattr(DataConfig(), key)} (the default).")
  if cfg.data.source == "files" and not cfg.data.train:
    raise ConfigError("config: data.source = 'files' needs data.train (a file under the data "
                      "directory, e.g. sst2/train.tsv.gz).")
  if cfg.data.source in ("disk", "hub") and not cfg.data.path:
    raise ConfigError(f"config: data.source = {cfg.data.source!r} needs data.path.")
  if cfg.train.num_steps == 0 and cfg.train.num_epochs == 0:
    raise ConfigError("config: set train.num_steps or train.num_epochs to a positive value.")
  _validate_table(cfg.model, cfg.optim)
  if cfg.train.ragged_batches:
    _validate_ragged(cfg.model)
  if cfg.mesh.model < 1:
    raise ConfigError(f"config: mesh.model = {cfg.mesh.model} must be at least 1 (1 = tables "
                      "are not split over devices).")
  if cfg.mesh.process_id < -1:
    raise ConfigError(f"config: mesh.process_id = {cfg.mesh.process_id} must be -1 (from the "
                      "environment) or a process index 0..mesh.num_processes-1.")
  if cfg.mesh.num_processes and cfg.mesh.process_id >= cfg.mesh.num_processes:
    raise ConfigError(f"config: mesh.process_id = {cfg.mesh.process_id} must be below "
                      f"mesh.num_processes = {cfg.mesh.num_processes}.")
  if any(w <= 0 for w in cfg.model.filter_widths) or not cfg.model.filter_widths:
    raise ConfigError(f"config: model.filter_widths = {cfg.model.filter_widths} must be "
                      "positive widths, e.g. 3,4,5.")
  return cfg


def _validate_table(model: ModelConfig, optim: OptimConfig) -> None:
  """The table variant's own rules, from its registry entry (``embedlab.core.variants``)."""
  tables = variants.TABLES
  spec = tables.spec(model.table)
  for field, example in spec.required.items():
    if getattr(model, field) <= 0:
      raise ConfigError(f"config: model.table = {model.table!r} needs model.{field} > 0, e.g. "
                        f"--set model.{field}={example}.")
  if not spec.pretrained and model.pretrained:
    raise ConfigError(f"config: model.pretrained needs model.table = "
                      f"{variants.either(tables.names_with('pretrained'), quote=True)} "
                      f"(pretrained vectors are one row per word), not {model.table!r}.")
  if not spec.max_norm and model.max_norm:
    raise ConfigError(f"config: model.max_norm applies to model.table = "
                      f"{variants.either(tables.names_with('max_norm'), quote=True)} only, not "
                      f"{model.table!r}; set --set model.max_norm=0.")
  if optim.tables != "dense" and not spec.row_sparse:
    raise ConfigError(f"config: optim.tables = {optim.tables!r} updates rows of a table; "
                      f"model.table = {model.table!r} has none (its few weights are shared by "
                      f"many ids). Use --set optim.tables=dense, or model.table = "
                      f"{variants.either(tables.names_with('row_sparse'))}.")
  problem = spec.check(dataclasses.asdict(model)) if spec.check else None
  if problem:
    raise ConfigError(f"config: {problem}")


def _validate_ragged(model: ModelConfig) -> None:
  if not models.MODELS.spec(model.name).bags:
    raise ConfigError(f"config: train.ragged_batches pools ragged bags, which only "
                      f"model.name = {variants.either(models.MODELS.names_with('bags'), True)} "
                      f"does, not {model.name!r}; --set train.ragged_batches=false.")
  if not variants.TABLES.pools_rows(model.table, model.pooling, model.max_norm):
    raise ConfigError(f"config: train.ragged_batches needs "
                      f"{variants.TABLES.ragged_requirements(model.table)}; "
                      "--set train.ragged_batches=false.")


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
  """Returns a new config with ``key=value`` overrides applied, parsed by each field's type.

  Raises:
    ConfigError: for an unknown key (naming the closest valid key) or an unparsable value.
  """
  hints = _field_types()
  updates: dict[str, Any] = {}
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value "
                        "(e.g. train.batch_size=256).")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key not in hints:
      raise ConfigError(f"unknown config key {key!r}{_closest_hint(key, list(hints))}.")
    updates[key] = _parse(key, raw.strip(), hints[key])
  return validate(replace(cfg, updates))


def replace(cfg: Config, updates: dict[str, Any]) -> Config:
  """Returns a copy of ``cfg`` with dotted-key ``updates`` (already typed) applied."""
  groups: dict[str, dict[str, Any]] = {}
  top: dict[str, Any] = {}
  for key, value in updates.items():
    if "." in key:
      group, field = key.split(".", 1)
      groups.setdefault(group, {})[field] = value
    else:
      top[key] = value
  for group, fields in groups.items():
    top[group] = dataclasses.replace(getattr(cfg, group), **fields)
  return dataclasses.replace(cfg, **top)


def load_experiment(path: str | os.PathLike) -> types.ModuleType:
  """Imports an experiment file (``experiments/sst2_bag.py``, or just ``sst2_bag``)."""
  path = resolve_experiment_path(path)
  spec = importlib.util.spec_from_file_location(f"embedlab_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"experiment {path} defines no get_config() function.")
  return module


def resolve_experiment_path(path: str | os.PathLike) -> pathlib.Path:
  """Finds an experiment by path, or by name in ``./experiments``."""
  candidates = [pathlib.Path(path)]
  name = str(path)
  if not name.endswith(".py"):
    candidates += [pathlib.Path(name + ".py"), pathlib.Path("experiments") / (name + ".py")]
  for candidate in candidates:
    if candidate.is_file():
      return candidate
  known = sorted(p.stem for p in pathlib.Path("experiments").glob("*.py"))
  raise ConfigError(f"experiment {name!r} not found (looked for "
                    f"{', '.join(str(c) for c in candidates)})"
                    f"{_closest_hint(pathlib.Path(name).stem, known)}"
                    + (f"; known: {', '.join(known)}" if known else "") + ".")


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
  """``get_config()`` of an experiment file, with overrides applied and validated."""
  cfg = load_experiment(path).get_config()
  if not isinstance(cfg, Config):
    raise ConfigError(f"get_config() in {path} returned {type(cfg).__name__}, not a Config.")
  return apply_overrides(validate(cfg), list(overrides))


def to_dict(cfg: Config) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
  return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_dict(d: dict[str, Any]) -> Config:
  """Inverse of ``to_dict`` (used to read ``config.json`` back from a run directory)."""
  hints = _field_types()
  flat: dict[str, Any] = {}
  for group, value in d.items():
    if isinstance(value, dict):
      for k, v in value.items():
        flat[f"{group}.{k}"] = v
    else:
      flat[group] = value
  unknown = [k for k in flat if k not in hints]
  if unknown:
    raise ConfigError(f"config.json has unknown keys {unknown}"
                      f"{_closest_hint(unknown[0], list(hints))}.")
  typed = {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}
  return validate(replace(Config(), typed))


def describe_keys(cfg: Config) -> str:
  """Every config key with its type, value and allowed values: what ``--set`` accepts.

  Example:
    >>> for line in describe_keys(Config()).splitlines()[:2]: print(line.split())
    ['key', 'type', 'value', 'allowed']
    ['name', 'str', '"experiment"']
  """
  hints = _field_types()
  rows = [("key", "type", "value", "allowed")]
  for key, value in flatten(cfg).items():
    if key in _CHOICES:
      allowed = ", ".join(_CHOICES[key])
    elif key in _POSITIVE:
      allowed = "> 0"
    elif key in _NON_NEGATIVE:
      allowed = ">= 0"
    elif key in _UNIT_INTERVAL:
      allowed = "[0, 1)"
    else:
      allowed = ""
    rows.append((key, _type_name(hints[key]), json.dumps(value), allowed))
  widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
  widths = [max(w, m) for w, m in zip(widths, (30, 12, 30))]
  return "\n".join(("".join(c.ljust(w) for c, w in zip(r[:3], widths)) + r[3]).rstrip()
                   for r in rows)


_UNIT_INTERVAL = ("data.dev_fraction", "model.dropout", "optim.momentum")


def _field_types() -> dict[str, Any]:
  out = {}
  top = typing.get_type_hints(Config)
  for name, tp in top.items():
    if dataclasses.is_dataclass(tp):
      for sub, stp in typing.get_type_hints(tp).items():
        out[f"{name}.{sub}"] = stp
    else:
      out[name] = tp
  return out


def _is_instance(value: Any, tp: Any) -> bool:
  if tp is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if tp is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if typing.get_origin(tp) is tuple:
    (elem, _) = typing.get_args(tp)
    return isinstance(value, tuple) and all(_is_instance(v, elem) for v in value)
  return isinstance(value, tp)


def _type_name(tp: Any) -> str:
  if typing.get_origin(tp) is tuple:
    return f"tuple of {typing.get_args(tp)[0].__name__}"
  return tp.__name__


def _parse(key: str, raw: str, tp: Any) -> Any:
  try:
    if tp is bool:
      low = raw.lower()
      if low in ("true", "1", "yes", "on"):
        return True
      if low in ("false", "0", "no", "off"):
        return False
      raise ValueError(raw)
    if tp is int:
      return int(raw)
    if tp is float:
      return float(raw)
    if tp is str:
      return raw
    if typing.get_origin(tp) is tuple:
      elem = typing.get_args(tp)[0]
      return tuple(elem(p) for p in raw.strip("()[] ").split(",") if p.strip())
  except ValueError:
    pass
  raise ConfigError(f"override {key}={raw!r}: cannot parse as {_type_name(tp)}.")


def _closest_hint(word: str, choices) -> str:
  close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
  return f" (did you mean {close[0]!r}?)" if close else ""
