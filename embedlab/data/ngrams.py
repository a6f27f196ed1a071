"""Hashed n-gram ids, as fastText computes them: word n-grams and character n-grams (subwords).

Word n-grams (``ngram_ids``, ``ngram_ids_batch``) hash runs of 2..n word ids; character n-grams
(``subword_ids``, ``subword_table``) hash runs of ``minn..maxn`` code points of a word wrapped as
``<word>``; both land in the same ``num_buckets`` buckets, as in fastText, and come out as ids
``offset + bucket`` (``offset`` normally ``len(vocab)``), so one embedding table of
``len(vocab) + num_buckets`` rows holds words and n-grams. ``subword_block`` gathers the subword
ids of each row's tokens into the last block of ``embedlab.data.encoding.encode``'s layout.

Everything here is numpy and the standard library, so it runs before (and without) JAX.

Hand-written rather than a library's: fastText's hashes (word n-grams over word ids, FNV-1a over
the character n-grams' bytes) must be reproduced bit for bit, over whole corpora in numpy.

Example:
  >>> from embedlab.data import ngrams
  >>> ngrams.ngram_ids([5, 7, 9, 0], 2, num_buckets=10, offset=100)
  array([102, 106], dtype=int32)
  >>> ngrams.subword_ids("ab", 3, 4, num_buckets=10, offset=100)  # "<ab", "<ab>", "ab>"
  array([108, 102, 106], dtype=int32)
"""

from __future__ import annotations

from concurrent import futures
from typing import Sequence

import numpy as np

from embedlab.data.text import EOS_TOKEN, PAD_ID

# fastText's n-gram hash multiplier (Dictionary::addWordNgrams).
_HASH_MULTIPLIER = 116049371


def ngram_ids(word_ids_row: Sequence[int] | np.ndarray, n: int, num_buckets: int,
              offset: int) -> np.ndarray:
  """Hashed n-gram ids of one row of word ids (fastText's hashing), for orders 2..n.

  The k-gram starting at position i hashes as fastText does: ``h = id_i``, then
  ``h = h * 116049371 + id_j`` for the next k-1 ids (uint64, wrapping), bucket ``h % num_buckets``.
  Padding (id 0) ends the row: n-grams never include it.

  Args:
    word_ids_row: word ids of one document, right-padded with 0 or not padded.
    n: the largest order (n=2: bigrams; n=3: bigrams and trigrams).
    num_buckets: number of hash buckets (> 0).
    offset: added to each bucket; normally ``len(vocab)``.

  Returns:
    int32 ids, all 2-grams in order, then all 3-grams, ...; shape ``[sum_k max(0, len-k+1)]``.

  Example:
    >>> ngram_ids([5, 7, 9, 0], 2, num_buckets=10, offset=100)
    array([102, 106], dtype=int32)
  """
  row = np.asarray(word_ids_row, dtype=np.int64).reshape(1, -1)
  out = ngram_ids_batch(row, n, num_buckets, offset)
  return out[out != PAD_ID].astype(np.int32)


