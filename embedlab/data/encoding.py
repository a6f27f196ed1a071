"""Token lists to padded int32 id matrices, a model's input: ``encode``, and ``encode_corpus``
for whole corpora on several processes.

Everything here is numpy and the standard library, so it runs before (and without) JAX.

The id layout of an encoded row (see ``encode``)::

  [ w_0 .. w_{L-1} | 2-grams (L slots) | 3-grams (L slots) | ... | subwords (S slots) ]

``L = max_len``. Word ids index the vocabulary (``PAD_ID = 0``, ``UNK_ID = 1``); n-gram ids are
``len(vocab) + bucket``, so one embedding table of ``len(vocab) + num_buckets`` rows holds both.
With character n-grams (``minn``, ``maxn`` > 0, fastText's ``-minn -maxn``) the last block
holds the subword ids (``embedlab.data.ngrams.subword_ids``) of the row's words, word after word,
then ``PAD_ID``; they share the ``num_buckets`` buckets with the word n-grams, as in fastText.
``S`` is the most subword ids any row of the encoded batch has (a split's rows share one width,
another split or batch of texts may have another): a bag model pools the whole row, so each word
contributes its own id plus its n-grams, fastText's input. Words outside the vocabulary keep
``UNK_ID`` in their word slot and still get their n-grams (fastText gives them n-grams only);
``</s>`` gets none. The subword ids of each distinct token are hashed once (``subword_table``,
vectorized) and gathered per occurrence.

Hand-written rather than a library's: the layout above, fastText's features, built with numpy
over whole corpora (tokenizing on forked processes, hashing on threads) in seconds.

Example:
  >>> from embedlab.data import encoding, text
  >>> docs = [text.tokenize("A fine, fine film."), text.tokenize("A dull film.")]
  >>> vocab = text.build_vocab(docs)
  >>> encoding.encode(docs, vocab, max_len=6)
  array([[3, 5, 6, 5, 4, 2],
         [3, 7, 4, 2, 0, 0]], dtype=int32)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
from typing import Mapping, Sequence

import numpy as np

from embedlab.data import text
from embedlab.data import workers as _fork
from embedlab.data.ngrams import ngram_ids_batch, subword_block, subword_table
from embedlab.data.text import Vocab

# Below this much text, forking costs more than it saves (SST-2's train split is 3.4 MB).
_MIN_FORK_CHARS = 1_000_000


def encode(token_lists: Sequence[Sequence[str]], vocab: Vocab, *, max_len: int,
           ngrams: int = 1, num_buckets: int = 0, minn: int = 0, maxn: int = 0) -> np.ndarray:
  """Encodes token lists as a right-padded int32 id matrix, with optional hashed n-grams.

  Word ids are truncated to ``max_len``. With ``ngrams > 1`` the hashed 2..n-grams of those
  (truncated) words follow, one block of ``max_len`` columns per order (see ``ngram_ids_batch``),
  so the width is ``max_len * ngrams``; with ``minn, maxn > 0`` the character n-grams of those
  words follow (``ngrams.subword_ids``, this module's layout). Models that use word order should
  read the first ``max_len`` columns only; bag models can pool the whole row (0 = padding
  everywhere).

  Args:
    token_lists: one token list per document.
    vocab: the vocabulary (unknown tokens -> ``UNK_ID``).
    max_len: the number of word slots.
    ngrams: 1 = words only; n = words plus 2..n-grams.
    num_buckets: hash buckets for n-grams (needed when ``ngrams > 1`` or ``minn > 0``); n-gram
      ids are ``len(vocab) + bucket``, so the table needs ``len(vocab) + num_buckets`` rows.
    minn, maxn: character n-gram lengths of every word (fastText's ``-minn -maxn``); 0, 0 = none.

  Returns:
    int32 ``[N, max_len * ngrams + S]``, ``S`` = 0 without character n-grams.

  Example:
    >>> v = Vocab.from_words(["a", "b"])
    >>> encode([["a", "b", "zz"], []], v, max_len=4)
    array([[2, 3, 1, 0],
           [0, 0, 0, 0]], dtype=int32)
    >>> encode([["a", "b"]], v, max_len=2, ngrams=2, num_buckets=10).shape
    (1, 4)
    >>> encode([["a", "zz"]], v, max_len=2, num_buckets=10, minn=3, maxn=3)  # "<a>" "<zz" "zz>"
    array([[ 2,  1,  4, 11,  5]], dtype=int32)
  """
  _check_encode_args("encode", max_len, ngrams, num_buckets, minn, maxn)
  lengths = np.fromiter((min(len(t), max_len) for t in token_lists), dtype=np.int64,
                        count=len(token_lists))
  tokens = itertools.chain.from_iterable(toks[:max_len] for toks in token_lists)
  flat = vocab.encode(tokens, count=int(lengths.sum()))
  ids = padded_ids(flat, lengths, max_len, ngrams=ngrams, num_buckets=num_buckets,
                   offset=len(vocab))
  if not minn:
    return ids
  index: dict[str, int] = {}
  positions = itertools.count()
  tokens = itertools.chain.from_iterable(toks[:max_len] for toks in token_lists)
  local = np.fromiter(map(index.setdefault, tokens, positions), dtype=np.int64,
                      count=int(lengths.sum()))
  firsts = np.fromiter(index.values(), dtype=np.int64, count=len(index))
  remap = np.zeros(len(local), dtype=np.int64)
  remap[firsts] = np.arange(len(firsts))  # first position -> distinct token number
  table = subword_table(list(index), minn, maxn, num_buckets, len(vocab))
  return subword_block(remap[local], lengths, table, lead=ids)


def encode_corpus(splits: Mapping[str, Sequence[str]], *, max_len: int, vocab_split: str = "train",
                  lowercase: bool = True, min_freq: int = 1, max_size: int = 0, ngrams: int = 1,
                  num_buckets: int = 0, workers: int = 1, eos: bool = False, minn: int = 0,
                  maxn: int = 0) -> tuple[Vocab, dict[str, np.ndarray]]:
  """Tokenizes every split, builds the vocabulary on one, and encodes them all, on processes.

  The result is exactly that of ``text.tokenize_many``, ``text.build_vocab`` (on
  ``splits[vocab_split]``) and ``encode`` per split; only the work is shared. With
  ``workers > 1`` each of that many forked processes tokenizes one slice of every split into ids
  of its own small vocabulary (``tokenize_parts``); this process counts, builds the vocabulary,
  maps the slices' ids onto it with numpy and hashes n-grams on ``workers`` threads
  (``encode_shards``). Processes are forked only where that is safe and worth it: Linux, at
  least 1 MB of text, and JAX's backends and distributed client not started yet (forking a
  process whose XLA threads run can deadlock it; ``embedlab train`` encodes before it starts
  them). Otherwise all runs in this process.

  Args:
    splits: name -> texts; must hold ``vocab_split``.
    max_len, ngrams, num_buckets, minn, maxn: as for ``encode``.
    vocab_split: the split the vocabulary is built on (normally train).
    lowercase: as for ``text.tokenize_many``.
    eos: end every text with ``EOS_TOKEN`` (fastText's features), before ``max_len`` cuts it.
    min_freq, max_size: as for ``text.build_vocab``.
    workers: processes (and n-gram threads) to use; 1 = this process only.

  Returns:
    ``(vocab, {name: int32 [N, max_len * ngrams + S]})`` (``S`` as for ``encode``, per split).

  Example:
    >>> vocab, ids = encode_corpus({"train": ["a b a", "c"], "test": ["a d"]}, max_len=3)
    >>> vocab.tokens
    ('<pad>', '<unk>', 'a', 'b', 'c')
    >>> ids["test"]
    array([[2, 1, 0]], dtype=int32)
  """
  if vocab_split not in splits:
    raise ValueError(f"encode_corpus: no split {vocab_split!r} to build the vocabulary on "
                     f"(splits: {sorted(splits)}).")
  _check_encode_args("encode_corpus", max_len, ngrams, num_buckets, minn, maxn)
  if workers < 1:
    raise ValueError(f"encode_corpus: workers = {workers} must be >= 1.")
  order = [vocab_split] + [name for name in splits if name != vocab_split]
  chars = sum(len(t) for texts in splits.values() for t in texts)
  if chars < _MIN_FORK_CHARS or not _fork.can_fork():
    workers = 1
  slices = [{name: splits[name][k * len(splits[name]) // workers:
                                (k + 1) * len(splits[name]) // workers] for name in order}
            for k in range(workers)]
  shards = _fork.fork_map(functools.partial(tokenize_parts, lowercase=lowercase, eos=eos),
                          slices, workers)
  layout = {name: [(k, name, None) for k in range(len(shards))] for name in splits}
  return encode_shards(shards, layout, vocab_split=vocab_split, min_freq=min_freq,
                       max_size=max_size, max_len=max_len, ngrams=ngrams,
                       num_buckets=num_buckets, threads=workers, minn=minn, maxn=maxn)


# Tokenized texts: (tokens, {part: (ids, lengths)}). ``tokens`` holds each distinct token once
# (its local id is its position); ``ids`` are the int32 local ids of every token of a part's
# texts, text after text, and ``lengths`` (int64) the tokens per text.
Shard = tuple[list[str], dict[str, tuple[np.ndarray, np.ndarray]]]


def tokenize_parts(parts: Mapping[str, Sequence[str]], lowercase: bool = True,
                   eos: bool = False) -> Shard:
  """Tokenizes some named lists of texts into local ids (a ``Shard``), for ``encode_shards``.

  Example:
    >>> tokens, parts = tokenize_parts({"a": ["x y x"], "b": ["z", "y"]})
    >>> tokens, parts["b"][0], parts["b"][1]
    (['x', 'y', 'z'], array([2, 1], dtype=int32), array([1, 1]))
  """
  index: dict[str, int] = {}
  positions = itertools.count()  # one per token: setdefault keeps a token's first position
  raw = {}
  with _gc_paused():
    for name, texts in parts.items():
      tokens = text.tokenize_many(texts, lowercase=lowercase, eos=eos)  # looked up per call
      lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
      raw[name] = (np.fromiter(map(index.setdefault, itertools.chain.from_iterable(tokens),
                                   positions), dtype=np.int64, count=int(lengths.sum())),
                   lengths)
  firsts = np.fromiter(index.values(), dtype=np.int64, count=len(index))
  local = np.zeros(next(positions), dtype=np.int32)
  local[firsts] = np.arange(len(firsts), dtype=np.int32)  # first position -> local id
  return list(index), {name: (local[ids], lengths) for name, (ids, lengths) in raw.items()}


@contextlib.contextmanager
def _gc_paused():
  """No cyclic garbage collection inside: the token lists hold only strings (no cycles), and
  with JAX imported each full collection walks a million objects (IMDB: 15% of tokenizing)."""
  enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    if enabled:
      gc.enable()


def encode_shards(shards: Sequence[Shard],
                  layout: Mapping[str, Sequence[tuple[int, str, np.ndarray | None]]], *,
                  max_len: int, vocab_split: str = "train", min_freq: int = 1, max_size: int = 0,
                  ngrams: int = 1, num_buckets: int = 0, threads: int = 1, minn: int = 0,
                  maxn: int = 0) -> tuple[Vocab, dict[str, np.ndarray]]:
  """Builds the vocabulary and the padded id matrices from tokenized shards.

  Args:
    shards: ``tokenize_parts`` results (from any processes).
    layout: split name -> its pieces in order, each ``(shard index, part name, rows)``: the
      texts ``rows`` (an int array; None = all) of that part of that shard.
    max_len, vocab_split, min_freq, max_size, ngrams, num_buckets, minn, maxn: as for
      ``encode_corpus``; the vocabulary counts the tokens of ``layout[vocab_split]``; the
      character n-grams of each shard's distinct tokens are hashed once.
    threads: n-gram hashing threads.

  Returns:
    ``(vocab, {name: int32 [N, max_len * ngrams]})``, as ``encode_corpus``.

  Example:
    >>> shard = tokenize_parts({"all": ["a b", "b c", "c"]})
    >>> vocab, ids = encode_shards([shard], {"train": [(0, "all", np.array([1, 0]))],
    ...                                      "test": [(0, "all", np.array([2]))]}, max_len=2)
    >>> vocab.tokens, ids["train"].tolist(), ids["test"].tolist()
    (('<pad>', '<unk>', 'b', 'a', 'c'), [[2, 4], [3, 2]], [[4, 0]])
  """
  if vocab_split not in layout:
    raise ValueError(f"encode_shards: no split {vocab_split!r} to build the vocabulary on "
                     f"(splits: {sorted(layout)}).")
  _check_encode_args("encode_shards", max_len, ngrams, num_buckets, minn, maxn)
  total: dict[str, int] = {}
  for k, part, rows in layout[vocab_split]:
    tokens, parts = shards[k]
    ids, lengths = parts[part]
    if rows is not None:  # the tokens of those texts, in any order: a mask, no gather
      chosen = np.zeros(len(lengths), bool)
      chosen[rows] = True
      ids = ids[np.repeat(chosen, lengths)]
    get = total.get
    for token, count in zip(tokens, np.bincount(ids, minlength=len(tokens)).tolist()):
      if count:
        total[token] = get(token, 0) + count
  vocab = text.vocab_from_counts(total, min_freq=min_freq, max_size=max_size)
  remaps: dict[int, np.ndarray] = {}
  table, bases = None, None
  if minn:  # one table over every shard's distinct tokens; shard k's token i is bases[k] + i
    indptrs, subwords, bases = [np.zeros(1, np.int64)], [np.zeros(0, np.int32)], [0]
    for tokens, _ in shards:
      indptr, ids = subword_table(tokens, minn, maxn, num_buckets, len(vocab))
      indptrs.append(indptr[1:] + sum(map(len, subwords)))
      subwords.append(ids)
      bases.append(bases[-1] + len(tokens))
    table = (np.concatenate(indptrs), np.concatenate(subwords))
  encoded = {}
  for name, pieces in layout.items():
    flats, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
    local_ids = [np.zeros(0, np.int64)]  # rows of the subword table
    for k, part, rows in pieces:
      tokens, parts = shards[k]
      if k not in remaps:
        remaps[k] = vocab.encode(tokens, count=len(tokens))
      ids, counts = _take_rows(*parts[part], rows, max_len)
      flats.append(remaps[k][ids])
      lengths.append(counts)
      if minn:
        local_ids.append(ids.astype(np.int64) + bases[k])
    encoded[name] = padded_ids(np.concatenate(flats), np.concatenate(lengths), max_len,
                               ngrams=ngrams, num_buckets=num_buckets, offset=len(vocab),
                               threads=threads)
    if minn:
      encoded[name] = subword_block(np.concatenate(local_ids), np.concatenate(lengths), table,
                                    lead=encoded[name])
  return vocab, encoded


def seen_buckets(ids: np.ndarray, *, max_len: int, vocab_size: int,
                 num_buckets: int) -> np.ndarray:
  """The n-gram ids (``vocab_size + bucket``) that occur in ``ids``' n-gram columns, sorted.

  With ``remap_buckets`` this prunes the hashed buckets a split never uses (``data.prune_buckets``,
  fit on train): fastText's 2M buckets hold SST-2's bigrams in 79k of them, and the other rows
  would only keep their initial values.

  Example:
    >>> ids = np.array([[2, 3, 0, 9, 0, 0], [3, 0, 0, 6, 0, 0]])  # max_len 3, vocab 4, 8 buckets
    >>> seen_buckets(ids, max_len=3, vocab_size=4, num_buckets=8)
    array([6, 9], dtype=int32)
  """
  grams = ids[:, max_len:]
  grams = grams[grams >= vocab_size]
  if grams.size and grams.max() >= vocab_size + num_buckets:
    raise ValueError(f"seen_buckets: n-gram id {int(grams.max())} is beyond the "
                     f"{vocab_size} + {num_buckets} ids of the vocabulary and its buckets.")
  seen = np.zeros(num_buckets, bool)
  seen[grams - vocab_size] = True
  return (np.flatnonzero(seen) + vocab_size).astype(np.int32)


def remap_buckets(ids: np.ndarray, kept: np.ndarray, *, max_len: int, vocab_size: int,
                  num_buckets: int) -> np.ndarray:
  """``ids`` for a table of ``vocab_size + len(kept) + 1`` rows: the n-gram id ``kept[i]`` becomes
  ``vocab_size + i`` and every other n-gram id the last row, ``vocab_size + len(kept)`` (still
  counted in a mean bag, as fastText counts a bucket it never trained); words and padding stay.

  Example:
    >>> ids = np.array([[2, 3, 0, 9, 6, 0], [3, 0, 0, 7, 0, 0]])
    >>> remap_buckets(ids, np.array([6, 9]), max_len=3, vocab_size=4, num_buckets=8)
    array([[2, 3, 0, 5, 4, 0],
           [3, 0, 0, 6, 0, 0]], dtype=int32)
  """
  kept = np.asarray(kept, dtype=np.int64)
  if kept.size and (kept.min() < vocab_size or kept.max() >= vocab_size + num_buckets
                    or np.any(np.diff(kept) <= 0)):
    raise ValueError(f"remap_buckets: kept must be increasing n-gram ids in {vocab_size}.."
                     f"{vocab_size + num_buckets - 1} (seen_buckets' result).")
  rows = np.full(vocab_size + num_buckets, vocab_size + kept.size, dtype=np.int32)
  rows[:vocab_size] = np.arange(vocab_size, dtype=np.int32)
  rows[kept] = vocab_size + np.arange(kept.size, dtype=np.int32)
  out = np.array(ids, dtype=np.int32)
  out[:, max_len:] = rows[out[:, max_len:]]
  return out


def _take_rows(ids: np.ndarray, lengths: np.ndarray, rows: np.ndarray | None,
               max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """The flat ids and lengths of texts ``rows`` (None: all), each cut to ``max_len`` tokens."""
  if rows is None and (not lengths.size or lengths.max() <= max_len):
    return ids, lengths
  starts = np.cumsum(lengths) - lengths
  if rows is not None:
    starts, lengths = starts[rows], lengths[rows]
  lengths = np.minimum(lengths, max_len)
  offsets = np.cumsum(lengths) - lengths
  return ids[np.arange(int(lengths.sum())) + np.repeat(starts - offsets, lengths)], lengths


def _check_encode_args(caller: str, max_len: int, ngrams: int, num_buckets: int, minn: int = 0,
                       maxn: int = 0) -> None:
  if (minn or maxn) and not 1 <= minn <= maxn:
    raise ValueError(f"{caller}: character n-grams need 1 <= minn <= maxn (or both 0: none), "
                     f"got minn={minn}, maxn={maxn}; fastText's are minn=3, maxn=6.")
  if minn and num_buckets <= 0:
    raise ValueError(f"{caller}: minn = {minn} needs num_buckets > 0 (character n-grams are "
                     "hashed into that many buckets), e.g. num_buckets=2000000.")
  if max_len <= 0:
    raise ValueError(f"{caller}: max_len = {max_len} must be positive.")
  if ngrams < 1:
    raise ValueError(f"{caller}: ngrams = {ngrams} must be >= 1.")
  if ngrams > 1 and num_buckets <= 0:
    raise ValueError(f"{caller}: ngrams = {ngrams} needs num_buckets > 0 (n-grams are hashed "
                     "into that many buckets), e.g. num_buckets=2000000.")


def padded_ids(flat: np.ndarray, lengths: np.ndarray, max_len: int, *, ngrams: int = 1,
               num_buckets: int = 0, offset: int = 0, threads: int = 1) -> np.ndarray:
  """``encode``'s int32 ``[N, max_len * ngrams]`` layout from word ids: row i holds the next
  ``lengths[i]`` ids of ``flat`` (``lengths[i] <= max_len``), then ``PAD_ID``, then with
  ``ngrams > 1`` its hashed n-grams (``ngram_ids_batch``, ``offset`` normally ``len(vocab)``).

  Example:
    >>> padded_ids(np.array([5, 6, 7]), np.array([2, 0, 1]), 3)
    array([[5, 6, 0],
           [0, 0, 0],
           [7, 0, 0]], dtype=int32)
  """
  out = np.zeros((len(lengths), max_len * ngrams), dtype=np.int32)
  words = out[:, :max_len]
  # Row-major boolean assignment fills each row's first lengths[i] slots, in order.
  words[np.arange(max_len)[None, :] < lengths[:, None]] = flat
  if ngrams > 1:
    ngram_ids_batch(words, ngrams, num_buckets, offset, threads=threads, out=out[:, max_len:])
  return out
