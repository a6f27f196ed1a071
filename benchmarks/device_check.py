"""The device check: embedlab's contract, speed against PyTorch, and whole experiments, on
whatever backend JAX finds (CPU, GPU or TPU), in one bounded run.

  python benchmarks/device_check.py --out DIR            # full sizes (meant for a GPU or TPU)
  python benchmarks/device_check.py --out DIR --smoke    # tiny sizes: seconds on a CPU
  bash benchmarks/device_check.sh prepare                # here: wheels + data for a bare GPU box
  bash benchmarks/device_check.sh run OUT                # there: install them, run the check

It writes ``DIR/device_check.log`` (everything it prints, the experiments' output too) and
``DIR/device_check.json``, prints a table per section and ends stdout with one JSON line.
Sections, each timed, bounded (``--budget``: a section past its share is stopped and recorded)
and independent (a failing section is recorded and the next one runs):

  1. ``contracts``: lookup (values, gradient, bad ids), bag (every mode, padded and ragged, each
     pooling strategy, weights, gradient, empty bags), attend, every table variant of
     ``embedlab.core.variants`` and quantized storage (``embedlab.core.quantize``), the row-sparse
     optimizers of ``embedlab.core.sparse`` (two steps against a numpy reference step),
     ``localize``, and sharding over the devices there are; each check
     is pass/fail with its max error against a numpy reference. Matrix products are allowed
     TF32 / bfloat16 rounding off CPU (JAX's default precision there).
  2. ``gather``: ``el.lookup`` of 1M random ids from a 4M x 128 table (float32 and bfloat16),
     GB/s counting bytes read and written, against a device-to-device stream copy
     (``x + 1``) in the same run and PyTorch's ``index_select`` on the same device.
  3. ``bag``: ``el.bag`` (mean, padded) forward and forward+backward against
     ``torch.nn.functional.embedding_bag``, same shapes; the gradient dense on both sides, and
     row-sparse (``localize`` / ``sparse=True``).
  4. ``sparse_step``: one row-sparse step (SGD, row-wise Adagrad, lazy Adam) at 2^16, 2^20 and
     2^24 rows against PyTorch's sparse SGD, Adagrad (element-wise: PyTorch has no row-wise
     one) and ``SparseAdam``; and the step-time ratio t(2^24) / t(2^16).
  5. ``e2e``: ``sst2_fasttext``, ``imdb_fasttext`` and ``sst2_cnn`` through ``embedlab train``
     in a subprocess into a temporary workdir, cold caches: accuracy (results.json) and the
     whole job's time. Skipped, with the reason, where ``datasets`` cannot be imported or the
     data is missing (``EMBEDLAB_DATA``). ``--smoke`` trains ``experiments/quickstart.py``
     (synthetic, offline) with small overrides instead.

Goals it reports (``goals`` in the JSON; None where a side is missing): lookup >= 70% of the copy
bandwidth and >= PyTorch's ``index_select``; bag forward+backward and the row-sparse step at
least as fast as PyTorch; the step at 2^24 rows within 1.5x of 2^16.

PyTorch is optional (without it, or with ``--no-torch``, its columns read "n/a"). On a GPU the
comparison runs on the same GPU; on TPU it is "n/a". JAX's preallocation is turned off
(``XLA_PYTHON_CLIENT_PREALLOCATE=false``, the experiments' subprocesses too) so PyTorch and the
experiments can allocate beside this process. The full check's sections add up to 450 s at most
(``--budget`` scales them; a watchdog ends the process 60 s past it, the JSON written); on an
H200 give the command a limit of about 540 s.

Known upstream issue: jaxlib 0.10.2 to 0.11.0 have a GPU scatter-add slowdown of up to ~2000x
in some shapes (jax-ml/jax#38806, openxla/xla#46225; reported fixed in 0.11.1). The row-sparse
step and every gradient of a lookup are scatter-adds, so the check prints the jax / jaxlib
versions and flags that range on GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings

# before JAX starts: let PyTorch allocate on the same GPU
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runs from a checkout without `pip install -e .`
  sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import embedlab as el  # noqa: E402
from embedlab.core import hashing as eh  # noqa: E402
from embedlab.core import quantize as eq  # noqa: E402
from embedlab.core.variants import factorized as fac_v  # noqa: E402
from embedlab.core.variants import hash_embedding as he_v  # noqa: E402
from embedlab.core.variants import hashed as hs_v  # noqa: E402
from embedlab.core.variants import qr as qr_v  # noqa: E402
from embedlab.core import pooling  # noqa: E402
from embedlab.core import meshes  # noqa: E402
from embedlab.core import sharding  # noqa: E402
from embedlab.core import sparse  # noqa: E402
from embedlab.core.localize import localize  # noqa: E402
from embedlab.core import tables  # noqa: E402

SCATTER_ISSUE = "jax-ml/jax#38806, openxla/xla#46225"

SIZES = {
    "full": {
        "gather": {"rows": 4 << 20, "features": 128, "ids": 1 << 20},
        "bag": {"rows": 1 << 20, "features": 128, "batch": 16384, "length": 64},
        "sparse_step": {"rows": (1 << 16, 1 << 20, 1 << 24), "features": 64, "ids": 1 << 16},
        "e2e": ("sst2_fasttext", "imdb_fasttext", "sst2_cnn"), "warm": True,
        "repeats": 20, "budget": {"contracts": 60, "gather": 60, "bag": 60, "sparse_step": 90,
                                  "e2e": 180},
    },
    "smoke": {
        "gather": {"rows": 1 << 12, "features": 16, "ids": 1 << 10},
        "bag": {"rows": 1 << 12, "features": 16, "batch": 32, "length": 8},
        "sparse_step": {"rows": (1 << 8, 1 << 10, 1 << 12), "features": 8, "ids": 1 << 8},
        "e2e": ("quickstart",), "warm": False,
        "repeats": 3, "budget": {"contracts": 60, "gather": 20, "bag": 20, "sparse_step": 30,
                                 "e2e": 60},
    },
}
SMOKE_OVERRIDES = ("data.synthetic_train_size=512", "data.synthetic_eval_size=128",
                   "train.num_epochs=1", "train.eval_every=8", "train.log_every=4",
                   "train.plots=false")
SECTIONS = ("contracts", "gather", "bag", "sparse_step", "e2e")


# ---------------------------------------------------------------- output

class _Tee:
  """Writes to the terminal and to the log file."""

  def __init__(self, stream, log):
    self.stream, self.log = stream, log

  def write(self, text):
    self.stream.write(text)
    self.log.write(text)
    return len(text)

  def flush(self):
    self.stream.flush()
    self.log.flush()

  def isatty(self):
    return False


def _fmt(x, digits=3) -> str:
  if x is None:
    return "n/a"
  if isinstance(x, float):
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"
  return str(x)


def _table(headers, rows) -> str:
  cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


class SectionTimeout(Exception):
  """A section ran past its share of the budget."""


@contextlib.contextmanager
def _alarm(seconds: float):
  """Raises SectionTimeout in the main thread after ``seconds`` (when Python next runs)."""
  def handler(signum, frame):
    raise SectionTimeout(f"stopped after its budget of {seconds:.0f} s")
  old = signal.signal(signal.SIGALRM, handler)
  signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- timing

def _time_jax(fn, *args, repeats: int, deadline: float, inner: int = 1) -> float | None:
  """Median seconds per call of a jitted ``fn`` (compiled and warmed first); ``inner`` calls
  are dispatched per timing and waited for once, so dispatch overlaps the device's work."""
  jax.block_until_ready(fn(*args))
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for _ in range(inner):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / inner)
    del out
    if time.perf_counter() > deadline:
      break
  return statistics.median(times)


