"""Train-step time against table size: row-sparse optimizers, a PyTorch floor, dense optax Adam.

The model: mean bag of a [256, 64] batch of ids (about 1/4 padding) from a [V, 64] table, then a
dense [64, 16] layer and softmax cross-entropy. Per size V = 2^14 .. 2^22:

* embedlab: ``embedlab.core.localize.localize`` + ``bag`` + a row-sparse optimizer on the table
  (donated, updated in place), ``optax.adam`` on the dense layer; for each of ``sparse_sgd``,
  ``sparse_adagrad``, ``sparse_rowwise_adagrad`` and ``sparse_lazy_adam``, with the strategies
  ``localize`` and ``update`` choose on their own
  (``embedlab.core.sparse_rules.choose_update_strategy``).
* public path: the same step as a user writes it with optax, ``embedlab.value_and_row_grad`` +
  ``optax.multi_transform`` of ``embedlab.row_sparse(<optimizer>)`` for the table and
  ``optax.adam`` for the dense layer + ``embedlab.apply_updates`` (params donated); its ratio to
  the ``localize`` + ``update`` step above says what optax's interface costs.
* floor: the same step written plainly in PyTorch (2 threads, no autograd): dedup the ids
  (``torch.unique``), gather the occurring rows, the model's forward and backward by hand, sum
  the per-occurrence gradients into one row per touched id (``index_add_``), gather the touched
  rows of each slot, the optimizer's arithmetic, write the slots back (``index_copy_``) and
  add each row's change into the table (``index_add_``); Adam on the dense layer.
* dense: ``optax.adam`` on all parameters (the table's gradient is a dense [V, 64] array);
  up to 2^16 rows also inside ``optax.apply_if_finite``, which skips a step whose update is not
  finite: the guard the row-sparse optimizers keep row by row (a row whose gradient or new
  state would not be finite keeps its value and state), and what it costs a dense step.

Each figure is the best ms/step over several rounds of steps (the machine is shared: the
minimum is the figure least disturbed by other work); ratios are taken within this run. The
steps compared take turns round by round: each sparse step with its floor, and up to 2^16 rows
dense Adam, every sparse step and every floor all together.

  python benchmarks/step_scaling.py            # V = 2^14, 2^16, ..., 2^22
  python benchmarks/step_scaling.py --quick    # V = 2^14, 2^18
  taskset -c 1 python benchmarks/step_scaling.py --threads 1   # both on one core
  taskset -c 1 python benchmarks/step_scaling.py --strategies  # dense vs rows, 2^13..2^16
  taskset -c 1 python benchmarks/step_scaling.py --check-cost  # the per-row check's cost

On a machine shared with other work, the two-thread figures (PyTorch's most of all: each of its
many small operations waits for both threads) move with the load; on one core, each side
running alone on it, they are steadier.

Prints a table of ms/step, each optimizer's ratio to its floor at every size, t(2^22) / t(2^14),
the public optax path's ratio to the ``localize`` + ``update`` step, then one JSON line.
"""

import argparse
import functools
import json
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import embedlab as el
from embedlab.core import sparse
from embedlab.core import sparse_rules
from embedlab.core.localize import localize

FEATURES, BATCH, BAG_LEN, CLASSES, PAD = 64, 256, 64, 16, 0


def loss_fn(table_params, dense, ids, labels, oob="error"):
  pooled = el.bag(table_params, ids, mode="mean", padding_id=PAD, oob=oob)
  logits = pooled @ dense["w"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_dense_step(guarded=False):
  """Dense optax Adam; ``guarded``: inside ``optax.apply_if_finite``, which skips an update
  that is not finite, the promise the row-sparse optimizers keep row by row."""
  tx = optax.adam(1e-3)
  if guarded:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=1 << 30)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, ids, labels):
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn({"table": p["table"]}, p, ids, labels))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def init(table, w):
    params = {"table": table, "w": w}
    return (params, tx.init(params))

  return init, step


