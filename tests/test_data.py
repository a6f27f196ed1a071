"""Tests for embedlab.data: paths, files and hub sources, splits, errors, synthetic data, cache,
batches."""

import collections
import dataclasses
import gzip
import json
import os
import pathlib

import numpy as np
import pytest

from embedlab import config as config_lib
from embedlab.data import atomic
from embedlab.data import batches as batch_lib
from embedlab.data import cache as cache_lib
from embedlab.data import ngrams
from embedlab.data import paths as paths_lib
from embedlab.data.rows import DataError
from embedlab.data import splits as splits_lib
from embedlab.data import synthetic as synthetic_lib
from embedlab.data import text
from embedlab.config import DataConfig


def _shared_data_dir() -> pathlib.Path:
  """$EMBEDLAB_DATA, else ../shared/data next to the repository root (the parent of tests/)."""
  env = os.environ.get("EMBEDLAB_DATA")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


# Read before the autouse fixture below points EMBEDLAB_DATA at each test's tmp_path.
_REAL_DATA = _shared_data_dir()


def _write(path: pathlib.Path, content: str) -> pathlib.Path:
  if path.suffix == ".gz":
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(content)
  else:
    path.write_text(content, encoding="utf-8")
  return path


def _files(tmp_path, **kwargs) -> DataConfig:
  """A files config; paths relative to tmp_path (made the data directory by the fixture)."""
  return DataConfig(source="files", **kwargs)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("EMBEDLAB_DATA", str(tmp_path))
  monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- paths


def test_data_dir_env_then_shared_then_beside_the_checkout_then_home(tmp_path, monkeypatch):
  assert paths_lib.data_dir() == tmp_path
  monkeypatch.delenv("EMBEDLAB_DATA")
  work = tmp_path / "repo"
  (tmp_path / "shared" / "data").mkdir(parents=True)
  work.mkdir()
  monkeypatch.chdir(work)
  assert paths_lib.data_dir() == tmp_path / "shared" / "data"
  # elsewhere: shared/data beside the checkout embedlab runs from (an editable install)
  checkout = tmp_path / "elsewhere" / "embedlab-checkout"
  (checkout.parent / "shared" / "data").mkdir(parents=True)
  monkeypatch.setattr(paths_lib, "__file__", str(checkout / "embedlab" / "data" / "paths.py"))
  monkeypatch.chdir(tmp_path)
  assert paths_lib.data_dir() == checkout.parent / "shared" / "data"
  installed = tmp_path / "venv" / "site-packages" / "embedlab" / "data" / "paths.py"
  monkeypatch.setattr(paths_lib, "__file__", str(installed))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert paths_lib.data_dir() == tmp_path / "home" / ".cache" / "embedlab" / "data"


def test_a_missing_data_file_names_every_place_looked_in(tmp_path, monkeypatch):
  monkeypatch.delenv("EMBEDLAB_DATA")
  monkeypatch.chdir(tmp_path)
  installed = tmp_path / "venv" / "site-packages" / "embedlab" / "data" / "paths.py"
  monkeypatch.setattr(paths_lib, "__file__", str(installed))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  with pytest.raises(DataError) as e:
    splits_lib.load_splits(_files(tmp_path, train="sst2/train.tsv.gz"), seed=0)
  message = str(e.value)
  for place in (tmp_path.parent / "shared" / "data", tmp_path / "home" / ".cache" / "embedlab"):
    assert str(place / "") in message or str(place) in message, message
  assert "EMBEDLAB_DATA" in message and "README" in message


def test_resolve(tmp_path):
  assert paths_lib.resolve("sst2/train.tsv.gz") == tmp_path / "sst2" / "train.tsv.gz"
  assert paths_lib.resolve("/abs/x.csv") == pathlib.Path("/abs/x.csv")


# ----------------------------------------------------------------------------- splits


def _numbered(tmp_path, name, n, label=lambda i: i % 3):
  return _write(tmp_path / name, "label\ttext\n" + "".join(f"{label(i)}\tdoc {i}\n"
                                                           for i in range(n)))


