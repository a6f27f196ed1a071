"""Training: ``TrainState``, a jitted ``train_step``, evaluation, and ``train(config, workdir)``.

The train state holds data only, ``TrainState(step, params, opt_state, rng)``; the step is a
pure function jitted once with donated buffers. Metrics come back as sums plus a count so
averages are exact. The step key is ``fold_in(rng, step)`` and batch ``k`` of epoch ``e`` is
fixed by ``(seed, e)``, so a run resumed from a checkpoint ends bitwise equal to one that was
never interrupted (on CPU).

A non-finite loss or gradient never reaches the parameters: the step keeps the old state for
that batch and counts it; the run then stops naming the step (or, with
``train.skip_nonfinite=true``, goes on and reports how many batches were skipped).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedlab.core import ids as ids_lib
from embedlab.run import checkpoint as ckpt_lib
from embedlab.core import compress as compress_lib
from embedlab import config as config_lib
from embedlab.data import datasets as data_lib
from embedlab.models import classifiers as models_lib
from embedlab.core import optim as optim_lib
from embedlab.run import report
from embedlab.run import resources
from embedlab.run import rundir
from embedlab.core import sharding
from embedlab.core import tables

TABLE_PATH = "embed/table"
# mesh.lookup=auto on the row-sparse path: shard_map from this many "model" shards up, the
# faster there on benchmarks/sharded_scaling.py (BENCHMARKS.md: 1.7x over 4 and 8 shards; XLA's
# partitioner 1.4x faster over 2)
AUTO_SHARD_MAP_FROM = 4


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


class NonFiniteError(RuntimeError):
  """The loss or a gradient became NaN or inf."""


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


def _metric_sums(logits, labels, weight):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
          "count": jnp.sum(weight)}


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(ok, new, old):
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def make_train_step(model: models_lib.Model, optimizer: optax.GradientTransformation, *,
                    table_optimizer=None, row_mask=None, oob: str = "error", mesh=None,
                    lookup: str = "xla") -> Callable:
  """Returns ``step(state, ids, labels) -> (state, metric_sums)``, pure and unjitted.

  ``ids`` are padded bags ``[B, L]`` or, for the bag model, a ``data.RaggedBatch`` (``[T]``
  arrays; ``train.ragged_batches``): the same loss, computed over the real ids only.

  With ``table_optimizer`` (a row-sparse optimizer from ``embedlab.core.sparse``), the table's
  gradient is taken with respect to the gathered rows only and ``optimizer`` updates the other
  parameters; ``state.opt_state`` is then ``{"dense": ..., "table": ...}``. ``oob`` is the id
  policy of the sparse path's gather (``"clip"`` once the data has been validated). Where the
  table optimizer has an ``add`` (``sparse_sgd`` without weight decay) and the model an
  ``apply_gathered`` (the bag model), the step reads the rows per occurrence and scatter-adds
  each occurrence's gradient into its row: no dedup sort, no second gather (on one device; the
  result is the dedup path's up to float rounding where a batch repeats an id).

  With a ``mesh`` (``embedlab.core.sharding``) and ``lookup="shard_map"`` the sparse path reads the
  batch's rows from the row-sharded table with ``sharding.sharded_take`` and each "model" shard
  updates only its own rows (``sharding.sharded_sparse_update``); with ``lookup="xla"`` (and on
  the dense path) XLA's partitioner splits the plain program.
  """
  by_shard = mesh is not None and lookup == "shard_map"
  gather = functools.partial(sharding.sharded_take, mesh=mesh) if by_shard else None

  def loss_fn(params, ids, labels, rng):
    logits = _apply(model, params, ids, labels.shape[0], train=True, rng=rng)
    sums = _metric_sums(logits, labels, jnp.ones(labels.shape, jnp.float32))
    return sums["loss"] / labels.shape[0], sums

  def dense_step(state, ids, labels, rng):
    (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, ids, labels, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # finite gradients can still overflow into non-finite parameters (a huge learning rate):
    # such an update is not applied either
    ok = jnp.isfinite(sums["loss"]) & _all_finite(grads) & _all_finite(params)
    return _select(ok, params, state.params), _select(ok, opt_state, state.opt_state), ok, sums

  def update_dense(state, dense, g_dense, ok):
    """The dense optimizer's step on the non-table params; a bad batch (``ok`` False), or an
    update that would make them non-finite, keeps them and their optimizer state. Returns
    ``(dense, dense_opt, ok)``."""
    updates, dense_opt = optimizer.update(g_dense, state.opt_state["dense"], dense)
    new = optax.apply_updates(dense, updates)
    ok = ok & _all_finite(new)
    return _select(ok, new, dense), _select(ok, dense_opt, state.opt_state["dense"]), ok

  def joined(state, ok, dense, dense_opt, table, table_opt):
    """``(params, opt_state)`` of a sparse step; a bad batch keeps the table's update count."""
    table_opt = table_opt._replace(count=jnp.where(ok, table_opt.count,
                                                   state.opt_state["table"].count))
    return join_table(dense, table), {"dense": dense_opt, "table": table_opt}

  def sparse_step(state, ids, labels, rng):
    from embedlab.core import sparse as sparse_lib  # noqa: PLC0415 - only on the sparse path
    table, dense = split_table(state.params)
    # the table's rows of the batch (the hashing trick maps ids to shared rows first)
    ragged = isinstance(ids, data_lib.RaggedBatch)
    local = sparse_lib.localize(table, model.embedder.rows(ids.ids if ragged else ids),
                                padding_id=models_lib.PADDING_ID, oob=oob, gather=gather)
    local_ids = data_lib.RaggedBatch(local.ids, ids.segment_ids) if ragged else local.ids

    def split_loss(dense, local_table):
      logits = _apply(model, join_table(dense, local_table), local_ids, labels.shape[0],
                      train=True, rng=rng, rows=True)
      sums = _metric_sums(logits, labels, jnp.ones(labels.shape, jnp.float32))
      return sums["loss"] / labels.shape[0], sums

    (_, sums), (g_dense, row_grads) = jax.value_and_grad(
        split_loss, argnums=(0, 1), has_aux=True)(dense, local.params["table"])
    ok = jnp.isfinite(sums["loss"]) & _all_finite(g_dense) & _all_finite(row_grads)
    dense, dense_opt, ok = update_dense(state, dense, g_dense, ok)
    # a bad batch touches no row: its row ids become out of range, which update ignores
    row_ids = jnp.where(ok, local.row_ids, table.shape[0])
    if by_shard:
      table, table_opt = sharding.sharded_sparse_update(
          table_optimizer, table, state.opt_state["table"], row_ids,
          jnp.where(ok, row_grads, 0), mesh, row_mask=row_mask,
          skip_ids=(models_lib.PADDING_ID,))
    else:
      table, table_opt = table_optimizer.update(
          table, state.opt_state["table"], row_ids, jnp.where(ok, row_grads, 0), unique=True,
          row_mask=row_mask, skip_ids=(models_lib.PADDING_ID,))
    return (*joined(state, ok, dense, dense_opt, table, table_opt), ok, sums)

  def scatter_step(state, ids, labels, rng):
    # the table's rows read per occurrence and each occurrence's gradient added straight into
    # its row (table_optimizer.add): no dedup sort and no second gather, as fastText updates
    table, dense = split_table(state.params)
    ragged = isinstance(ids, data_lib.RaggedBatch)
    raw = ids.ids if ragged else ids
    rows = model.embedder.rows(raw)
    if oob == "error":
      rows = ids_lib.check_ids(rows, table.shape[0], where="train step")
    vectors = jnp.take(table, rows, axis=0, mode="clip")
    extra = dict(segment_ids=ids.segment_ids, num_bags=labels.shape[0]) if ragged else {}

    def split_loss(dense, vectors):
      logits = model.apply_gathered(dense, vectors, raw, train=True, rng=rng, **extra)
      sums = _metric_sums(logits, labels, jnp.ones(labels.shape, jnp.float32))
      return sums["loss"] / labels.shape[0], sums

    (_, sums), (g_dense, g_vectors) = jax.value_and_grad(
        split_loss, argnums=(0, 1), has_aux=True)(dense, vectors)
    ok = jnp.isfinite(sums["loss"]) & _all_finite(g_dense) & _all_finite(g_vectors)
    dense, dense_opt, ok = update_dense(state, dense, g_dense, ok)
    # padding and a bad batch touch no row: their ids become out of range, which add drops
    row_ids = jnp.where(ok & (raw != models_lib.PADDING_ID), rows, table.shape[0]).reshape(-1)
    table, table_opt = table_optimizer.add(table, state.opt_state["table"], row_ids,
                                           g_vectors.reshape(row_ids.shape[0], -1),
                                           row_mask=row_mask)
    return (*joined(state, ok, dense, dense_opt, table, table_opt), ok, sums)

  scatter = scatter_adds(model, table_optimizer, mesh)

  def step(state, ids, labels):
    rng = jax.random.fold_in(state.rng, state.step)
    inner = (dense_step if table_optimizer is None else scatter_step if scatter else
             sparse_step)
    params, opt_state, ok, sums = inner(state, ids, labels, rng)
    sums = {**sums, "nonfinite": 1 - ok.astype(jnp.float32),
            "first_nonfinite": jnp.where(ok, jnp.iinfo(jnp.int32).max, state.step)}
    return TrainState(state.step + 1, params, opt_state, state.rng), sums

  return step


