"""Memory a configuration needs, checked against the device before anything is allocated.

Two gates, both without allocating:

* ``estimate_bytes`` (fast, from shapes only: ``jax.eval_shape``) counts the parameters (the
  embedding table and the rest), the optimizer slots (optax adam / adamw 2 per weight, momentum
  and adagrad 1, sgd 0; row-sparse ones from ``embedlab.core.sparse.slot_bytes``), the gradients
  (the whole table for dense updates, only the rows of one batch for a row-sparse table
  optimizer), the optimizer's update temporaries (about one buffer per slot of every weight it
  updates) and the activations of one training batch: the residuals the forward pass keeps for
  the backward one (read off ``jax.vjp`` of the model, parameters not counted again) plus, for
  every ``lax.scan`` (the BiLSTM), twice its stacked inputs (held in the forward pass, their
  cotangents built in the backward one). An evaluation batch (forward only) is counted by the
  model's ``stages`` when it needs more. ``check_fits`` compares the total with the memory
  available (the device's own count where the backend reports one, ``MemAvailable`` of the host
  otherwise) and fails early with both numbers and settings that would fit.
* ``compiled_bytes`` / ``check_compiled_fits`` / ``check_step_fits`` read XLA's own
  ``memory_analysis()`` of a compiled step (``jax.jit(step).lower(*shapes).compile()``;
  ``jax.ShapeDtypeStruct`` arguments allocate nothing): arguments + outputs - donated (aliased)
  + temporaries.

``tests/test_resources.py`` checks that the estimate is within 1.5x of XLA's count for every
model, table variant and optimizer.

Example:
  >>> from embedlab.config import Config
  >>> est = estimate_bytes(Config(), num_embeddings=10_000, num_classes=2, seq_len=64)
  >>> est["table"], est["optimizer_slots"] >= 2 * est["table"]
  (2560000, True)
  >>> check_fits(Config(), 10_000, 2, 64, available=1 << 40)["total"] < 1 << 40
  True
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any

import jax
import numpy as np

from embedlab import config as config_lib
from embedlab.core import names
from embedlab.run import model_args

# Slots per weight of the dense optax optimizers of ``embedlab.core.optim`` (adam: mu and nu).
DENSE_SLOTS = names.DENSE_OPTIMIZERS  # optimizer slots per weight
# The estimate leaves this share of the available memory for XLA's own buffers, fragmentation
# and everything it does not count.
HEADROOM = 0.8


class ResourceError(RuntimeError):
  """A configuration needs more memory than the device has."""


def _bytes(tree: Any) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def estimate_bytes(cfg: config_lib.Config, num_embeddings: int, num_classes: int,
                   seq_len: int) -> dict[str, int]:
  """Bytes one training run of ``cfg`` holds at once, by part; nothing is allocated.

  Args:
    cfg: the experiment config (model, optimizer, batch sizes).
    num_embeddings: rows of the embedding table (vocabulary + hash buckets).
    num_classes: classes of the classifier.
    seq_len: ids per example (``max_len * ngrams``).

  Returns:
    ``{"table", "other_params", "gradients", "optimizer_slots", "update_temporaries",
    "activations", "total"}``, in bytes.

  Example:
    >>> from embedlab.config import Config
    >>> estimate_bytes(Config(), 1000, 2, 16)["table"]
    256000
  """
  model = model_args.make_model(cfg.model, int(num_embeddings), int(num_classes), oob="clip")
  # shapes only: no key is made (a first JAX computation and a compilation)
  key = jax.eval_shape(jax.random.PRNGKey, 0)
  shapes = jax.eval_shape(model.init, key)
  table = _bytes(shapes["embed"])  # the whole embedding, any model.table variant
  other = _bytes(shapes) - table
  batch = cfg.train.batch_size
  if cfg.optim.tables == "dense":
    gradients = table + other
    slots = DENSE_SLOTS[cfg.optim.name] * (table + other)
    # the update's temporaries, and at least the new params: the step checks them finite
    # before they replace the old ones
    temporaries = max(DENSE_SLOTS[cfg.optim.name], 1) * (table + other)
  else:
    from embedlab.core import sparse as sparse_lib  # noqa: PLC0415 - only on the sparse path
    # the rows of one batch at most, each gathered once; the rest of the embedding (a
    # factorized table's projection) is updated densely like the other params
    row_table = shapes["embed"]["table"]
    table_shape, itemsize = row_table.shape, np.dtype(row_table.dtype).itemsize
    rest = other + table - _bytes(row_table)
    rows = min(batch * seq_len, table_shape[0])
    gradients = rows * table_shape[1] * itemsize + rest
    slots = (sparse_lib.slot_bytes(cfg.optim.tables, table_shape)
             + DENSE_SLOTS[cfg.optim.name] * rest)
    temporaries = (sparse_lib.slot_bytes(cfg.optim.tables, (rows, table_shape[1]))
                   + DENSE_SLOTS[cfg.optim.name] * rest)
  train_acts = _training_activations(model, shapes, key, batch, seq_len)
  act_itemsize = np.dtype(cfg.model.compute_dtype).itemsize
  eval_acts = sum(math.prod(shape) for _, shape in model.stages(cfg.train.eval_batch_size,
                                                                 seq_len)) * act_itemsize
  # evaluation runs in its own batches, forward only, and not at the same time as a step
  acts = max(train_acts, eval_acts) + batch * seq_len * 4 * 2  # + the ids and their rows
  total = table + other + gradients + slots + temporaries + acts
  return {"table": table, "other_params": other, "gradients": gradients,
          "optimizer_slots": slots, "update_temporaries": temporaries, "activations": acts,
          "total": total}


def _training_activations(model, params, key, batch: int, seq_len: int) -> int:
  """Bytes of a training batch's activations: the residuals ``jax.vjp`` keeps for the backward
  pass (arrays shaped like a parameter are taken for the parameter and not counted), plus twice
  the stacked inputs of every ``lax.scan``, traced on shapes only."""
  ids = jax.ShapeDtypeStruct((batch, seq_len), np.int32)

  def loss(p, ids, rng):
    return model.apply(p, ids, train=True, rng=rng).sum()

  def residuals(p, ids, rng):
    return jax.vjp(lambda q: loss(q, ids, rng), p)[1]

  kept = jax.tree.leaves(jax.eval_shape(residuals, params, ids, key))
  owned = collections.Counter((tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(params))
  saved = 0
  for x in kept:
    sig = (tuple(x.shape), np.dtype(x.dtype))
    if owned[sig]:
      owned[sig] -= 1  # the parameter itself, already counted
    else:
      saved += math.prod(x.shape) * np.dtype(x.dtype).itemsize
  jaxpr = jax.make_jaxpr(loss)(params, ids, key)
  return saved + 2 * _scan_input_bytes(jaxpr.jaxpr)


def _scan_input_bytes(jaxpr) -> int:
  """Bytes of the stacked inputs (``xs``) of every ``scan`` in a jaxpr, nested ones included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      skip = eqn.params["num_consts"] + eqn.params["num_carry"]
      total += sum(math.prod(v.aval.shape) * np.dtype(v.aval.dtype).itemsize
                   for v in eqn.invars[skip:])
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _scan_input_bytes(inner)
  return total


