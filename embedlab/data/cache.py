"""Encoding every split to padded id matrices, cached on disk (``EncodedData``, ``encode_splits``).

``encode_splits`` reads the splits (``splits.load_splits``), tokenizes them, builds the
vocabulary on train only and encodes every split to a padded int32 id matrix, caching the
result keyed by the config, the seed and the input files (``cache_key``). The cache carries a
checksum of its arrays, its record and its vocabulary; a cache that does not match it (a
corrupted file) is encoded again, with a one-line warning.

Example:
  >>> from embedlab.data.options import DataConfig
  >>> cfg = DataConfig(source="synthetic", synthetic_train_size=64, synthetic_eval_size=16)
  >>> d = encode_splits(cfg, seed=0, cache=False)
  >>> d.train_ids.shape, d.label_names, d.num_embeddings == len(d.vocab)
  ((64, 64), ('0', '1', '2', '3'), True)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
from typing import Sequence

import numpy as np

from embedlab.data import atomic
from embedlab.data import encoding as encoding_lib
from embedlab.data import files
from embedlab.data import ngrams as ngram_lib
from embedlab.data import paths
from embedlab.data import splits as splits_lib
from embedlab.data import text as text_lib
from embedlab.data import workers as fork_lib
from embedlab.data.options import DataConfig
from embedlab.data.rows import RawSplit

# Bump when tokenizing, vocabulary building or encoding changes, so stale caches are not used.
CODE_VERSION = "embedlab-data-4"

log = logging.getLogger("embedlab")


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedData:
  """Every split as padded int32 ids (see ``embedlab.data.encoding.encode`` for the row layout).

  Attributes:
    train_ids, dev_ids, test_ids: int32 ``[N, max_len * ngrams + S]`` (``S``: the split's
      character n-gram slots, 0 without them); ``dev_ids`` is None only for
      data with neither dev nor test, ``test_ids`` when there is no test split.
    train_labels, dev_labels, test_labels: int32 ``[N]``, or with ``data.multilabel`` multi-hot
      float32 ``[N, num_classes]`` (None with the ids).
    vocab: the vocabulary, built on train.
    label_names: class names; label id i is ``label_names[i]``.
    num_embeddings: rows the embedding table needs: ``table_rows(cfg, len(vocab), kept_buckets)``.
    skipped: malformed rows skipped per split (with ``skip_bad_rows``).
    kept_buckets: with ``prune_buckets``, the n-gram ids of the buckets train uses
      (``encoding.seen_buckets``), which the ids are renumbered by
      (``encoding.remap_buckets``); None otherwise.
  """

  train_ids: np.ndarray
  train_labels: np.ndarray
  dev_ids: np.ndarray | None
  dev_labels: np.ndarray | None
  test_ids: np.ndarray | None
  test_labels: np.ndarray | None
  vocab: text_lib.Vocab
  label_names: tuple[str, ...]
  num_embeddings: int
  skipped: dict[str, int]
  kept_buckets: np.ndarray | None = None

  @property
  def num_classes(self) -> int:
    return len(self.label_names)

  @property
  def train_lengths(self) -> np.ndarray:
    """Non-padding ids per train row, for ``batch_indices(..., lengths=...)``."""
    return (self.train_ids != text_lib.PAD_ID).sum(axis=1)

  def split(self, name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(ids, labels)`` of "train", "dev" or "test"."""
    if name not in ("train", "dev", "test"):
      raise KeyError(f"EncodedData.split: unknown split {name!r}; use train, dev or test.")
    return getattr(self, f"{name}_ids"), getattr(self, f"{name}_labels")


