"""Batches: the example indices of every training batch of an epoch, ragged batches, and
fixed-size masked evaluation batches.

``batch_indices`` is a pure function of ``(seed, epoch)``, so a run can restart at any step;
``eval_batches`` yields batches of one size so a jitted eval step compiles once.

Example:
  >>> batch_indices(64, 32, seed=0, epoch=0).shape
  (2, 32)
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np

from embedlab.data import text as text_lib


def num_batches(n: int, batch_size: int, drop_last: bool = True) -> int:
  """Batches per epoch of ``n`` examples.

  Example:
    >>> num_batches(10, 4), num_batches(10, 4, drop_last=False)
    (2, 3)
  """
  if batch_size <= 0:
    raise ValueError(f"num_batches: batch_size = {batch_size} must be positive.")
  return n // batch_size if drop_last else -(-n // batch_size)


# Length bucketing sorts pools of this many batches by length, so batches hold similar lengths
# while the pools, and the batch order, stay random.
_POOL_BATCHES = 32


def batch_indices(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True, lengths: np.ndarray | None = None) -> np.ndarray:
  """Example indices of every batch of one epoch, a pure function of ``(seed, epoch)``.

  A run restarting at step s of epoch e reads ``batch_indices(..., epoch=e)[s]`` and on.

  Args:
    n: number of examples.
    batch_size: examples per batch.
    seed: the run's seed; the permutation comes from ``np.random.default_rng([seed, epoch])``.
    epoch: the epoch number.
    shuffle: False keeps the order 0..n-1.
    drop_last: drop the last, partial batch; otherwise it is padded with -1 (mask those out).
    lengths: ``[n]`` example lengths (``EncodedData.train_lengths``) to group similar lengths
      into batches (``bucket_by_length``): pools of 32 batches are sorted by length, cut into
      batches, and the batches shuffled.

  Returns:
    int64 ``[num_batches(n, batch_size, drop_last), batch_size]``.

  Example:
    >>> batch_indices(5, 2, seed=0, epoch=0, shuffle=False, drop_last=False)
    array([[ 0,  1],
           [ 2,  3],
           [ 4, -1]])
  """
  count = num_batches(n, batch_size, drop_last)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n) if shuffle else np.arange(n)
  if lengths is not None:
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
      raise ValueError(f"batch_indices: lengths has shape {lengths.shape}, expected ({n},).")
    pool = batch_size * _POOL_BATCHES
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.split(order, np.arange(pool, n, pool))] or [order])
  order = order[:count * batch_size]
  order = np.concatenate([order, np.full(count * batch_size - len(order), -1, order.dtype)])
  batches = order.reshape(count, batch_size).astype(np.int64)
  if lengths is not None and shuffle:
    batches = batches[rng.permutation(count)]
  return batches


class RaggedBatch(NamedTuple):
  """Bags as one ragged id list each (PyTorch ``EmbeddingBag``'s layout), padded to a fixed length.

  Attributes:
    ids: int32 ``[..., T]``: the non-padding ids of bag 0, then of bag 1, ..., then padding
      (id 0) up to ``T``.
    segment_ids: int32 ``[..., T]``: the bag of each id, non-decreasing (padding slots name the
      last bag; being padding, they add nothing to it).
  """

  ids: np.ndarray
  segment_ids: np.ndarray


def ragged_length(counts: np.ndarray, batches: Iterable[np.ndarray], multiple: int = 128) -> int:
  """The fixed ragged length ``T`` that holds every batch: the largest batch's number of
  non-padding ids, rounded up to ``multiple`` (one shape, so one compilation, for the run).

  Args:
    counts: ``[N]`` non-padding ids per example (``EncodedData.train_lengths``).
    batches: index arrays ``[num_batches, B]`` (``batch_indices``), e.g. one per epoch.
    multiple: round up to a multiple of this.

  Example:
    >>> ragged_length(np.array([3, 1, 200]), [np.array([[0, 1], [2, 1]])], multiple=64)
    256
  """
  longest = 0
  for rows in batches:
    rows = np.asarray(rows)
    if rows.size:
      longest = max(longest, int(np.where(rows >= 0, counts[rows], 0).sum(axis=-1).max()))
  return max(multiple, -(-longest // multiple) * multiple)


def ragged_batches(ids: np.ndarray, length: int) -> RaggedBatch:
  """Packs padded bags ``[..., B, L]`` into ragged batches ``[..., length]`` (``RaggedBatch``).

  A bag model pooling a ragged batch (``embedlab.bag(..., segment_ids=..., num_bags=B)``) gets
  the same vectors as from the padded one while reading only the real ids: SST-2 phrases fill
  17% of their 112 padded slots.

  Args:
    ids: int ``[..., B, L]`` padded bags, 0 = padding (anywhere in a row).
    length: ``T``, at least the number of non-padding ids of every batch (``ragged_length``).

  Returns:
    A ``RaggedBatch`` of int32 ``[..., T]`` arrays.

  Raises:
    ValueError: a batch holds more than ``length`` non-padding ids.

  Example:
    >>> r = ragged_batches(np.array([[[5, 0, 7], [0, 0, 0], [2, 3, 0]]]), 6)
    >>> r.ids.tolist(), r.segment_ids.tolist()
    ([[5, 7, 2, 3, 0, 0]], [[0, 0, 2, 2, 2, 2]])
  """
  ids = np.asarray(ids)
  if ids.ndim < 2:
    raise ValueError(f"ragged_batches: ids must be [..., B, L], got shape {ids.shape}.")
  *lead, bags, _ = ids.shape
  flat_ids = ids.reshape(-1, bags, ids.shape[-1])
  mask = flat_ids != text_lib.PAD_ID
  totals = mask.sum(axis=(1, 2))
  if totals.size and totals.max() > length:
    raise ValueError(f"ragged_batches: a batch holds {int(totals.max())} non-padding ids, more "
                     f"than the ragged length {length}; compute it with ragged_length over "
                     "every batch of the run.")
  batch, bag, _ = np.nonzero(mask)  # row-major: batch by batch, bag by bag, in position order
  starts = np.cumsum(totals) - totals
  slot = np.arange(len(batch)) - np.repeat(starts, totals)
  out_ids = np.zeros((len(flat_ids), length), np.int32)
  out_seg = np.full((len(flat_ids), length), bags - 1, np.int32)
  out_ids[batch, slot] = flat_ids[mask]
  out_seg[batch, slot] = bag
  return RaggedBatch(out_ids.reshape(*lead, length), out_seg.reshape(*lead, length))


def eval_batches(ids: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Fixed-size evaluation batches, in order; the last one padded with zeros and mask 0.

  Padded rows are all padding ids, so models must not divide by a zero count when pooling.

  Args:
    ids: int32 ``[N, L]``.
    labels: int32 ``[N]``, or multi-hot float32 ``[N, C]``.
    batch_size: rows per batch (every batch has exactly this many).

  Yields:
    ``(ids [B, L], labels [B] (or [B, C]), mask float32 [B])``, mask 1 for real rows.

  Example:
    >>> batches = list(eval_batches(np.ones((3, 2), np.int32), np.arange(3), 2))
    >>> [b[2].tolist() for b in batches]
    [[1.0, 1.0], [1.0, 0.0]]
  """
  if len(ids) != len(labels):
    raise ValueError(f"eval_batches: {len(ids)} id rows but {len(labels)} labels.")
  if batch_size <= 0:
    raise ValueError(f"eval_batches: batch_size = {batch_size} must be positive.")
  for start in range(0, len(ids), batch_size):
    ids_b, labels_b = ids[start:start + batch_size], labels[start:start + batch_size]
    real = len(ids_b)
    mask = np.zeros(batch_size, np.float32)
    mask[:real] = 1.0
    if real < batch_size:
      ids_b = np.concatenate([ids_b, np.zeros((batch_size - real,) + ids.shape[1:], ids.dtype)])
      labels_b = np.concatenate([labels_b, np.zeros((batch_size - real,) + labels.shape[1:],
                                                    labels.dtype)])
    yield ids_b, labels_b, mask
