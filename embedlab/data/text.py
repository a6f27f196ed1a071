"""Text to tokens to word ids: the tokenizer, the vocabulary (``Vocab``, ``build_vocab``).

Everything here is numpy and the standard library, so it runs before (and without) JAX. The
hashed word and character n-grams are in ``embedlab.data.ngrams``; the padded id matrices a
model reads (``encode``, ``encode_corpus``) in ``embedlab.data.encoding``.

Word ids index the vocabulary: ``PAD_ID = 0`` (padding), ``UNK_ID = 1`` (any word outside it),
then the kept words, most frequent first.

Hand-written rather than a library's: a regular expression and a dict are all it takes, and the
corpus-wide tokenizer (``tokenize_many``) is tuned to give exactly ``tokenize``'s tokens faster.

Example:
  >>> from embedlab.data import text
  >>> docs = [text.tokenize("A fine, fine film."), text.tokenize("A dull film.")]
  >>> vocab = text.build_vocab(docs)
  >>> vocab.tokens
  ('<pad>', '<unk>', '.', 'a', 'film', 'fine', ',', 'dull')
  >>> vocab.encode(docs[1])
  array([3, 7, 4, 2], dtype=int32)
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import operator
import os
import re
from typing import Iterable, Sequence

import numpy as np

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

  def encode(self, tokens: Iterable[str], count: int = -1) -> np.ndarray:
    """int32 ids of ``tokens`` (unknown tokens -> ``UNK_ID``), shape ``[len(tokens)]``.

    ``count``: how many tokens ``tokens`` yields, if known (-1: unknown); it saves regrowing
    the array when ``tokens`` is an iterator over a whole corpus.
    """
    # map() with a repeated default calls dict.get in C: ~30% faster than a generator expression
    return np.fromiter(map(self._index.get, tokens, itertools.repeat(UNK_ID)), dtype=np.int32,
                       count=count)

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
  return vocab_from_counts(counts, min_freq=min_freq, max_size=max_size)


def vocab_from_counts(counts: dict[str, int], *, min_freq: int = 1, max_size: int = 0) -> Vocab:
  """``build_vocab`` from token counts already made (it removes the specials from ``counts``).

  Args:
    counts: token -> occurrences; ``<pad>`` and ``<unk>`` are popped from it.
    min_freq, max_size: as for ``build_vocab``.

  Returns:
    A ``Vocab``.

  Example:
    >>> vocab_from_counts({"a": 2, "c": 1, "b": 2, "<unk>": 9}).tokens
    ('<pad>', '<unk>', 'a', 'b', 'c')
  """
  counts.pop(PAD_TOKEN, None)
  counts.pop(UNK_TOKEN, None)
  items = sorted(counts.items()) if min_freq <= 1 else sorted(
      (t, c) for t, c in counts.items() if c >= min_freq)
  items.sort(key=operator.itemgetter(1), reverse=True)  # stable: ties stay in token order
  if max_size:
    items = items[:max_size - 2]
  return Vocab((PAD_TOKEN, UNK_TOKEN) + tuple(t for t, _ in items))