def _time_loop(step, state, *, repeats: int, deadline: float, sync) -> float:
  """Median seconds per call of ``state = step(state)`` (donated buffers), after two warm-ups."""
  for _ in range(2):
    state = step(state)
  sync(state)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state = step(state)
    sync(state)
    times.append(time.perf_counter() - start)
    if time.perf_counter() > deadline:
      break
  return statistics.median(times)


# ---------------------------------------------------------------- torch (optional)

NO_TORCH = []  # --no-torch


def _torch_device():
  """``(torch, device)`` for the comparison on JAX's backend, or ``(None, reason)``."""
  if NO_TORCH:
    return None, "--no-torch"
  try:
    import torch  # noqa: PLC0415
  except ImportError as e:
    return None, f"torch not importable ({e})"
  # the optimizers build sparse tensors of indices they made themselves
  warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
  backend = jax.default_backend()
  if backend == "gpu":
    if not torch.cuda.is_available():
      return None, "torch has no CUDA device here"
    return torch, "cuda"
  if backend == "cpu":
    return torch, "cpu"
  return None, f"no PyTorch device for JAX's backend {backend!r}"


def _time_torch(torch, fn, *, repeats: int, deadline: float, device: str) -> float:
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  for _ in range(2):
    fn()
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    sync()
    times.append(time.perf_counter() - start)
    if time.perf_counter() > deadline:
      break
  return statistics.median(times)


def _torch_free(torch):
  gc.collect()
  if torch is not None and torch.cuda.is_available():
    torch.cuda.empty_cache()


# ---------------------------------------------------------------- 1. contracts

class _Checks:
  """Collects pass/fail checks with their max error against a reference."""

  def __init__(self, backend: str):
    self.rows = []
    self.last = time.perf_counter()
    # matrix products: JAX's default precision is TF32 on recent GPUs and bfloat16 passes on
    # TPUs; CPUs compute them in float32
    self.dot_rtol = 1e-5 if backend == "cpu" else 2e-2

  def close(self, name, got, ref, *, kind="sum"):
    """Passes when max|got - ref| <= atol + rtol * max|ref| (rtol by kind)."""
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    ref = np.asarray(ref, np.float64)
    rtol = {"exact": 1e-6, "sum": 2e-5, "dot": self.dot_rtol, "bf16": 1e-2}[kind]
    if got.shape != ref.shape:
      self._add({"name": name, "passed": False, "max_abs_err": None, "tol": None,
                 "detail": f"shape {got.shape}, expected {ref.shape}"})
      return
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    tol = 1e-6 + rtol * scale
    ok = bool(np.all(np.isfinite(got)) and err <= tol)
    self._add({"name": name, "passed": ok, "max_abs_err": err, "tol": tol, "detail": kind})

  def true(self, name, ok, detail=""):
    self._add({"name": name, "passed": bool(ok), "max_abs_err": None, "tol": None,
               "detail": detail})

  def _add(self, row):
    now = time.perf_counter()
    row["seconds"] = round(now - self.last, 3)  # since the previous check: its compile + run
    self.last = now
    self.rows.append(row)

  def raises(self, name, fn, error, match):
    try:
      out = fn()
      jax.block_until_ready(out)
    except error as e:  # noqa: BLE001 - the error expected
      ok = match in str(e)
      self.true(name, ok, f"{type(e).__name__}" + ("" if ok else f" without {match!r}: {e}"))
      return
    except Exception as e:  # noqa: BLE001 - the wrong error
      self.true(name, False, f"raised {type(e).__name__}: {str(e)[:200]}")
      return
    self.true(name, False, "did not raise")


def _np_bag(table, ids, mode, weights=None, padding_id=0):
  mask = ids != padding_id if padding_id is not None else np.ones(ids.shape, bool)
  w = mask.astype(np.float64) * (1.0 if weights is None else weights)
  vecs = table[ids].astype(np.float64)
  if mode == "max":
    out = np.where(mask[..., None], vecs, -np.inf).max(1)
    return np.where(mask.any(1)[:, None], out, 0)
  total = np.einsum("bl,bld->bd", w, vecs)
  if mode == "sum":
    return total
  denom = w.sum(1) if mode == "mean" else np.sqrt((w ** 2).sum(1))
  return np.where(denom[:, None] != 0, total / np.where(denom == 0, 1, denom)[:, None], 0)


def _np_unpack(stored, bits):
  stored = np.asarray(stored)
  if bits == 8:
    return stored.astype(np.float64)
  per, mask, offset = {4: (2, 15, 8.0), 2: (4, 3, 1.5)}[bits]
  parts = [((stored >> (bits * j)) & mask).astype(np.float64) - offset for j in range(per)]
  return np.stack(parts, -1).reshape(stored.shape[0], -1)