def make_sparse_step(opt, strategy="auto"):
  """The sparse step; ``strategy`` ``"dense"`` or ``"rows"`` forces ``localize``'s and
  ``update``'s strategies (``"auto"``: the library's choice)."""
  tx = optax.adam(1e-3)
  localize_strategy = {"auto": "auto", "dense": "table", "rows": "rows"}[strategy]

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2, 3))
  def step(table, table_state, dense, dense_state, ids, labels):
    local = localize(table, ids, padding_id=PAD, strategy=localize_strategy)
    # localize has checked the ids: the bag reads the local table unchecked
    loss, (table_grads, dense_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
        local.params, dense, local.ids, labels, "clip")
    table, table_state = opt.update(table, table_state, local.row_ids, table_grads["table"],
                                    unique=True, strategy=strategy)
    updates, dense_state = tx.update(dense_grads, dense_state, dense)
    return table, table_state, optax.apply_updates(dense, updates), dense_state, loss

  def init(table, w):
    dense = {"w": w}
    return (table, opt.init(table), dense, tx.init(dense))

  return init, step


def make_optax_step(opt):
  """The sparse step through optax: ``value_and_row_grad``, ``row_sparse`` and ``adam`` in one
  ``multi_transform``, ``apply_updates``."""
  tx = optax.multi_transform({"table": el.row_sparse(opt), "dense": optax.adam(1e-3)},
                             {"table": "table", "w": "dense"})

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, ids, labels):
    def fn(local_params, local_ids):
      # value_and_row_grad has checked the ids: the bag reads the local table unchecked
      return loss_fn({"table": local_params["table"]}, local_params, local_ids, labels, "clip")

    loss, grads = el.value_and_row_grad(fn, params, ids, padding_id=PAD)
    updates, opt_state = tx.update(grads, opt_state, params)
    return el.apply_updates(params, updates), opt_state, loss

  def init(table, w):
    params = {"table": table, "w": w}
    return (params, tx.init(params))

  return init, step


def random_table(rows, chunk_rows=1 << 16):
  """A N(0, 0.1^2) table [rows, FEATURES], filled in place chunk by chunk: generating it in one
  go would hold several table-sized temporaries (the random bits) and inflate peak memory."""

  @functools.partial(jax.jit, donate_argnums=0)
  def fill(table, start):
    key = jax.random.fold_in(jax.random.key(0), start)
    block = jax.random.normal(key, (min(chunk_rows, rows), FEATURES)) * 0.1
    return jax.lax.dynamic_update_slice(table, block, (start, 0))

  table = jnp.zeros((rows, FEATURES))
  for start in range(0, rows, chunk_rows):
    table = fill(table, start)
  return table


def time_steps(init, step, rows, batches, repeats):
  """Median ms/step over ``repeats`` steps after one compile-and-warm-up step."""
  table = random_table(rows)
  w = jax.random.normal(jax.random.key(1), (FEATURES, CLASSES)) * 0.1
  state = init(table, w)
  del table, w
  times = []
  for i in range(repeats + 1):
    ids, labels = batches[i % len(batches)]
    start = time.perf_counter()
    *state, loss = step(*state, ids, labels)
    jax.block_until_ready((state, loss))
    if i:
      times.append(time.perf_counter() - start)
  del state
  return 1e3 * float(np.median(times))