def test_dev_carve_out_is_seeded_and_disjoint(tmp_path):
  _numbered(tmp_path, "train.tsv", 50)
  _numbered(tmp_path, "test.tsv", 6)
  cfg = _files(tmp_path, train="train.tsv", test="test.tsv", dev_fraction=0.2)
  a, names = splits_lib.load_splits(cfg, seed=3)
  b, _ = splits_lib.load_splits(cfg, seed=3)
  c, _ = splits_lib.load_splits(cfg, seed=4)
  assert len(a["dev"]) == 10 and len(a["train"]) == 40 and len(a["test"]) == 6
  assert a["dev"].texts == b["dev"].texts and a["train"].texts == b["train"].texts
  assert a["dev"].texts != c["dev"].texts
  perm = np.random.default_rng(3).permutation(50)
  assert a["dev"].texts == tuple(f"doc {i}" for i in perm[:10])
  assert sorted(a["dev"].texts + a["train"].texts) == sorted(f"doc {i}" for i in range(50))
  for s in a.values():  # labels still match their texts
    assert [int(t.split()[1]) % 3 for t in s.texts] == [int(names[l]) for l in s.labels]


def test_dev_rules(tmp_path):
  _numbered(tmp_path, "train.tsv", 20)
  _numbered(tmp_path, "test.tsv", 5)
  with pytest.raises(DataError, match=r"no dev split.*data\.dev_fraction=0\.1"):
    splits_lib.load_splits(_files(tmp_path, train="train.tsv", test="test.tsv"), seed=0)
  _numbered(tmp_path, "dev.tsv", 5)
  with pytest.raises(DataError, match=r"dev_fraction = 0\.5 but .*dev\.tsv"):
    splits_lib.load_splits(_files(tmp_path, train="train.tsv", dev="dev.tsv", dev_fraction=0.5), 0)
  only_train, _ = splits_lib.load_splits(_files(tmp_path, train="train.tsv"), seed=0)
  assert list(only_train) == ["train"]


def test_max_examples_keeps_first_rows(tmp_path):
  _numbered(tmp_path, "train.tsv", 30)
  _numbered(tmp_path, "dev.tsv", 30)
  splits, _ = splits_lib.load_splits(_files(tmp_path, train="train.tsv", dev="dev.tsv",
                                            max_examples=4), seed=0)
  assert splits["train"].texts == ("doc 0", "doc 1", "doc 2", "doc 3")
  assert splits["dev"].labels.tolist() == [0, 1, 2, 0]


# ----------------------------------------------------------------------------- bad input


def test_missing_column_names_file_column_and_present_columns(tmp_path):
  _write(tmp_path / "d.csv", "sentence,label\nhi,1\n")
  with pytest.raises(DataError) as e:
    splits_lib.load_splits(_files(tmp_path, train="d.csv"), seed=0)
  msg = str(e.value)
  assert "d.csv" in msg and "'text'" in msg and "sentence, label" in msg


def test_unknown_dev_label_names_file_label_and_known(tmp_path):
  _write(tmp_path / "train.tsv", "label\ttext\n0\ta\n1\tb\n")
  _write(tmp_path / "dev.tsv", "label\ttext\n1\ta\n7\tb\n")
  with pytest.raises(DataError) as e:
    splits_lib.load_splits(_files(tmp_path, train="train.tsv", dev="dev.tsv"), seed=0)
  msg = str(e.value)
  assert "dev.tsv" in msg and "row 2" in msg and "'7'" in msg and "known labels: 0, 1" in msg


def test_malformed_tsv_row_strict_and_skipped(tmp_path):
  _write(tmp_path / "bad.tsv", "label\ttext\n1\tok\n0\tone\ttab too many\n1\tfine\n")
  with pytest.raises(DataError, match=r"bad\.tsv, line 3: malformed row.*skip_bad_rows"):
    splits_lib.load_splits(_files(tmp_path, train="bad.tsv"), seed=0)
  splits, _ = splits_lib.load_splits(_files(tmp_path, train="bad.tsv", skip_bad_rows=True), seed=0)
  assert splits["train"].texts == ("ok", "fine") and splits["train"].skipped == 1
  d = cache_lib.encode_splits(_files(tmp_path, train="bad.tsv", skip_bad_rows=True), 0)
  assert d.skipped == {"train": 1}