def _np_sparse_step(name, table, slots, ids, grads, count, lr, skip=()):
  """One step of each row-sparse rule (the docstrings of ``embedlab.core.sparse``) in float64."""
  table = table.astype(np.float64).copy()
  slots = [s.astype(np.float64).copy() for s in slots]
  V = table.shape[0]
  summed = {}
  for i, g in zip(ids.tolist(), grads.astype(np.float64)):
    if 0 <= i < V and i not in skip:
      summed[i] = summed.get(i, 0) + g
  t = count + 1
  for i, g in summed.items():
    w = table[i]
    if name == "sparse_sgd":
      table[i] = w - lr * g
    elif name == "sparse_adagrad":
      acc = slots[0][i] + g * g
      slots[0][i] = acc
      table[i] = w - lr * np.where(acc > 0, g / np.sqrt(acc + 1e-7), 0)
    elif name == "sparse_rowwise_adagrad":
      acc = slots[0][i] + np.mean(g * g)
      slots[0][i] = acc
      table[i] = w - lr * g / (np.sqrt(acc) + 1e-8)
    else:
      m = 0.9 * slots[0][i] + 0.1 * g
      v = 0.999 * slots[1][i] + 0.001 * g * g
      slots[0][i], slots[1][i] = m, v
      table[i] = w - lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-8)
  return table, slots


def run_contracts(sizes, ctx) -> dict:
  c = _Checks(ctx["backend"])
  rng = np.random.default_rng(0)
  V, D, B, L = 97, 16, 8, 12
  table = rng.normal(size=(V, D)).astype(np.float32)
  table[0] = 0
  params = {"table": jnp.asarray(table)}
  ids = rng.integers(1, V, (B, L)).astype(np.int32)
  ids[:, 9:] = 0  # padding
  ids[3, 2:] = 0
  ids[5] = 0  # an empty bag
  pad_mask = ids != 0
  cot = rng.normal(size=(B, L, D)).astype(np.float32)

  # lookup: values, gradient, bad ids
  @jax.jit
  def lookups(p, i, ct):
    out, vjp = jax.vjp(lambda p_: el.lookup(p_, i, padding_id=0), p)
    return out, vjp(ct)[0]["table"]

  out, grad = lookups(params, ids, cot)
  c.close("lookup: values (padding_id=0)", out, table[ids] * pad_mask[..., None], kind="exact")
  ref = np.zeros((V, D))
  np.add.at(ref, ids[pad_mask], cot[pad_mask])
  c.close("lookup: gradient (scatter-add)", grad, ref)
  bad = ids.copy()
  bad[2, 3] = V + 5
  c.raises("lookup: bad id raises (eager)", lambda: el.lookup(params, bad), ValueError,
           f"id {V + 5} at position (2, 3)")
  quiet = logging.getLogger("jax._src.debugging")  # the callback logs the error it raises
  level = quiet.level
  quiet.setLevel(logging.CRITICAL)
  try:
    c.raises("lookup: bad id raises (jit, host callback)",
             lambda: jax.jit(lambda p, i: el.lookup(p, i))(params, jnp.asarray(bad)),
             Exception, f"id {V + 5} at position (2, 3)")
  finally:
    quiet.setLevel(level)
  zero = jax.jit(lambda p, i: el.lookup(p, i, oob="zero"))(params, bad)
  keep = (bad < V)[..., None]
  c.close("lookup: oob='zero' zeroes bad ids", zero,
          np.where(keep, table[np.minimum(bad, V - 1)], 0), kind="exact")

  # bag, padded: every mode, weighted and not, each pooling strategy, the gradient
  weights = rng.uniform(0.5, 2.0, size=(B, L)).astype(np.float32)
  g_bag = rng.normal(size=(B, D)).astype(np.float32)
  variants = [(m, False) for m in tables.BAG_MODES] + [(m, True) for m in tables.BAG_MODES
                                                        if m != "max"]

  @jax.jit
  def padded(p, i, w, g):
    out = {f"{m}{' weighted' if wt else ''}": el.bag(p, i, mode=m, padding_id=0,
                                                     weights=w if wt else None)
           for m, wt in variants}
    mask = i != 0
    for strategy in pooling.STRATEGIES:
      out[f"mean, strategy {strategy}"] = pooling.pool_padded(
          p["table"], i, mask.astype(jnp.float32), mask, "mean", strategy=strategy)
    grad = jax.grad(lambda p_: jnp.sum(el.bag(p_, i, mode="mean", padding_id=0) * g))(p)
    return out, grad["table"]

  out, grad = padded(params, ids, weights, g_bag)
  for name, got in out.items():
    mode = name.split(",")[0].split()[0]
    c.close(f"bag padded {name}", got,
            _np_bag(table, ids, mode, weights if "weighted" in name else None), kind="dot")
  ref = np.zeros((V, D))
  counts = pad_mask.sum(1)
  for b in range(B):
    for pos in range(L):
      if pad_mask[b, pos]:
        ref[ids[b, pos]] += g_bag[b] / counts[b]
  c.close("bag padded mean: gradient", grad, ref, kind="dot")
  c.true("bag: empty bag gives zeros and finite gradients",
         np.all(np.asarray(out["mean"])[5] == 0) and np.all(np.isfinite(np.asarray(grad))))

  # bag, ragged, every mode
  flat = ids[pad_mask]
  seg = np.repeat(np.arange(B), counts).astype(np.int32)

  @jax.jit
  def ragged(p, i, s, g):
    out = {m: el.bag(p, i, mode=m, segment_ids=s, num_bags=B) for m in tables.BAG_MODES}
    grad = jax.grad(lambda p_: jnp.sum(el.bag(p_, i, mode="mean", segment_ids=s, num_bags=B)
                                       * g))(p)
    return out, grad["table"]

  out, grad = ragged(params, flat, seg, g_bag)
  for mode, got in out.items():
    c.close(f"bag ragged {mode}", got, _np_bag(table, ids, mode), kind="sum")
  c.close("bag ragged mean: gradient", grad, ref, kind="sum")

  # a bfloat16 table pooled in float32, and attend
  half = {"table": jnp.asarray(table, jnp.bfloat16)}
  rounded = np.asarray(half["table"].astype(jnp.float32))
  x = rng.normal(size=(B, D)).astype(np.float32)
  pooled, logits = jax.jit(lambda h, p, i, x_: (
      el.bag(h, i, mode="mean", padding_id=0, compute_dtype=jnp.float32), el.attend(p, x_)))(
          half, params, ids, x)
  c.close("bag padded mean, bfloat16 table", pooled, _np_bag(rounded, ids, "mean"), kind="dot")
  c.close("attend (x @ table.T)", logits, x.astype(np.float64) @ table.T, kind="dot")

  _compress_checks(c, rng, ids, pad_mask)
  _sparse_checks(c, rng)
  _sharding_checks(c, rng)
  failed = [r for r in c.rows if not r["passed"]]
  print(_table(["check", "passed", "max abs err", "tol", "detail", "s"],
               [[r["name"], "yes" if r["passed"] else "NO", r["max_abs_err"], r["tol"],
                 r["detail"], r["seconds"]] for r in c.rows]))
  return {"status": "ok" if not failed else "failed", "checks": c.rows,
          "passed": len(c.rows) - len(failed), "failed": len(failed)}


