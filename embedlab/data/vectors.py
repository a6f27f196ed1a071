"""Pretrained word vectors in text form (word2vec, GloVe, fastText ``.vec``), aligned to a vocab.

One reader handles the three text formats: each line is a word, then its values, separated by
spaces. word2vec and fastText files start with a ``count dim`` header line; GloVe files have none.
The header is detected (a first line of exactly two integers), gzip is detected from the file's
magic bytes, and the trailing space fastText writes is ignored.

  >>> import os, tempfile
  >>> from embedlab.data.vectors import load_vectors
  >>> path = os.path.join(tempfile.mkdtemp(), "tiny.txt")
  >>> _ = open(path, "w").write("the 0.5 1.0\\ncat -1.0 2.0\\n")
  >>> params, found = load_vectors(path, ["<pad>", "<unk>", "the", "Cat"])
  >>> params["table"][2:]
  Array([[ 0.5,  1. ],
         [-1. ,  2. ]], dtype=float32)
  >>> found.tolist(), int(found.sum())
  ([False, False, True, True], 2)

Only the lines of words in the vocabulary are converted to numbers; the others are only counted
(and checked for the right number of values), so aligning the 100,000-word GloVe 6B 50d file to a
20,000-word vocabulary takes about a second.
"""

from __future__ import annotations

import gzip
import io
import math
import os
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from embedlab.core import ids as ids_lib
from embedlab.core import tables

Params = tables.Params

_GZIP_MAGIC = b"\x1f\x8b"
# Characters that would split a word in the text format (for us, gensim or the word2vec tool).
_UNWRITABLE = frozenset(" \t\n\r\v\f")
# How the std of a named initializer relates to its ``scale`` (for matching the found vectors).
_STD_PER_SCALE = {"normal": 1.0, "truncated_normal": 0.8796256610342398,  # N(0,1) cut at +-2
                  "uniform": 1.0 / math.sqrt(3.0)}


def _open_text(path: str | os.PathLike, encoding: str) -> io.TextIOBase:
  with open(path, "rb") as f:
    is_gzip = f.read(2) == _GZIP_MAGIC
  if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
    encoding = "utf-8-sig"  # tolerates a byte-order mark in front of the header
  if is_gzip:
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding)
  return open(path, "r", encoding=encoding)


def _is_header(parts: list[str]) -> bool:
  return len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts)


def _bad_line(path, lineno: int, word: str, got: int, dim: int, dim_source: str) -> ValueError:
  return ValueError(
      f"{os.fspath(path)}, line {lineno}: expected {dim} values after the word {word.strip()!r} "
      f"({dim_source}), found {got}. The file may be truncated or damaged, or a word may contain "
      f"a space; fix or delete that line (or re-download the file).")


def _scan(path, wanted: set[str] | None, limit: int | None, encoding: str):
  """Reads a vectors file; keeps (unparsed) the value tokens of the words in ``wanted``.

  Returns ``(dim, words, linenos, value_tokens)``. With ``wanted``, only the first line of each
  wanted word is kept; with ``wanted=None`` every line is kept.
  """
  if limit is not None and limit < 1:
    raise ValueError(f"read_vectors: limit must be a positive number of vectors, got {limit}.")
  dim = None
  dim_source = ""
  header_count = None
  spaces = None  # the number of " " in a well-formed line's values: a cheap check for each line
  num_vectors = 0
  words, linenos, value_tokens = [], [], []
  wanted = None if wanted is None else set(wanted)
  lineno = 0
  stopped_early = False
  with _open_text(path, encoding) as f:
    try:
      for lineno, line in enumerate(f, 1):
        if limit is not None and num_vectors >= limit:
          stopped_early = True
          break
        word, sep, rest = line.partition(" ")
        if not sep:
          if not line.strip():
            continue  # blank line
          if dim is None:
            raise ValueError(f"{os.fspath(path)}, line {lineno}: {line.strip()[:40]!r} is not "
                             f"'word v1 ... vD' nor a 'count dim' header. Is this a word vectors "
                             f"text file (word2vec, GloVe, fastText .vec)?")
          raise _bad_line(path, lineno, word, 0, dim, dim_source)
        if dim is None:
          parts = [word] + rest.split()  # not line.split(): a word may be e.g. "\xa0"
          if _is_header(parts):
            header_count, dim = int(parts[0]), int(parts[1])
            dim_source = f"the header on line {lineno} says {header_count} vectors of {dim}"
            if dim <= 0:
              raise ValueError(f"{os.fspath(path)}, line {lineno}: the header says dim {dim}; "
                               f"fix the header to 'count dim' with dim > 0.")
            continue
          dim = len(parts) - 1
          dim_source = f"the first vector, on line {lineno}, has {dim}"
          if dim <= 0:
            raise _bad_line(path, lineno, word, 0, 1, "at least 1")
        n = rest.count(" ")
        if n != spaces:  # differs from the usual layout: count the values exactly
          got = len(rest.split())
          if got != dim:
            raise _bad_line(path, lineno, word, got, dim, dim_source)
          if spaces is None:
            spaces = n
        num_vectors += 1
        if wanted is None:
          words.append(word)
          linenos.append(lineno)
          value_tokens.append(rest.split())
        elif word in wanted:
          wanted.discard(word)  # keep the first occurrence (files are ordered by frequency)
          words.append(word)
          linenos.append(lineno)
          value_tokens.append(rest.split())
    except UnicodeDecodeError as e:
      raise ValueError(
          f"{os.fspath(path)}, after line {lineno}: not valid {encoding} text ({e.reason}). If "
          f"this is a binary word2vec file (.bin), convert it to text first, e.g. with gensim: "
          f"KeyedVectors.load_word2vec_format(path, binary=True).save_word2vec_format(out); "
          f"otherwise pass the file's encoding=...") from None
  if dim is None or num_vectors == 0:
    what = "is empty" if dim is None else f"has a header ({header_count} {dim}) but no vectors"
    raise ValueError(f"{os.fspath(path)}: the file {what}. Check the path, or re-download / "
                     f"re-create the file (expected lines 'word v1 ... vD').")
  if header_count is not None and not stopped_early and num_vectors != header_count:
    raise ValueError(f"{os.fspath(path)}: the header says {header_count} vectors but the file "
                     f"holds {num_vectors}. The file may be truncated (re-download it), or fix "
                     f"the header's count to {num_vectors}.")
  return dim, words, linenos, value_tokens