def table_rows(cfg: DataConfig, vocab_size: int, kept_buckets: np.ndarray | None = None) -> int:
  """Rows of the embedding table for data encoded with ``cfg``: the vocabulary, then with
  ``ngrams > 1`` or character n-grams (``minn``) the ``num_buckets`` hashed buckets, or with
  ``prune_buckets`` the buckets kept plus one row for all the others.

  Example:
    >>> table_rows(DataConfig(ngrams=2, num_buckets=100), 50)
    150
    >>> table_rows(DataConfig(ngrams=2, num_buckets=100, prune_buckets=True), 50, np.arange(50, 60))
    61
    >>> table_rows(DataConfig(minn=3, maxn=6, num_buckets=100), 50)
    150
  """
  if not cfg.hashed:
    return vocab_size
  if cfg.pruned:
    if kept_buckets is None:
      raise ValueError("table_rows: data.prune_buckets needs the kept buckets (the run's "
                       "buckets.npy, or EncodedData.kept_buckets).")
    return vocab_size + len(kept_buckets) + 1
  return vocab_size + cfg.num_buckets


def encode_texts(cfg: DataConfig, vocab: text_lib.Vocab, texts: Sequence[str],
                 kept_buckets: np.ndarray | None = None) -> np.ndarray:
  """Ids ``int32[N, L]`` of raw ``texts`` with a trained run's vocabulary (and its kept n-gram
  buckets), tokenized and encoded as its training data was (``predict``, ``eval``)."""
  tokens = text_lib.tokenize_many(list(texts), cfg.lowercase, eos=cfg.eos)
  ids = encoding_lib.encode(tokens, vocab, max_len=cfg.max_len, ngrams=cfg.ngrams,
                            num_buckets=cfg.num_buckets, minn=cfg.minn, maxn=cfg.maxn)
  return prune_ids(cfg, ids, len(vocab), kept_buckets)


def word_rows(cfg: DataConfig, vocab: text_lib.Vocab, words: Sequence[str],
              kept_buckets: np.ndarray | None = None) -> np.ndarray:
  """The table rows whose mean is each word's vector, as fastText's ``get_word_vector``: the
  word's own id (a vocabulary word), then with character n-grams (``cfg.minn``) its n-gram ids,
  renumbered as the table reads them (``prune_buckets``). A word outside the vocabulary has its
  n-grams only; a row of ``PAD_ID`` only means the run has no vector for that word.

  Args:
    cfg: the run's data config.
    vocab: the run's vocabulary.
    words: tokens, as the run tokenized its texts.
    kept_buckets: the run's kept buckets (``prune_buckets``), else None.

  Returns:
    int32 ``[len(words), K]``, right-padded with ``PAD_ID``.

  Example:
    >>> vocab = text_lib.Vocab.from_words(["ab"])
    >>> cfg = DataConfig(minn=3, maxn=4, num_buckets=10)
    >>> word_rows(cfg, vocab, ["ab", "x"]).tolist()  # "<ab" "<ab>" "ab>"; "<x>"
    [[2, 11, 5, 9], [10, 0, 0, 0]]
    >>> word_rows(DataConfig(), vocab, ["ab", "x"]).tolist()
    [[2], [0]]
  """
  lists = []
  for word in words:
    own = vocab.id_of(word)
    ids = [own] if own != text_lib.UNK_ID else []
    if cfg.subwords:
      ids += ngram_lib.subword_ids(word, cfg.minn, cfg.maxn, cfg.num_buckets, len(vocab)).tolist()
    lists.append(ids)
  out = np.zeros((len(lists), max(1, max(map(len, lists), default=0))), np.int32)
  for i, ids in enumerate(lists):
    out[i, :len(ids)] = ids
  if not cfg.pruned:
    return out
  return encoding_lib.remap_buckets(out, kept_buckets, max_len=0, vocab_size=len(vocab),
                                    num_buckets=cfg.num_buckets)


