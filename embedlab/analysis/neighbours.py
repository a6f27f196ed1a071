"""Nearest neighbours and analogies over an embedding table (numpy): cosine similarity in blocks,
queries by word, rows never returned as neighbours (padding, unknown word).

Example:
  >>> import numpy as np
  >>> from embedlab.analysis.neighbours import neighbours
  >>> table = np.array([[0.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
  >>> neighbours(table, ["<pad>", "a", "b", "c"], ["a"], k=1)
  [[('b', 0.9939)]]"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import numpy as np

SKIP_TOKENS = ("<pad>", "<unk>")  # rows that are never a neighbour: padding, unknown word


_SCORES_PER_BLOCK = 1 << 24  # queries x rows scored at once (64 MiB of float32)


class UnknownWordError(KeyError):
  """A query word is not in the table's tokens."""

  def __str__(self) -> str:  # KeyError's own str() would quote the message
    return str(self.args[0]) if self.args else ""


def unit_rows(table: Any) -> np.ndarray:
  """Rows scaled to unit L2 norm, ``float32[V, D]``; all-zero rows stay zero (cosine 0).

  Example:
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]], dtype=float32)
  """
  array = np.asarray(table, np.float32)
  norms = np.linalg.norm(array, axis=-1, keepdims=True)
  return array / np.where(norms > 0, norms, 1).astype(np.float32)