def ngram_ids_batch(word_ids: np.ndarray, n: int, num_buckets: int, offset: int, *,
                    threads: int = 1, out: np.ndarray | None = None) -> np.ndarray:
  """``ngram_ids`` for a padded ``[N, L]`` word-id matrix, vectorized.

  Args:
    word_ids: int ``[N, L]`` word ids, 0 = padding.
    n: the largest order (>= 2).
    num_buckets: number of hash buckets (> 0).
    offset: added to each bucket; normally ``len(vocab)``.
    threads: hash blocks of rows on this many threads (numpy releases the GIL in its loops).
    out: an int32 ``[N, (n-1)*L]`` array (a view is fine) to write into instead of a new one.

  Returns:
    int32 ``[N, (n-1)*L]``: block k-2 (columns ``(k-2)*L .. (k-1)*L``) holds the k-grams by
    start position, 0 where a k-gram would touch padding or run past the end.

  Example:
    >>> ngram_ids_batch(np.array([[5, 7, 9], [5, 7, 0]]), 2, 10, 100)
    array([[102, 106,   0],
           [102,   0,   0]], dtype=int32)
  """
  word_ids = np.asarray(word_ids)
  if word_ids.ndim != 2:
    raise ValueError(f"ngram_ids_batch: word_ids must be [N, L], got shape {word_ids.shape}.")
  if n < 2 or num_buckets <= 0:
    raise ValueError(f"ngram_ids_batch: need n >= 2 and num_buckets > 0, got n={n}, "
                     f"num_buckets={num_buckets}.")
  if offset < 1:
    raise ValueError(f"ngram_ids_batch: offset = {offset} must be >= 1 (id 0 is padding); pass "
                     "len(vocab) so n-gram ids follow the word ids.")
  if offset + num_buckets > np.iinfo(np.int32).max:
    raise ValueError(f"ngram_ids_batch: offset {offset} + num_buckets {num_buckets} does not fit "
                     "in int32 ids; use fewer buckets.")
  num_docs, length = word_ids.shape
  if out is None:
    out = np.zeros((num_docs, (n - 1) * length), dtype=np.int32)
  elif out.shape != (num_docs, (n - 1) * length) or out.dtype != np.int32:
    raise ValueError(f"ngram_ids_batch: out must be int32 {(num_docs, (n - 1) * length)}, got "
                     f"{out.dtype} {out.shape}.")
  else:
    out.fill(0)
  if threads > 1 and num_docs >= 4096:
    cuts = np.linspace(0, num_docs, threads + 1).astype(int)
    with futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(lambda a, b: ngram_ids_batch(word_ids[a:b], n, num_buckets, offset,
                                                 out=out[a:b]), cuts[:-1], cuts[1:]))
    return out
  if np.any(word_ids < 0):
    raise ValueError("ngram_ids_batch: word ids must be >= 0 (0 = padding).")
  # With a power-of-two bucket count only the hash's low bits matter, and those of a uint64
  # product and sum are the same in uint32: half the memory traffic, and a mask for the modulo.
  # (num_buckets < 2**31 here: bucket ids fit in int32.)
  pow2 = num_buckets & (num_buckets - 1) == 0
  utype = np.uint32 if pow2 else np.uint64
  ids = word_ids.view(np.uint32) if pow2 and word_ids.dtype == np.int32 else word_ids.astype(utype)
  present = word_ids != PAD_ID
  mult = utype(_HASH_MULTIPLIER)
  h = ids  # h[:, i] = hash of the (k-1)-gram starting at i (never written in place)
  valid = present
  for k in range(2, n + 1):
    width = length - k + 1
    if width <= 0:
      break
    h = h[:, :width] * mult + ids[:, k - 1:k - 1 + width]
    valid = valid[:, :width] & present[:, k - 1:k - 1 + width]
    if pow2:
      buckets = (h & utype(num_buckets - 1)).view(np.int32)
    else:
      buckets = h % np.uint64(num_buckets)
    block = out[:, (k - 2) * length:(k - 2) * length + width]
    np.add(buckets, offset, out=block, where=valid, casting="unsafe")
  return out


# fastText's FNV-1a (Dictionary::hash): each byte sign-extended (a C++ char) before the xor.
_FNV_BASIS = 2166136261
_FNV_PRIME = 16777619


def _fnv1a_fasttext(data: bytes) -> int:
  h = _FNV_BASIS
  for b in data:
    h = ((h ^ (b - 256 if b > 127 else b)) * _FNV_PRIME) & 0xFFFFFFFF
  return h