def scatter_adds(model: models_lib.Model, table_optimizer, mesh=None) -> bool:
  """Whether ``make_train_step`` takes the scatter-add path: a table optimizer with ``add``
  (``sparse_sgd`` without weight decay), a model with ``apply_gathered`` (the bag model), one
  device."""
  return (table_optimizer is not None and getattr(table_optimizer, "add", None) is not None
          and model.apply_gathered is not None and mesh is None)


def _apply(model, params, ids, num_bags, **kwargs):
  """``model.apply`` on padded ids ``[B, L]`` or on a ``data.RaggedBatch`` of ``num_bags`` bags."""
  if isinstance(ids, data_lib.RaggedBatch):
    return model.apply(params, ids.ids, segment_ids=ids.segment_ids, num_bags=num_bags,
                       **kwargs)
  return model.apply(params, ids, **kwargs)


def split_table(params) -> tuple[jax.Array, Any]:
  """``(params["embed"]["table"], the other params)``: what the row-sparse path updates by rows
  and what the dense optimizer updates (other ``embed`` entries, e.g. a factorized table's
  projection, stay under ``"embed"``)."""
  rest = {k: v for k, v in params.items() if k != "embed"}
  embed_rest = {k: v for k, v in params["embed"].items() if k != "table"}
  if embed_rest:
    rest["embed"] = embed_rest
  return params["embed"]["table"], rest