def test_malformed_json_line_strict_and_skipped(tmp_path):
  _write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label"\n'
         '{"text": "c", "label": 0}\n[1, 2]\n')
  with pytest.raises(DataError, match=r"bad\.jsonl, line 2: malformed JSON row \(2 bad"):
    splits_lib.load_splits(_files(tmp_path, train="bad.jsonl"), seed=0)
  splits, _ = splits_lib.load_splits(_files(tmp_path, train="bad.jsonl", skip_bad_rows=True), 0)
  assert splits["train"].texts == ("a", "c") and splits["train"].skipped == 2


def test_missing_label_strict_and_skipped(tmp_path):
  _write(tmp_path / "d.tsv", "label\ttext\n1\ta\n\tno label\n0\tc\n")
  with pytest.raises(DataError, match=r"d\.tsv, row 2: missing label"):
    splits_lib.load_splits(_files(tmp_path, train="d.tsv"), seed=0)
  splits, _ = splits_lib.load_splits(_files(tmp_path, train="d.tsv", skip_bad_rows=True), seed=0)
  assert splits["train"].texts == ("a", "c") and splits["train"].skipped == 1
  _write(tmp_path / "n.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n')
  with pytest.raises(DataError, match=r"n\.jsonl, row 2: missing label"):
    splits_lib.load_splits(_files(tmp_path, train="n.jsonl"), seed=0)


def test_empty_and_header_only_files(tmp_path):
  for name in ("e.tsv", "e.jsonl", "e.csv.gz"):
    _write(tmp_path / name, "")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')} is empty"):
      splits_lib.load_splits(_files(tmp_path, train=name), seed=0)
  _write(tmp_path / "h.tsv", "label\ttext\n")
  with pytest.raises(DataError, match=r"h\.tsv has no data rows"):
    splits_lib.load_splits(_files(tmp_path, train="h.tsv"), seed=0)
  with pytest.raises(DataError, match=r"missing\.tsv not found.*EMBEDLAB_DATA"):
    splits_lib.load_splits(_files(tmp_path, train="missing.tsv"), seed=0)


def test_empty_texts_encode_to_padding(tmp_path):
  _write(tmp_path / "d.tsv", "label\ttext\n1\t\n0\tx y\n")
  d = cache_lib.encode_splits(_files(tmp_path, train="d.tsv", max_len=3), 0, cache=False)
  np.testing.assert_array_equal(d.train_ids, [[0, 0, 0], [2, 3, 0]])


# ----------------------------------------------------------------------------- disk / hub


def test_hub_offline_error_is_clear(monkeypatch):
  import datasets  # pylint: disable=import-outside-toplevel

  def must_not_be_called(*args, **kwargs):
    raise AssertionError("load_dataset called although offline")

  monkeypatch.setattr(datasets, "load_dataset", must_not_be_called)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(DataError) as e:
    splits_lib.load_splits(DataConfig(source="hub", path="glue"), seed=0)
  assert str(e.value).startswith("data: could not load 'glue' from the Hugging Face hub (offline?)")
  assert "Dataset.save_to_disk" in str(e.value) and "data.source=files" in str(e.value)

  def no_network(*args, **kwargs):
    raise ConnectionError("Couldn't reach the hub")

  monkeypatch.delenv("HF_HUB_OFFLINE")
  monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
  monkeypatch.setattr(datasets, "load_dataset", no_network)
  with pytest.raises(DataError, match="could not load 'glue:sst2' from the Hugging Face"):
    splits_lib.load_splits(DataConfig(source="hub", path="glue:sst2"), seed=0)


def test_disk_source_with_class_labels_and_unlabelled_test(tmp_path):
  import datasets  # pylint: disable=import-outside-toplevel
  features = datasets.Features({"sentence": datasets.Value("string"),
                                "label": datasets.ClassLabel(names=["neg", "pos"])})
  dd = datasets.DatasetDict({
      "train": datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [1, 0, 1]},
                                          features=features),
      "validation": datasets.Dataset.from_dict({"sentence": ["d"], "label": [0]},
                                               features=features),
      "test": datasets.Dataset.from_dict({"sentence": ["e", "f"], "label": [-1, -1]},
                                         features=features)})
  dd.save_to_disk(str(tmp_path / "saved"))
  cfg = DataConfig(source="disk", path="saved", text_column="sentence")
  splits, names = splits_lib.load_splits(cfg, seed=0)
  assert names == ("neg", "pos") and sorted(splits) == ["dev", "train"]  # test is unlabelled
  assert splits["train"].texts == ("a", "b", "c") and splits["train"].labels.tolist() == [1, 0, 1]
  assert splits["dev"].labels.tolist() == [0]
  with pytest.raises(DataError, match="not found"):
    splits_lib.load_splits(DataConfig(source="disk", path="nowhere"), seed=0)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_by_seed():
  cfg = DataConfig(synthetic_train_size=200, synthetic_eval_size=50)
  a, b, c = (synthetic_lib.synthetic_splits(cfg, s) for s in (0, 0, 1))
  assert a["train"].texts == b["train"].texts and a["test"].texts == b["test"].texts
  np.testing.assert_array_equal(a["dev"].labels, b["dev"].labels)
  assert a["train"].texts != c["train"].texts
  assert a["dev"].texts != a["test"].texts
  assert {k: len(s) for k, s in a.items()} == {"train": 200, "dev": 50, "test": 50}