def prune_ids(cfg: DataConfig, ids: np.ndarray, vocab_size: int,
              kept_buckets: np.ndarray | None) -> np.ndarray:
  """``ids`` encoded with ``cfg`` as the table of ``table_rows`` reads them: renumbered by
  ``encoding.remap_buckets`` with ``prune_buckets``, unchanged otherwise (``predict`` uses it)."""
  if not cfg.pruned:
    return ids
  return encoding_lib.remap_buckets(ids, kept_buckets, max_len=cfg.max_len,
                                    vocab_size=vocab_size, num_buckets=cfg.num_buckets)


def default_cache_dir() -> pathlib.Path:
  """``$EMBEDLAB_CACHE`` or ``~/.cache/embedlab/encoded``."""
  return pathlib.Path(os.environ.get("EMBEDLAB_CACHE") or "~/.cache/embedlab/encoded").expanduser()


def _input_files(cfg: DataConfig) -> list[pathlib.Path]:
  if cfg.source == "files":
    return [paths.resolve(getattr(cfg, n)) for n in files.split_names(cfg)]
  if cfg.source == "disk":
    root = paths.resolve(cfg.path)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
  return []


def cache_key(cfg: DataConfig, seed: int) -> str:
  """sha256 of the config, the seed, each input file's path, size and mtime, and ``CODE_VERSION``.

  Example:
    >>> cache_key(DataConfig(), 0) == cache_key(DataConfig(), 0) != cache_key(DataConfig(), 1)
    True
  """
  files = []
  for p in _input_files(cfg):
    try:
      st = p.stat()
      files.append([str(p.absolute()), st.st_size, st.st_mtime_ns])
    except OSError:
      files.append([str(p.absolute()), None, None])
  settings = dataclasses.asdict(cfg)
  settings.pop("workers")  # how many processes encode does not change the result
  payload = json.dumps({"config": settings, "seed": seed, "files": files,
                        "code": CODE_VERSION}, sort_keys=True)
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def is_cached(cfg: DataConfig, seed: int, *, cache_dir: str | os.PathLike | None = None) -> bool:
  """Whether ``encode_splits(cfg, seed)`` would read its result from the cache.

  Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> cfg = DataConfig(synthetic_train_size=10, synthetic_eval_size=5, max_len=8)
    >>> before = is_cached(cfg, 0, cache_dir=d)
    >>> _ = encode_splits(cfg, 0, cache_dir=d)
    >>> before, is_cached(cfg, 0, cache_dir=d)
    (False, True)
  """
  directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  key = cache_key(cfg, seed)
  return (directory / f"{key}.npz").is_file() and (directory / f"{key}.vocab.txt").is_file()


def encode_workers(cfg: DataConfig) -> int:
  """Processes that tokenize and encode: ``cfg.workers``, or with 0 the CPU cores this process
  may use, at most 8.

  Example:
    >>> encode_workers(DataConfig(workers=3))
    3
  """
  if cfg.workers:
    return cfg.workers
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(8, cores or 1))


