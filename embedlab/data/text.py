"""Text to ids: tokenizing, the vocabulary, fastText-style hashed n-grams, padded id matrices.

Everything here is numpy and the standard library, so it runs before (and without) JAX.

The id layout of an encoded row (see ``encode``)::

  [ w_0 .. w_{L-1} | 2-grams (L slots) | 3-grams (L slots) | ... | subwords (S slots) ]

``L = max_len``. Word ids index the vocabulary (``PAD_ID = 0``, ``UNK_ID = 1``); n-gram ids are
``len(vocab) + bucket``, so one embedding table of ``len(vocab) + num_buckets`` rows holds both.
With character n-grams (``minn``, ``maxn`` > 0, fastText's ``-minn -maxn``) the last block
holds the subword ids (``subword_ids``) of the row's words, word after word, then ``PAD_ID``;
they share the ``num_buckets`` buckets with the word n-grams, as in fastText. ``S`` is the most
subword ids any row of the encoded batch has (a split's rows share one width, another split or
batch of texts may have another): a bag model pools the whole row, so each word contributes
its own id plus its n-grams, fastText's input. Words outside the vocabulary keep ``UNK_ID`` in
their word slot and still get their n-grams (fastText gives them n-grams only); ``</s>`` gets
none. The subword ids of each distinct token are hashed once (``subword_table``, vectorized)
and gathered per occurrence.

Hand-written rather than a library's: fastText's hashes (word n-grams over word ids, FNV-1a over
the character n-grams' bytes) must be reproduced bit for bit, over whole corpora in numpy.

Example:
  >>> from embedlab.data import text
  >>> docs = [text.tokenize("A fine, fine film."), text.tokenize("A dull film.")]
  >>> vocab = text.build_vocab(docs)
  >>> vocab.tokens
  ('<pad>', '<unk>', '.', 'a', 'film', 'fine', ',', 'dull')
  >>> text.encode(docs, vocab, max_len=6)
  array([[3, 5, 6, 5, 4, 2],
         [3, 7, 4, 2, 0, 0]], dtype=int32)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import itertools
import operator
import os
import re
from concurrent import futures
from typing import Iterable, Mapping, Sequence

import numpy as np

from embedlab.data import workers as _fork

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
EOS_TOKEN = "</s>"  # fastText's end of line: a word of every text, and its last bigram

# Words (with inner apostrophes: "don't", "o'clock"), English clitics split off by PTB-style
# tokenizers ("'s", "'re", "n't" is a word), and any other single non-space character.
# A quote mark that opens a quotation ("'star wars'") stays a separate token, so it does not
# glue itself onto the word and create a second spelling of it.
_TOKEN_RE = re.compile(r"\w+(?:'\w+)*|'(?i:s|re|ve|ll|d|m|t)\b|[^\w\s]")
_BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)

# fastText's n-gram hash multiplier (Dictionary::addWordNgrams).
_HASH_MULTIPLIER = 116049371
_UINT64_MASK = (1 << 64) - 1


def tokenize(text: str, lowercase: bool = True) -> list[str]:
  """Splits one text into words and single punctuation marks.

  HTML line breaks (``<br />``, as in IMDB) count as whitespace.

  Args:
    text: the text.
    lowercase: lower-case before splitting.

  Returns:
    The tokens, a list of str.

  Example:
    >>> tokenize("It's <br /><br />NOT bad, isn't it?")
    ["it's", 'not', 'bad', ',', "isn't", 'it', '?']
    >>> tokenize("he 's fine")
    ['he', "'s", 'fine']
  """
  if "<" in text:
    text = _BR_RE.sub(" ", text)
  if lowercase:
    text = text.lower()
  return _TOKEN_RE.findall(text)


def tokenize_many(texts: Iterable[str], lowercase: bool = True,
                  eos: bool = False) -> list[list[str]]:
  """``tokenize`` for a whole corpus (IMDB train, 25k reviews: about 1.5 s on one core).

  Args:
    texts: the texts.
    lowercase: lower-case before splitting.
    eos: end every token list with ``EOS_TOKEN``, as fastText reads a line.

  Returns:
    One token list per text.

  Example:
    >>> tokenize_many(["Good.", "", "Bad<br/>movie"])
    [['good', '.'], [], ['bad', 'movie']]
  """
  findall = _TOKEN_RE.findall
  sub = _BR_RE.sub
  out = []
  for t in texts:
    if "<" in t:
      t = sub(" ", t)
    if lowercase:
      t = t.lower()
    # No token spans whitespace, and a whitespace-separated piece of word characters only is
    # one token: str.split / str.isalnum use the same Unicode classes as the regex's \s / \w
    # (less "_"), so this gives findall(t) exactly, 20% faster (most pieces are plain words).
    tokens = []
    append, extend = tokens.append, tokens.extend
    for piece in t.split():
      if piece.isalnum():
        append(piece)
      else:
        extend(findall(piece))
    if eos:
      append(EOS_TOKEN)
    out.append(tokens)
  return out


@dataclasses.dataclass(frozen=True)
class Vocab:
  """A vocabulary: ``tokens[i]`` is the token of id ``i``; ids 0 and 1 are ``<pad>``, ``<unk>``.

  Attributes:
    tokens: all tokens, index = id.

  Example:
    >>> v = Vocab(("<pad>", "<unk>", "the", "film"))
    >>> len(v), v.id_of("film"), v.id_of("zebra")
    (4, 3, 1)
    >>> v.encode(["the", "zebra", "film"])
    array([2, 1, 3], dtype=int32)
  """

  tokens: tuple[str, ...]
  _index: dict = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    tokens = tuple(self.tokens)
    if len(tokens) < 2 or tokens[PAD_ID] != PAD_TOKEN or tokens[UNK_ID] != UNK_TOKEN:
      raise ValueError(f"Vocab: the first two tokens must be {PAD_TOKEN!r}, {UNK_TOKEN!r} "
                       f"(ids {PAD_ID}, {UNK_ID}), got {tokens[:2]}; build vocabularies with "
                       "build_vocab or Vocab.from_words.")
    index = {t: i for i, t in enumerate(tokens)}
    if len(index) != len(tokens):
      dupes = [t for t, c in collections.Counter(tokens).items() if c > 1][:5]
      raise ValueError(f"Vocab: duplicate tokens {dupes}; every token must occur once.")
    object.__setattr__(self, "tokens", tokens)
    object.__setattr__(self, "_index", index)

  @classmethod
  def from_words(cls, words: Iterable[str]) -> "Vocab":
    """A vocabulary of ``<pad>``, ``<unk>`` then ``words`` in order (specials skipped).

    Example:
      >>> Vocab.from_words(["b", "a"]).tokens
      ('<pad>', '<unk>', 'b', 'a')
    """
    return cls((PAD_TOKEN, UNK_TOKEN) + tuple(w for w in words if w not in (PAD_TOKEN, UNK_TOKEN)))

  def __len__(self) -> int:
    return len(self.tokens)

  def id_of(self, token: str) -> int:
    """The id of ``token``, or ``UNK_ID`` if it is not in the vocabulary."""
    return self._index.get(token, UNK_ID)

  def encode(self, tokens: Iterable[str]) -> np.ndarray:
    """int32 ids of ``tokens`` (unknown tokens -> ``UNK_ID``), shape ``[len(tokens)]``."""
    get = self._index.get
    return np.fromiter((get(t, UNK_ID) for t in tokens), dtype=np.int32)

  def save(self, path: str | os.PathLike) -> None:
    """Writes one token per line (utf-8, ``\\n`` line ends), id order.

    Example:
      >>> import tempfile, pathlib
      >>> p = pathlib.Path(tempfile.mkdtemp()) / "vocab.txt"
      >>> Vocab.from_words(["a", "b"]).save(p); Vocab.load(p).tokens
      ('<pad>', '<unk>', 'a', 'b')
    """
    bad = [t for t in self.tokens if "\n" in t or "\r" in t]
    if bad:
      raise ValueError(f"Vocab.save: tokens {bad[:3]} contain a line break and cannot be "
                       "written one per line; tokenize so tokens hold no whitespace.")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
      f.write("".join(t + "\n" for t in self.tokens))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Vocab":
    """Reads a file written by ``save``."""
    with open(path, "rb") as f:
      content = f.read().decode("utf-8")
    if not content.endswith("\n"):
      raise ValueError(f"Vocab.load: {path} does not end with a newline; it is truncated or "
                       "was not written by Vocab.save.")
    # split("\n"), not splitlines(): the latter also splits on \x1c, \x85, \u2028, ...
    return cls(tuple(content[:-1].split("\n")))


def build_vocab(token_lists: Iterable[Sequence[str]], *, min_freq: int = 1,
                max_size: int = 0) -> Vocab:
  """Builds a vocabulary from (training) token lists.

  Tokens are ordered by frequency, most frequent first, ties broken by the token itself, so
  the result does not depend on document order.

  Args:
    token_lists: one token list per document (the training split only).
    min_freq: keep tokens occurring at least this many times.
    max_size: at most this many entries, the two specials included; 0 = unlimited.

  Returns:
    A ``Vocab``.

  Example:
    >>> build_vocab([["b", "a", "b"], ["c", "a", "b"]], min_freq=2).tokens
    ('<pad>', '<unk>', 'b', 'a')
  """
  if max_size and max_size < 2:
    raise ValueError(f"build_vocab: max_size = {max_size} leaves no room for the two special "
                     "tokens; use 0 (unlimited) or a value >= 2.")
  counts = collections.Counter(itertools.chain.from_iterable(token_lists))
  return _vocab_from_counts(counts, min_freq, max_size)


def _vocab_from_counts(counts: dict, min_freq: int, max_size: int) -> Vocab:
  counts.pop(PAD_TOKEN, None)
  counts.pop(UNK_TOKEN, None)
  items = sorted(counts.items()) if min_freq <= 1 else sorted(
      (t, c) for t, c in counts.items() if c >= min_freq)
  items.sort(key=operator.itemgetter(1), reverse=True)  # stable: ties stay in token order
  if max_size:
    items = items[:max_size - 2]
  return Vocab((PAD_TOKEN, UNK_TOKEN) + tuple(t for t, _ in items))


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
  """The subword block of ``encode``'s layout: row i holds the ``table`` ids of its tokens,
  token after token, then ``PAD_ID``; ``lead`` (the word and n-gram columns) goes before it.

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