def _compress_checks(c, rng, ids, pad_mask):
  key = jax.random.key(1)
  V, D = 97, 16
  # hashing trick: raw ids, hashed on the device, against hash_ids in numpy
  raw = rng.integers(0, 2**31 - 2, ids.shape).astype(np.int32)
  raw[~pad_mask] = 0
  raw[:, 0] = rng.integers(1, 10, ids.shape[0])  # exact rows
  hashed = hs_v.init_hashed_table(key, 50, D, exact_size=10)
  he = he_v.init_hash_embedding(key, V, D, pool_size=31, num_hashes=3, padding_id=0)
  he = {"pool": he["pool"], "importance": jnp.asarray(rng.normal(size=(V, 3)), jnp.float32)}
  qr = {cb: qr_v.init_qr_table(key, V, D, num_collisions=10, combine=cb) for cb in qr_v.COMBINE_MODES}
  fac = fac_v.init_factorized_table(key, V, D, rank=4, padding_id=0)
  plain = el.init_table(key, V, D)

  @jax.jit
  def lookups(hashed, he, qr, fac, plain, raw, i):
    out = {"hashed": hs_v.lookup_hashed(hashed, raw, num_buckets=50, exact_size=10, padding_id=0),
           "hash_embedding": he_v.lookup_hash_embedding(he, i, padding_id=0),
           "factorized": fac_v.lookup_factorized(fac, i, padding_id=0),
           "factorized bag": fac_v.bag_factorized(fac, i, mode="mean", padding_id=0)}
    for cb, p in qr.items():
      out[f"qr {cb}"] = qr_v.lookup_qr(p, i, combine=cb, num_embeddings=V, padding_id=0)
    quantized = {bits: eq.quantize(plain, bits) for bits in (8, 4, 2)}
    for bits, q in quantized.items():
      out[f"int{bits}"] = eq.lookup_quantized(q, i, padding_id=0)
    return out, quantized

  out, quantized = lookups(hashed, he, qr, fac, plain, raw, ids)
  rows = eh.hash_ids(raw, 50, exact_size=10)
  c.close("compress hashed: lookup", out["hashed"],
          np.asarray(hashed["table"])[rows] * (raw != 0)[..., None], kind="exact")
  with np.errstate(over="ignore"):
    buckets = np.stack([eh.hash_int(ids.astype(np.uint32), j, np) % np.uint32(31)
                        for j in range(3)], -1)
  pool, imp = np.asarray(he["pool"], np.float64), np.asarray(he["importance"], np.float64)
  ref = np.einsum("blk,blkd->bld", imp[ids], pool[buckets]) * pad_mask[..., None]
  c.close("compress hash_embedding: lookup", out["hash_embedding"], ref, kind="dot")
  for cb, p in qr.items():
    q, r = np.asarray(p["quotient"], np.float64), np.asarray(p["remainder"], np.float64)
    qv, rv = q[ids // 10], r[ids % 10]
    ref = {"mult": qv * rv, "add": qv + rv, "concat": np.concatenate([qv, rv], -1)}[cb]
    c.close(f"compress qr ({cb}): lookup", out[f"qr {cb}"], ref * pad_mask[..., None],
            kind="sum")
  t, proj = np.asarray(fac["table"], np.float64), np.asarray(fac["projection"], np.float64)
  c.close("compress factorized: lookup", out["factorized"], (t[ids] @ proj) * pad_mask[..., None],
          kind="dot")
  c.close("compress factorized: bag mean", out["factorized bag"], _np_bag(t, ids, "mean") @ proj,
          kind="dot")
  # quantized, 8 / 4 / 2 bits: the stored values, and each element within half a step
  table = np.asarray(plain["table"], np.float64)
  for bits, q in quantized.items():
    scale = np.asarray(q["scale"], np.float64)
    deq = _np_unpack(q[f"q{bits}"], bits) * scale[:, None]
    c.close(f"compress int{bits}: lookup", out[f"int{bits}"], deq[ids] * pad_mask[..., None],
            kind="sum")
    err = np.max(np.abs(deq - table) / np.maximum(scale[:, None], 1e-30))
    c.true(f"compress int{bits}: error <= half a step", err <= 0.5 + 1e-4,
           f"max {err:.4f} steps")


def _sparse_checks(c, rng):
  V, D, N = 50, 8, 40
  ids1 = rng.integers(0, V, N).astype(np.int32)
  ids1[:6] = [3, 3, 3, 7, 7, V + 2]  # duplicates and one out-of-range id (ignored)
  ids2 = rng.integers(0, V, N).astype(np.int32)
  g1 = rng.normal(size=(N, D)).astype(np.float32)
  g2 = rng.normal(size=(N, D)).astype(np.float32)
  table0 = rng.normal(size=(V, D)).astype(np.float32)
  opts = {name: sparse.get_sparse_optimizer(
      name, 0.1, **({"initial_accumulator_value": 0.0} if "adagrad" in name else {}))
      for name in sparse.SPARSE_OPTIMIZERS}
  add = sparse.sparse_sgd(0.1).add

  @jax.jit
  def two_steps(t0, i1, i2, h1, h2):
    out = {}
    for name, opt in opts.items():
      t, st = opt.update(t0, opt.init(t0), i1, h1, skip_ids=(0,))
      out[name] = opt.update(t, st, i2, h2, skip_ids=(0,))
    out["add"] = add(t0, sparse.SparseSgdState(jnp.zeros([], jnp.int32)), i1, h1)[0]
    return out

  out = two_steps(table0, ids1, ids2, g1, g2)
  for name in opts:
    table, state = out[name]
    ref_slots = {"sparse_sgd": [], "sparse_adagrad": [np.zeros((V, D))],
                 "sparse_rowwise_adagrad": [np.zeros(V)],
                 "sparse_lazy_adam": [np.zeros((V, D)), np.zeros((V, D))]}[name]
    ref, ref_slots = _np_sparse_step(name, table0, ref_slots, ids1, g1, 0, 0.1, skip=(0,))
    ref, ref_slots = _np_sparse_step(name, ref, ref_slots, ids2, g2, 1, 0.1, skip=(0,))
    c.close(f"sparse {name}: two steps, table", table, ref)
    for k, s in enumerate(ref_slots):
      c.close(f"sparse {name}: two steps, slot {k}", state[1 + k], s)
  ref, _ = _np_sparse_step("sparse_sgd", table0, [], ids1, g1, 0, 0.1)
  c.close("sparse sparse_sgd.add (scatter-add)", out["add"], ref)
  # localize: the local table gives the same bag, and its row gradients are the dense ones
  ids = rng.integers(1, V, (4, 6)).astype(np.int32)
  ids[:, 4:] = 0

  @jax.jit
  def local_grads(t, i, ct):
    local = localize(t, i, padding_id=0)
    g = jax.grad(lambda lp: jnp.sum(el.bag(lp, local.ids, mode="sum", padding_id=0) * ct))(
        local.params)["table"]
    dense = jnp.zeros_like(t).at[local.row_ids].add(g, mode="drop")
    return el.bag(local.params, local.ids, mode="sum", padding_id=0), dense

  ct = rng.normal(size=(4, D)).astype(np.float32)
  pooled, dense = local_grads(table0, ids, ct)
  c.close("sparse localize: same bag", pooled, _np_bag(table0, ids, "sum"), kind="dot")
  ref = np.zeros((V, D))
  for b in range(4):
    for pos in range(6):
      if ids[b, pos]:
        ref[ids[b, pos]] += ct[b]
  c.close("sparse localize: row gradients", dense, ref, kind="dot")


def _sharding_checks(c, rng):
  n = len(jax.devices())
  mesh = meshes.make_mesh(data=1, model=n)
  V, D, B, L = 8 * n, 8, 2 * n, 5
  table = rng.normal(size=(V, D)).astype(np.float32)
  table[0] = 0
  params = meshes.shard_table({"table": jnp.asarray(table)}, mesh)
  ids = rng.integers(0, V, (B, L)).astype(np.int32)
  mask = ids != 0
  rows = np.array([V - 1, 2, V + 3], np.int32)
  uniq = np.array([1, V - 1, 3, V], np.int32)
  g = rng.normal(size=(4, D)).astype(np.float32)
  opt = sparse.sparse_rowwise_adagrad(0.1)

  @jax.jit
  def sharded(p, i, r, u, g_):
    out = {"lookup": sharding.sharded_lookup(p, i, mesh, padding_id=0),
           "take": sharding.sharded_take(p["table"], r, mesh),
           "update": sharding.sharded_sparse_update(opt, p["table"], opt.init(p["table"]), u, g_,
                                                    mesh)[0]}
    for mode in sharding.SHARDED_BAG_MODES:
      out[mode] = sharding.sharded_bag(p, i, mesh, mode=mode, padding_id=0)
    return out

  out = sharded(params, ids, rows, uniq, g)
  c.close(f"sharding ({n} device(s), model={n}): sharded_lookup", out["lookup"],
          table[ids] * mask[..., None], kind="exact")
  for mode in sharding.SHARDED_BAG_MODES:
    c.close(f"sharding: sharded_bag {mode}", out[mode], _np_bag(table, ids, mode), kind="dot")
  c.close("sharding: sharded_take", out["take"],
          np.concatenate([table[rows[:2]], np.zeros((1, D))]), kind="exact")
  ref, _ = _np_sparse_step("sparse_rowwise_adagrad", table, [np.zeros(V)], uniq, g, 0, 0.1)
  c.close("sharding: sharded_sparse_update (row-wise Adagrad)", out["update"], ref)


# ---------------------------------------------------------------- 2. gather bandwidth

def run_gather(sizes, ctx) -> dict:
  s = sizes["gather"]
  V, D, N = s["rows"], s["features"], s["ids"]
  deadline = ctx["deadline"]
  torch, tdev = _torch_device()
  key = jax.random.key(0)
  ids = jax.random.randint(jax.random.fold_in(key, 1), (N,), 0, V, jnp.int32)
  rows, out = [], {}
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    table = jax.random.normal(key, (V, D), dtype)
    item = jnp.dtype(dtype).itemsize
    moved = N * D * item * 2 + N * 4  # rows read + written, ids read
    look = jax.jit(lambda t, i: el.lookup({"table": t}, i, oob="clip"))
    checked = jax.jit(lambda t, i: el.lookup({"table": t}, i))
    copy = jax.jit(lambda t: t + jnp.asarray(1, t.dtype))
    t_look = _time_jax(look, table, ids, repeats=ctx["repeats"], deadline=deadline, inner=5)
    t_checked = _time_jax(checked, table, ids, repeats=ctx["repeats"], deadline=deadline,
                          inner=5)
    t_copy = _time_jax(copy, table, repeats=ctx["repeats"], deadline=deadline, inner=5)
    copy_gbs = V * D * item * 2 / t_copy / 1e9
    look_gbs = moved / t_look / 1e9
    checked_gbs = moved / t_checked / 1e9
    del table
    gc.collect()
    t_torch = torch_gbs = torch_copy_gbs = None
    if torch is not None:
      tdt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
      tt = torch.randn(V, D, device=tdev).to(tdt)
      ti = torch.randint(0, V, (N,), device=tdev)
      buf = torch.empty_like(tt)
      t_torch = _time_torch(torch, lambda: torch.index_select(tt, 0, ti), repeats=ctx["repeats"],
                            deadline=deadline, device=tdev)
      t_tcopy = _time_torch(torch, lambda: buf.copy_(tt), repeats=ctx["repeats"],
                            deadline=deadline, device=tdev)
      torch_gbs = (N * D * item * 2 + N * 8) / t_torch / 1e9
      torch_copy_gbs = V * D * item * 2 / t_tcopy / 1e9
      del tt, ti, buf
      _torch_free(torch)
    rows.append([name, t_look * 1e3, look_gbs, checked_gbs, copy_gbs,
                 look_gbs / copy_gbs, None if t_torch is None else t_torch * 1e3, torch_gbs,
                 torch_copy_gbs, None if t_torch is None else t_torch / t_look])
    out[name] = {"lookup_ms": t_look * 1e3, "lookup_gbs": look_gbs,
                 "lookup_checked_gbs": checked_gbs, "copy_gbs": copy_gbs,
                 "lookup_vs_copy": look_gbs / copy_gbs,
                 "torch_index_select_ms": None if t_torch is None else t_torch * 1e3,
                 "torch_index_select_gbs": torch_gbs, "torch_copy_gbs": torch_copy_gbs,
                 "speedup_vs_torch": None if t_torch is None else t_torch / t_look}
  print(f"el.lookup of {N:,} random ids from a {V:,} x {D} table; GB/s = bytes read + written; "
        f"copy = jitted x + 1 over the table; torch on {tdev}")
  print(_table(["dtype", "lookup ms", "lookup GB/s", "checked GB/s", "copy GB/s",
                "lookup/copy", "torch ms", "torch GB/s", "torch copy GB/s", "x torch"], rows))
  return {"status": "ok", "shape": {"rows": V, "features": D, "ids": N},
          "torch": tdev if torch is not None else f"n/a: {tdev}", "results": out}


# ---------------------------------------------------------------- 3. bag forward/backward

def run_bag(sizes, ctx) -> dict:
  s = sizes["bag"]
  V, D, B, L = s["rows"], s["features"], s["batch"], s["length"]
  deadline, repeats = ctx["deadline"], ctx["repeats"]
  torch, tdev = _torch_device()
  rng = np.random.default_rng(0)
  ids_np = rng.integers(1, V, (B, L)).astype(np.int32)
  lengths = rng.integers(L // 4, L + 1, B)
  ids_np[np.arange(L)[None, :] >= lengths[:, None]] = 0  # padding at the end of each bag
  cot_np = rng.normal(size=(B, D)).astype(np.float32)
  table = jax.random.normal(jax.random.key(0), (V, D), jnp.float32)
  ids, cot = jnp.asarray(ids_np), jnp.asarray(cot_np)

  def loss(t, i, g):
    return jnp.sum(el.bag({"table": t}, i, mode="mean", padding_id=0, oob="clip") * g)

  def sparse_grad(t, i, g):
    local = localize(t, i, padding_id=0, oob="clip")
    return local.row_ids, jax.grad(loss)(local.params["table"], local.ids, g)

  fwd = jax.jit(lambda t, i: el.bag({"table": t}, i, mode="mean", padding_id=0, oob="clip"))
  dense = jax.jit(jax.grad(loss))
  t_fwd = _time_jax(fwd, table, ids, repeats=repeats, deadline=deadline)
  t_dense = _time_jax(dense, table, ids, cot, repeats=repeats, deadline=deadline)
  t_sparse = _time_jax(jax.jit(sparse_grad), table, ids, cot, repeats=repeats, deadline=deadline)
  del table
  gc.collect()
  tt = {}
  if torch is not None:
    import torch.nn.functional as F  # noqa: PLC0415, N812
    w = torch.randn(V, D, device=tdev, requires_grad=True)
    ti = torch.as_tensor(ids_np, device=tdev).long()
    tg = torch.as_tensor(cot_np, device=tdev)
    with torch.no_grad():
      tt["fwd"] = _time_torch(torch, lambda: F.embedding_bag(ti, w, mode="mean", padding_idx=0),
                              repeats=repeats, deadline=deadline, device=tdev)
    for name, is_sparse in (("dense", False), ("sparse", True)):
      def step(is_sparse=is_sparse):
        out = F.embedding_bag(ti, w, mode="mean", padding_idx=0, sparse=is_sparse)
        return torch.autograd.grad(out, w, tg)
      tt[name] = _time_torch(torch, step, repeats=repeats, deadline=deadline, device=tdev)
    del w, ti, tg
    _torch_free(torch)
  rows = []
  out = {}
  for name, t_jax, label in (("fwd", t_fwd, "forward"), ("dense", t_dense, "fwd+bwd, dense grad"),
                             ("sparse", t_sparse, "fwd+bwd, row-sparse grad")):
    t_t = tt.get(name)
    rows.append([label, t_jax * 1e3, None if t_t is None else t_t * 1e3,
                 None if t_t is None else t_t / t_jax])
    out[name] = {"jax_ms": t_jax * 1e3, "torch_ms": None if t_t is None else t_t * 1e3,
                 "speedup_vs_torch": None if t_t is None else t_t / t_jax}
  print(f"el.bag (mean, padding_id=0) of {B:,} bags of up to {L} ids from a {V:,} x {D} table "
        f"against F.embedding_bag on {tdev}")
  print(_table(["pass", "jax ms", "torch ms", "x torch"], rows))
  return {"status": "ok", "shape": {"rows": V, "features": D, "batch": B, "length": L},
          "torch": tdev if torch is not None else f"n/a: {tdev}", "results": out}


# ---------------------------------------------------------------- 4. row-sparse step

OPTIMIZER_PEERS = {"sparse_sgd": "SGD", "sparse_rowwise_adagrad": "Adagrad",
                   "sparse_lazy_adam": "SparseAdam"}


def run_sparse_step(sizes, ctx) -> dict:
  s = sizes["sparse_step"]
  D, N = s["features"], s["ids"]
  repeats = ctx["repeats"]
  torch, tdev = _torch_device()
  rng = np.random.default_rng(0)
  rows_out, out = [], {}
  for V in s["rows"]:
    ids_np = rng.integers(0, V, N).astype(np.int32)
    g_np = rng.normal(size=(N, D)).astype(np.float32)
    ids, grads = jnp.asarray(ids_np), jnp.asarray(g_np)
    # the section's time split evenly over the sizes and optimizers still to run
    for name, peer in OPTIMIZER_PEERS.items():
      deadline = min(ctx["deadline"], time.perf_counter() + ctx["budget_left"]() /
                     max(1, ctx["steps_left"]))
      ctx["steps_left"] -= 1
      opt = sparse.get_sparse_optimizer(name, 0.01)
      table = jax.random.normal(jax.random.key(V), (V, D), jnp.float32)
      state = opt.init(table)
      update = jax.jit(lambda t, st, i, g, o=opt: o.update(t, st, i, g), donate_argnums=(0, 1))
      t_jax = _time_loop(lambda ts: update(ts[0], ts[1], ids, grads), (table, state),
                         repeats=repeats, deadline=deadline, sync=jax.block_until_ready)
      del table, state
      gc.collect()
      t_torch = None
      if torch is not None:
        w = torch.nn.Parameter(torch.randn(V, D, device=tdev))
        kwargs = {} if peer == "SparseAdam" else {"foreach": False}  # one sparse-grad tensor
        topt = getattr(torch.optim, peer)([w], lr=0.01, **kwargs)
        ti = torch.as_tensor(ids_np, device=tdev).long()[None]
        tg = torch.as_tensor(g_np, device=tdev)

        def tstep(_):
          w.grad = torch.sparse_coo_tensor(ti, tg, (V, D), check_invariants=False)
          topt.step()

        t_torch = _time_loop(tstep, None, repeats=repeats, deadline=deadline,
                             sync=lambda _: torch.cuda.synchronize() if tdev == "cuda" else None)
        del w, topt, ti, tg
        _torch_free(torch)
      out.setdefault(name, {})[V] = {"jax_ms": t_jax * 1e3,
                                     "torch_ms": None if t_torch is None else t_torch * 1e3,
                                     "speedup_vs_torch": None if t_torch is None
                                     else t_torch / t_jax}
      rows_out.append([name, V, t_jax * 1e3, peer, None if t_torch is None else t_torch * 1e3,
                       None if t_torch is None else t_torch / t_jax])
  small, large = min(s["rows"]), max(s["rows"])
  ratios = {name: by[large]["jax_ms"] / by[small]["jax_ms"] for name, by in out.items()}
  print(f"one row-sparse step: {N:,} ids (duplicates summed) x {D} features; torch on {tdev} "
        f"(Adagrad is element-wise there)")
  print(_table(["optimizer", "rows", "jax ms", "torch peer", "torch ms", "x torch"], rows_out))
  print("step time t(%d) / t(%d): " % (large, small) +
        ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
  return {"status": "ok", "shape": {"rows": list(s["rows"]), "features": D, "ids": N},
          "torch": tdev if torch is not None else f"n/a: {tdev}",
          "results": {k: {str(v): r for v, r in by.items()} for k, by in out.items()},
          "ratio_large_small": ratios}


# ---------------------------------------------------------------- 5. end to end

def _e2e_ready(cfg, env) -> str | None:
  """Why an experiment cannot run here (None when it can)."""
  if cfg.data.source in ("files", "disk", "hub"):
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode:
      last = (probe.stderr.strip().splitlines() or ["?"])[-1]
      return (f"`import datasets` fails ({last}); the data loader needs it: bring its wheels "
              f"(bash benchmarks/device_check.sh prepare)")
    data = pathlib.Path(env.get("EMBEDLAB_DATA", REPO.parent / "shared" / "data"))
    for name in (cfg.data.train, cfg.data.dev, cfg.data.test):
      if name and not (data / name).exists():
        return f"data file {data / name} is missing (set EMBEDLAB_DATA)"
  return None


def run_e2e(sizes, ctx) -> dict:
  from embedlab import config as config_lib  # noqa: PLC0415
  work = pathlib.Path(tempfile.mkdtemp(prefix="device_check_e2e_"))
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "")
                                                     .split(os.pathsep) if p])
  env.update(EMBEDLAB_CACHE=str(work / "cache"), EMBEDLAB_COMPILE_CACHE=str(work / "jax"),
             PYTHONUNBUFFERED="1")
  overrides = list(SMOKE_OVERRIDES) if ctx["smoke"] else []
  results, rows = {}, []
  try:
    for name in sizes["e2e"]:
      path = REPO / "experiments" / f"{name}.py"
      cfg = config_lib.load_config(str(path), overrides)
      reason = _e2e_ready(cfg, env)
      if reason:
        results[name] = {"status": "skipped", "reason": reason}
        rows.append([name, "skipped", None, None, None, None, reason])
        continue
      runs = []
      for phase in ("cold", "warm"):
        left = ctx["budget_left"]()
        if phase == "warm" and (not sizes["warm"] or not runs or runs[-1]["returncode"] or
                                left < 2 * runs[-1]["seconds"] + 10):
          break  # warm only when the cold run succeeded and there is time for both
        cmd = [sys.executable, "-m", "embedlab.cli", "train", str(path), "--no-progress",
               "--workdir", str(work / f"{name}-{phase}")]
        for o in overrides:
          cmd += ["--set", o]
        start = time.perf_counter()
        try:
          proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO),
                                timeout=max(5.0, left - 5))
          code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
          code = "timeout"
          text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        seconds = time.perf_counter() - start
        print(f"--- {name} ({phase}): {' '.join(cmd[1:])}\n{text[-3000:]}")
        res_file = work / f"{name}-{phase}" / "results.json"
        res = json.loads(res_file.read_text()) if res_file.exists() else {}
        runs.append({"phase": phase, "returncode": code, "seconds": seconds,
                     "test_accuracy": res.get("test_accuracy"),
                     "dev_accuracy": res.get("dev_accuracy"),
                     "train_seconds": res.get("train_seconds"),
                     "timings": res.get("timings")})
        if code != 0:
          break
      ok = bool(runs) and runs[0]["returncode"] == 0 and runs[0]["test_accuracy"] is not None
      results[name] = {"status": "ok" if ok else "failed", "runs": runs}
      first, last = runs[0], runs[-1]
      rows.append([name, "ok" if ok else f"failed ({first['returncode']})",
                   first["test_accuracy"], first["seconds"],
                   last["seconds"] if last is not first else None, first["train_seconds"], ""])
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(_table(["experiment", "status", "test acc", "job s (cold)", "job s (warm)",
                "train s", "note"], rows))
  failed = [k for k, v in results.items() if v["status"] == "failed"]
  return {"status": "failed" if failed else "ok", "overrides": overrides,
          "experiments": results}


