"""The config turned into what a run needs: the model, its initial params, the optimizers, the
step count; where ``run/`` reads the config and hands plain arguments to ``core``, ``data`` and
``models``."""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedlab import config as config_lib
from embedlab.core import ids as ids_lib
from embedlab.core import optim as optim_lib
from embedlab.core import meshes
from embedlab.core import tables
from embedlab.data import batches as batch_lib
from embedlab.data import cache as cache_lib
from embedlab.data import paths as paths_lib
from embedlab.models import classifiers as models_lib
from embedlab.run import model_args, resources
from embedlab.run import steps as steps_lib


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything built from a config and its data before training starts."""

  model: models_lib.Model
  optimizer: optax.GradientTransformation
  table_optimizer: Any  # a sparse.SparseOptimizer or None (dense path)
  row_mask: Any  # bool [rows] (True = trainable) for the sparse path, or None
  params: Any
  pretrained_found: int
  frozen: tuple[str, ...]
  rng: Any = None  # the train state's key (init_state), when made with the params
  memory_estimate: dict | None = None  # resources.check_fits' estimate, bytes by part


def total_steps(cfg: config_lib.Config, num_train: int) -> tuple[int, int]:
  """``(steps_per_epoch, total_steps)`` of a config for ``num_train`` examples."""
  per_epoch = num_train // cfg.train.batch_size
  if per_epoch == 0:
    raise config_lib.ConfigError(
        f"train.batch_size={cfg.train.batch_size} is larger than the training set "
        f"({num_train} examples); lower it, e.g. --set train.batch_size={max(num_train, 1)}.")
  steps = cfg.train.num_steps or math.ceil(cfg.train.num_epochs * per_epoch)
  return per_epoch, steps


def build(cfg: config_lib.Config, data: cache_lib.EncodedData, steps: int) -> Setup:
  """The model, its initial params and its optimizer(s) for a config and its data."""
  estimate = resources.check_fits(cfg, data.num_embeddings, len(data.label_names),
                                  data.train_ids.shape[1])
  pretrained, found, rng = None, None, None
  if cfg.model.pretrained:
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    pretrained, found = _load_pretrained(cfg, data, jax.random.fold_in(key, 1))
  validate_ids(data)
  model = model_args.make_model(cfg.model, data.num_embeddings, len(data.label_names),
                                pretrained, oob="clip")
  if pretrained is not None:  # the pretrained table stays out of any program
    params = model.init(key)
  elif -2**31 <= cfg.seed < 2**31:  # one compilation for the keys and the initializers
    params, rng = jax.jit(lambda seed: (model.init(seed_key(seed, 0)), seed_key(seed, 1)))(
        np.int32(cfg.seed))
  else:  # a seed beyond int32: its keys made eagerly, from the Python int
    params = jax.jit(model.init)(seed_key(cfg.seed, 0))
  frozen, row_masks = [], {}
  mode = cfg.model.pretrained_mode
  if pretrained is not None and mode == "freeze":
    frozen.append(steps_lib.TABLE_PATH)
  elif pretrained is not None and mode == "freeze_found":
    row_masks[steps_lib.TABLE_PATH] = ~found
  params, row_masks = _pad_for_mesh(cfg, params, row_masks)
  table_optimizer, row_mask = None, None
  if cfg.optim.tables != "dense":
    from embedlab.core import sparse as sparse_lib  # noqa: PLC0415 - only on the sparse path
    row_mask = row_masks.pop(steps_lib.TABLE_PATH, None)
    if steps_lib.TABLE_PATH in frozen:
      frozen.remove(steps_lib.TABLE_PATH)
      row_mask = np.zeros(params["embed"]["table"].shape[0], bool)
    row_mask = None if row_mask is None else jnp.asarray(row_mask)
    schedule = optim_lib.make_schedule(cfg.optim.schedule, cfg.optim.learning_rate, steps,
                                       cfg.optim.warmup_steps)
    table_optimizer = sparse_lib.get_sparse_optimizer(cfg.optim.tables, schedule,
                                                       weight_decay=cfg.optim.weight_decay)
    optimizer = optim_lib.make_optimizer(
        cfg.optim.name, steps_lib.split_table(params)[1], steps, **dense_optimizer_options(cfg))
  else:
    optimizer = optim_lib.make_optimizer(cfg.optim.name, params, steps, frozen=frozen,
                                         **dense_optimizer_options(cfg),
                                         row_masks=row_masks)
  return Setup(model, optimizer, table_optimizer, row_mask, params,
               0 if found is None else int(found.sum()), tuple(frozen), rng, estimate)


def seed_key(seed, index: int):
  """The run's key number ``index``: 0 initializes the params, 1 is the train state's."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _pad_for_mesh(cfg, params, row_masks):
  """Zero rows appended to the table up to a multiple of ``mesh.model`` (frozen: never read,
  never updated), so its rows split evenly over the devices. Nothing changes for model=1, nor
  for an embedding without a row table (hash embeddings, quotient-remainder: replicated)."""
  if cfg.mesh.model == 1 or "table" not in params["embed"]:
    return params, row_masks
  table = params["embed"]["table"]
  rows = meshes.padded_rows(table.shape[0], cfg.mesh.model)
  extra = rows - table.shape[0]
  if extra == 0:
    return params, row_masks
  table = jnp.concatenate([table, jnp.zeros((extra, table.shape[1]), table.dtype)])
  masks = {k: np.concatenate([np.asarray(m, bool), np.zeros(extra, bool)])
           for k, m in row_masks.items()}
  return {**params, "embed": {**params["embed"], "table": table}}, masks