def test_synthetic_planted_structure():
  cfg = DataConfig(synthetic_topics=4, synthetic_words_per_topic=20, synthetic_shared_words=100,
                   synthetic_train_size=2000, synthetic_length=24)
  truth = synthetic_lib.synthetic_word_topics(cfg)
  assert len(truth) == 4 * 20 + 100 and truth["t2_w17"] == 2 and truth["s5"] == -1
  split = synthetic_lib.synthetic_splits(cfg, seed=0)["train"]
  assert set(np.unique(split.labels)) == {0, 1, 2, 3}
  by_word = collections.defaultdict(lambda: np.zeros(4))
  own = total = 0
  for doc, label in zip(split.texts, split.labels):
    words = doc.split()
    assert 12 <= len(words) <= 36 and set(words) <= set(truth)
    for w in words:
      by_word[w][label] += 1
      own += truth[w] == label
    total += len(words)
  assert 0.30 < own / total < 0.40  # the share of a document's own topic words
  for w, topic in truth.items():
    counts = by_word[w]
    if topic >= 0:  # topic words of class c occur mostly in class-c documents
      assert counts[topic] / counts.sum() > 0.6, (w, counts)
    else:  # shared words occur in every class
      assert counts.sum() == 0 or counts.max() / counts.sum() < 0.6, (w, counts)
  # Zipf: the first shared word is much more frequent than the last.
  assert by_word["s0"].sum() > 10 * by_word["s99"].sum()


def test_synthetic_is_learnable_by_a_bag_of_words():
  """A nearest-centroid bag of words (numpy) separates the classes: the structure is real."""
  cfg = DataConfig(synthetic_train_size=2000, synthetic_eval_size=500)
  d = cache_lib.encode_splits(cfg, seed=0, cache=False)
  def bags(ids):
    out = np.zeros((len(ids), len(d.vocab)))
    np.add.at(out, (np.repeat(np.arange(len(ids)), ids.shape[1]), ids.ravel()), 1.0)
    out[:, 0] = 0
    return out / out.sum(1, keepdims=True)
  train, test = bags(d.train_ids), bags(d.test_ids)
  centroids = np.stack([train[d.train_labels == c].mean(0) for c in range(d.num_classes)])
  accuracy = ((test @ centroids.T).argmax(1) == d.test_labels).mean()
  assert accuracy > 0.9


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
  path = tmp_path / "results.json"
  atomic.atomic_write(path, "old\n")
  atomic.atomic_write(path, b"new \xc3\xa9\n")
  assert path.read_bytes() == "new é\n".encode("utf-8")
  atomic.atomic_write(path, lambda p: pathlib.Path(p).write_text("from a writer"))
  assert path.read_text() == "from a writer"

  def half_then_fail(p):
    pathlib.Path(p).write_text("half")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    atomic.atomic_write(path, half_then_fail)
  assert path.read_text() == "from a writer"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