def subword_ids(word: str, minn: int, maxn: int, num_buckets: int, offset: int) -> np.ndarray:
  """fastText's character n-gram ids of one word (``Dictionary::computeSubwords``).

  The word is wrapped as ``"<" + word + ">"``; every run of ``minn..maxn`` code points of it
  (UTF-8 aware: a code point is a lead byte and its continuation bytes) is hashed with fastText's
  FNV-1a over its UTF-8 bytes, each byte sign-extended as a C++ ``char``, into bucket
  ``hash % num_buckets``; a single ``<`` or ``>`` (``minn = 1``) is not an n-gram. Order: by start,
  then by length; repeated n-grams repeat. ``</s>`` has none. The word's own id is not included.

  Args:
    word: the word (a token).
    minn, maxn: the n-gram lengths in code points, ``1 <= minn <= maxn``.
    num_buckets: hash buckets (> 0), shared with the word n-grams.
    offset: added to each bucket; normally ``len(vocab)``.

  Returns:
    int32 ids ``offset + bucket``, fastText's ``get_subwords(word)[1]`` without the word's own id,
    with ``offset = nwords``.

  Example:
    >>> subword_ids("ab", 3, 4, num_buckets=10, offset=100)  # "<ab", "<ab>", "ab>"
    array([108, 102, 106], dtype=int32)
    >>> len(subword_ids("café", 3, 6, 2000000, 0)), len(subword_ids("</s>", 3, 6, 10, 0))
    (10, 0)
  """
  _check_subword_args("subword_ids", minn, maxn, num_buckets, offset)
  out = []
  if word != EOS_TOKEN:
    data = ("<" + word + ">").encode("utf-8")
    size = len(data)
    for i in range(size):
      if data[i] & 0xC0 == 0x80:
        continue
      j, n = i, 1
      while j < size and n <= maxn:
        j += 1
        while j < size and data[j] & 0xC0 == 0x80:
          j += 1
        if n >= minn and not (n == 1 and (i == 0 or j == size)):
          out.append(offset + _fnv1a_fasttext(data[i:j]) % num_buckets)
        n += 1
  return np.asarray(out, dtype=np.int32)


def subword_table(words: Sequence[str], minn: int, maxn: int, num_buckets: int,
                  offset: int) -> tuple[np.ndarray, np.ndarray]:
  """``subword_ids`` of many words at once, vectorized, as a CSR table.

  All words' wrapped UTF-8 bytes are laid end to end; one FNV-1a state per code point start
  advances a byte per step (at most ``4 * maxn`` steps), and each state is recorded where an
  n-gram of ``minn..maxn`` code points ends. IMDB's 280k distinct tokens take about a second.

  Args:
    words: the words.
    minn, maxn, num_buckets, offset: as for ``subword_ids``.

  Returns:
    ``(indptr int64[len(words) + 1], ids int32[indptr[-1]])``: word i's ids are
    ``ids[indptr[i]:indptr[i + 1]]``, exactly ``subword_ids(words[i], ...)``.

  Example:
    >>> indptr, ids = subword_table(["ab", "</s>", "x"], 3, 4, num_buckets=10, offset=100)
    >>> indptr.tolist(), ids.tolist()
    ([0, 3, 3, 4], [108, 102, 106, 107])
  """
  _check_subword_args("subword_table", minn, maxn, num_buckets, offset)
  words = list(words)
  encoded = [b"" if w == EOS_TOKEN else ("<" + w + ">").encode("utf-8") for w in words]
  sizes = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
  data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
  ends = np.cumsum(sizes)
  # is_start[p]: byte p starts a code point; the sentinel past the end closes the last one
  is_start = np.append((data & 0xC0) != 0x80, True)
  starts = np.flatnonzero(is_start[:-1])
  word_of = np.repeat(np.arange(len(words), dtype=np.int64), sizes)[starts]
  points = np.bincount(word_of, minlength=len(words))  # code points per wrapped word
  index = np.arange(len(starts)) - np.repeat(np.cumsum(points) - points, points)
  room = points[word_of] - index  # code points from this start to the word's end
  first = index == 0
  keep = room >= minn
  starts, word_of, first, end = starts[keep], word_of[keep], first[keep], ends[word_of[keep]]
  signed = data.astype(np.int8).astype(np.int32).view(np.uint32)  # a C++ char, sign-extended
  h = np.full(len(starts), _FNV_BASIS, dtype=np.uint32)
  n = np.zeros(len(starts), dtype=np.int64)
  alive = np.ones(len(starts), dtype=bool)
  found_at, found_n, found_h = [], [], []
  prime = np.uint32(_FNV_PRIME)
  last = max(len(data) - 1, 0)
  for k in range(4 * maxn):  # a code point is at most 4 bytes
    if not alive.any():
      break
    p = starts + k
    byte = signed[np.minimum(p, last)] if len(data) else np.zeros(len(p), np.uint32)
    h = np.where(alive, (h ^ byte) * prime, h)
    at_end = p + 1 >= end
    closes = alive & (at_end | is_start[np.minimum(p + 1, len(data))])
    n += closes
    emit = closes & (n >= minn) & (n <= maxn) & ~((n == 1) & (first | at_end))
    rows = np.flatnonzero(emit)
    found_at.append(rows)
    found_n.append(n[rows])
    found_h.append(h[rows])
    alive &= ~(closes & ((n >= maxn) | at_end))
  at = np.concatenate(found_at) if found_at else np.zeros(0, np.int64)
  lengths = np.concatenate(found_n) if found_n else np.zeros(0, np.int64)
  hashes = np.concatenate(found_h) if found_h else np.zeros(0, np.uint32)
  order = np.lexsort((lengths, at))  # fastText's order: by start, then by length
  at, hashes = at[order], hashes[order]
  counts = np.bincount(word_of[at], minlength=len(words))
  indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  ids = (hashes % np.uint32(num_buckets)).astype(np.int64) + offset
  return indptr, ids.astype(np.int32)


