"""Tests for embedlab.data.vectors: reading / writing text word vectors, aligned to a vocabulary."""

import gzip
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gensim.models import KeyedVectors

from embedlab.data.vectors import load_vectors, read_vectors, save_vectors

FILE_WORDS = ["the", "movie", "good", "bad", "Paris", "london", "of", '"']
VOCAB = ["<pad>", "<unk>", "the", "movie", "missing1", "good", "London", "Paris", "missing2",
         "paris", '"']


def _random_vectors(num_words, dim, seed=0):
  # Values with few digits (as GloVe's %.5g), so their text is an exact, known float32.
  rng = np.random.default_rng(seed)
  return np.round(rng.normal(0.0, 0.7, (num_words, dim)), 4).astype(np.float32)


def _write(path, words, vectors, *, header, trailing_space=False, gz=False):
  lines = [f"{len(words)} {vectors.shape[1]}"] if header else []
  for word, vec in zip(words, vectors):
    lines.append(word + " " + " ".join(f"{v:.4f}" for v in vec) + (" " if trailing_space else ""))
  data = ("\n".join(lines) + "\n").encode("utf-8")
  if gz:
    data = gzip.compress(data)
  pathlib.Path(path).write_bytes(data)
  return path


FORMATS = {
    "glove": dict(header=False),
    "word2vec": dict(header=True),
    "fasttext_vec": dict(header=True, trailing_space=True),
    "glove_gz": dict(header=False, gz=True),
    "word2vec_gz": dict(header=True, gz=True),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_load_aligns_exact_values_in_every_format(tmp_path, fmt):
  vectors = _random_vectors(len(FILE_WORDS), 6)
  suffix = ".txt.gz" if fmt.endswith("gz") else (".vec" if fmt == "fasttext_vec" else ".txt")
  path = _write(tmp_path / f"vectors{suffix}", FILE_WORDS, vectors, **FORMATS[fmt])

  params, found = load_vectors(path, VOCAB, lowercase_fallback=False)

  table = np.asarray(params["table"])
  assert table.shape == (len(VOCAB), 6) and table.dtype == np.float32
  expected_found = [t in FILE_WORDS for t in VOCAB]
  expected_found[0] = False  # the padding row is never taken from the file
  np.testing.assert_array_equal(found, expected_found)
  assert found.dtype == np.bool_ and int(found.sum()) == 5
  for i, token in enumerate(VOCAB):
    if found[i]:
      np.testing.assert_array_equal(table[i], vectors[FILE_WORDS.index(token)])
  np.testing.assert_array_equal(table[0], np.zeros(6, np.float32))


def test_read_vectors_returns_all_words_in_order(tmp_path):
  vectors = _random_vectors(len(FILE_WORDS), 4)
  path = _write(tmp_path / "v.vec", FILE_WORDS, vectors, header=True, trailing_space=True)
  words, got = read_vectors(path)
  assert words == FILE_WORDS
  np.testing.assert_array_equal(got, vectors)
  words, got = read_vectors(path, limit=3)
  assert words == FILE_WORDS[:3]
  np.testing.assert_array_equal(got, vectors[:3])


def test_lowercase_fallback_prefers_exact_match(tmp_path):
  vectors = _random_vectors(len(FILE_WORDS), 5)
  path = _write(tmp_path / "v.txt", FILE_WORDS, vectors, header=False)
  vocab = ["<pad>", "The", "LONDON", "Paris", "paris", "Movie"]
  params, found = load_vectors(path, vocab)
  table = np.asarray(params["table"])
  row = {w: vectors[i] for i, w in enumerate(FILE_WORDS)}
  np.testing.assert_array_equal(found, [False, True, True, True, False, True])
  np.testing.assert_array_equal(table[1], row["the"])
  np.testing.assert_array_equal(table[2], row["london"])
  np.testing.assert_array_equal(table[3], row["Paris"])  # exact match, not "paris" (absent)
  np.testing.assert_array_equal(table[5], row["movie"])

  _, found = load_vectors(path, vocab, lowercase_fallback=False)
  np.testing.assert_array_equal(found, [False, False, False, True, False, False])


def test_duplicate_words_keep_the_first_vector(tmp_path):
  vectors = _random_vectors(3, 4)
  path = _write(tmp_path / "v.txt", ["a", "b", "a"], vectors, header=False)
  params, found = load_vectors(path, ["<pad>", "a", "b"])
  np.testing.assert_array_equal(np.asarray(params["table"])[1], vectors[0])


def test_missing_rows_match_found_std_and_use_key(tmp_path):
  num_words, dim = 400, 32
  words = [f"w{i}" for i in range(num_words)]
  vectors = _random_vectors(num_words, dim, seed=1) * 3.0
  path = _write(tmp_path / "v.txt", words, vectors, header=False)
  vocab = ["<pad>", "<unk>"] + words + [f"new{i}" for i in range(400)]

  params, found = load_vectors(path, vocab, key=jax.random.key(7))
  table = np.asarray(params["table"])
  missing = table[~found][1:]  # without the zero padding row
  assert missing.shape == (401, dim)
  found_std = float(table[found].std())
  assert abs(float(missing.std()) / found_std - 1) < 0.05
  assert abs(float(missing.mean())) < 0.05 * found_std

  uniform, _ = load_vectors(path, vocab, key=jax.random.key(7), init="uniform")
  u = np.asarray(uniform["table"])[~found][1:]
  assert abs(float(u.std()) / found_std - 1) < 0.05
  assert np.abs(u).max() <= found_std * np.sqrt(3) * 1.0001  # uniform's half-width

  fixed, _ = load_vectors(path, vocab, key=jax.random.key(7), scale=0.01)
  assert abs(float(np.asarray(fixed["table"])[~found][1:].std()) / 0.01 - 1) < 0.05
  other, _ = load_vectors(path, vocab, key=jax.random.key(8))
  assert not np.array_equal(np.asarray(other["table"])[~found], table[~found])
  np.testing.assert_array_equal(np.asarray(other["table"])[found], table[found])


def test_vocab_object_padding_none_and_dtype(tmp_path):
  class Vocab:
    tokens = ("<pad>", "<unk>", "the", "good")

  vectors = _random_vectors(len(FILE_WORDS), 3)
  path = _write(tmp_path / "v.txt", FILE_WORDS, vectors, header=False)
  params, found = load_vectors(path, Vocab(), dtype=jnp.bfloat16)
  assert params["table"].dtype == jnp.bfloat16 and params["table"].shape == (4, 3)
  np.testing.assert_array_equal(np.asarray(params["table"][2], np.float32),
                                vectors[0].astype(jnp.bfloat16).astype(np.float32))

  # With padding_id=None a found word at id 0 is kept.
  params, found = load_vectors(path, ["the", "good"], padding_id=None)
  assert found.tolist() == [True, True]
  np.testing.assert_array_equal(np.asarray(params["table"])[0], vectors[0])


def test_wrong_number_of_values_names_file_line_and_dim(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_text("the 1 2 3\nof 4 5 6\nand 7 8\nto 1 2 3\n")
  with pytest.raises(ValueError, match=r"bad\.txt, line 3: expected 3 values after the word "
                                       r"'and' .*found 2\. .*fix or delete that line"):
    load_vectors(path, ["<pad>", "the"])  # "and" is not in the vocabulary: still checked
  with pytest.raises(ValueError, match=r"line 3: expected 3 values"):
    read_vectors(path)


def test_truncated_gzip_last_line_is_reported(tmp_path):
  path = tmp_path / "cut.txt.gz"
  path.write_bytes(gzip.compress(b"the 1 2 3\nof 4 5 6\nand 7 8"))
  with pytest.raises(ValueError, match=r"cut\.txt\.gz, line 3: expected 3 values"):
    load_vectors(path, ["<pad>", "the"])


def test_header_dim_and_count_must_match_the_file(tmp_path):
  path = tmp_path / "hdr.vec"
  path.write_text("2 4\nthe 1 2 3\nof 4 5 6\n")
  with pytest.raises(ValueError, match=r"hdr\.vec, line 2: expected 4 values .*the header on "
                                       r"line 1 says 2 vectors of 4\), found 3"):
    load_vectors(path, ["<pad>", "the"])
  path.write_text("3 3\nthe 1 2 3\nof 4 5 6\n")
  with pytest.raises(ValueError, match=r"header says 3 vectors but the file holds 2.*truncated"):
    load_vectors(path, ["<pad>", "the"])


def test_empty_file_header_only_and_non_numbers(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(ValueError, match=r"empty\.txt: the file is empty\. Check the path"):
    load_vectors(empty, ["<pad>", "the"])
  empty.write_text("\n\n")
  with pytest.raises(ValueError, match=r"the file is empty"):
    read_vectors(empty)
  header_only = tmp_path / "header.vec"
  header_only.write_text("0 300\n")
  with pytest.raises(ValueError, match=r"header\.vec: the file has a header \(0 300\) but no "
                                       r"vectors"):
    load_vectors(header_only, ["<pad>", "the"])
  words = tmp_path / "words.txt"
  words.write_text("the 1 x 3\n")
  with pytest.raises(ValueError, match=r"words\.txt, line 1: the values of 'the' are not all "
                                       r"numbers"):
    load_vectors(words, ["<pad>", "the"])
  binary = tmp_path / "vectors.bin"
  binary.write_bytes(b"1 2\nthe \xff\xfe\x00\x01\x02\x03\x04\x05\n")
  with pytest.raises(ValueError, match=r"not valid utf-8 text.*binary word2vec"):
    load_vectors(binary, ["<pad>", "the"])


def test_bad_vocab_and_padding_id(tmp_path):
  path = _write(tmp_path / "v.txt", FILE_WORDS, _random_vectors(len(FILE_WORDS), 3), header=False)
  with pytest.raises(TypeError, match=r"vocab token 1 is 7"):
    load_vectors(path, ["<pad>", 7])
  with pytest.raises(ValueError, match=r"padding_id 5 is outside the table \(2 rows"):
    load_vectors(path, ["<pad>", "the"], padding_id=5)


@pytest.mark.parametrize("name", ["vectors.txt", "vectors.txt.gz"])
def test_save_vectors_round_trips_through_gensim_exactly(tmp_path, name):
  rng = np.random.default_rng(3)
  table = rng.normal(size=(6, 7)).astype(np.float32)  # full-precision float32 values
  table[2, 0] = -0.0
  table[3, 1] = 1e-30
  vocab = ["<pad>", "<unk>", "the", '"', "naïve", "x\xa0y"]
  path = tmp_path / name

  assert save_vectors(path, {"table": jnp.asarray(table)}, vocab) == 6
  kv = KeyedVectors.load_word2vec_format(os.fspath(path))
  assert list(kv.index_to_key) == vocab
  np.testing.assert_array_equal(kv.vectors, table)
  words, again = read_vectors(path)
  assert words == vocab
  np.testing.assert_array_equal(again, table)
  params, found = load_vectors(path, vocab, padding_id=None)
  assert found.all()
  np.testing.assert_array_equal(np.asarray(params["table"]), table)


def test_save_vectors_skip_special_and_no_header(tmp_path):
  table = _random_vectors(4, 3)
  vocab = ["<pad>", "<unk>", "the", "of"]
  path = tmp_path / "glove.txt"
  assert save_vectors(path, {"table": table}, vocab, header=False, skip_special=True) == 2
  kv = KeyedVectors.load_word2vec_format(os.fspath(path), no_header=True)
  assert list(kv.index_to_key) == ["the", "of"]
  np.testing.assert_array_equal(kv.vectors, table[2:])
  assert save_vectors(path, {"table": table}, vocab, skip_special=["<pad>"]) == 3
  assert path.read_text().splitlines()[0] == "3 3"
  assert read_vectors(path)[0] == ["<unk>", "the", "of"]


def test_save_vectors_rejects_words_it_cannot_write(tmp_path):
  table = _random_vectors(3, 2)
  with pytest.raises(ValueError, match=r"token 2 'new york' is empty or contains whitespace.*"
                                       r"replace\(' ', '_'\)"):
    save_vectors(tmp_path / "v.txt", {"table": table}, ["<pad>", "the", "new york"])
  with pytest.raises(ValueError, match=r"token 1 'a\\tb'"):
    save_vectors(tmp_path / "v.txt", {"table": table}, ["<pad>", "a\tb", "c"])
  with pytest.raises(ValueError, match=r"the vocabulary has 2 tokens but the table has 3 rows"):
    save_vectors(tmp_path / "v.txt", {"table": table}, ["<pad>", "the"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_save_vectors_refuses_a_vector_its_own_reader_would_refuse(tmp_path, bad):
  table = np.asarray(_random_vectors(4, 2))
  table[2, 1] = bad
  path = tmp_path / "v.txt"
  with pytest.raises(ValueError, match=r"save_vectors: 1 vectors hold NaN or infinite values "
                                       r"\(first: row 2, 'b'\)"):
    save_vectors(path, {"table": table}, ["<pad>", "a", "b", "c"])
  assert not path.exists()  # nothing half-written
  # a row left out is not written, so it may hold anything
  assert save_vectors(path, {"table": table}, ["<pad>", "a", "b", "c"], skip_special=["b"]) == 3
  assert read_vectors(path)[0] == ["<pad>", "a", "c"]


def test_gzip_output_is_deterministic(tmp_path):
  table = _random_vectors(3, 2)
  save_vectors(tmp_path / "a.txt.gz", {"table": table}, ["x", "y", "z"])
  save_vectors(tmp_path / "b.txt.gz", {"table": table}, ["x", "y", "z"])
  assert (tmp_path / "a.txt.gz").read_bytes() == (tmp_path / "b.txt.gz").read_bytes()
  assert (tmp_path / "a.txt.gz").read_bytes()[4:8] == b"\0\0\0\0"  # mtime 0


# --- the real GloVe 6B 50d file (CI has the data directory) ----------------------------------

GLOVE = "glove6b50d/glove.6B.50d.top100k.txt.gz"


def _data_dir() -> pathlib.Path:
  env = os.environ.get("EMBEDLAB_DATA")
  if env:
    return pathlib.Path(env)
  return pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _glove_path() -> pathlib.Path:
  path = _data_dir() / GLOVE
  if not path.is_file():
    pytest.fail(f"GloVe test data not found at {path}. Set EMBEDLAB_DATA to the data directory "
                f"(the folder holding {GLOVE}), or place it at <repo>/../shared/data.")
  return path


def _cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_real_glove_file():
  path = _glove_path()
  with gzip.open(path, "rt", encoding="utf-8") as f:
    first = f.readline().rstrip("\n").split(" ")
  assert first[0] == "the" and len(first) == 51
  the_ref = np.array([float(v) for v in first[1:]], np.float32)

  vocab = ["<pad>", "<unk>", "the", ",", "movie", "good", "great", "banana", "Good",
           "zzzznotaword", "apple"]
  params, found = load_vectors(path, vocab)
  table = np.asarray(params["table"])
  assert table.shape == (len(vocab), 50)
  np.testing.assert_array_equal(found, [False, False, True, True, True, True, True, True, True,
                                        False, True])
  np.testing.assert_array_equal(table[2], the_ref)
  np.testing.assert_array_equal(table[0], np.zeros(50, np.float32))
  np.testing.assert_array_equal(table[8], table[5])  # "Good" falls back to "good"
  good, great, banana, apple = table[5], table[6], table[7], table[10]
  assert _cos(good, great) > 0.7 > 0.3 > _cos(good, banana)  # measured: 0.80 and 0.23
  assert _cos(banana, apple) > 0.5 > _cos(banana, great)  # measured: 0.56 and 0.17
  # the missing rows look like the found ones
  assert 0.5 < np.abs(table[[1, 9]]).mean() / np.abs(table[found]).mean() < 2


@pytest.mark.parametrize("value,what", [("nan", "is not a finite number"),
                                        ("-inf", "is not a finite number"),
                                        ("1e400", "is not a finite number"),
                                        ("3.5e38", r"overflows float32 \(largest 3.402823e\+38\)")])
def test_non_finite_and_overflowing_values_name_file_line_and_word(tmp_path, value, what):
  path = tmp_path / "odd.txt"
  path.write_text(f"the 1 2 3\nof 4 {value} 6\nand 7 8 9\n")
  message = rf"odd\.txt, line 2: value 2 of 'of', '{value}', {what}"
  with pytest.raises(ValueError, match=message):
    load_vectors(path, ["<pad>", "the", "of"])
  with pytest.raises(ValueError, match=message):
    read_vectors(path)
  params, found = load_vectors(path, ["<pad>", "the", "and"])  # the line is never used
  assert found.tolist() == [False, True, True]
  if value == "3.5e38":  # float64 holds it; bfloat16 does not
    assert read_vectors(path, dtype=np.float64)[1][1, 1] == 3.5e38
    with pytest.raises(ValueError, match=r"line 2: value 2 of 'of', '3.5e38', overflows bfloat16"):
      load_vectors(path, ["<pad>", "of"], dtype=jnp.bfloat16)


def test_the_largest_float32_round_trips(tmp_path):
  path = tmp_path / "max.txt"
  save_vectors(path, {"table": jnp.array([[np.finfo(np.float32).max, -1.0]])}, ["big"])
  words, vectors = read_vectors(path)
  assert vectors[0, 0] == np.finfo(np.float32).max