def encode_splits(cfg: DataConfig, seed: int, *, cache_dir: str | os.PathLike | None = None,
                  cache: bool = True) -> EncodedData:
  """Loads, tokenizes and encodes every split; the vocabulary is built on train only.

  The result is cached as ``<key>.npz`` + ``<key>.vocab.txt`` under ``cache_dir`` (default
  ``default_cache_dir()``), keyed by ``cache_key``; a second call with the same config, seed and
  unchanged input files reads the cache without tokenizing.

  Args:
    cfg: the data config (``lowercase``, ``min_freq``, ``max_vocab``, ``max_len``, ``ngrams``,
      ``num_buckets`` shape the encoding).
    seed: as for ``splits.load_splits``.
    cache_dir: where the cache lives.
    cache: False neither reads nor writes the cache.

  Returns:
    An ``EncodedData``.

  Example:
    >>> d = encode_splits(DataConfig(synthetic_train_size=10, synthetic_eval_size=5, max_len=8),
    ...                   seed=0, cache=False)
    >>> d.train_ids.shape, d.dev_labels.shape, d.test_ids.dtype
    ((10, 8), (5,), dtype('int32'))
  """
  directory = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  key = cache_key(cfg, seed)
  if cache:
    found = read_cache(directory, key)
    if found is not None:
      return found
  workers = encode_workers(cfg)
  if _by_file(cfg, workers):
    splits, label_names, vocab, ids = _encode_by_file(cfg, seed, workers)
  else:
    splits, label_names = splits_lib.load_splits(cfg, seed)
    vocab, ids = encoding_lib.encode_corpus(
        {name: s.texts for name, s in splits.items()}, vocab_split="train",
        max_len=cfg.max_len, lowercase=cfg.lowercase, min_freq=cfg.min_freq,
        max_size=cfg.max_vocab, ngrams=cfg.ngrams, num_buckets=cfg.num_buckets, workers=workers,
        eos=cfg.eos, minn=cfg.minn, maxn=cfg.maxn)
  labels = {name: s.labels for name, s in splits.items()}
  kept = None
  if cfg.pruned:
    kept = encoding_lib.seen_buckets(ids["train"], max_len=cfg.max_len, vocab_size=len(vocab),
                                     num_buckets=cfg.num_buckets)
    ids = {name: prune_ids(cfg, split_ids, len(vocab), kept) for name, split_ids in ids.items()}
  data = EncodedData(
      train_ids=ids["train"], train_labels=labels["train"],
      dev_ids=ids.get("dev"), dev_labels=labels.get("dev"),
      test_ids=ids.get("test"), test_labels=labels.get("test"),
      vocab=vocab, label_names=tuple(label_names),
      num_embeddings=table_rows(cfg, len(vocab), kept),
      skipped={name: s.skipped for name, s in splits.items()}, kept_buckets=kept)
  if cache:
    write_cache(directory, key, data, cfg)
  return data


# A file this big or bigger is worth a process of its own (IMDB's are 12 MB, SST-2's dev and
# test 0.1 MB).
_MIN_FILE_BYTES = 4 << 20


def _by_file(cfg: DataConfig, workers: int) -> bool:
  """Whether each file gets a process that reads and tokenizes it: files data with at least as
  many big files as workers (IMDB's train and test on 2 cores), and forking possible. Otherwise
  the files are read here and the tokenizing is split by slices (``encoding.encode_corpus``)."""
  if cfg.source != "files" or workers < 2 or not fork_lib.can_fork():
    return False
  big = 0
  for name in files.split_names(cfg):
    try:
      big += paths.resolve(getattr(cfg, name)).stat().st_size >= _MIN_FILE_BYTES
    except OSError:
      return False  # reading it reports what is wrong
  return big >= workers


def _read_and_tokenize(cfg: DataConfig, split: str) -> tuple[RawSplit, encoding_lib.Shard]:
  raw = files.read_split(cfg, split)
  shard = encoding_lib.tokenize_parts({split: raw.texts}, lowercase=cfg.lowercase, eos=cfg.eos)
  raw.texts = []  # not sent back: the ids stand for them
  return raw, shard


def _encode_by_file(cfg: DataConfig, seed: int, workers: int):
  """``encode_splits``' work with one forked process per file reading and tokenizing it; here,
  the labels, the dev carve-out and ``max_examples`` pick rows, then ``encoding.encode_shards``."""
  names = files.split_names(cfg)
  files.import_readers(cfg)  # once, here: the forked processes inherit it
  done = fork_lib.fork_map(functools.partial(_read_and_tokenize, cfg), names, workers)
  raw, bases, base = {}, [], 0
  for name, (split, (_, parts)) in zip(names, done):
    rows = len(parts[name][1])
    split.texts = list(range(base, base + rows))  # a text is its row number over all files
    raw[name] = split
    bases.append(base)
    base += rows
  splits, label_names = splits_lib.assemble_splits(raw, cfg, seed)
  layout = {}
  for name, split in splits.items():
    rows = np.asarray(split.texts, dtype=np.int64)
    file_of_row = np.searchsorted(bases, rows, side="right") - 1
    cuts = np.flatnonzero(np.diff(file_of_row)) + 1
    layout[name] = [(int(f[0]), names[int(f[0])], r - bases[int(f[0])])
                    for f, r in zip(np.split(file_of_row, cuts), np.split(rows, cuts)) if r.size]
  vocab, ids = encoding_lib.encode_shards(
      [shard for _, shard in done], layout, vocab_split="train", max_len=cfg.max_len,
      min_freq=cfg.min_freq, max_size=cfg.max_vocab, ngrams=cfg.ngrams,
      num_buckets=cfg.num_buckets, threads=workers, minn=cfg.minn, maxn=cfg.maxn)
  return splits, label_names, vocab, ids