def make_batches(rows, count=4, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    ids = rng.integers(1, rows, size=(BATCH, BAG_LEN)).astype(np.int32)
    lengths = rng.integers(BAG_LEN // 2, BAG_LEN + 1, size=BATCH)
    ids[np.arange(BAG_LEN)[None, :] >= lengths[:, None]] = PAD
    labels = rng.integers(0, CLASSES, size=BATCH).astype(np.int32)
    out.append((jnp.asarray(ids), jnp.asarray(labels)))
  return out


OPTIMIZERS = {
    "sgd": lambda: sparse.sparse_sgd(1e-1),
    "adagrad": lambda: sparse.sparse_adagrad(1e-2),
    "rowwise_adagrad": lambda: sparse.sparse_rowwise_adagrad(1e-2),
    "lazy_adam": lambda: sparse.sparse_lazy_adam(1e-3),
}
LEARNING_RATES = {"sgd": 1e-1, "adagrad": 1e-2, "rowwise_adagrad": 1e-2, "lazy_adam": 1e-3}
# Up to this many rows, dense Adam, the sparse steps and their floors share their rounds.
SHARED_ROUNDS_MAX_ROWS = 1 << 16


def jax_runner(init, step, rows):
  """``run(ids, labels)``: one jitted step on a fresh table; ``close()`` frees its state."""
  holder = {"state": list(init(random_table(rows),
                               jax.random.normal(jax.random.key(1), (FEATURES, CLASSES)) * 0.1))}

  def run(ids, labels):
    *holder["state"], loss = step(*holder["state"], ids, labels)
    jax.block_until_ready((holder["state"], loss))

  return run, holder.clear


def best_ms(runners, rounds, steps):
  """Best ms/step of each ``runner(ids, labels)`` over ``rounds`` rounds of ``steps`` steps,
  the runners taking turns round by round (so a busy moment of the machine falls on all of
  them), after one warm-up step each. ``runners``: ``{name: (run, batches)}``."""
  best = {name: float("inf") for name in runners}
  for run, batches in runners.values():
    run(*batches[0])
  for r in range(rounds):
    for name, (run, batches) in runners.items():
      for i in range(steps):
        ids, labels = batches[(r * steps + i) % len(batches)]
        start = time.perf_counter()
        run(ids, labels)
        best[name] = min(best[name], time.perf_counter() - start)
  return {name: 1e3 * b for name, b in best.items()}


def make_floor_step(name, rows, torch):
  """The floor: ``name``'s step written plainly in PyTorch, ``step(ids, labels)``."""
  lr = LEARNING_RATES[name]
  gen = torch.Generator().manual_seed(0)
  table = torch.randn(rows, FEATURES, generator=gen) * 0.1
  slots = {"sgd": [], "adagrad": [torch.full((rows, FEATURES), 0.1)],
           "rowwise_adagrad": [torch.zeros(rows)],
           "lazy_adam": [torch.zeros(rows, FEATURES), torch.zeros(rows, FEATURES)]}[name]
  w = torch.randn(FEATURES, CLASSES, generator=gen) * 0.1
  w_m, w_v = torch.zeros_like(w), torch.zeros_like(w)
  b1, b2, eps = 0.9, 0.999, 1e-8
  count = [0]

  def rule(g, old):
    t = count[0]
    if name == "sgd":
      return g, []
    if name == "adagrad":
      acc = old[0] + g * g
      return g * acc.add(1e-7).rsqrt(), [acc]
    if name == "rowwise_adagrad":
      acc = old[0] + (g * g).mean(1)
      return g / (acc.sqrt() + 1e-8)[:, None], [acc]
    m = old[0].mul(b1).add_(g, alpha=1 - b1)
    v = old[1].mul(b2).addcmul_(g, g, value=1 - b2)
    scale = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return m * scale / (v.sqrt() + eps), [m, v]

  def step(ids, labels):
    count[0] += 1
    t = count[0]
    flat = ids.reshape(-1)
    unique, inverse = torch.unique(flat, return_inverse=True)
    local = table.index_select(0, unique)                       # the occurring rows
    real = (flat != PAD).to(torch.float32).view(BATCH, BAG_LEN)
    weights = real / real.sum(1, keepdim=True).clamp_min(1)     # mean over real positions
    vectors = local.index_select(0, inverse).view(BATCH, BAG_LEN, FEATURES)
    pooled = torch.bmm(weights[:, None, :], vectors)[:, 0]
    logits = pooled @ w
    d_logits = torch.softmax(logits, 1)
    d_logits[torch.arange(BATCH), labels] -= 1
    d_logits /= BATCH
    d_w = pooled.T @ d_logits
    d_pooled = d_logits @ w.T
    per_occurrence = (weights[:, :, None] * d_pooled[:, None, :]).view(-1, FEATURES)
    grads = torch.zeros_like(local).index_add_(0, inverse, per_occurrence)
    keep = unique != PAD
    touched, grads = unique[keep], grads[keep]
    change, new = rule(grads, [s.index_select(0, touched) for s in slots])
    for s, n in zip(slots, new):
      s.index_copy_(0, touched, n)
    table.index_add_(0, touched, change, alpha=-lr)
    w_m.mul_(b1).add_(d_w, alpha=1 - b1)
    w_v.mul_(b2).addcmul_(d_w, d_w, value=1 - b2)
    w.sub_(1e-3 * (w_m / (1 - b1 ** t)) / ((w_v / (1 - b2 ** t)).sqrt() + eps))

  return step


def compare_strategies(args):
  """``--strategies``: each optimizer's step with the dense and the rows strategy forced, around
  the switch (V = 2^13 .. 2^16 for 16,384 ids), to check ``choose_update_strategy``'s rule."""
  exponents = [13, 14, 15, 16]
  ms = {}
  for e in exponents:
    rows = 1 << e
    batches = make_batches(rows)
    runners, closers = {}, []
    for name, make in OPTIMIZERS.items():
      for strategy in ("dense", "rows"):
        run, close = jax_runner(*make_sparse_step(make(), strategy), rows)
        runners[(name, strategy)] = (run, batches)
        closers.append(close)
    for key, value in best_ms(runners, args.rounds, args.steps).items():
      ms[(e, *key)] = value
    for close in closers:
      close()
  print(f"ms/step, best of {args.rounds} rounds of {args.steps} steps: dense / rows strategy "
        f"(below 1: dense faster); the rule picks dense up to 2^15 rows")
  print(f"{'rows':>5} " + " ".join(f"{n:>28}" for n in OPTIMIZERS))
  for e in exponents:
    print(f"{'2^%d' % e:>5} " + " ".join(
        f"{ms[(e, n, 'dense')]:8.2f} / {ms[(e, n, 'rows')]:8.2f} "
        f"({ms[(e, n, 'dense')] / ms[(e, n, 'rows')]:4.2f})" for n in OPTIMIZERS))
  print(json.dumps({
      "benchmark": "step_scaling_strategies", "features": FEATURES, "batch": [BATCH, BAG_LEN],
      "ms_per_step": {f"2^{e}/{n}/{s}": round(v, 3) for (e, n, s), v in ms.items()},
      "choice": {f"2^{e}": sparse_rules.choose_update_strategy(1 << e, BATCH * BAG_LEN + 1)
                 for e in exponents},
      "backend": jax.default_backend(), "jax": jax.__version__}))


def unchecked(run, batches):
  """``run`` compiled without the row-sparse optimizers' per-row finiteness check (every row
  counted finite): its first call traces it while ``sparse_rules._finite_rows`` is all-true."""
  check = sparse_rules._finite_rows
  sparse_rules._finite_rows = lambda *arrays: jnp.ones((arrays[0].shape[0],), bool)
  try:
    run(*batches[0])
  finally:
    sparse_rules._finite_rows = check
  return run


def compare_check_cost(args):
  """``--check-cost``: what the per-row finiteness check costs the public optax path, beside
  dense Adam with and without ``optax.apply_if_finite``, at 2^14 and 2^16 rows."""
  exponents = [14, 16]
  ms = {}
  for e in exponents:
    rows = 1 << e
    batches = make_batches(rows)
    runners, closers = {}, []
    for name, guarded in (("dense_adam", False), ("dense_adam_if_finite", True)):
      run, close = jax_runner(*make_dense_step(guarded=guarded), rows)
      runners[name] = (run, batches)
      closers.append(close)
    for name, make in OPTIMIZERS.items():
      for checked in (True, False):
        run, close = jax_runner(*make_optax_step(make()), rows)
        runners[(name, checked)] = (run if checked else unchecked(run, batches), batches)
        closers.append(close)
    for key, value in best_ms(runners, args.rounds, args.steps).items():
      ms[(e, key)] = value
    for close in closers:
      close()
  print(f"ms/step, best of {args.rounds} rounds of {args.steps} steps, all taking turns; the "
        "public optax path with / without the per-row finiteness check, then each over dense "
        "Adam and over dense Adam in optax.apply_if_finite")
  for e in exponents:
    dense, guarded = ms[(e, "dense_adam")], ms[(e, "dense_adam_if_finite")]
    print(f"2^{e}: dense Adam {dense:.2f}, in apply_if_finite {guarded:.2f}")
    for n in OPTIMIZERS:
      on, off = ms[(e, (n, True))], ms[(e, (n, False))]
      print(f"  {n:>22} {on:7.2f} / {off:7.2f} (check {on - off:5.2f} ms); / dense Adam "
            f"{on / dense:4.2f} / {off / dense:4.2f}; / guarded {on / guarded:4.2f}")
  print(json.dumps({
      "benchmark": "step_scaling_check_cost", "features": FEATURES, "batch": [BATCH, BAG_LEN],
      "rounds": args.rounds, "steps": args.steps,
      "ms_per_step": {f"2^{e}/" + (k if isinstance(k, str) else
                                   f"{k[0]}/{'checked' if k[1] else 'unchecked'}"): round(v, 3)
                      for (e, k), v in ms.items()},
      "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
      "jax": jax.__version__}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--rounds", type=int, default=5, help="rounds of steps per figure")
  parser.add_argument("--steps", type=int, default=10, help="steps per round")
  parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
  parser.add_argument("--strategies", action="store_true",
                      help="only time the dense and rows strategies around the switch")
  parser.add_argument("--check-cost", action="store_true",
                      help="only time the public path with and without the per-row check")
  args = parser.parse_args()
  if args.strategies:
    compare_strategies(args)
    return
  if args.check_cost:
    compare_check_cost(args)
    return
  import torch  # noqa: PLC0415 - the bench extra
  torch.set_num_threads(args.threads)
  exponents = [14, 18] if args.quick else [14, 16, 18, 20, 22]
  ms = {"dense_adam": {}, "dense_adam_if_finite": {}, **{n: {} for n in OPTIMIZERS},
        **{f"optax_{n}": {} for n in OPTIMIZERS}, **{f"floor_{n}": {} for n in OPTIMIZERS}}
  for e in exponents:
    rows = 1 << e
    batches = make_batches(rows)
    torch_batches = [(torch.from_numpy(np.array(i)).long(),
                      torch.from_numpy(np.array(l)).long()) for i, l in batches]
    if rows <= SHARED_ROUNDS_MAX_ROWS:
      # small tables: dense Adam, every sparse step and every floor take turns in the same
      # rounds, so the sparse / dense Adam ratios compare steps timed under the same load
      runners, closers = {}, []
      run, close = jax_runner(*make_dense_step(), rows)
      runners["dense_adam"] = (run, batches)
      closers.append(close)
      run, close = jax_runner(*make_dense_step(guarded=True), rows)
      runners["dense_adam_if_finite"] = (run, batches)
      closers.append(close)
      for name, make in OPTIMIZERS.items():
        run, close = jax_runner(*make_sparse_step(make()), rows)
        runners[name] = (run, batches)
        closers.append(close)
        run, close = jax_runner(*make_optax_step(make()), rows)
        runners[f"optax_{name}"] = (run, batches)
        closers.append(close)
        runners[f"floor_{name}"] = (make_floor_step(name, rows, torch), torch_batches)
      with torch.no_grad():
        for key, value in best_ms(runners, args.rounds, args.steps).items():
          ms[key][e] = value
      for close in closers:
        close()
      del runners
    else:
      # dense Adam reads and writes three [V, 64] arrays a step: fewer steps on big tables
      dense_steps = max(2, min(args.steps, (1 << 20) // rows * 2))
      run, close = jax_runner(*make_dense_step(), rows)
      ms["dense_adam"][e] = best_ms({"dense": (run, batches)}, args.rounds, dense_steps)["dense"]
      close()
      for name, make in OPTIMIZERS.items():
        run, close = jax_runner(*make_sparse_step(make()), rows)
        run_optax, close_optax = jax_runner(*make_optax_step(make()), rows)
        floor = make_floor_step(name, rows, torch)
        with torch.no_grad():
          three = best_ms({"jax": (run, batches), "optax": (run_optax, batches),
                           "floor": (floor, torch_batches)}, args.rounds, args.steps)
        ms[name][e], ms[f"optax_{name}"][e] = three["jax"], three["optax"]
        ms[f"floor_{name}"][e] = three["floor"]
        close()
        close_optax()
        del floor
    print(f"2^{e} done", flush=True)
  lo, hi = exponents[0], exponents[-1]
  to_floor = {n: {e: ms[n][e] / ms[f"floor_{n}"][e] for e in exponents} for n in OPTIMIZERS}
  growth = {n: r[hi] / r[lo] for n, r in ms.items() if hi in r}
  strategies = {e: sparse_rules.choose_update_strategy(1 << e, BATCH * BAG_LEN + 1)
                for e in exponents}
  print(f"\nms/step, best of {args.rounds} rounds of {args.steps} steps; in brackets: ratio to "
        f"the PyTorch floor of the same optimizer (below 1: faster than the floor)")
  print(f"{'rows':>5} {'update':>6} {'dense Adam':>11} " + " ".join(
      f"{n:>22}" for n in OPTIMIZERS) + "   floors: " + " ".join(f"{n:>8}" for n in OPTIMIZERS))
  for e in exponents:
    print(f"{'2^%d' % e:>5} {strategies[e]:>6} {ms['dense_adam'][e]:11.2f} " + " ".join(
        f"{ms[n][e]:>13.2f} ({to_floor[n][e]:4.2f}x)" for n in OPTIMIZERS) + "           " +
        " ".join(f"{ms[f'floor_{n}'][e]:8.2f}" for n in OPTIMIZERS))
  print(f"t(2^{hi}) / t(2^{lo}): " + ", ".join(
      f"{n} {growth[n]:.2f}" for n in ["dense_adam", *OPTIMIZERS]))
  print(f"at 2^{lo}, sparse / dense Adam: " + ", ".join(
      f"{n} {ms[n][lo] / ms['dense_adam'][lo]:.2f}" for n in OPTIMIZERS))
  print(f"at 2^{lo}, public optax path / dense Adam, / dense Adam in optax.apply_if_finite: "
        + ", ".join(f"{n} {ms[f'optax_{n}'][lo] / ms['dense_adam'][lo]:.2f} / "
                    f"{ms[f'optax_{n}'][lo] / ms['dense_adam_if_finite'][lo]:.2f}"
                    for n in OPTIMIZERS))
  public = {n: {e: ms[f"optax_{n}"][e] / ms[n][e] for e in exponents} for n in OPTIMIZERS}
  print("public optax path / localize + update, ms/step (ratio): " + "; ".join(
      f"2^{e} " + ", ".join(f"{n} {ms[f'optax_{n}'][e]:.2f} ({public[n][e]:.2f})"
                           for n in OPTIMIZERS) for e in exponents))
  print(json.dumps({
      "benchmark": "step_scaling", "features": FEATURES, "batch": [BATCH, BAG_LEN],
      "rounds": args.rounds, "steps": args.steps, "torch_threads": args.threads,
      "update_strategy": {f"2^{e}": v for e, v in strategies.items()},
      "ms_per_step": {k: {f"2^{e}": round(v, 3) for e, v in r.items()} for k, r in ms.items()},
      "ratio_to_floor": {k: {f"2^{e}": round(v, 3) for e, v in r.items()}
                         for k, r in to_floor.items()},
      f"ratio_2^{hi}_over_2^{lo}": {k: round(v, 3) for k, v in growth.items()},
      "optax_path_over_localize": {k: {f"2^{e}": round(v, 3) for e, v in r.items()}
                                   for k, r in public.items()},
      "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
      "jax": jax.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
  main()