def _parse(path, linenos: list[int], words: list[str], value_tokens: list[list[str]],
           dim: int, dtype: Any) -> np.ndarray:
  """The values as float64 ``[N, dim]``; each must be a finite number that fits ``dtype``."""
  if not value_tokens:
    return np.zeros((0, dim), np.float64)
  try:
    values = np.array(value_tokens, dtype=np.float64)
  except ValueError:
    for lineno, word, tokens in zip(linenos, words, value_tokens):
      try:
        np.array(tokens, dtype=np.float64)
      except ValueError as e:
        raise ValueError(f"{os.fspath(path)}, line {lineno}: the values of {word!r} are not all "
                         f"numbers ({e}). Fix or delete that line.") from None
    raise
  _check_finite(path, linenos, words, value_tokens, values, dtype)
  return values


def _check_finite(path, linenos, words, value_tokens, values: np.ndarray, dtype: Any) -> None:
  """Raises naming file, line, word and value for a nan / inf, or a value ``dtype`` overflows."""
  dtype = np.dtype(dtype)
  bad = ~np.isfinite(values)
  if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 8:  # bfloat16 too
    with np.errstate(over="ignore"):
      bad |= np.isinf(values.astype(dtype))
  if not bad.any():
    return
  row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
  token = value_tokens[row][col]
  if np.isfinite(values[row, col]):
    what = (f"overflows {dtype.name} (largest {float(np.finfo(dtype).max):.7g}); rescale the "
            f"vectors, or load them with dtype=float64")
  else:
    what = "is not a finite number (nan or inf would make every vector that uses it NaN)"
  raise ValueError(f"{os.fspath(path)}, line {linenos[row]}: value {col + 1} of {words[row]!r}, "
                   f"{token!r}, {what}. Fix or delete that line.")


def read_vectors(path: str | os.PathLike, limit: int | None = None, *, encoding: str = "utf-8",
                 dtype: Any = np.float32) -> tuple[list[str], np.ndarray]:
  """Reads every vector of a word2vec / GloVe / fastText text file (plain or gzip).

  Args:
    path: the file; a ``count dim`` header line is detected, gzip is detected from its content.
    limit: read at most this many vectors (the first ones: files are ordered by frequency).
    encoding: the text encoding.
    dtype: the numpy dtype of the returned vectors.

  Returns:
    ``(words, vectors)``: the words in file order (duplicates kept) and ``np.ndarray[N, dim]``.

  Raises:
    ValueError: as ``load_vectors`` (a malformed line, ``nan`` / ``inf``, a value ``dtype``
      cannot hold), naming the file, the line and the word.

  Example:
    >>> import os, tempfile
    >>> from embedlab.data.vectors import read_vectors
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.vec")
    >>> _ = open(path, "w").write("2 3\\nthe 1 2 3 \\nof 4 5 6 \\n")
    >>> words, vectors = read_vectors(path)
    >>> words, vectors.shape, vectors.dtype
    (['the', 'of'], (2, 3), dtype('float32'))
  """
  dim, words, linenos, tokens = _scan(path, None, limit, encoding)
  return words, _parse(path, linenos, words, tokens, dim, dtype).astype(dtype)