def read_cache(directory: pathlib.Path, key: str) -> EncodedData | None:
  """The ``EncodedData`` cached as ``<key>.npz`` + ``<key>.vocab.txt`` in ``directory``; None when
  it is not there, or is unreadable or fails its checksum (with a warning)."""
  npz, vocab_file = directory / f"{key}.npz", directory / f"{key}.vocab.txt"
  if not npz.is_file() or not vocab_file.is_file():
    return None
  try:
    with np.load(npz, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("checksum") != _cache_digest(arrays, meta, vocab_file.read_bytes()):
      log.warning("data: the encoded cache %s does not match its checksum (a corrupted or "
                  "changed file); encoding the data again.", npz)
      return None
    vocab = text_lib.Vocab.load(vocab_file)
    kept = arrays.pop("kept_buckets", None)
    for name in ("train", "dev", "test"):
      if f"{name}_words" in arrays:
        packed = {part: arrays.pop(f"{name}_{part}") for part in _PACKED_PARTS
                  if f"{name}_{part}" in arrays}
        arrays[f"{name}_ids"] = _unpack_ids(packed, meta, len(vocab), kept)
  except Exception as e:  # pylint: disable=broad-except
    log.warning("data: the encoded cache %s is unreadable (%s: %s); encoding the data again.",
                npz, type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e) else "")
    return None
  return EncodedData(
      train_ids=arrays["train_ids"], train_labels=arrays["train_labels"],
      dev_ids=arrays.get("dev_ids"), dev_labels=arrays.get("dev_labels"),
      test_ids=arrays.get("test_ids"), test_labels=arrays.get("test_labels"), vocab=vocab,
      label_names=tuple(meta["label_names"]), num_embeddings=int(meta["num_embeddings"]),
      skipped=dict(meta["skipped"]), kept_buckets=kept)


def write_cache(directory: pathlib.Path, key: str, data: EncodedData, cfg: DataConfig) -> None:
  """Caches ``data``, encoded with ``cfg``, as ``<key>.npz`` + ``<key>.vocab.txt`` in ``directory``
  (``read_cache`` reads it).

  Example:
    >>> import tempfile
    >>> cfg = DataConfig(synthetic_train_size=10, synthetic_eval_size=5, max_len=8)
    >>> data, directory = encode_splits(cfg, 0, cache=False), pathlib.Path(tempfile.mkdtemp())
    >>> write_cache(directory, "k", data, cfg)
    >>> back = read_cache(directory, "k")
    >>> bool((back.train_ids == data.train_ids).all()), back.vocab == data.vocab
    (True, True)
  """
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for name in ("train", "dev", "test"):
    ids, labels = data.split(name)
    if ids is None:
      continue
    arrays[f"{name}_labels"] = labels
    packed = _pack_ids(ids, cfg.max_len, cfg.max_len * cfg.ngrams if cfg.subwords else None)
    if packed is None:
      arrays[f"{name}_ids"] = ids
    else:
      arrays.update({f"{name}_{part}": a for part, a in packed.items()})
  if data.kept_buckets is not None:
    arrays["kept_buckets"] = data.kept_buckets
  meta = {"label_names": list(data.label_names), "num_embeddings": data.num_embeddings,
          "skipped": data.skipped, "code": CODE_VERSION, "max_len": cfg.max_len,
          "ngrams": cfg.ngrams, "num_buckets": cfg.num_buckets}
  meta["checksum"] = _cache_digest(arrays, meta, "".join(t + "\n" for t in data.vocab.tokens)
                                   .encode("utf-8"))
  arrays["meta"] = np.array(json.dumps(meta))
  # tmp file + os.replace: a reader never sees a half-written file; the npz goes last, so its
  # presence means the vocabulary is complete too.
  atomic.atomic_write(directory / f"{key}.vocab.txt", data.vocab.save)
  atomic.atomic_write(directory / f"{key}.npz", lambda p: _save_npz(p, arrays))