def encode(token_lists: Sequence[Sequence[str]], vocab: Vocab, *, max_len: int,
           ngrams: int = 1, num_buckets: int = 0, minn: int = 0, maxn: int = 0) -> np.ndarray:
  """Encodes token lists as a right-padded int32 id matrix, with optional hashed n-grams.

  Word ids are truncated to ``max_len``. With ``ngrams > 1`` the hashed 2..n-grams of those
  (truncated) words follow, one block of ``max_len`` columns per order (see ``ngram_ids_batch``),
  so the width is ``max_len * ngrams``; with ``minn, maxn > 0`` the character n-grams of those
  words follow (``subword_ids``, the module's layout). Models that use word order should read the
  first ``max_len`` columns only; bag models can pool the whole row (0 = padding everywhere).

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
  get = vocab._index.get  # pylint: disable=protected-access
  # map() with a repeated default calls dict.get in C: ~30% faster than a generator expression
  tokens = itertools.chain.from_iterable(toks[:max_len] for toks in token_lists)
  flat = np.fromiter(map(get, tokens, itertools.repeat(UNK_ID)), dtype=np.int32,
                     count=int(lengths.sum()))
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

  The result is exactly that of ``tokenize_many``, ``build_vocab`` (on ``splits[vocab_split]``)
  and ``encode`` per split; only the work is shared. With ``workers > 1`` each of that many
  forked processes tokenizes one slice of every split into ids of its own small vocabulary
  (``tokenize_parts``); this process counts, builds the vocabulary, maps the slices' ids onto
  it with numpy and hashes n-grams on ``workers`` threads (``encode_shards``). Processes are
  forked only where that is safe and worth it: Linux, at least 1 MB of text, and JAX's backends
  and distributed client not started yet (forking a process whose XLA threads run can deadlock
  it; ``embedlab train`` encodes before it starts them). Otherwise all runs in this process.

  Args:
    splits: name -> texts; must hold ``vocab_split``.
    max_len, ngrams, num_buckets, minn, maxn: as for ``encode``.
    vocab_split: the split the vocabulary is built on (normally train).
    lowercase: as for ``tokenize_many``.
    eos: end every text with ``EOS_TOKEN`` (fastText's features), before ``max_len`` cuts it.
    min_freq, max_size: as for ``build_vocab``.
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
      tokens = tokenize_many(texts, lowercase=lowercase, eos=eos)
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
  vocab = _vocab_from_counts(total, min_freq, max_size)
  lookup = vocab._index.get  # pylint: disable=protected-access
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
        remaps[k] = np.fromiter(map(lookup, tokens, itertools.repeat(UNK_ID)), dtype=np.int32,
                                count=len(tokens))
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


# Below this much text, forking costs more than it saves (SST-2's train split is 3.4 MB).
_MIN_FORK_CHARS = 1_000_000


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