def test_atomic_write_gives_the_mode_a_plain_open_gives(tmp_path):
  old = os.umask(0o027)
  try:
    atomic.atomic_write(tmp_path / "a.txt", "x")
    with open(tmp_path / "b.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  assert (tmp_path / "a.txt").stat().st_mode == (tmp_path / "b.txt").stat().st_mode
  assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


# ----------------------------------------------------------------------------- encode + cache


def test_encode_splits_vocab_from_train_only(tmp_path):
  _write(tmp_path / "train.tsv", "label\ttext\n0\tthe cat\n1\tthe dog the\n")
  _write(tmp_path / "dev.tsv", "label\ttext\n1\tthe zebra\n")
  cfg = _files(tmp_path, train="train.tsv", dev="dev.tsv", max_len=4, ngrams=2, num_buckets=10)
  d = cache_lib.encode_splits(cfg, seed=0, cache=False)
  assert d.vocab.tokens == ("<pad>", "<unk>", "the", "cat", "dog")
  assert d.num_embeddings == 5 + 10 and d.label_names == ("0", "1") and d.test_ids is None
  assert d.train_ids.shape == (2, 8)
  np.testing.assert_array_equal(d.train_ids[:, :4], [[2, 3, 0, 0], [2, 4, 2, 0]])
  np.testing.assert_array_equal(d.dev_ids[:, :4], [[2, text.UNK_ID, 0, 0]])
  np.testing.assert_array_equal(d.train_ids[1, 4:], ngrams.ngram_ids_batch(
      d.train_ids[1:, :4], 2, 10, 5)[0])
  np.testing.assert_array_equal(d.train_lengths, [3, 5])


@pytest.mark.parametrize("grams", [dict(), dict(ngrams=3, num_buckets=50, max_len=6),
                                   dict(ngrams=2, num_buckets=64, max_len=6,
                                        prune_buckets=True)])
def test_encode_splits_cache_hit_skips_tokenizing(tmp_path, monkeypatch, grams):
  path = _numbered(tmp_path, "train.tsv", 40)
  cfg = _files(tmp_path, train="train.tsv", dev_fraction=0.25, min_freq=1, **grams)
  first = cache_lib.encode_splits(cfg, seed=1)
  files = sorted(p.name for p in (tmp_path / "cache").iterdir())
  key = cache_lib.cache_key(cfg, 1)
  assert files == [f"{key}.npz", f"{key}.vocab.txt"]  # no tmp files left behind

  def no_tokenizing(*args, **kwargs):
    raise AssertionError("tokenized although cached")

  monkeypatch.setattr(text, "tokenize_many", no_tokenizing)
  second = cache_lib.encode_splits(cfg, seed=1)
  for f in dataclasses.fields(cache_lib.EncodedData):
    a, b = getattr(first, f.name), getattr(second, f.name)
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)
      assert a.dtype == b.dtype
    else:
      assert a == b, f.name
  # A different seed, config or changed file is a different key: it must tokenize again.
  for other_cfg, seed in ((cfg, 2), (dataclasses.replace(cfg, max_len=5), 1)):
    with pytest.raises(AssertionError, match="tokenized although cached"):
      cache_lib.encode_splits(other_cfg, seed=seed)
  _numbered(tmp_path, "train.tsv", 41)
  assert cache_lib.cache_key(cfg, 1) != key
  with pytest.raises(AssertionError, match="tokenized although cached"):
    cache_lib.encode_splits(cfg, seed=1)
  assert path.exists()