def _cache_digest(arrays: dict[str, np.ndarray], meta: dict, vocab: bytes) -> str:
  """A blake2b digest of the cache's arrays (names, dtypes, shapes, bytes), its record (without
  the digest) and its vocabulary file's bytes."""
  h = hashlib.blake2b(digest_size=16)
  h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"},
                      sort_keys=True).encode("utf-8"))
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f"|{name}:{a.dtype.str}:{a.shape}|".encode("utf-8"))
    h.update(a.reshape(-1).view(np.uint8))
  h.update(vocab)
  return h.hexdigest()


_PACKED_PARTS = ("words", "lengths", "subwords", "subword_lengths")


def _right_padded(block: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """``(flat ids, lengths)`` of a block whose rows are ids then padding; None otherwise."""
  present = block != text_lib.PAD_ID
  lengths = present.sum(axis=1)
  if not np.array_equal(present, np.arange(block.shape[1]) < lengths[:, None]):
    return None
  return block[present], lengths.astype(np.int32)


def _pack_ids(ids: np.ndarray, max_len: int,
              subwords_at: int | None = None) -> dict[str, np.ndarray] | None:
  """The cache keeps right-padded word ids only, as one flat array and the row lengths (IMDB:
  a fifth of the bytes); the n-gram columns are hashed again on reading (0.1 s). The character
  n-gram block (from column ``subwords_at``) is kept the same way, flat (an unknown word's
  n-grams come from its text, which the ids no longer hold). None when the rows are not
  right-padded (then the matrix is stored as it is)."""
  words = _right_padded(ids[:, :max_len])
  if words is None:
    return None
  packed = {"words": words[0], "lengths": words[1]}
  if subwords_at is not None:
    subwords = _right_padded(ids[:, subwords_at:])
    if subwords is None:
      return None
    packed["subwords"], packed["subword_lengths"] = subwords
  return packed


def _unpack_ids(packed: dict[str, np.ndarray], meta: dict, vocab_size: int,
                kept: np.ndarray | None) -> np.ndarray:
  """``_pack_ids``' inverse: the n-grams hashed again and, if pruned, renumbered again; the
  character n-grams (stored as used, renumbered already) appended."""
  ids = encoding_lib.padded_ids(packed["words"], packed["lengths"], meta["max_len"],
                                ngrams=meta["ngrams"], num_buckets=meta["num_buckets"],
                                offset=vocab_size, threads=os.cpu_count() or 1)
  if kept is not None:
    ids = encoding_lib.remap_buckets(ids, kept, max_len=meta["max_len"], vocab_size=vocab_size,
                                     num_buckets=meta["num_buckets"])
  if "subwords" not in packed:
    return ids
  flat, counts = packed["subwords"], packed["subword_lengths"]
  # each stored id a "token" of one subword: subword_block lays them out after ``ids``
  return ngram_lib.subword_block(np.arange(len(flat)), counts,
                                 (np.arange(len(flat) + 1), flat), lead=ids)


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  with open(path, "wb") as f:
    np.savez(f, **arrays)