def join_table(rest, table) -> Any:
  """Inverse of ``split_table``."""
  return {**rest, "embed": {**rest.get("embed", {}), "table": table}}


def make_multi_step(step: Callable) -> Callable:
  """Runs ``step`` over a block of batches (``ids [K, B, L]``, or a ``data.RaggedBatch`` of
  ``[K, T]`` arrays; ``labels [K, B]``) with ``lax.scan``: K training steps per dispatch, metric
  sums added over the block.

  Worth it for cheap steps (bag models: dispatch overhead dominates); not for convolutions on
  XLA:CPU, which run far slower inside a loop (keep ``train.steps_per_dispatch=1`` there).
  """

  def multi_step(state, ids_KxBxL, labels_KxB):
    state, sums = jax.lax.scan(lambda st, batch: step(st, *batch), state,
                               (ids_KxBxL, labels_KxB))
    first = jnp.min(sums.pop("first_nonfinite"))
    return state, {**jax.tree.map(lambda x: jnp.sum(x, 0), sums), "first_nonfinite": first}

  return multi_step


def _as_block(step: Callable) -> Callable:
  """``step`` taking a block of one batch, without a loop around it: XLA:CPU compiles a
  convolution inside a ``scan`` about 40x slower than outside one (measured on the CNN)."""

  def single(state, ids_1xBxL, labels_1xB):
    return step(state, jax.tree.map(lambda x: x[0], ids_1xBxL), labels_1xB[0])

  return single


def make_eval_step(model: models_lib.Model) -> Callable:
  """Returns ``eval_step(params, ids, labels, mask) -> metric sums`` for one padded batch."""

  def eval_step(params, ids, labels, mask):
    logits = model.apply(params, ids, train=False)
    return _metric_sums(logits, labels, mask.astype(jnp.float32))

  return eval_step


def evaluate(eval_step, params, ids, labels, batch_size: int) -> dict[str, float]:
  """Accuracy and mean loss over a whole split, in fixed-size batches (one compilation)."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch_ids, batch_labels, mask in data_lib.eval_batches(ids, labels, batch_size):
    sums = eval_step(params, batch_ids, batch_labels, mask)
    for k in totals:
      totals[k] += float(sums[k])
  count = max(totals["count"], 1.0)
  return {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count,
          "count": int(totals["count"])}


def zero_sums() -> dict[str, np.ndarray]:
  """The running training sums of a log period before its first block (``_with_sums``)."""
  return {"loss": np.float32(0), "correct": np.float32(0), "count": np.float32(0),
          "nonfinite": np.float32(0), "first_nonfinite": np.int32(np.iinfo(np.int32).max)}


def _with_sums(block: Callable) -> Callable:
  """``block(state, ids, labels)`` as ``(state, acc, ids, labels) -> (state, acc + sums)``: the
  block's metric sums added to the running ones inside the same program: a separate jitted add
  cost ~0.4 ms a block on XLA:CPU (0.3 s of SST-2's 789 blocks)."""

  def fn(state, acc, ids, labels):
    state, sums = block(state, ids, labels)
    # over the step's own keys: one zero_sums lacks is a KeyError, not a sum dropped
    out = {k: acc[k] + v for k, v in sums.items() if k != "first_nonfinite"}
    out["first_nonfinite"] = jnp.minimum(acc["first_nonfinite"], sums["first_nonfinite"])
    return state, out

  return fn


def total_steps(cfg: config_lib.Config, num_train: int) -> tuple[int, int]:
  """``(steps_per_epoch, total_steps)`` of a config for ``num_train`` examples."""
  per_epoch = num_train // cfg.train.batch_size
  if per_epoch == 0:
    raise config_lib.ConfigError(
        f"train.batch_size={cfg.train.batch_size} is larger than the training set "
        f"({num_train} examples); lower it, e.g. --set train.batch_size={max(num_train, 1)}.")
  steps = cfg.train.num_steps or math.ceil(cfg.train.num_epochs * per_epoch)
  return per_epoch, steps


def build(cfg: config_lib.Config, data: data_lib.EncodedData, steps: int) -> Setup:
  """The model, its initial params and its optimizer(s) for a config and its data."""
  estimate = resources.check_fits(cfg, data.num_embeddings, len(data.label_names),
                                  data.train_ids.shape[1])
  pretrained, found, rng = None, None, None
  if cfg.model.pretrained:
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0)
    pretrained, found = _load_pretrained(cfg, data, jax.random.fold_in(key, 1))
  validate_ids(data)
  model = models_lib.make_model(cfg.model, data.num_embeddings, len(data.label_names),
                                pretrained, oob="clip")
  if pretrained is not None:  # the pretrained table stays out of any program
    params = model.init(key)
  elif -2**31 <= cfg.seed < 2**31:  # one compilation for the keys and the initializers
    params, rng = jax.jit(lambda seed: (model.init(_seed_key(seed, 0)), _seed_key(seed, 1)))(
        np.int32(cfg.seed))
  else:  # a seed beyond int32: its keys made eagerly, from the Python int
    params = jax.jit(model.init)(_seed_key(cfg.seed, 0))
  frozen, row_masks = [], {}
  mode = cfg.model.pretrained_mode
  if pretrained is not None and mode == "freeze":
    frozen.append(TABLE_PATH)
  elif pretrained is not None and mode == "freeze_found":
    row_masks[TABLE_PATH] = ~found
  params, row_masks = _pad_for_mesh(cfg, params, row_masks)
  table_optimizer, row_mask = None, None
  if cfg.optim.tables != "dense":
    from embedlab.core import sparse as sparse_lib  # noqa: PLC0415 - only on the sparse path
    row_mask = row_masks.pop(TABLE_PATH, None)
    if TABLE_PATH in frozen:
      frozen.remove(TABLE_PATH)
      row_mask = np.zeros(params["embed"]["table"].shape[0], bool)
    row_mask = None if row_mask is None else jnp.asarray(row_mask)
    schedule = optim_lib.make_schedule(cfg.optim.schedule, cfg.optim.learning_rate, steps,
                                       cfg.optim.warmup_steps)
    table_optimizer = sparse_lib.get_sparse_optimizer(cfg.optim.tables, schedule,
                                                       weight_decay=cfg.optim.weight_decay)
    optimizer = optim_lib.make_optimizer(cfg.optim, split_table(params)[1], steps)
  else:
    optimizer = optim_lib.make_optimizer(cfg.optim, params, steps, frozen=frozen,
                                         row_masks=row_masks)
  return Setup(model, optimizer, table_optimizer, row_mask, params,
               0 if found is None else int(found.sum()), tuple(frozen), rng, estimate)


