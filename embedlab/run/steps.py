"""The jitted steps of a run: one train step (dense, row-sparse, or scatter-add), blocks of steps
with running metric sums, and evaluation. Pure functions of ``(state, batch)``; nothing here
reads a config (``run.build`` turns the config into their arguments).

The loss follows the labels' shape, fixed when a step is traced: int ids ``[B]`` take softmax
cross-entropy; multi-hot ``[B, C]`` labels (``data.multilabel``) one sigmoid binary
cross-entropy per label, summed over the labels (fastText's ``-loss ova``), with "correct"
counting a top label that is one of the row's (precision at 1). Every step kind reaches it
through ``_metric_sums``, so none has a multi-label copy.

The row-sparse step takes the path a user's own loop takes (``embedlab.value_and_row_grad``,
``row_sparse``, ``apply_updates``), not a copy of its insides; only on a mesh whose "model"
shards each update their own rows does the update go through ``sharding.sharded_sparse_update``."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from embedlab.core import ids as ids_lib
from embedlab.core import meshes
from embedlab.core import sharding
from embedlab.data import batches as batch_lib
from embedlab.models import classifiers as models_lib

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


def _metric_sums(logits, labels, weight):
  if labels.ndim == 2:  # multi-hot labels: one-vs-all
    return _ova_sums(logits, labels, weight)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
          "count": jnp.sum(weight)}


def _ova_sums(logits, labels, weight):
  """``_metric_sums`` of multi-hot ``labels [B, C]``: the sum over labels of each label's
  sigmoid binary cross-entropy, and "correct" = the top-scored label is one of the row's."""
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  losses = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
  hit = jnp.take_along_axis(labels, jnp.argmax(logits, -1)[:, None], axis=-1)[:, 0]
  return {"loss": jnp.sum(losses * weight), "correct": jnp.sum(hit * weight),
          "count": jnp.sum(weight)}


def _ranking_sums(logits, labels, weight, k: int):
  """For multi-hot ``labels [B, C]``: the row's labels among its ``k`` top-scored ones
  ("hits_at_k"), the predictions made (``min(k, C)`` a row) and the gold labels, summed."""
  k = min(k, labels.shape[-1])
  _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
  hits = jnp.sum(jnp.take_along_axis(labels.astype(jnp.float32), top, axis=-1), axis=-1)
  return {"hits_at_k": jnp.sum(hits * weight), "predicted_at_k": jnp.sum(weight) * k,
          "gold": jnp.sum(jnp.sum(labels.astype(jnp.float32), axis=-1) * weight)}


def ranking_metrics(totals: dict[str, float]) -> dict[str, float]:
  """Precision and recall at 1 and at k, micro-averaged as fastText's ``test`` (hits over all
  predictions, hits over all gold labels), from ``make_eval_step``'s multi-label sums added up.

  Example:
    >>> m = ranking_metrics({"correct": 3, "count": 4, "hits_at_k": 5, "predicted_at_k": 8,
    ...                      "gold": 6})
    >>> {k: round(v, 3) for k, v in m.items()}
    {'precision_at_1': 0.75, 'recall_at_1': 0.5, 'precision_at_2': 0.625, 'recall_at_2': 0.833}
  """
  count, gold = max(totals["count"], 1.0), max(totals["gold"], 1.0)
  k = int(round(totals["predicted_at_k"] / count))
  out = {"precision_at_1": totals["correct"] / count, "recall_at_1": totals["correct"] / gold}
  if k > 1:
    out[f"precision_at_{k}"] = totals["hits_at_k"] / max(totals["predicted_at_k"], 1.0)
    out[f"recall_at_{k}"] = totals["hits_at_k"] / gold
  return out


