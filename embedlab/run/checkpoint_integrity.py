"""What a sound checkpoint is: the checksums that seal a saved tree, and the check on reading.

The JSON record of every checkpoint carries a CRC-32 of each array *with its pytree path*
(``params/embed/table``) and a CRC-32 of the record itself, so an edited record, a changed array
or arrays read into the wrong leaves are all caught. ``seal`` adds them when saving; ``verify``
checks them after reading and raises ``CorruptCheckpointError`` when they do not match.

Hand-written because orbax checks no content: it reads back whatever bytes are on disk (a
flipped bit in an array file decodes fine), and its own metadata carries no checksum of the
arrays or of the JSON item. Checkpoints written before the record was covered carry a sorted
list of path-less fingerprints; they are still read, and checked as well as they can be.

Example:
  >>> import numpy as np
  >>> record = seal({"w": np.ones(2, np.float32)}, {"best": 0.5})
  >>> verify(3, {"w": np.ones(2, np.float32)}, record)
  {'best': 0.5}
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import jax
import numpy as np

# In the JSON record: ``{path: "dtype[shape]:crc"}`` of the arrays, and the CRC-32 of the record
# (the arrays' map included, this key left out).
_ARRAYS_KEY = "_embedlab_arrays"
_RECORD_KEY = "_embedlab_record_crc32"
# Checkpoints written before the record was covered: a sorted list of path-less fingerprints.
# They are still read (and checked as well as they can be).
_LEGACY_KEY = "_embedlab_crc32"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint fails its checksum or its files cannot be parsed: its bytes are bad."""


def key_name(key) -> str:
  """The name of one pytree path entry: a dict key, an attribute name or a sequence index.

  Example:
    >>> import jax
    >>> [key_name(k) for k in jax.tree_util.tree_flatten_with_path({"a": [1]})[0][0][0]]
    ['a', '0']
  """
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path_name(path) -> str:
  return "/".join(key_name(k) for k in path)


def checksum(tree: Any) -> dict[str, str]:
  """CRC-32 fingerprints of a pytree's arrays by path: ``{path: "dtype[shape]:crc"}``.

  A path names dict keys, attribute names and sequence indices alike, so a ``TrainState`` and
  the same state read back as dicts give the same map; two arrays swapped between leaves do not.

  Example:
    >>> import numpy as np
    >>> checksum({"b": np.zeros(2, np.int32), "a": [np.ones(1, np.float32)]})
    {'a/0': 'float32[1]:aca16a6a', 'b': 'int32[2]:6522df69'}
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[_path_name(path)] = fingerprint(leaf)
  return dict(sorted(out.items()))


def fingerprint(leaf) -> str:
  """``"dtype[shape]:crc"`` of one array (a PRNG key by its key data).

  Example:
    >>> import numpy as np
    >>> fingerprint(np.zeros(2, np.int32))
    'int32[2]:6522df69'
  """
  if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    leaf = jax.random.key_data(leaf)
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    # split over several processes: every process gathers the whole array (a collective,
    # called by all of them in the same order) so all write and check the same checksums
    from jax.experimental import multihost_utils  # noqa: PLC0415
    leaf = multihost_utils.process_allgather(leaf, tiled=True)
  arr = np.ascontiguousarray(np.asarray(leaf))
  shape = ",".join(str(d) for d in arr.shape)
  return f"{arr.dtype}[{shape}]:{zlib.crc32(arr.view(np.uint8).reshape(-1)):08x}"


def record_crc(record: dict) -> str:
  """CRC-32 of a JSON record in one canonical spelling (what orbax writes reads back equal).

  Example:
    >>> record_crc({"b": 1, "a": 2}) == record_crc({"a": 2, "b": 1})
    True
  """
  text = json.dumps(record, sort_keys=True, separators=(",", ":"))
  return f"{zlib.crc32(text.encode('utf-8')):08x}"


def seal(tree: Any, meta: dict) -> dict:
  """``meta`` with the checksums of ``tree``'s arrays and of itself.

  Raises:
    ValueError: ``meta`` holds one of the keys the checksums are stored under.

  Example:
    >>> import numpy as np
    >>> sorted(seal({"w": np.ones(2)}, {"best": 0.5}))
    ['_embedlab_arrays', '_embedlab_record_crc32', 'best']
  """
  reserved = {_ARRAYS_KEY, _RECORD_KEY, _LEGACY_KEY} & set(meta)
  if reserved:
    raise ValueError(f"checkpoint: the record may not hold the keys {sorted(reserved)}.")
  record = {**meta, _ARRAYS_KEY: checksum(tree)}
  return {**record, _RECORD_KEY: record_crc(record)}


def verify(step: int, tree: Any, record: dict) -> dict:
  """The record without its checksums; raises ``CorruptCheckpointError`` when the record or
  an array (by path) does not match what was written.

  Example:
    >>> import numpy as np
    >>> record = seal({"w": np.ones(2)}, {})
    >>> verify(7, {"w": np.zeros(2)}, record)
    Traceback (most recent call last):
    ...
    embedlab.run.checkpoint_integrity.CorruptCheckpointError: step 7: arrays ['w'] do not match their checksums (corrupted files)
  """
  record = dict(record)
  if _RECORD_KEY in record:
    crc = record.pop(_RECORD_KEY)
    if record_crc(record) != crc:
      raise CorruptCheckpointError(f"step {step}: its JSON record does not match the checksum "
                                   "written with it (the record was changed)")
    expected, got = record.pop(_ARRAYS_KEY, {}), checksum(tree)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = [p for p in expected if p in got and got[p] != expected[p]]
    if missing or extra or wrong:
      what = (f"arrays {wrong[:3]} do not match their checksums" if wrong else
              f"arrays at {missing[:3]} are missing, at {extra[:3]} unexpected")
      raise CorruptCheckpointError(f"step {step}: {what} (corrupted files)")
    return record
  if _LEGACY_KEY in record:
    expected = record.pop(_LEGACY_KEY)
    if sorted(fingerprint(x) for x in jax.tree.leaves(tree)) != sorted(expected):
      raise CorruptCheckpointError(f"step {step}: the arrays read back do not match the "
                                   "checksums written with them (corrupted files)")
    return record
  raise CorruptCheckpointError(f"step {step}: its JSON record holds no checksum")