def subword_block(token_ids: np.ndarray, lengths: np.ndarray, table: tuple[np.ndarray, np.ndarray],
                  *, lead: np.ndarray | None = None, chunk_rows: int = 2048) -> np.ndarray:
  """The subword block of ``encoding.encode``'s layout: row i holds the ``table`` ids of its
  tokens, token after token, then ``PAD_ID``; ``lead`` (the word and n-gram columns) goes first.

  Args:
    token_ids: int ``[T]``: each token occurrence's row of ``table``, rows after rows.
    lengths: int ``[N]``: tokens per row (summing to ``T``).
    table: ``subword_table``'s ``(indptr, ids)`` over the distinct tokens.
    lead: int32 ``[N, C]`` columns to put first; None = none.
    chunk_rows: rows gathered at a time (bounds the temporary index arrays).

  Returns:
    int32 ``[N, C + S]``, ``S`` the most subword ids of any row.

  Example:
    >>> table = (np.array([0, 2, 3]), np.array([7, 8, 9], np.int32))  # token 0: 7 8; token 1: 9
    >>> subword_block(np.array([0, 1, 1]), np.array([1, 2]), table)
    array([[7, 8],
           [9, 9]], dtype=int32)
  """
  indptr, ids = table
  token_ids = np.asarray(token_ids, dtype=np.int64)
  lengths = np.asarray(lengths, dtype=np.int64)
  counts = indptr[token_ids + 1] - indptr[token_ids]
  token_ends = np.cumsum(lengths)
  running = np.concatenate([[0], np.cumsum(counts)])
  row_counts = running[token_ends] - running[token_ends - lengths]
  width = int(row_counts.max()) if row_counts.size else 0
  head = 0 if lead is None else lead.shape[1]
  out = np.zeros((len(lengths), head + width), dtype=np.int32)
  if lead is not None:
    out[:, :head] = lead
  for a in range(0, len(lengths), chunk_rows):
    b = min(a + chunk_rows, len(lengths))
    t0, t1 = int(token_ends[a] - lengths[a]), int(token_ends[b - 1])
    tok, cnt = token_ids[t0:t1], counts[t0:t1]
    # each occurrence's run of ids: indptr[token] .. indptr[token] + count
    total = int(cnt.sum())
    flat = ids[np.repeat(indptr[tok] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)]
    # one slice copy a row: a boolean mask over [rows, S] would touch every padding slot too
    bounds = np.concatenate([[0], np.cumsum(row_counts[a:b])]).tolist()
    for i, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]), a):
      out[i, head:head + stop - start] = flat[start:stop]
  return out


def _check_subword_args(caller: str, minn: int, maxn: int, num_buckets: int, offset: int) -> None:
  if not 1 <= minn <= maxn:
    raise ValueError(f"{caller}: need 1 <= minn <= maxn (character n-gram lengths), got "
                     f"minn={minn}, maxn={maxn}; fastText's are minn=3, maxn=6.")
  if num_buckets <= 0:
    raise ValueError(f"{caller}: num_buckets = {num_buckets} must be positive (character "
                     "n-grams are hashed into that many buckets), e.g. 2000000.")
  if offset < 0 or offset + num_buckets > np.iinfo(np.int32).max:
    raise ValueError(f"{caller}: offset {offset} + num_buckets {num_buckets} must fit in int32 "
                     "ids (offset >= 0); use fewer buckets.")