def compiled_bytes(compiled: Any) -> dict[str, int]:
  """XLA's own count of the memory a compiled program needs (``compiled.memory_analysis()``).

  Args:
    compiled: ``jax.jit(fn, ...).lower(*args).compile()``; the args may be
      ``jax.ShapeDtypeStruct``s, so nothing is allocated.

  Returns:
    ``{"arguments", "outputs", "aliased", "temporaries", "total"}`` in bytes; ``total`` is
    arguments + outputs - aliased (donated buffers reused for outputs) + temporaries.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.ShapeDtypeStruct((1024,), jnp.float32)
    >>> c = jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile()
    >>> b = compiled_bytes(c)
    >>> b["arguments"], b["total"] >= 4096
    (4096, True)
  """
  m = compiled.memory_analysis()
  if m is None:
    raise ResourceError("resources: this backend reports no memory analysis of a compiled "
                        "program; use estimate_bytes / check_fits instead.")
  out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
         "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes)}
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def check_compiled_fits(compiled: Any, *, available: int | None = None, device: Any = None,
                        what: str = "the train step") -> dict[str, int]:
  """Raises ``ResourceError`` if XLA's count of a compiled program (``compiled_bytes``) exceeds
  ``HEADROOM`` of the memory available; the second gate after ``check_fits``, once the step is
  compiled (for shapes: nothing need be allocated).

  Args:
    compiled: ``jax.jit(step, ...).lower(*args).compile()``.
    available: bytes available; default ``available_bytes(device)`` (no check if unknown).
    device: the device to ask (default: the first JAX device).
    what: names the program in the message.

  Returns:
    ``compiled_bytes(compiled)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.ShapeDtypeStruct((2**20,), jnp.float32)
    >>> c = jax.jit(lambda a: a * 2).lower(x).compile()
    >>> try:
    ...   check_compiled_fits(c, available=2**20)
    ... except ResourceError as e:
    ...   print(str(e).split(" (")[0])
    resources: the train step needs 8.0 MiB by XLA's memory analysis
  """
  need = compiled_bytes(compiled)
  available, source, budget = _budget(available, device)
  if available is None or need["total"] <= budget:
    return need
  raise ResourceError(
      f"resources: {what} needs {human(need['total'])} by XLA's memory analysis (arguments "
      f"{human(need['arguments'])}, outputs {human(need['outputs'])}, donated "
      f"{human(need['aliased'])}, temporaries {human(need['temporaries'])}) but "
      f"{human(available)} is available ({source}; {int(HEADROOM * 100)}% of it may be used: "
      f"{human(budget)}). Nothing was allocated. Lower train.batch_size (activations grow with "
      "it), data.max_len, model.features or the hidden sizes, or use a row-sparse "
      "optim.tables.")