def test_prune_buckets_renumbers_the_buckets_train_uses(tmp_path):
  _numbered(tmp_path, "train.tsv", 60)
  _write(tmp_path / "dev.tsv", "label\ttext\n1\tw3 w5 w7 never seen words\n0\tw1 w2\n")
  full = _files(tmp_path, train="train.tsv", dev="dev.tsv", max_len=6, ngrams=3,
                num_buckets=4096)
  pruned = dataclasses.replace(full, prune_buckets=True)
  a = cache_lib.encode_splits(full, seed=0, cache=False)
  b = cache_lib.encode_splits(pruned, seed=0, cache=False)
  v = len(a.vocab)
  assert a.vocab == b.vocab and a.kept_buckets is None
  train_grams = a.train_ids[:, 6:]
  kept = np.unique(train_grams[train_grams >= v])
  np.testing.assert_array_equal(b.kept_buckets, kept)
  assert b.num_embeddings == v + kept.size + 1 < a.num_embeddings == v + 4096
  # a reference renumbering: kept bucket -> its rank, any other bucket -> the last row
  rank = {int(k): v + i for i, k in enumerate(kept)}
  for name in ("train", "dev"):
    before, after = a.split(name)[0], b.split(name)[0]
    np.testing.assert_array_equal(after[:, :6], before[:, :6])  # words untouched
    want = [[x if x < v else rank.get(x, v + kept.size) for x in row] for row in before[:, 6:]]
    np.testing.assert_array_equal(after[:, 6:], want)
  # train uses every kept row and never the shared one; dev has n-grams train never saw
  assert set(np.unique(b.train_ids[b.train_ids >= v])) == set(range(v, v + kept.size))
  assert (b.dev_ids == v + kept.size).any()
  assert b.train_ids.max() < b.num_embeddings and b.dev_ids.max() < b.num_embeddings


def test_prune_buckets_needs_ngrams():
  with pytest.raises(config_lib.ConfigError, match="data.prune_buckets.*data.ngrams = 1"):
    config_lib.validate(config_lib.Config(data=DataConfig(prune_buckets=True)))


def test_cache_keeps_ids_that_are_not_right_padded(tmp_path):
  # the cache packs right-padded word ids (flat + lengths); any other matrix is kept as it is
  cfg = DataConfig(synthetic_train_size=20, synthetic_eval_size=5, max_len=4)
  d = cache_lib.encode_splits(cfg, 0, cache=False)
  holes = d.train_ids.copy()
  holes[0, :2] = [0, 7]  # a padding slot before a word
  odd = dataclasses.replace(d, train_ids=holes)
  cache_lib.write_cache(tmp_path, "k", odd, cfg)
  with np.load(tmp_path / "k.npz") as f:
    assert "train_ids" in f.files and "dev_words" in f.files  # dev is packed
  back = cache_lib.read_cache(tmp_path, "k")
  for name in ("train", "dev", "test"):
    np.testing.assert_array_equal(back.split(name)[0], odd.split(name)[0])
    assert back.split(name)[0].dtype == np.int32


def test_corrupt_cache_is_ignored(tmp_path, caplog):
  cfg = DataConfig(synthetic_train_size=20, synthetic_eval_size=5)
  key = cache_lib.cache_key(cfg, 0)
  first = cache_lib.encode_splits(cfg, 0)
  (tmp_path / "cache" / f"{key}.npz").write_bytes(b"garbage")
  with caplog.at_level("WARNING", logger="embedlab"):
    again = cache_lib.encode_splits(cfg, 0)
  assert "is unreadable" in caplog.text and "encoding the data again" in caplog.text
  np.testing.assert_array_equal(first.train_ids, again.train_ids)


def _rewrite_npz(path, change):
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  change(arrays)
  with open(path, "wb") as f:
    np.savez(f, **arrays)


@pytest.mark.parametrize("damage", ["label flipped", "record edited", "vocabulary edited",
                                    "checksum missing"])