def nearest_neighbours(table: Any, queries: Any, *, k: int = 10, skip: Any = None,
                       exclude_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """The ``k`` rows most cosine-similar to each query vector, best first.

  One matrix product per block of queries (blocks keep queries x rows under 16M scores),
  divided by the row norms, then ``argpartition`` for the top ``k``; ties go to the lower id.

  Args:
    table: ``[V, D]`` rows to search.
    queries: ``[Q, D]`` (or ``[D]``) query vectors.
    k: neighbours per query (at most the number of rows that may be returned).
    skip: ``bool[V]``: rows never returned (padding, unknown word, ...).
    exclude_ids: ``int[Q, m]``: rows not returned for that query (the query word itself);
      ``-1`` entries are ignored.

  Returns:
    ``(ids int64[Q, k], scores float32[Q, k])``, scores in ``[-1, 1]``; all-zero rows score 0.

  Example:
    >>> t = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    >>> ids, scores = nearest_neighbours(t, t[:1], k=2, exclude_ids=[[0]])
    >>> ids.tolist(), scores.round(2)
    ([[1, 2]], array([[0.8, 0. ]], dtype=float32))
  """
  array = np.asarray(table, np.float32)
  if array.ndim != 2:
    raise ValueError(f"nearest_neighbours: table must be [rows, features], got {array.shape}.")
  q = unit_rows(np.atleast_2d(queries))
  if q.ndim != 2 or q.shape[1] != array.shape[1]:
    raise ValueError(f"nearest_neighbours: queries have shape {np.shape(queries)} but the table "
                     f"has {array.shape[1]} features; pass [Q, {array.shape[1]}] vectors.")
  rows = array.shape[0]
  # dividing the [Q, V] scores by the norms is cheaper than normalizing the [V, D] table
  norms = np.sqrt(np.einsum("vd,vd->v", array, array))
  inverse = np.divide(1, norms, out=np.zeros_like(norms), where=norms > 0)
  skipped = np.zeros(0, np.int64)
  if skip is not None:
    skip = np.asarray(skip, bool)
    if skip.shape != (rows,):
      raise ValueError(f"nearest_neighbours: skip has shape {skip.shape}, expected ({rows},).")
    skipped = np.nonzero(skip)[0]
  excluded = (np.full((len(q), 0), -1, np.int64) if exclude_ids is None
              else np.asarray(exclude_ids, np.int64).reshape(len(q), -1))
  if excluded.size and (excluded.min() < -1 or excluded.max() >= rows):
    bad = excluded[(excluded < -1) | (excluded >= rows)][0]
    raise ValueError(f"nearest_neighbours: exclude_ids holds {int(bad)}, not a row of the "
                     f"{rows}-row table (or -1 for none).")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"nearest_neighbours: k must be a positive integer, got {k!r}.")
  k = min(int(k), rows - len(skipped) - excluded.shape[1])
  if k < 1:
    raise ValueError("nearest_neighbours: no rows are left to return; skip fewer rows or ask "
                     "for k >= 1.")
  block = max(1, _SCORES_PER_BLOCK // max(rows, 1))
  out_ids = np.empty((len(q), k), np.int64)
  out_scores = np.empty((len(q), k), np.float32)
  for start in range(0, len(q), block):
    scores = q[start:start + block] @ array.T
    scores *= inverse
    scores[:, skipped] = -np.inf
    ex = excluded[start:start + block]
    r, c = np.nonzero(ex >= 0)
    scores[r, ex[r, c]] = -np.inf
    top = np.argpartition(scores, rows - k, axis=1)[:, rows - k:]
    top_scores = np.take_along_axis(scores, top, 1)
    kth = top_scores.min(1, keepdims=True)
    tied = (scores == kth).sum(1) > (top_scores == kth).sum(1)
    for r in np.nonzero(tied)[0]:  # rows tied at the k-th score: argpartition picks any of them
      candidates = np.nonzero(scores[r] >= kth[r])[0]
      top[r] = candidates[np.lexsort((candidates, -scores[r, candidates]))[:k]]
      top_scores[r] = scores[r, top[r]]
    order = np.lexsort((top, -top_scores), axis=1)
    out_ids[start:start + block] = np.take_along_axis(top, order, 1)
    out_scores[start:start + block] = np.take_along_axis(top_scores, order, 1)
  return out_ids, out_scores


def token_positions(tokens: Sequence[str], token: str) -> list[int]:
  """Every row of ``token`` (``list.index`` scans in C: fast on 100k+ tokens)."""
  found, i = [], -1
  while True:
    try:
      i = tokens.index(token, i + 1)
    except ValueError:
      return found
    found.append(i)


def word_list(words: Sequence[str], where: str, what: str = "words") -> list[str]:
  """``words`` as a list; a single string is an error (iterating it would query its letters).

  Example:
    >>> word_list("king", "neighbours")
    Traceback (most recent call last):
    ...
    TypeError: neighbours: words must be a list of words, got the string 'king'; pass ['king'].
  """
  if isinstance(words, (str, bytes)):
    raise TypeError(f"{where}: {what} must be a list of words, got the string {words!r}; pass "
                    f"[{words!r}].")
  return list(words)


def token_list(skip: Sequence[str] | str) -> list[str]:
  """Tokens to leave out: a single string is one token (as ``save_vectors``' ``skip_special``).

  Example:
    >>> token_list("<pad>"), token_list(("<pad>", "<unk>"))
    (['<pad>'], ['<pad>', '<unk>'])
  """
  return [skip] if isinstance(skip, str) else list(skip)


def ids_of(tokens: Sequence[str], words: Sequence[str], where: str) -> np.ndarray:
  tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
  if len(words) > 32:
    index: dict[str, int] = {}
    for i, t in enumerate(tokens):
      index.setdefault(t, i)
    ids = [index.get(w, -1) for w in words]
  else:
    ids = [tokens.index(w) if w in tokens else -1 for w in words]
  if -1 in ids:
    word = words[ids.index(-1)]
    close = difflib.get_close_matches(word, tokens[:200_000], n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
        " (the vocabulary is built on the training split, lower-cased when data.lowercase)."
    raise UnknownWordError(f"{where}: {word!r} is not in the vocabulary of {len(tokens):,} "
                           f"tokens{hint}")
  return np.array(ids, np.int64)


def skip_mask(tokens: Sequence[str], skip: Sequence[str]) -> np.ndarray:
  tokens = tokens if isinstance(tokens, (list, tuple)) else list(tokens)
  mask = np.zeros(len(tokens), bool)
  for token in set(skip):
    mask[token_positions(tokens, token)] = True
  return mask


def neighbours(table: Any, tokens: Sequence[str], words: Sequence[str], *, k: int = 10,
               skip: Sequence[str] = SKIP_TOKENS) -> list[list[tuple[str, float]]]:
  """The ``k`` nearest words by cosine similarity of each of ``words`` (itself left out).

  Args:
    table: ``[V, D]``.
    tokens: ``V`` tokens, index = row.
    words: the query words.
    k: neighbours per word.
    skip: tokens never returned.

  Returns:
    One list per query word of ``(word, cosine)`` pairs, best first, cosine rounded to 4 places.

  Raises:
    UnknownWordError: (a ``KeyError``) a word is not in ``tokens``; the message suggests close
      ones.

  Example:
    >>> t = np.array([[0, 0], [1, 0], [1, 0.2], [0, 1]], np.float32)
    >>> neighbours(t, ["<pad>", "cat", "dog", "car"], ["cat", "car"], k=1)
    [[('dog', 0.9806)], [('dog', 0.1961)]]
  """
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"neighbours: {len(tokens)} tokens for a table of {np.shape(table)[0]} "
                     f"rows; pass one token per row.")
  ids = ids_of(tokens, word_list(words, "neighbours"), "neighbours")
  skipped = skip_mask(tokens, token_list(skip))
  found, scores = nearest_neighbours(table, np.asarray(table)[ids], k=k, skip=skipped,
                                     exclude_ids=ids[:, None])
  return [[(tokens[j], round(float(s), 4)) for j, s in zip(row_ids, row_scores)]
          for row_ids, row_scores in zip(found, scores)]


def analogy(table: Any, tokens: Sequence[str], a: str, b: str, c: str, *, k: int = 10,
            skip: Sequence[str] = SKIP_TOKENS) -> list[tuple[str, float]]:
  """Words nearest to ``a - b + c`` ("king - man + woman"), the three inputs left out.

  The vectors are unit-normalized first (3CosAdd, as word2vec's ``compute-accuracy`` and
  gensim's ``most_similar(positive=[a, c], negative=[b])``).

  Args:
    table: ``[V, D]``.
    tokens: ``V`` tokens, index = row.
    a, b, c: the words of ``a - b + c``.
    k: how many answers.
    skip: tokens never returned.

  Returns:
    ``(word, cosine)`` pairs, best first.

  Example:
    >>> t = np.array([[0, 0], [1, 1], [1, 0], [0, 1], [-1, 1], [0.1, 1]], np.float32)
    >>> analogy(t, ["<pad>", "king", "man", "woman", "x", "queen"], "king", "man", "woman", k=1)
    [('queen', 0.9639)]
  """
  if len(tokens) != np.shape(table)[0]:
    raise ValueError(f"analogy: {len(tokens)} tokens for a table of {np.shape(table)[0]} rows; "
                     f"pass one token per row.")
  ids = ids_of(tokens, [a, b, c], "analogy")
  unit = unit_rows(np.asarray(table)[ids])
  query = unit[0] - unit[1] + unit[2]
  skipped = skip_mask(tokens, token_list(skip))
  found, scores = nearest_neighbours(table, query[None], k=k, skip=skipped, exclude_ids=ids[None])
  return [(tokens[j], round(float(s), 4)) for j, s in zip(found[0], scores[0])]