def _all_finite(tree) -> jax.Array:
  """Whether every element of every leaf is finite: each leaf's ``isfinite`` mask reduced as a
  uint8 minimum. XLA:CPU lowers ``jnp.all`` of a bool array as a windowed reduction, about 1.5x
  slower (``python benchmarks/scatter_cost.py``, one thread: 34 against 21 us on SST-2's
  [1920, 100] per-occurrence gradient, 1.56 against 1.07 ms on a 92,712 x 100 one)."""
  leaves = [jnp.min(jnp.isfinite(x).astype(jnp.uint8)) > 0
            for x in jax.tree.leaves(tree) if x.size]
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
  gradient is taken with respect to the gathered rows only, through the public path
  (``embedlab.value_and_row_grad``, ``row_sparse(table_optimizer)``, ``apply_updates``), and
  ``optimizer`` updates the other parameters; ``state.opt_state`` is then ``{"dense": ...,
  "table": ...}`` (the table's entry ``row_sparse(table_optimizer).init(table)``, which is
  ``table_optimizer.init(table)``). ``oob`` is the id policy of the sparse path's gather
  (``"clip"`` once the data has been validated). Where the table optimizer has an ``add``
  (``sparse_sgd`` without weight decay) and the model an ``apply_gathered`` (the bag model), the
  step reads the rows per occurrence and scatter-adds each occurrence's gradient into its row:
  no dedup sort, no second gather (on one device; the result is the dedup path's up to float
  rounding where a batch repeats an id).

  With a ``mesh`` (``embedlab.core.meshes``) and ``lookup="shard_map"`` the sparse path reads the
  batch's rows from the row-sharded table with ``sharding.sharded_take`` and each "model" shard
  updates only its own rows (``sharding.sharded_sparse_update``); with ``lookup="xla"`` (and on
  the dense path) XLA's partitioner splits the plain program.
  """
  by_shard = mesh is not None and lookup == "shard_map"
  gather = functools.partial(sharding.sharded_take, mesh=mesh) if by_shard else None
  parts = StepParts(model, optimizer, table_optimizer, row_mask, oob, mesh if by_shard else None,
                    gather)
  if table_optimizer is None:
    inner = dense_step
  elif scatter_adds(model, table_optimizer, mesh):
    inner = scatter_step
  else:
    inner = sparse_step
  return functools.partial(_counted_step, parts, inner)


class StepParts(NamedTuple):
  """What a train step is made of (``make_train_step``'s arguments, resolved)."""

  model: models_lib.Model
  optimizer: optax.GradientTransformation  # all params (dense step) or all but the table
  table_optimizer: Any  # a row-sparse optimizer, or None
  row_mask: Any  # bool [rows], True = trainable, or None
  oob: str  # id policy of the row-sparse gather
  shard_mesh: Any  # the mesh when each "model" shard updates its own rows, else None
  gather: Callable | None  # the row gather of that mesh, else None (jnp.take)


def _counted_step(parts: StepParts, inner: Callable, state: TrainState, ids, labels):
  """``inner`` with the step's key, then the step counted and a bad batch recorded."""
  rng = jax.random.fold_in(state.rng, state.step)
  params, opt_state, ok, sums = inner(parts, state, ids, labels, rng)
  sums = {**sums, "nonfinite": 1 - ok.astype(jnp.float32),
          "first_nonfinite": jnp.where(ok, jnp.iinfo(jnp.int32).max, state.step)}
  return TrainState(state.step + 1, params, opt_state, state.rng), sums


def _mean_loss(logits, labels):
  sums = _metric_sums(logits, labels, jnp.ones(labels.shape[:1], jnp.float32))
  return sums["loss"] / labels.shape[0], sums


def dense_step(parts: StepParts, state: TrainState, ids, labels, rng):
  """One optax step on every parameter. Returns ``(params, opt_state, ok, metric sums)``; a
  batch whose loss, gradients or new parameters are not finite changes nothing (``ok`` False)."""

  def loss_fn(params):
    return _mean_loss(apply_model(parts.model, params, ids, labels.shape[0], train=True,
                                  rng=rng), labels)

  (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = parts.optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # finite gradients can still overflow into non-finite parameters (a huge learning rate):
  # such an update is not applied either
  ok = jnp.isfinite(sums["loss"]) & _all_finite(grads) & _all_finite(params)
  return _select(ok, params, state.params), _select(ok, opt_state, state.opt_state), ok, sums


def sparse_step(parts: StepParts, state: TrainState, ids, labels, rng):
  """One row-sparse step through the public path (``embedlab.value_and_row_grad``,
  ``row_sparse``, ``apply_updates``): the gradient taken with respect to the batch's distinct
  table rows only, the table optimizer updating those rows and their slots, the dense optimizer
  the other parameters. Returns as ``dense_step``.

  The hashing trick maps ids to shared rows first (``model.embedder.rows``), so the model reads
  the local table with ``rows=True``. Frozen rows (``parts.row_mask``) and a bad batch name no
  row of the ``RowGrad`` (its ids set to ``V``), so neither they nor their slots change."""
  from embedlab.core import rowgrad  # noqa: PLC0415 - only on the sparse path
  model = parts.model
  table, dense = split_table(state.params)
  rows = table.shape[0]
  ragged = isinstance(ids, batch_lib.RaggedBatch)

  def loss_fn(params, local_rows):
    local_ids = batch_lib.RaggedBatch(local_rows, ids.segment_ids) if ragged else local_rows
    return _mean_loss(apply_model(model, params, local_ids, labels.shape[0], train=True,
                                  rng=rng, rows=True), labels)

  (_, sums), grads = rowgrad.value_and_row_grad(
      loss_fn, state.params, model.embedder.rows(ids.ids if ragged else ids), table=TABLE_PATH,
      padding_id=models_lib.PADDING_ID, has_aux=True, oob=parts.oob, gather=parts.gather,
      row_mask=parts.row_mask)
  g_table, g_dense = split_table(grads)
  ok = jnp.isfinite(sums["loss"]) & _all_finite(g_dense) & _all_finite(g_table)
  dense, dense_opt, ok = _update_dense(parts, state, dense, g_dense, ok)
  # a bad batch touches no row: its ids become out of range (no row); the padding id's row
  # and frozen rows are none of the RowGrad's already (padding_id, row_mask above)
  g_table = rowgrad.RowGrad(jnp.where(ok, g_table.ids, rows), jnp.where(ok, g_table.rows, 0),
                            rows, dense=g_table.dense)
  if parts.shard_mesh is not None:  # each "model" shard updates its own rows
    table, table_opt = sharding.sharded_sparse_update(
        parts.table_optimizer, table, state.opt_state["table"], g_table.ids, g_table.rows,
        parts.shard_mesh)
  else:
    updates, table_opt = rowgrad.row_sparse(parts.table_optimizer).update(
        g_table, state.opt_state["table"], table)
    table = rowgrad.apply_updates(table, updates)
  return (*_joined(state, ok, dense, dense_opt, table, table_opt), ok, sums)


def scatter_step(parts: StepParts, state: TrainState, ids, labels, rng):
  """The row-sparse step as fastText updates: the table's rows read per occurrence and each
  occurrence's gradient added straight into its row (``table_optimizer.add``), with no dedup
  sort and no second gather. Returns as ``dense_step``."""
  model = parts.model
  table, dense = split_table(state.params)
  ragged = isinstance(ids, batch_lib.RaggedBatch)
  raw = ids.ids if ragged else ids
  rows = model.embedder.rows(raw)
  if parts.oob == "error":
    rows = ids_lib.check_ids(rows, table.shape[0], where="train step")
  vectors = jnp.take(table, rows, axis=0, mode="clip")
  extra = dict(segment_ids=ids.segment_ids, num_bags=labels.shape[0]) if ragged else {}

  def split_loss(dense, vectors):
    return _mean_loss(model.apply_gathered(dense, vectors, raw, train=True, rng=rng, **extra),
                      labels)

  (_, sums), (g_dense, g_vectors) = jax.value_and_grad(
      split_loss, argnums=(0, 1), has_aux=True)(dense, vectors)
  ok = jnp.isfinite(sums["loss"]) & _all_finite(g_dense) & _all_finite(g_vectors)
  dense, dense_opt, ok = _update_dense(parts, state, dense, g_dense, ok)
  # padding and a bad batch touch no row: their ids become out of range, which add drops
  row_ids = jnp.where(ok & (raw != models_lib.PADDING_ID), rows, table.shape[0]).reshape(-1)
  table, table_opt = parts.table_optimizer.add(table, state.opt_state["table"], row_ids,
                                               g_vectors.reshape(row_ids.shape[0], -1),
                                               row_mask=parts.row_mask)
  return (*_joined(state, ok, dense, dense_opt, table, table_opt), ok, sums)


def _update_dense(parts: StepParts, state: TrainState, dense, g_dense, ok):
  """The dense optimizer's step on the non-table params; a bad batch (``ok`` False), or an
  update that would make them non-finite, keeps them and their optimizer state. Returns
  ``(dense, dense_opt, ok)``."""
  updates, dense_opt = parts.optimizer.update(g_dense, state.opt_state["dense"], dense)
  new = optax.apply_updates(dense, updates)
  ok = ok & _all_finite(new)
  return _select(ok, new, dense), _select(ok, dense_opt, state.opt_state["dense"]), ok


def _joined(state: TrainState, ok, dense, dense_opt, table, table_opt):
  """``(params, opt_state)`` of a row-sparse step; a bad batch keeps the table's update count."""
  table_opt = table_opt._replace(count=jnp.where(ok, table_opt.count,
                                                 state.opt_state["table"].count))
  return join_table(dense, table), {"dense": dense_opt, "table": table_opt}


def scatter_adds(model: models_lib.Model, table_optimizer, mesh=None) -> bool:
  """Whether ``make_train_step`` takes the scatter-add path: a table optimizer with ``add``
  (``sparse_sgd`` without weight decay), a model with ``apply_gathered`` (the bag model), one
  device."""
  return (table_optimizer is not None and getattr(table_optimizer, "add", None) is not None
          and model.apply_gathered is not None and mesh is None)


def apply_model(model, params, ids, num_bags, **kwargs):
  """``model.apply`` on padded ids ``[B, L]`` or on a ``data.RaggedBatch`` of ``num_bags`` bags."""
  if isinstance(ids, batch_lib.RaggedBatch):
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


def make_eval_step(model: models_lib.Model, k: int = 1) -> Callable:
  """Returns ``eval_step(params, ids, labels, mask) -> metric sums`` for one padded batch; with
  multi-hot labels also the sums of precision and recall at ``k`` (``ranking_metrics``)."""

  def eval_step(params, ids, labels, mask):
    logits = model.apply(params, ids, train=False)
    sums = _metric_sums(logits, labels, mask.astype(jnp.float32))
    if labels.ndim == 2:
      sums.update(_ranking_sums(logits, labels, mask.astype(jnp.float32), k))
    return sums

  return eval_step


def evaluate(eval_step, params, ids, labels, batch_size: int) -> dict[str, float]:
  """Accuracy and mean loss over a whole split, in fixed-size batches (one compilation); for
  multi-label data "accuracy" is precision at 1, and ``ranking_metrics`` are added."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch_ids, batch_labels, mask in batch_lib.eval_batches(ids, labels, batch_size):
    sums = eval_step(params, batch_ids, batch_labels, mask)
    for k in sums:
      totals[k] = totals.get(k, 0.0) + float(sums[k])
  count = max(totals["count"], 1.0)
  out = {"loss": totals["loss"] / count, "accuracy": totals["correct"] / count,
         "count": int(totals["count"])}
  if "gold" in totals:
    out.update(ranking_metrics(totals))
  return out


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


def lookup_path(mesh_cfg) -> str:
  """The row-sparse step's lookup path: ``mesh.lookup``, with ``auto`` resolved to the one
  measured faster (``benchmarks/sharded_scaling.py``, BENCHMARKS.md)."""
  if mesh_cfg.lookup != "auto":
    return mesh_cfg.lookup
  if mesh_cfg.table == "rows_columns" or mesh_cfg.model < AUTO_SHARD_MAP_FROM:
    return "xla"
  return "shard_map"


def compile_steps(cfg, setup, mesh, shardings):
  """The jitted train steps ``(state, acc, ids, labels) -> (state, acc)`` (one batch, a block of
  batches; ``acc`` the running metric sums, from ``zero_sums()``), the eval step, and ``put``
  that places a host batch for them: unchanged single-device programs when ``mesh`` is None."""
  one_step = make_train_step(setup.model, setup.optimizer, table_optimizer=setup.table_optimizer,
                             row_mask=setup.row_mask, oob="clip", mesh=mesh,
                             lookup=lookup_path(cfg.mesh))
  eval_step = make_eval_step(setup.model, cfg.train.eval_k)
  single, multi = _with_sums(_as_block(one_step)), _with_sums(make_multi_step(one_step))
  if mesh is None:
    return (jax.jit(single, donate_argnums=0), jax.jit(multi, donate_argnums=0),
            jax.jit(eval_step), lambda array, batch_axis=0: array)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  out = (shardings, replicated)
  single_fn = jax.jit(single, donate_argnums=0, out_shardings=out)
  multi_fn = jax.jit(multi, donate_argnums=0, out_shardings=out)
  put = functools.partial(meshes.global_batch, mesh)
  eval_jit = jax.jit(eval_step, out_shardings=replicated)
  eval_fn = lambda params, *batch: eval_jit(params, *map(put, batch))  # noqa: E731
  if jax.process_count() > 1:
    # one program in flight at a time: CPU collectives (gloo) of two programs running at once
    # can pair up in a different order on each process and hang (seen with train + eval)
    single_fn, multi_fn, eval_fn = (_synchronous(f) for f in (single_fn, multi_fn, eval_fn))
  return single_fn, multi_fn, eval_fn, put


def _synchronous(fn):
  return lambda *args: jax.block_until_ready(fn(*args))