def test_a_cache_that_fails_its_checksum_is_encoded_again(tmp_path, caplog, monkeypatch, damage):
  _numbered(tmp_path, "train.tsv", 30)
  cfg = _files(tmp_path, train="train.tsv", dev_fraction=0.2)
  key = cache_lib.cache_key(cfg, 0)
  first = cache_lib.encode_splits(cfg, 0)
  npz, vocab = tmp_path / "cache" / f"{key}.npz", tmp_path / "cache" / f"{key}.vocab.txt"

  def flip_label(arrays):
    arrays["train_labels"] = (arrays["train_labels"] + 1) % 3  # still a valid, readable file

  def edit_record(arrays):
    meta = json.loads(str(arrays["meta"]))
    meta["label_names"] = meta["label_names"][::-1]
    arrays["meta"] = np.array(json.dumps(meta))

  def drop_checksum(arrays):
    meta = json.loads(str(arrays["meta"]))
    del meta["checksum"]
    arrays["meta"] = np.array(json.dumps(meta))

  if damage == "vocabulary edited":
    vocab.write_text(vocab.read_text().replace("doc\n", "dog\n"), encoding="utf-8")
  else:
    _rewrite_npz(npz, {"label flipped": flip_label, "record edited": edit_record,
                       "checksum missing": drop_checksum}[damage])
  calls = []
  real = text.tokenize_many
  monkeypatch.setattr(text, "tokenize_many", lambda *a, **k: calls.append(1) or real(*a, **k))
  with caplog.at_level("WARNING", logger="embedlab"):
    again = cache_lib.encode_splits(cfg, 0)
  assert calls  # encoded again, not read
  notes = [r.getMessage() for r in caplog.records if "cache" in r.getMessage()]
  assert len(notes) == 1 and "does not match its checksum" in notes[0] and str(npz) in notes[0]
  for name in ("train", "dev"):
    np.testing.assert_array_equal(first.split(name)[0], again.split(name)[0])
    np.testing.assert_array_equal(first.split(name)[1], again.split(name)[1])
  assert again.vocab == first.vocab and again.label_names == first.label_names
  caplog.clear()
  calls.clear()
  with caplog.at_level("WARNING", logger="embedlab"):
    cache_lib.encode_splits(cfg, 0)  # the rebuilt cache is sound: read, no note
  assert not calls and "cache" not in caplog.text


# ----------------------------------------------------------------------------- batches


def test_batch_indices_deterministic_and_cover_the_epoch():
  a = batch_lib.batch_indices(103, 10, seed=5, epoch=2)
  np.testing.assert_array_equal(a, batch_lib.batch_indices(103, 10, seed=5, epoch=2))
  assert a.shape == (10, 10) and batch_lib.num_batches(103, 10) == 10
  assert len(np.unique(a)) == 100 and a.min() >= 0 and a.max() < 103
  np.testing.assert_array_equal(a.ravel(), np.random.default_rng([5, 2]).permutation(103)[:100])
  assert not np.array_equal(a, batch_lib.batch_indices(103, 10, seed=5, epoch=3))
  assert not np.array_equal(a, batch_lib.batch_indices(103, 10, seed=6, epoch=2))
  full = batch_lib.batch_indices(103, 10, seed=5, epoch=2, drop_last=False)
  assert full.shape == (11, 10) and batch_lib.num_batches(103, 10, drop_last=False) == 11
  assert sorted(full[full >= 0].tolist()) == list(range(103)) and (full < 0).sum() == 7
  ordered = batch_lib.batch_indices(6, 3, seed=0, epoch=0, shuffle=False)
  np.testing.assert_array_equal(ordered, [[0, 1, 2], [3, 4, 5]])


def test_batch_indices_bucketed_by_length():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 400, size=5000)
  kw = dict(seed=1, epoch=0, lengths=lengths)
  a = batch_lib.batch_indices(5000, 16, **kw)
  np.testing.assert_array_equal(a, batch_lib.batch_indices(5000, 16, **kw))
  assert a.shape == (312, 16) and len(np.unique(a)) == 312 * 16
  plain = batch_lib.batch_indices(5000, 16, seed=1, epoch=0)
  spread = lambda b: np.mean(np.ptp(lengths[b], axis=1))
  assert spread(a) < spread(plain) / 5
  assert not np.array_equal(a, batch_lib.batch_indices(5000, 16, seed=1, epoch=1, lengths=lengths))
  last = batch_lib.batch_indices(50, 16, seed=0, epoch=0, drop_last=False, lengths=lengths[:50])
  assert sorted(last.ravel().tolist())[14:] == list(range(50))


def test_eval_batches_fixed_size_with_mask():
  ids = np.arange(14, dtype=np.int32).reshape(7, 2) + 1
  labels = np.arange(7, dtype=np.int32)
  batches = list(batch_lib.eval_batches(ids, labels, 3))
  assert [b[0].shape for b in batches] == [(3, 2)] * 3
  assert all(b[0].dtype == np.int32 and b[1].dtype == np.int32 for b in batches)
  mask = np.concatenate([b[2] for b in batches])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(np.concatenate([b[0] for b in batches])[:7], ids)
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[:7], labels)
  np.testing.assert_array_equal(batches[-1][0][1:], 0)
  assert len(list(batch_lib.eval_batches(ids[:6], labels[:6], 3))) == 2