# ---------------------------------------------------------------- driver

def _environment() -> dict:
  import jaxlib  # noqa: PLC0415
  backend = jax.default_backend()
  versions = {"python": sys.version.split()[0], "jax": jax.__version__,
              "jaxlib": jaxlib.__version__, "numpy": np.__version__}
  from importlib import metadata  # noqa: PLC0415 - versions without importing the packages
  for name in ("torch", "datasets", "pyarrow", "tensorboardX"):
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  flags = []
  jl = tuple(int(p) for p in jaxlib.__version__.split(".")[:3] if p.isdigit())
  if backend == "gpu" and (0, 10, 2) <= jl <= (0, 11, 0):
    flags.append(f"jaxlib {jaxlib.__version__} on GPU: scatter-add can be up to ~2000x slower in "
                 f"some shapes ({SCATTER_ISSUE}; reported fixed in 0.11.1); the gradient and "
                 f"row-sparse figures may show it")
  devices = [str(d) for d in jax.devices()]
  kinds = sorted({getattr(d, "device_kind", d.platform) for d in jax.devices()})
  return {"backend": backend, "devices": devices, "device_kinds": kinds, "versions": versions,
          "flags": flags}


def _finish_json(result, path):
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
  tmp.replace(path)


def _goals(sections) -> dict:
  def get(*keys):
    node = sections
    for k in keys:
      if not isinstance(node, dict) or k not in node:
        return None
      node = node[k]
    return node

  def at_least(x, bound):
    return None if x is None else bool(x >= bound)

  goals = {}
  f32 = get("gather", "results", "float32") or {}
  goals["lookup >= 70% of copy bandwidth"] = at_least(f32.get("lookup_vs_copy"), 0.7)
  goals["lookup >= torch index_select"] = at_least(f32.get("speedup_vs_torch"), 1.0)
  goals["bag fwd+bwd >= torch"] = at_least(get("bag", "results", "dense", "speedup_vs_torch"),
                                           1.0)
  step = get("sparse_step", "results") or {}
  speedups = [r["speedup_vs_torch"] for by in step.values() for r in by.values()]
  goals["row-sparse step >= torch"] = (None if not speedups or None in speedups
                                       else bool(min(speedups) >= 1.0))
  ratios = get("sparse_step", "ratio_large_small") or {}
  rows = get("sparse_step", "shape", "rows") or [1 << 16, 1 << 24]
  name = f"step t(2^{max(rows).bit_length() - 1}) / t(2^{min(rows).bit_length() - 1}) <= 1.5"
  goals[name] = None if not ratios else bool(max(ratios.values()) <= 1.5)
  return goals


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="folder for device_check.log / .json")
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds on a CPU")
  parser.add_argument("--sections", default=",".join(SECTIONS),
                      help=f"comma-separated subset of {','.join(SECTIONS)}")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds for the whole check (default: the sum of the sections' "
                      "shares; 450 on full sizes, 190 on --smoke)")
  parser.add_argument("--experiments", default=None,
                      help="comma-separated experiments/NAME for e2e (default: sst2_fasttext,"
                      "imdb_fasttext,sst2_cnn; quickstart with --smoke)")
  parser.add_argument("--no-torch", action="store_true",
                      help="leave PyTorch out even where it is installed")
  args = parser.parse_args(argv)
  if args.no_torch:
    NO_TORCH.append(True)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  log = open(out / "device_check.log", "w")  # noqa: SIM115 - closed at exit
  stdout, stderr = sys.stdout, sys.stderr
  sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
  json_path = out / "device_check.json"
  mode = "smoke" if args.smoke else "full"
  sizes = dict(SIZES[mode])
  if args.experiments:
    sizes["e2e"] = tuple(e.strip() for e in args.experiments.split(",") if e.strip())
  wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = [s for s in wanted if s not in SECTIONS]
  if unknown:
    parser.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
  shares = {s: sizes["budget"][s] for s in wanted}
  total = args.budget or sum(shares.values())
  scale = total / sum(shares.values())
  start = time.perf_counter()
  env = _environment()
  result = {"device_check": 1, "mode": mode, **env, "budget_seconds": total, "sections": {}}
  print(f"device check ({mode}): backend {env['backend']}, devices {', '.join(env['devices'])}")
  print("versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
  for flag in env["flags"]:
    print(f"FLAG: {flag}")
  _finish_json(result, json_path)

  def watchdog():  # the last resort when a section hangs inside a device call
    time.sleep(total + 60)
    result["watchdog"] = f"the check passed its budget of {total:.0f} s + 60 s and was stopped"
    _finish_json(result, json_path)
    print(json.dumps({"device_check": "stopped by watchdog", "json": str(json_path)}),
          file=stdout, flush=True)
    os._exit(3)

  threading.Thread(target=watchdog, daemon=True).start()
  runners = {"contracts": run_contracts, "gather": run_gather, "bag": run_bag,
             "sparse_step": run_sparse_step, "e2e": run_e2e}
  for name in wanted:
    share = shares[name] * scale
    section_start = time.perf_counter()
    ctx = {"backend": env["backend"], "smoke": args.smoke, "repeats": sizes["repeats"],
           "deadline": section_start + 0.8 * share,
           "budget_left": lambda s0=section_start, b=share: b - (time.perf_counter() - s0),
           "steps_left": len(sizes["sparse_step"]["rows"]) * len(OPTIMIZER_PEERS)}
    print(f"\n== {name} (budget {share:.0f} s)")
    try:
      with _alarm(share):
        section = runners[name](sizes, ctx)
    except SectionTimeout as e:
      section = {"status": "timeout", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - recorded; the next section runs
      section = {"status": "error", "error": f"{type(e).__name__}: {e}",
                 "traceback": traceback.format_exc()[-4000:]}
      print(section["traceback"])
    section["seconds"] = round(time.perf_counter() - section_start, 2)
    print(f"== {name}: {section['status']} in {section['seconds']:.1f} s"
          + (f" ({section['error']})" if "error" in section else ""))
    result["sections"][name] = section
    _finish_json(result, json_path)
  result["goals"] = _goals(result["sections"])
  contracts = result["sections"].get("contracts", {})
  result["all_contracts_passed"] = contracts.get("status") == "ok"
  result["seconds"] = round(time.perf_counter() - start, 2)
  _finish_json(result, json_path)
  print("\ngoals: " + "; ".join(f"{k}: {_fmt(v)}" for k, v in result["goals"].items()))
  summary = {"device_check": mode, "backend": env["backend"],
             "devices": len(env["devices"]), "jaxlib": env["versions"]["jaxlib"],
             "flags": len(env["flags"]),
             "sections": {k: v["status"] for k, v in result["sections"].items()},
             "contracts": f"{contracts.get('passed', 0)}/"
                          f"{contracts.get('passed', 0) + contracts.get('failed', 0)} passed",
             "goals": result["goals"], "seconds": result["seconds"], "json": str(json_path)}
  print(json.dumps(summary))
  sys.stdout.flush()
  sys.stdout, sys.stderr = stdout, stderr
  log.close()
  ok = all(v["status"] in ("ok",) for v in result["sections"].values())
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