def check_step_fits(jitted: Any, *args: Any, available: int | None = None, device: Any = None,
                    what: str = "the train step") -> tuple[Any, dict[str, int]]:
  """Compiles ``jitted`` for the shapes, dtypes and shardings of ``args`` and checks it with
  ``check_compiled_fits`` before it runs; ``args`` may be arrays or ``jax.ShapeDtypeStruct``s
  (nothing is allocated for those).

  Args:
    jitted: a ``jax.jit``-wrapped function (donation and shardings as it will run).
    *args: its arguments, or their shapes.
    available, device, what: as for ``check_compiled_fits``.

  Returns:
    ``(compiled, compiled_bytes(compiled))``: ``compiled`` runs the same program on arguments
    of these shapes and shardings, without compiling again.

  Raises:
    ResourceError: XLA's count exceeds ``HEADROOM`` of the memory available.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> step = jax.jit(lambda w, x: (w - 0.1 * x.mean(0), x.sum()), donate_argnums=0)
    >>> compiled, need = check_step_fits(step, jnp.ones(4), jnp.ones((8, 4)))
    >>> need["arguments"], compiled(jnp.ones(4), jnp.ones((8, 4)))[1].item()
    (144, 32.0)
  """
  shapes = jax.tree.map(_shape_of, args)
  compiled = jitted.lower(*shapes).compile()
  return compiled, check_compiled_fits(compiled, available=available, device=device, what=what)


def _shape_of(x: Any) -> jax.ShapeDtypeStruct:
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  x = np.asarray(x)
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _budget(available: int | None, device: Any) -> tuple[int | None, str, int]:
  """``(available, where that number comes from, HEADROOM of it)``; ``available`` None when
  it is not given and the device does not tell (then nothing is checked)."""
  source = "given"
  if available is None:
    available, source = available_bytes(device)
  return available, source, int((available or 0) * HEADROOM)


def available_bytes(device: Any = None) -> tuple[int | None, str]:
  """``(bytes, where the number comes from)`` that a run may use on ``device`` (default: the
  first JAX device): the device's ``bytes_limit - bytes_in_use`` where its backend reports
  memory (GPU, TPU), else the host's ``MemAvailable``; ``(None, reason)`` if neither is known.

  Example:
    >>> n, source = available_bytes()
    >>> n is None or n > 0
    True
  """
  device = device if device is not None else jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
    stats = None
  if stats and "bytes_limit" in stats:
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return free, f"{device.platform} device {device.id} memory (bytes_limit - bytes_in_use)"
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024, "host MemAvailable (/proc/meminfo)"
  except OSError:
    pass
  return None, "unknown (no device memory stats and no /proc/meminfo)"