def _vocab_tokens(vocab: Any, where: str) -> list[str]:
  tokens = getattr(vocab, "tokens", vocab)
  if isinstance(tokens, str) or not isinstance(tokens, Iterable):
    raise TypeError(f"{where}: vocab must be a sequence of tokens (index = id) or an object with "
                    f"a .tokens attribute, got {type(vocab).__name__}.")
  tokens = list(tokens)
  for i, t in enumerate(tokens):
    if not isinstance(t, str):
      raise TypeError(f"{where}: vocab token {i} is {t!r} ({type(t).__name__}); tokens must be "
                      f"strings.")
  if not tokens:
    raise ValueError(f"{where}: the vocabulary is empty.")
  return tokens


def load_vectors(path: str | os.PathLike, vocab: Any, *, key: jax.Array | None = None,
                 init: Any = "normal", scale: float | None = None, padding_id: int | None = 0,
                 lowercase_fallback: bool = True, dtype: Any = jnp.float32,
                 encoding: str = "utf-8") -> tuple[Params, np.ndarray]:
  """Builds a table for ``vocab`` from a word2vec / GloVe / fastText text file (plain or gzip).

  Row ``i`` is the file's vector for ``vocab[i]`` (the first one, if the word repeats). Words
  missing from the file get rows from ``embedlab.core.tables.init_table``'s initializer; by default
  (``scale=None`` with ``init`` ``normal``, ``truncated_normal`` or ``uniform``) scaled so their
  std equals the std of the found vectors' values, so they don't stand out. The padding row is
  zero (and never counted as found).

  Args:
    path: the vectors file; a ``count dim`` header is detected (a first line of two integers).
    vocab: a sequence of tokens (index = id), or an object with a ``.tokens`` attribute
      (embedlab's ``Vocab``).
    key: ``jax.random`` key for the missing rows (default ``jax.random.key(0)``).
    init: initializer of the missing rows, as ``init_table``'s ``init``.
    scale: ``init_table``'s ``scale``; ``None`` matches the found vectors' std (see above).
    padding_id: the row that is zero, or ``None``.
    lowercase_fallback: a word missing from the file takes the vector of its lower-cased form
      (``"The"`` -> ``"the"``) when that is present.
    dtype: the table's dtype.
    encoding: the file's text encoding.

  Returns:
    ``(params, found)``: ``{"table": Array[len(vocab), dim]}`` and ``found``, a numpy bool
    array ``[len(vocab)]`` marking rows taken from the file (``found.sum()`` words were found).

  Raises:
    ValueError: for an empty file, a line with the wrong number of values, values that are not
      numbers, ``nan`` / ``inf`` or values too large for ``dtype`` (in the lines of the
      vocabulary's words), or a header that disagrees with the file; the message names the file
      and line.

  Example:
    >>> import os, tempfile, numpy as np
    >>> from embedlab.data.vectors import load_vectors
    >>> path = os.path.join(tempfile.mkdtemp(), "glove.txt")
    >>> _ = open(path, "w").write("the 0.25 -1.5\\nmovie 2.0 0.5\\n")
    >>> params, found = load_vectors(path, ["<pad>", "<unk>", "The", "movie", "zzz"])
    >>> params["table"][np.array([0, 2, 3])]
    Array([[ 0.  ,  0.  ],
           [ 0.25, -1.5 ],
           [ 2.  ,  0.5 ]], dtype=float32)
    >>> found.tolist()
    [False, False, True, True, False]
  """
  tokens = _vocab_tokens(vocab, "load_vectors")
  num_rows = len(tokens)
  if padding_id is not None:
    ids_lib.check_padding_id(padding_id, num_rows, "load_vectors")
  ids_by_word: dict[str, list[int]] = {}
  for i, token in enumerate(tokens):
    if i != padding_id:
      ids_by_word.setdefault(token, []).append(i)
  ids_by_lower: dict[str, list[int]] = {}
  if lowercase_fallback:
    for token, ids in ids_by_word.items():
      if token.lower() != token:
        ids_by_lower.setdefault(token.lower(), []).extend(ids)
  dim, words, linenos, value_tokens = _scan(path, set(ids_by_word) | set(ids_by_lower), None,
                                            encoding)
  vectors = _parse(path, linenos, words, value_tokens, dim, dtype)

  source = np.full(num_rows, -1, np.int64)  # row of `vectors` for each id, -1: missing
  for row, word in enumerate(words):
    source[ids_by_word.get(word, [])] = row
  for row, word in enumerate(words):
    ids = [i for i in ids_by_lower.get(word, []) if source[i] < 0]
    source[ids] = row
  found = source >= 0

  if scale is None and isinstance(init, str) and init in _STD_PER_SCALE and found.any():
    std = float(vectors[source[found]].std())
    scale = std / _STD_PER_SCALE[init] if std > 0 else None
  if key is None:
    key = jax.random.key(0)
  table = tables.init_table(key, num_rows, dim, init=init, scale=scale, dtype=dtype,
                            padding_id=padding_id)["table"]
  if not found.any():
    return {"table": table}, found
  table = np.array(table)  # a writable host copy: filling it in numpy needs no compilation
  rows = vectors[source[found]]
  table[found] = rows if table.dtype == np.float64 else rows.astype(np.float32)
  return {"table": jnp.asarray(table)}, found