def _seed_key(seed, index: int):
  """The run's key number ``index``: 0 initializes the params, 1 is the train state's."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def _pad_for_mesh(cfg, params, row_masks):
  """Zero rows appended to the table up to a multiple of ``mesh.model`` (frozen: never read,
  never updated), so its rows split evenly over the devices. Nothing changes for model=1, nor
  for an embedding without a row table (hash embeddings, quotient-remainder: replicated)."""
  if cfg.mesh.model == 1 or "table" not in params["embed"]:
    return params, row_masks
  table = params["embed"]["table"]
  rows = sharding.padded_rows(table.shape[0], cfg.mesh.model)
  extra = rows - table.shape[0]
  if extra == 0:
    return params, row_masks
  table = jnp.concatenate([table, jnp.zeros((extra, table.shape[1]), table.dtype)])
  masks = {k: np.concatenate([np.asarray(m, bool), np.zeros(extra, bool)])
           for k, m in row_masks.items()}
  return {**params, "embed": {**params["embed"], "table": table}}, masks


def validate_ids(data: data_lib.EncodedData) -> None:
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
  path = data_lib.resolve(cfg.model.pretrained)
  if not path.is_file():
    where = ("the path is absolute" if pathlib.Path(cfg.model.pretrained).expanduser().is_absolute()
             else data_lib.where_data_was_looked_for(cfg.model.pretrained))
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


def init_state(cfg: config_lib.Config, setup: Setup) -> TrainState:
  params = setup.params
  if setup.table_optimizer is None:
    opt_state = setup.optimizer.init(params)
  else:
    table, dense = split_table(params)
    opt_state = {"dense": setup.optimizer.init(dense), "table": setup.table_optimizer.init(table)}
  rng = setup.rng if setup.rng is not None else _seed_key(cfg.seed, 1)
  return TrainState(jnp.array(0, jnp.int32), params, opt_state, rng)


def train(cfg: config_lib.Config, workdir: str | pathlib.Path, *, restart: bool = False,
          progress: bool | None = None, echo: Callable[[str], None] = print) -> dict:
  """Trains, evaluates and saves one experiment in ``workdir``; resumes if it holds a run.

  Returns the results dict also written to ``workdir/results.json``.
  """
  clock = report.PhaseClock()
  try:
    return _train(cfg, workdir, restart, progress, echo, clock)
  finally:
    clock.close()


def _train(cfg, workdir, restart, progress, echo, clock) -> dict:
  workdir = pathlib.Path(workdir)
  # the data first: its tokenizing processes fork before JAX's backends start their threads
  data = data_lib.encode_splits(cfg.data, cfg.seed)
  clock.lap("data")
  if _finished(workdir, cfg, restart):
    results = json.loads((workdir / "results.json").read_text())
    echo(f"{workdir} holds this run, finished at step {results.get('steps')}: nothing to train "
         f"(its results follow). To train it again, pass --restart (deletes that run) or "
         f"choose another --workdir.")
    return results
  # everything that can refuse the run comes before its directory is written
  fingerprint = _fingerprint(cfg, data)  # reads and hashes the data files: once a run
  _check_same_data(_own_dir(workdir), data, fingerprint, echo)
  mesh = sharding.mesh_from_config(cfg.mesh)
  if mesh is not None:
    _check_batch_splits(cfg, mesh)
  per_epoch, steps = total_steps(cfg, len(data.train_labels))
  setup = build(cfg, data, steps)
  if mesh is None:
    _check_compiled_step_fits(cfg, data, setup, per_epoch, steps)
  run = _run_dir(workdir, cfg, restart, echo)
  try:
    run.save_vocab(data.vocab, data.label_names, data.kept_buckets, fingerprint)
    return _loop(run, workdir, cfg, data, mesh, setup, per_epoch, steps, progress, echo, clock)
  finally:
    run.close()


def _loop(run, workdir, cfg, data, mesh, setup, per_epoch, steps, progress, echo, clock) -> dict:
  """Restores the latest checkpoint if there is one, trains to ``steps``, evaluates, saves."""
  checkpoints = ckpt_lib.Checkpoints(workdir, cfg.train.keep_checkpoints)
  state, meta = init_state(cfg, setup), {"best_dev_accuracy": -1.0, "best_step": -1,
                                         "skipped_nonfinite": 0, "train_seconds": 0.0}
  shardings = None
  if mesh is not None:
    shardings = sharding.state_shardings(state, mesh, table=cfg.mesh.table,
                                         dense=cfg.mesh.dense)
    state = sharding.place(state, shardings)
  restored = checkpoints.restore_latest(state)
  pending = None
  if restored is not None:
    _, state, meta = restored
    pending = meta.pop("pending_sums", None)
    echo(f"resuming {run.path} from step {int(state.step)}")
  run.truncate_metrics(int(state.step))
  echo(report.summary_text(cfg, data, setup, mesh))
  step = int(state.step)
  clock.lap("setup")
  single_fn, multi_fn, eval_step, put = _compile(cfg, setup, mesh, shardings)
  every_ckpt = cfg.train.checkpoint_every or cfg.train.eval_every
  bar = report.progress_bar(steps, step, cfg.train.progress if progress is None else progress)
  acc, best = zero_sums(), None
  if pending is not None:  # the running sums of a log period a stop cut short
    acc = {k: np.asarray(pending[k], dtype=v.dtype) for k, v in acc.items()}
  prior_seconds, loop_start = meta["train_seconds"], time.perf_counter()
  boundaries = (cfg.train.log_every, cfg.train.eval_every, every_ckpt, per_epoch)
  lengths = data.train_lengths if cfg.data.bucket_by_length else None
  pack = _ragged_packer(cfg, data, per_epoch, steps, lengths, mesh, echo)
  blocks = _host_blocks(cfg, data, step, steps, per_epoch, boundaries, lengths, pack)
  stop = StopSignals()
  try:
    with stop:
      for block, ids, labels in blocks:
        step_fn = single_fn if block == 1 else multi_fn
        state, acc = step_fn(state, acc, put(ids, batch_axis=1), put(labels, batch_axis=1))
        if "first_dispatch" not in clock.seconds:  # compilation + one block of steps
          clock.lap("first_dispatch", wait_for=acc)
        bar.update(block)
        step += block
        save = step % every_ckpt == 0 or step == steps
        if step % cfg.train.log_every == 0 or save:
          meta["skipped_nonfinite"] += _check_finite(acc, cfg, step)
          run.log_train(step, acc, bar)
          acc = zero_sums()
        if step % cfg.train.eval_every == 0 or step == steps:
          best = _evaluate_dev(run, eval_step, state, data, cfg, meta, step, mesh) or best
        if save or stop.signal is not None:
          meta["train_seconds"] = prior_seconds + time.perf_counter() - loop_start
          # a stop between logs keeps the log period's running sums, so the resumed run logs
          # what an uninterrupted one would
          meta["pending_sums"] = {k: float(v) for k, v in jax.device_get(acc).items()}
          best = _save_checkpoints(checkpoints, step, state, meta, best)
        if stop.signal is not None:
          raise Stopped(stop.signal, step, run.path)
    clock.lap("train_loop", wait_for=state)
    results = _finish(run, cfg, setup, data, eval_step, state, checkpoints, meta, steps, clock,
                      mesh, best)
  finally:  # also when the run stops on an error: the last checkpoint is kept
    bar.close()
    checkpoints.close()
  return results


def _save_checkpoints(checkpoints, step, state, meta, best):
  """Saves the best params found since the last save (if any), then the latest state."""
  if best is not None and not best.saved:
    checkpoints.save_best(best.step, best.params, {"dev_accuracy": best.dev_accuracy})
    best = best._replace(saved=True)
  checkpoints.save_latest(step, state, meta)
  return best


class Stopped(Exception):
  """Training stopped on SIGTERM or SIGINT, after saving a checkpoint at ``step``."""

  def __init__(self, signum: int, step: int, path: pathlib.Path):
    self.signum, self.step = signum, step
    name = signal.Signals(signum).name
    super().__init__(f"stopped by {name} at step {step}; a checkpoint of that step is saved in "
                     f"{path}: run the same command to resume.")


class StopSignals:
  """Within ``with``, SIGTERM and SIGINT (preemption, a time limit, Ctrl-C) set ``signal``
  instead of killing the process, so the loop can save a checkpoint at the next step boundary
  and stop. A second signal acts at once, as usual. Only the main thread can install signal
  handlers; elsewhere this does nothing."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal: int | None = None
    self._previous: dict[int, Any] = {}

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None:  # asked twice: give the signal its usual effect
      self._restore()
      signal.raise_signal(signum)
      return
    self.signal = signum
    print(f"embedlab: {signal.Signals(signum).name} received; saving a checkpoint at the end of "
          f"this step, then stopping (send it again to stop at once).", file=sys.stderr,
          flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()
    return False


def _host_blocks(cfg, data, step, steps, per_epoch, boundaries, lengths, pack) -> Iterator:
  """``(block, ids, labels)``: the host arrays of each block of ``block`` batches from ``step``
  on, ids packed by ``pack``. A block never crosses a log / eval / checkpoint / epoch boundary,
  so there are a few block sizes only."""
  order_epoch, order = -1, None
  while step < steps:
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:
      order = data_lib.batch_indices(len(data.train_labels), cfg.train.batch_size,
                                     seed=cfg.seed, epoch=epoch, lengths=lengths)
      order_epoch = epoch
    block = min([cfg.train.steps_per_dispatch, steps - step] +
                [b - step % b for b in boundaries])
    rows = order[index:index + block]
    yield block, pack(data.train_ids[rows]), data.train_labels[rows]
    step += block


def _ragged_packer(cfg, data, per_epoch, steps, lengths, mesh, echo) -> Callable:
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
  length = data_lib.ragged_length(
      counts, (data_lib.batch_indices(len(counts), cfg.train.batch_size, seed=cfg.seed, epoch=e,
                                      lengths=lengths) for e in epochs))
  return functools.partial(data_lib.ragged_batches, length=length)


def _fingerprint(cfg, data) -> dict:
  files = ([data_lib.resolve(getattr(cfg.data, s)) for s in ("train", "dev", "test")
            if getattr(cfg.data, s)] if cfg.data.source == "files" else [])
  return rundir.data_fingerprint(files, data.vocab.tokens, data.label_names)


def _check_compiled_step_fits(cfg, data, setup, per_epoch, steps) -> None:
  """The second memory gate, from XLA's own count of the compiled train step (shapes only,
  nothing allocated), where the fast estimate comes within half of the budget; far from it
  (the usual case) the extra compilation is skipped."""
  available, _ = resources.available_bytes()
  if available is None or setup.memory_estimate["total"] < resources.HEADROOM * available / 2:
    return
  state = jax.eval_shape(lambda: init_state(cfg, setup))
  single, multi, _, _ = _compile(cfg, setup, None, None)
  block = min(cfg.train.steps_per_dispatch, steps)
  lengths = data.train_lengths if cfg.data.bucket_by_length else None
  pack = _ragged_packer(cfg, data, per_epoch, steps, lengths, None, lambda _: None)
  rows = data_lib.batch_indices(len(data.train_labels), cfg.train.batch_size, seed=cfg.seed,
                                epoch=0, lengths=lengths)[:block]
  resources.check_step_fits(single if block == 1 else multi, state, zero_sums(),
                            pack(data.train_ids[rows]), data.train_labels[rows],
                            available=available)


def _check_same_data(path: pathlib.Path, data, fingerprint: dict, echo) -> None:
  """Refuses to resume a run whose vocabulary or labels differ from the data's now (a changed
  train file would give trained rows to other words); a start that never saved may change."""
  if not (path / "vocab.txt").exists() or not rundir.has_checkpoint(path):
    return
  _, vocab, label_names = report.load_run(path)
  changes = _data_changes(vocab, label_names, data)
  recorded = path / "data.json"
  if not changes and recorded.exists():
    files = rundir.changed_files(json.loads(recorded.read_text()), fingerprint)
    if files:
      echo(f"note: {', '.join(files)} changed since {path} started, but give the same "
           f"vocabulary and labels: resuming.")
  if changes:
    raise rundir.RunDirError(
        f"{path} holds a run trained on other data: {changes}. Its checkpoints fit its own "
        f"vocabulary and labels; resuming would give trained rows to other words. Train the "
        f"new data with another --workdir, or pass --restart to delete that run.")


def _data_changes(vocab, label_names, data) -> str:
  """What differs between a run's vocabulary and labels and those of ``data`` ('' if none)."""
  changes = []
  if tuple(vocab.tokens) != tuple(data.vocab.tokens):
    known = set(vocab.tokens)
    new = [t for t in data.vocab.tokens if t not in known][:3]
    changes.append(f"vocabulary of {len(vocab):,} words there, {len(data.vocab):,} now"
                   + (f" (new: {', '.join(new)})" if new else ""))
  if tuple(label_names) != tuple(data.label_names):
    changes.append(f"labels {list(label_names)} there, {list(data.label_names)} now")
  return "; ".join(changes)


def _own_dir(workdir: pathlib.Path) -> pathlib.Path:
  """This process's run directory: ``workdir`` on process 0, ``WORKDIR.process<i>`` (its logs)
  on the others; checkpoints are shared in ``workdir``."""
  index = jax.process_index()
  return workdir if index == 0 else workdir.with_name(f"{workdir.name}.process{index}")


def _finished(workdir: pathlib.Path, cfg, restart: bool) -> bool:
  """Whether ``workdir`` holds this config's finished run (then nothing is trained or written).
  Raises ``RunDirError`` where the run cannot start there (see ``rundir.run_dir_state``)."""
  own = rundir.run_dir_state(_own_dir(workdir), cfg, restart=restart)
  if jax.process_index() == 0:
    return own == "finished"
  # process 0's directory holds the results (and its lock)
  return rundir.run_dir_state(workdir, cfg, restart=restart, check_lock=False) == "finished"


def _run_dir(workdir, cfg, restart, echo):
  """The run directory (``_own_dir``), created now; with several processes, once every one has
  created its own."""
  run = report.RunDir(_own_dir(workdir), cfg, restart=restart, echo=echo)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415 - several processes only
    multihost_utils.sync_global_devices("embedlab run directory ready")
  return run


def _check_batch_splits(cfg, mesh):
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


def lookup_path(mesh_cfg) -> str:
  """The row-sparse step's lookup path: ``mesh.lookup``, with ``auto`` resolved to the one
  measured faster (``benchmarks/sharded_scaling.py``, BENCHMARKS.md)."""
  if mesh_cfg.lookup != "auto":
    return mesh_cfg.lookup
  if mesh_cfg.table == "rows_columns" or mesh_cfg.model < AUTO_SHARD_MAP_FROM:
    return "xla"
  return "shard_map"


def _compile(cfg, setup, mesh, shardings):
  """The jitted train steps ``(state, acc, ids, labels) -> (state, acc)`` (one batch, a block of
  batches; ``acc`` the running metric sums, from ``zero_sums()``), the eval step, and ``put``
  that places a host batch for them: unchanged single-device programs when ``mesh`` is None."""
  one_step = make_train_step(setup.model, setup.optimizer, table_optimizer=setup.table_optimizer,
                             row_mask=setup.row_mask, oob="clip", mesh=mesh,
                             lookup=lookup_path(cfg.mesh))
  eval_step = make_eval_step(setup.model)
  single, multi = _with_sums(_as_block(one_step)), _with_sums(make_multi_step(one_step))
  if mesh is None:
    return (jax.jit(single, donate_argnums=0), jax.jit(multi, donate_argnums=0),
            jax.jit(eval_step), lambda array, batch_axis=0: array)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  out = (shardings, replicated)
  single_fn = jax.jit(single, donate_argnums=0, out_shardings=out)
  multi_fn = jax.jit(multi, donate_argnums=0, out_shardings=out)
  put = functools.partial(sharding.global_batch, mesh)
  eval_jit = jax.jit(eval_step, out_shardings=replicated)
  eval_fn = lambda params, *batch: eval_jit(params, *map(put, batch))  # noqa: E731
  if jax.process_count() > 1:
    # one program in flight at a time: CPU collectives (gloo) of two programs running at once
    # can pair up in a different order on each process and hang (seen with train + eval)
    single_fn, multi_fn, eval_fn = (_synchronous(f) for f in (single_fn, multi_fn, eval_fn))
  return single_fn, multi_fn, eval_fn, put


def _synchronous(fn):
  return lambda *args: jax.block_until_ready(fn(*args))


def _check_finite(acc, cfg, step) -> int:
  bad = int(acc["nonfinite"])
  if bad and not cfg.train.skip_nonfinite:
    first = int(acc["first_nonfinite"])
    raise NonFiniteError(
        f"train: the loss, a gradient or the update was NaN/inf at step {first} ({bad} batch(es) "
        f"up to step {step}); those updates were not applied and the last good checkpoint is kept. Lower "
        f"optim.learning_rate, set optim.clip_norm, or --set train.skip_nonfinite=true to skip "
        f"such batches.")
  return bad


class _Best(NamedTuple):
  """The best dev evaluation so far: its parameters (a host copy) and whether they are saved."""

  step: int
  params: Any
  dev_accuracy: float
  saved: bool


def _evaluate_dev(run, eval_step, state, data, cfg, meta, step, mesh) -> _Best | None:
  """Evaluates on dev; returns a new ``_Best`` when the parameters improve on the best so far.

  The best parameters are written with the next resumable checkpoint (right after this
  evaluation when ``checkpoint_every`` is ``eval_every``, the default), never later: a run that
  dies before it replays the steps since that checkpoint and finds the same best again. A run
  that saves rarely (the fastText experiments: once, at the end) holds them on the host instead
  of writing each improvement (35 MB and ~0.2 s a write on SST-2).
  """
  dev = evaluate(eval_step, state.params, data.dev_ids, data.dev_labels,
                 cfg.train.eval_batch_size)
  run.log_eval(step, "dev", dev)
  best = (meta["best_dev_accuracy"], -meta.get("best_dev_loss", math.inf))
  if (dev["accuracy"], -dev["loss"]) > best:  # ties in accuracy go to the lower loss
    meta["best_dev_accuracy"], meta["best_step"] = dev["accuracy"], step
    meta["best_dev_loss"] = dev["loss"]
    # the state's buffers are donated to the next step: keep a copy, on the host when there is
    # no mesh (no device memory held), else on the devices, sharded as the state
    copy = jax.device_get if mesh is None else functools.partial(jax.tree.map, jnp.copy)
    return _Best(step, copy(state.params), dev["accuracy"], saved=False)
  return None


def _finish(run, cfg, setup, data, eval_step, state, checkpoints, meta, steps, clock,
            mesh=None, best=None):
  if best is not None:  # found in this process (and saved with the last checkpoint)
    params = best.params if mesh is not None else jax.device_put(best.params)
  else:  # found before a resume, or never (no dev improvement): the saved one, or the last
    restored = checkpoints.restore_best(state.params)
    params = restored[1] if restored is not None else state.params
  results = {"experiment": cfg.name, "steps": steps, "best_step": meta["best_step"],
             "dev_accuracy": meta["best_dev_accuracy"],
             "train_seconds": round(meta["train_seconds"], 3),
             "num_params": tables.num_params(state.params),
             "num_embeddings": int(data.num_embeddings), "features": cfg.model.features,
             "table": cfg.model.table,
             "embedding_bytes": compress_lib.table_bytes(state.params["embed"]),
             "skipped_nonfinite": meta["skipped_nonfinite"],
             "skipped_rows": dict(getattr(data, "skipped", {}) or {}),
             "pretrained_rows_found": setup.pretrained_found,
             "checkpoint_recoveries": list(checkpoints.recovered),
             "table_update": cfg.optim.tables,
             "table_update_path": _update_path(setup, mesh)}
  if mesh is not None:
    results["mesh"] = {"data": mesh.shape["data"], "model": mesh.shape["model"],
                       "processes": jax.process_count(), "lookup": lookup_path(cfg.mesh),
                       "table_rows": int(state.params["embed"]["table"].shape[0])
                       if "table" in state.params["embed"] else None}
    started = json.loads((run.path / "config.json").read_text()).get("mesh", {})
    if (started.get("data"), started.get("model")) != (cfg.mesh.data, cfg.mesh.model):
      # resumed on another mesh: say where the run started
      results["mesh"]["started_on"] = {"data": started.get("data"), "model": started.get("model")}
  if data.test_ids is not None:
    test = evaluate(eval_step, params, data.test_ids, data.test_labels, cfg.train.eval_batch_size)
    run.log_eval(steps, "test", test)
    results["test_accuracy"] = test["accuracy"]
    results["test_loss"] = test["loss"]
  clock.lap("test")
  results["timings"] = clock.rounded()
  run.write_results(results)
  return results


def _update_path(setup: Setup, mesh=None) -> str:
  """How the step updates the table: ``dense``, ``dedup`` (rows deduplicated, then updated) or
  ``scatter_add`` (per occurrence, ``scatter_adds``)."""
  if setup.table_optimizer is None:
    return "dense"
  return "scatter_add" if scatter_adds(setup.model, setup.table_optimizer, mesh) else "dedup"


def predict(run_dir: str | pathlib.Path, texts: list[str]) -> list[dict]:
  """Labels and probabilities for raw texts, with the best parameters of a finished run
  (``embedlab.load_run(run_dir).predict`` gives the top ``k`` labels)."""
  from embedlab.run import loaded  # noqa: PLC0415
  run = loaded.load_run(run_dir)
  return [{"text": t, "label": run.label_names[int(p.argmax())],
           "probabilities": {n: round(float(q), 4) for n, q in zip(run.label_names, p)}}
          for t, p in zip(texts, run.probabilities(texts))]


def evaluate_run(run_dir: str | pathlib.Path, split: str = "test", *,
                 quantize: str | None = None) -> dict[str, float]:
  """Re-evaluates the best parameters of a run on one of its data splits.

  ``quantize`` (``"int8"``, ``"int4"`` or ``"int2"``) evaluates with the embedding quantized
  row-wise (``embedlab.core.compress.quantize_entries``), as ``embedlab export --quantize`` writes it;
  the result then also holds the embedding's bytes before and after.
  """
  run_dir = pathlib.Path(run_dir)
  cfg, vocab, label_names = report.load_run(run_dir)
  kept = report.load_buckets(run_dir, cfg)
  model, params = restore_for_eval(run_dir, cfg, vocab, label_names, kept)
  extra = {}
  if quantize is not None:
    from embedlab.core import compress  # noqa: PLC0415
    quantized = compress.quantize_entries(params["embed"],
                                          compress.quantize_bits(quantize, "eval"))
    extra = {"quantize": quantize, "embedding_bytes": compress.table_bytes(params["embed"]),
             "quantized_bytes": compress.table_bytes(quantized)}
    params = {**params, "embed": compress.dequantize_entries(quantized)}
  ids, labels = _split_for_run(cfg, vocab, label_names, kept, split)
  result = evaluate(jax.jit(make_eval_step(model)), params, ids, labels, cfg.train.eval_batch_size)
  return {**result, **extra}


def _split_for_run(cfg, vocab, label_names, kept, split: str):
  """``(ids, labels)`` of a data split encoded with the run's own vocabulary and labels, so an
  evaluation reads the ids and classes the run was trained with, whatever the files hold now."""
  data = data_lib.encode_splits(cfg.data, cfg.seed)
  if not _data_changes(vocab, label_names, data):  # the usual case: the cached encoding
    ids, labels = {"train": (data.train_ids, data.train_labels),
                   "dev": (data.dev_ids, data.dev_labels),
                   "test": (data.test_ids, data.test_labels)}[split]
    if ids is None:
      raise ValueError(f"eval: the run's data has no {split!r} split.")
    return ids, labels
  splits, names = data_lib.load_splits(cfg.data, cfg.seed)
  if split not in splits:
    raise ValueError(f"eval: the run's data has no {split!r} split.")
  rows = splits[split]
  index = {name: i for i, name in enumerate(label_names)}
  unknown = sorted({names[int(i)] for i in rows.labels} - set(index))
  if unknown:
    raise data_lib.DataError(f"eval: the {split} split has labels the run never trained on "
                             f"({', '.join(unknown[:5])}); its classes are {list(label_names)}.")
  labels = np.asarray([index[names[int(i)]] for i in rows.labels], np.int32)
  return data_lib.encode_texts(cfg.data, vocab, rows.texts, kept), labels


def restore_for_eval(run_dir, cfg, vocab, label_names, kept_buckets):
  num_embeddings = data_lib.table_rows(cfg.data, len(vocab), kept_buckets)
  model = models_lib.make_model(cfg.model, num_embeddings, len(label_names))
  target = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  target = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), target)
  checkpoints = ckpt_lib.Checkpoints(run_dir, read_only=True)
  restored = checkpoints.restore_best(target) or None
  checkpoints.close()
  if restored is None:
    raise FileNotFoundError(f"{run_dir} holds no best checkpoint; train it first "
                            f"(embedlab train EXPERIMENT --workdir {run_dir}).")
  return model, restored[1]