def test_ragged_batches_hold_each_bags_real_ids_in_order():
  rng = np.random.default_rng(3)
  ids = rng.integers(1, 100, (4, 5, 7)) * (rng.random((4, 5, 7)) < 0.4)
  length = batch_lib.ragged_length((ids != 0).sum(-1).reshape(-1),
                                   [np.arange(20).reshape(4, 5)], multiple=8)
  out = batch_lib.ragged_batches(ids, length)
  assert out.ids.shape == out.segment_ids.shape == (4, length) and length % 8 == 0
  for k in range(4):
    want_ids = [i for b in range(5) for i in ids[k, b] if i]
    want_seg = [b for b in range(5) for i in ids[k, b] if i]
    n = len(want_ids)
    assert out.ids[k, :n].tolist() == want_ids and out.segment_ids[k, :n].tolist() == want_seg
    assert not out.ids[k, n:].any() and (out.segment_ids[k, n:] == 4).all()
  assert length - 8 < max((ids[k] != 0).sum() for k in range(4)) <= length


def test_ragged_batches_refuse_a_batch_longer_than_the_length():
  with pytest.raises(ValueError, match="3 non-padding ids, more than the ragged length 2"):
    batch_lib.ragged_batches(np.array([[1, 2], [3, 0]]), 2)


# ----------------------------------------------------------------------------- forked workers


def test_forked_file_reading_and_encoding_match_one_process(tmp_path):
  # JAX runs in this test process, so nothing forks here; a fresh interpreter forks one process
  # per file that reads and tokenizes it, and must give what one process gives, whatever rows
  # the labels, the dev carve-out and max_examples keep, errors included
  _numbered(tmp_path, "train.tsv", 3000, label=lambda i: i % 2)
  _numbered(tmp_path, "test.tsv", 500, label=lambda i: i % 2)
  _numbered(tmp_path, "test3.tsv", 500, label=lambda i: i % 3)  # label 2 is unknown
  _write(tmp_path / "bad.tsv", "label\ttext\n1\tfine\n0\ttoo\tmany\n")
  script = tmp_path / "forked.py"
  script.write_text("""
import dataclasses, multiprocessing.pool, numpy as np
from embedlab.data import cache as cache_lib
from embedlab.data.rows import DataError
from embedlab.data import encoding
from embedlab.config import DataConfig
cache_lib._MIN_FILE_BYTES = encoding._MIN_FORK_CHARS = 0
pools = []
class Spy(multiprocessing.pool.Pool):
  def __init__(self, processes, *a, **k):
    pools.append(processes)
    super().__init__(processes, *a, **k)
multiprocessing.pool.Pool = Spy
base = DataConfig(source="files", train="train.tsv", test="test.tsv", dev_fraction=0.1,
                  ngrams=2, num_buckets=64, max_len=3, workers=2)
for cfg in (base, dataclasses.replace(base, max_examples=700, min_freq=2, eos=True),
            dataclasses.replace(base, test="test3.tsv", skip_bad_rows=True)):
  del pools[:]
  forked = cache_lib.encode_splits(cfg, 0, cache=False)
  assert pools == [2], pools  # one pool: a process per file reads and tokenizes it
  one = cache_lib.encode_splits(dataclasses.replace(cfg, workers=1), 0, cache=False)
  assert pools == [2], pools
  assert forked.vocab == one.vocab and forked.label_names == one.label_names
  assert forked.skipped == one.skipped
  for name in ("train", "dev", "test"):
    for a, b in zip(forked.split(name), one.split(name)):
      np.testing.assert_array_equal(a, b)
assert one.skipped["test"] > 0
try:
  cache_lib.encode_splits(dataclasses.replace(base, test="bad.tsv"), 0, cache=False)
except DataError as e:
  assert "bad.tsv, line 3: malformed row" in str(e), e
else:
  raise AssertionError("no DataError")
print("forked ok")
""")
  import os, subprocess, sys  # noqa: E401, PLC0415
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, EMBEDLAB_DATA=str(tmp_path)))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "forked ok" in done.stdout