def human(n: float) -> str:
  """``1536 -> '1.5 KiB'``.

  Example:
    >>> human(3 * 2**30)
    '3.0 GiB'
  """
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"  # pragma: no cover


def check_fits(cfg: config_lib.Config, num_embeddings: int, num_classes: int, seq_len: int, *,
               available: int | None = None, device: Any = None) -> dict[str, int]:
  """Raises ``ResourceError`` if ``estimate_bytes`` exceeds ``HEADROOM`` of the memory
  available, naming both numbers, the biggest parts and settings that would fit.

  Args:
    cfg, num_embeddings, num_classes, seq_len: as for ``estimate_bytes``.
    available: bytes available; default ``available_bytes(device)`` (no check if unknown).
    device: the device to ask (default: the first JAX device).

  Returns:
    The estimate.

  Example:
    >>> from embedlab.config import Config
    >>> try:
    ...   check_fits(Config(), 10_000_000, 2, 64, available=2**30)
    ... except ResourceError as e:
    ...   print(str(e).split(" (")[0])
    resources: this config needs about 14.3 GiB
  """
  estimate = estimate_bytes(cfg, num_embeddings, num_classes, seq_len)
  available, source, budget = _budget(available, device)
  if available is None or estimate["total"] <= budget:
    return estimate
  parts = ", ".join(f"{k.replace('_', ' ')} {human(v)}" for k, v in estimate.items()
                    if k != "total" and v)
  fixes = _settings_that_fit(cfg, num_embeddings, num_classes, seq_len, budget)
  raise ResourceError(
      f"resources: this config needs about {human(estimate['total'])} ({parts}) but "
      f"{human(available)} is available ({source}; {int(HEADROOM * 100)}% of it may be used: "
      f"{human(budget)}). Nothing was allocated. Settings that would fit: "
      + ("; ".join(fixes) if fixes else "none found by shrinking the table, the optimizer or "
         "the batch: use a device with more memory") + ".")


def _settings_that_fit(cfg, num_embeddings, num_classes, seq_len, budget) -> list[str]:
  def fits(c, rows=num_embeddings):
    return estimate_bytes(c, rows, num_classes, seq_len)["total"] <= budget

  def with_(**groups):
    return dataclasses.replace(cfg, **{g: dataclasses.replace(getattr(cfg, g), **kw)
                                       for g, kw in groups.items()})

  out = []
  if cfg.optim.tables == "dense":
    for name in ("sparse_rowwise_adagrad", "sparse_lazy_adam"):
      if fits(with_(optim={"tables": name})):
        out.append(f"--set optim.tables={name} (no dense table gradient or full slots)")
        break
  features = cfg.model.features
  while features > 1 and not fits(with_(model={"features": features})):
    features //= 2
  if features != cfg.model.features and fits(with_(model={"features": features})):
    out.append(f"--set model.features={features}")
  buckets = cfg.data.num_buckets
  if buckets and cfg.data.hashed and not cfg.data.pruned:  # pruned: rows it uses
    vocab = num_embeddings - buckets
    while buckets > 1 and not fits(cfg, vocab + buckets):
      buckets //= 2
    if buckets != cfg.data.num_buckets and fits(cfg, vocab + buckets):
      out.append(f"--set data.num_buckets={buckets}")
  batch = cfg.train.batch_size
  while batch > 1 and not fits(with_(train={"batch_size": batch,
                                            "eval_batch_size": min(batch,
                                                                   cfg.train.eval_batch_size)})):
    batch //= 2
  if batch != cfg.train.batch_size and fits(with_(train={"batch_size": batch,
                                                         "eval_batch_size": batch})):
    out.append(f"--set train.batch_size={batch} --set train.eval_batch_size={batch}")
  if os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") is None and jax.default_backend() == "gpu":
    out.append("or let JAX use more of the GPU: XLA_PYTHON_CLIENT_MEM_FRACTION=0.95")
  return out