def _special_tokens(tokens: Sequence[str], skip_special: Any) -> set[str]:
  if skip_special is False or skip_special is None:
    return set()
  if skip_special is True:
    return {t for t in tokens if len(t) > 2 and t[0] == "<" and t[-1] == ">"}
  if isinstance(skip_special, str):
    return {skip_special}
  return set(skip_special)


def save_vectors(path: str | os.PathLike, params: Params, vocab: Any, *, header: bool = True,
                 skip_special: Any = False) -> int:
  """Writes a table as a word2vec text file (gzip when ``path`` ends in ``.gz``).

  The format is ``count dim`` then one ``word v1 ... vD`` line per row, which gensim's
  ``KeyedVectors.load_word2vec_format(path)`` and ``load_vectors`` read back. Values are written
  with 9 significant digits (17 for a float64 table), so float32 tables round-trip exactly.
  Gzip output is deterministic (no timestamp).

  Args:
    path: the output file.
    params: ``{"table": Array[V, D]}``.
    vocab: ``V`` tokens (index = id), or an object with a ``.tokens`` attribute.
    header: write the ``count dim`` line (word2vec / fastText); ``False`` gives GloVe's layout.
    skip_special: ``True`` leaves out tokens of the form ``<...>`` (``<pad>``, ``<unk>``, ``<s>``);
      a collection of tokens leaves out those.

  Returns:
    The number of vectors written.

  Raises:
    ValueError: a token is empty or contains whitespace (the format cannot represent it: rename
      it, e.g. ``token.replace(" ", "_")``), ``vocab`` and the table differ in length, or a
      vector to write holds NaN or infinite values (nothing is written then).

  Example:
    >>> import os, tempfile, jax.numpy as jnp
    >>> from embedlab.data.vectors import save_vectors
    >>> path = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> save_vectors(path, {"table": jnp.array([[0.0, 0], [0.1, -2]])}, ["<pad>", "hi"],
    ...              skip_special=True)
    1
    >>> print(open(path).read(), end="")
    1 2
    hi 0.100000001 -2
  """
  table = np.asarray(tables.table_of(params, "save_vectors"))
  tokens = _vocab_tokens(vocab, "save_vectors")
  if len(tokens) != table.shape[0]:
    raise ValueError(f"save_vectors: the vocabulary has {len(tokens)} tokens but the table has "
                     f"{table.shape[0]} rows; pass the vocabulary the table was built for.")
  skip = _special_tokens(tokens, skip_special)
  keep = [i for i, t in enumerate(tokens) if t not in skip]
  for i in keep:
    token = tokens[i]
    if not token or not _UNWRITABLE.isdisjoint(token):
      raise ValueError(f"save_vectors: token {i} {token!r} is empty or contains whitespace, which "
                       f"the text format cannot represent (it separates words from values). "
                       f"Rename it, e.g. token.replace(' ', '_'), or leave it out with "
                       f"skip_special=[{token!r}].")
  finite = np.isfinite(table[keep]).all(axis=1) if keep else np.ones(0, bool)
  if not finite.all():
    first = keep[int(np.argmin(finite))]
    raise ValueError(f"save_vectors: {int((~finite).sum()):,} vectors hold NaN or infinite values "
                     f"(first: row {first}, {tokens[first]!r}); load_vectors and other readers "
                     "refuse such a file. Fix or leave out those rows (skip_special=[...]).")
  if table.dtype == np.float64:
    values, number = table, "%.17g"
  else:
    values, number = table.astype(np.float32), "%.9g"
  line_format = "%s " + " ".join([number] * table.shape[1]) + "\n"
  with open(path, "wb") as raw:
    # No file name and no time stamp in the gzip header: the bytes depend on the content only.
    gz = os.fspath(path).endswith(".gz")
    stream = gzip.GzipFile("", "wb", fileobj=raw, mtime=0) if gz else raw
    with io.TextIOWrapper(stream, encoding="utf-8", newline="\n") as f:
      if header:
        f.write(f"{len(keep)} {table.shape[1]}\n")
      for i, row in zip(keep, values[keep].tolist()):
        f.write(line_format % (tokens[i], *row))
  return len(keep)
