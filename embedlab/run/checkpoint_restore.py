"""Reading one checkpoint step back, into the target's shapes or as it was stored.

``check_step`` makes sure a step's files are there and that it holds the arrays the target asks
for (missing files are corruption; other arrays mean another model or optimizer, reported with
the paths that differ). ``read_verified`` reads a step and checks it against its checksums
(``checkpoint_integrity.verify``). A run resumed with another ``mesh.model`` pads its tables to
another row count: ``as_stored`` asks orbax for the rows as saved and ``resize_rows`` then cuts
(only zero padding) or pads them to the target's, on the target's sharding.

Hand-written because orbax restores only into the shape it is given (a table with more or fewer
padding rows fails to read) and, without a target, onto the devices the run was written from;
``stored_abstract`` places a step as stored on the devices of this process instead.

Example:
  >>> import numpy as np, jax, jax.numpy as jnp
  >>> want = {"t": jax.ShapeDtypeStruct((2, 3), jnp.float32)}
  >>> resize_rows({"t": jnp.ones((4, 3)).at[2:].set(0)}, want, 5)["t"].shape
  (2, 3)
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from embedlab.run.checkpoint_failures import first_line, is_format_failure
from embedlab.run.checkpoint_integrity import (CheckpointError, CorruptCheckpointError,
                                               key_name, verify)


def check_step(manager: ocp.CheckpointManager, step: int, abstract: Any) -> None:
  """Checks that a step's files are there and that its arrays are the ones ``abstract`` asks
  for (by path; None: any). Missing files are corruption; other arrays mean another model.

  Raises:
    CorruptCheckpointError: a file is missing, or the arrays' metadata cannot be parsed.
    CheckpointError: the step holds other arrays than ``abstract`` (another model).
  """
  directory = pathlib.Path(str(manager.directory)) / str(step)
  for name in ("meta/metadata", "state/_METADATA"):
    if not (directory / name).is_file():
      raise CorruptCheckpointError(f"step {step}: {name} is missing")
  try:
    stored = set(ocp.tree.to_flat_dict(stored_tree(manager, step)))
  except Exception as e:  # noqa: BLE001 - sorted by corrupt_or_raise
    if is_format_failure(e) or isinstance(e, ValueError):
      raise CorruptCheckpointError(f"step {step}: state/_METADATA cannot be parsed "
                                   f"({first_line(e)})") from e
    raise
  if abstract is None:
    return
  wanted = {tuple(key_name(k) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  if stored != wanted:
    show = lambda paths: ", ".join("/".join(p) for p in sorted(paths)[:3]) or "none"  # noqa: E731
    raise CheckpointError(
        f"checkpoint: {directory} holds other arrays than this run's state (only in the "
        f"checkpoint: {show(stored - wanted)}; only in the run: {show(wanted - stored)}): it "
        "was written by another model or optimizer config. Train in a new --workdir, or start "
        "this one over (--restart); nothing was moved.")


def restore_args(abstract: Any) -> Any:
  """Orbax's arguments to read a tree of ``jax.ShapeDtypeStruct`` (shapes, dtypes, shardings).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> args = restore_args({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    >>> args.item["w"].shape, sorted(args.restore_args)
    ((2,), ['w'])
  """
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))


def stored_tree(manager: ocp.CheckpointManager, step: int) -> Any:
  """The metadata tree of one step's arrays (shapes and dtypes, as stored)."""
  directory = pathlib.Path(str(manager.directory)) / str(step) / "state"
  return ocp.PyTreeCheckpointHandler().metadata(directory).tree


def stored_abstract(manager: ocp.CheckpointManager, step: int, sharding) -> Any:
  """The tree of one step as stored, each array placed by ``sharding``."""
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                      stored_tree(manager, step))


def read_verified(manager: ocp.CheckpointManager, step: int, args) -> tuple[Any, dict]:
  """``(tree, meta)`` of one step, the record and the arrays checked against their checksums."""
  out = manager.restore(step, args=args)
  return out["state"], verify(step, out["state"], dict(out["meta"]))


def as_stored(manager: ocp.CheckpointManager, step: int, abstract: Any) -> Any:
  """``abstract`` with the stored shape of every array whose rows (first axis) differ from the
  checkpoint's, sharded on the target's mesh where the stored rows divide, else replicated."""
  try:
    stored = ocp.tree.to_flat_dict(stored_tree(manager, step))
  except Exception:  # noqa: BLE001 - no metadata: restore as asked, errors are reported then
    return abstract

  def one(path, want):
    have = getattr(stored.get(tuple(key_name(k) for k in path)), "shape", None)
    if (not isinstance(want, jax.ShapeDtypeStruct) or have is None or not want.shape
        or tuple(have) == want.shape or tuple(have[1:]) != want.shape[1:]):
      return want
    sh = want.sharding
    if isinstance(sh, jax.sharding.NamedSharding) and sh.spec and sh.spec[0] is not None:
      axes = sh.spec[0] if isinstance(sh.spec[0], tuple) else (sh.spec[0],)
      if have[0] % int(np.prod([sh.mesh.shape[a] for a in axes])):
        sh = jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec())
    return jax.ShapeDtypeStruct(tuple(have), want.dtype, sharding=sh)

  return jax.tree_util.tree_map_with_path(one, abstract)


def resize_rows(tree: Any, abstract: Any, step: int) -> Any:
  """Cuts or pads (with zeros) the first axis of arrays read with another row count to the
  target's, on the target's sharding; the rows cut must be zero (padding).

  Raises:
    CheckpointError: a row that would be cut is not zero (the checkpoint is from another
      vocabulary).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> want = {"t": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
    >>> resize_rows({"t": jnp.ones((2, 2))}, want, 1)["t"].tolist()
    [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
  """

  def one(x, want):
    if not isinstance(want, jax.ShapeDtypeStruct) or x.shape == want.shape:
      return x
    rows = want.shape[0]
    if x.shape[0] > rows and bool(jax.numpy.any(x[rows:] != 0)):
      raise CheckpointError(f"step {step}: an array of shape {x.shape} does not fit the "
                            f"target's {want.shape} (its rows beyond {rows} are not padding); "
                            f"the checkpoint is from another vocabulary")

    def resize(x):
      if x.shape[0] > rows:
        return x[:rows]
      pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
      return jax.numpy.pad(x, pad)

    return jax.jit(resize, out_shardings=want.sharding)(x)

  return jax.tree.map(one, tree, abstract)