def validate_ids(data: cache_lib.EncodedData) -> None:
  """Checks every encoded id of every split against the table once, on the host, so the jitted
  steps can read the table unchecked (no host callback per step) and still nothing is silent."""
  for split in ("train", "dev", "test"):
    ids = getattr(data, f"{split}_ids")
    if ids is not None:
      ids_lib.check_host_ids(ids, data.num_embeddings, where=f"data ({split} split)")


def _load_pretrained(cfg, data, key):
  from embedlab.data import vectors as pretrained_lib  # noqa: PLC0415 - only when configured
  tokens = list(data.vocab.tokens) + [f"<bucket {i}>" for i in range(data.num_embeddings -
                                                                        len(data.vocab))]
  path = paths_lib.resolve(cfg.model.pretrained)
  if not path.is_file():
    where = ("the path is absolute" if pathlib.Path(cfg.model.pretrained).expanduser().is_absolute()
             else paths_lib.where_data_was_looked_for(cfg.model.pretrained))
    raise config_lib.ConfigError(f"model.pretrained = {cfg.model.pretrained!r}: file {path} not "
                                 f"found ({where}).")
  params, found = pretrained_lib.load_vectors(path, tokens,
                                              key=key, padding_id=models_lib.PADDING_ID)
  table = np.asarray(params["table"]) * cfg.model.pretrained_scale
  width = table.shape[1]
  if width > cfg.model.features:
    raise config_lib.ConfigError(
        f"model.pretrained {cfg.model.pretrained} has {width} features but "
        f"model.features={cfg.model.features}; set --set model.features={width} (or more: the "
        f"extra columns start random, a trainable channel beside the pretrained one).")
  if width < cfg.model.features:
    extra = tables.init_table(jax.random.fold_in(key, 2), table.shape[0],
                              cfg.model.features - width, init=cfg.model.init,
                              scale=cfg.model.init_scale, padding_id=models_lib.PADDING_ID)
    table = np.concatenate([table, np.asarray(extra["table"])], axis=1)
  # pretrained_scale: GloVe rows have std ~0.65; a smaller scale lets fine-tuning reshape them
  # as fast as a random init of model.init_scale (directions, hence neighbours, are kept)
  return table, np.asarray(found, bool)


def init_state(cfg: config_lib.Config, setup: Setup) -> steps_lib.TrainState:
  params = setup.params
  if setup.table_optimizer is None:
    opt_state = setup.optimizer.init(params)
  else:
    table, dense = steps_lib.split_table(params)
    from embedlab.core import rowgrad  # noqa: PLC0415 - only on the sparse path
    # the table optimizer's state as the public optax form makes it (the optimizer's own init)
    opt_state = {"dense": setup.optimizer.init(dense),
                 "table": rowgrad.row_sparse(setup.table_optimizer).init(table)}
  rng = setup.rng if setup.rng is not None else seed_key(cfg.seed, 1)
  return steps_lib.TrainState(jnp.array(0, jnp.int32), params, opt_state, rng)


def check_batch_splits(cfg, mesh):
  data = mesh.shape["data"]
  if cfg.train.batch_size % data:
    raise config_lib.ConfigError(
        f"train.batch_size={cfg.train.batch_size} does not split over mesh.data={data} "
        f"devices; choose a multiple of {data}, e.g. --set train.batch_size="
        f"{max(data, cfg.train.batch_size // data * data)}.")
  if cfg.mesh.table == "rows_columns" and cfg.model.features % data:
    raise config_lib.ConfigError(
        f"mesh.table=rows_columns splits the table's {cfg.model.features} columns over "
        f"mesh.data={data} devices; choose model.features divisible by {data}, or "
        f"mesh.table=rows.")


def update_path(setup: Setup, mesh=None) -> str:
  """How the step updates the table: ``dense``, ``dedup`` (rows deduplicated, then updated) or
  ``scatter_add`` (per occurrence, ``steps_lib.scatter_adds``)."""
  if setup.table_optimizer is None:
    return "dense"
  return "scatter_add" if steps_lib.scatter_adds(setup.model, setup.table_optimizer, mesh) else "dedup"


def ragged_packer(cfg, data, per_epoch, steps, lengths, mesh, echo) -> Callable:
  """``train.ragged_batches``: packs each block of padded batches into ragged ones of one fixed
  length, the longest batch of the whole run (so one compilation); the identity otherwise.

  On a device mesh (several devices: ``mesh.data=0`` takes them all) the batches stay padded,
  since one ragged list does not split over the ``data`` axis; the losses are the same.
  """
  if not cfg.train.ragged_batches:
    return lambda ids: ids
  if mesh is not None:
    echo("train.ragged_batches: a ragged id list does not split over the device mesh; "
         "training on padded batches (the same losses).")
    return lambda ids: ids
  counts = data.train_lengths if lengths is None else lengths  # the same numbers
  epochs = range(-(-steps // per_epoch))
  length = batch_lib.ragged_length(
      counts, (batch_lib.batch_indices(len(counts), cfg.train.batch_size, seed=cfg.seed, epoch=e,
                                       lengths=lengths) for e in epochs))
  return functools.partial(batch_lib.ragged_batches, length=length)


def dense_optimizer_options(cfg: config_lib.Config) -> dict[str, Any]:
  """``core.optim.make_optimizer``'s options from ``cfg.optim``."""
  o = cfg.optim
  return dict(learning_rate=o.learning_rate, schedule=o.schedule, warmup_steps=o.warmup_steps,
              clip_norm=o.clip_norm, weight_decay=o.weight_decay, momentum=o.momentum)
