"""Tests for embedlab.data.text: the tokenizer and the vocabulary (vs. references)."""

import numpy as np
import pytest

from embedlab.data import text

# ----------------------------------------------------------------------------- tokenize


@pytest.mark.parametrize("raw, expected", [
    ("Hello, World!", ["hello", ",", "world", "!"]),
    ("It's NOT bad... isn't it?", ["it's", "not", "bad", ".", ".", ".", "isn't", "it", "?"]),
    ("it 's a does n't ( director )", ["it", "'s", "a", "does", "n't", "(", "director", ")"]),
    ("'Star Wars' rocks", ["'", "star", "wars", "'", "rocks"]),
    ("line<br />break<br/>x<BR>y", ["line", "break", "x", "y"]),
    ("café naïve 10,000 $5", ["café", "naïve", "10", ",", "000", "$", "5"]),
    ("snake_case t2_w17", ["snake_case", "t2_w17"]),
    ("  \t\n ", []),
    ("", []),
])
def test_tokenize_cases(raw, expected):
  assert text.tokenize(raw) == expected


def test_tokenize_keeps_case_when_asked():
  assert text.tokenize("The CAT's <br />Hat", lowercase=False) == ["The", "CAT's", "Hat"]


def test_tokenize_many_matches_tokenize():
  texts = ["A b, c.", "", "<br />X y'z 'S", "Ünïcode — dash", "x" * 50]
  for lowercase in (True, False):
    assert text.tokenize_many(texts, lowercase) == [text.tokenize(t, lowercase) for t in texts]


def test_tokenize_many_matches_the_regex_on_random_unicode():
  # tokenize_many splits on whitespace first and skips the regex for word-only pieces; that
  # must give the regex's tokens exactly, whatever the characters (digits of other scripts,
  # combining marks, "_", odd spaces, apostrophes, punctuation).
  rng = np.random.default_rng(0)
  alphabet = list("aZ9_'’-.,!? \t\n\u00a0\u2003\u3000éß²½٣ǅ\u0301中文<br/>")
  alphabet += ["<br />", "'s", "n't"]
  texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(2000)]
  for lowercase in (True, False):
    assert text.tokenize_many(texts, lowercase) == [text.tokenize(t, lowercase) for t in texts]
    # and tokenize is the plain regex on the cleaned text
    for t in texts[:200]:
      cleaned = text._BR_RE.sub(" ", t)
      assert text.tokenize(t, lowercase) == text._TOKEN_RE.findall(
          cleaned.lower() if lowercase else cleaned)


# ----------------------------------------------------------------------------- vocab


def test_build_vocab_orders_by_frequency_then_token():
  docs = [["b", "a", "c", "b"], ["c", "d", "b", "a"]]  # b:3, a:2, c:2, d:1
  v = text.build_vocab(docs)
  assert v.tokens == ("<pad>", "<unk>", "b", "a", "c", "d")
  assert text.build_vocab(list(reversed(docs))).tokens == v.tokens  # order-independent
  assert text.PAD_ID == 0 and text.UNK_ID == 1


def test_build_vocab_min_freq_and_max_size():
  docs = [["b", "a", "c", "b"], ["c", "d", "b", "a"]]
  assert text.build_vocab(docs, min_freq=2).tokens == ("<pad>", "<unk>", "b", "a", "c")
  assert text.build_vocab(docs, max_size=4).tokens == ("<pad>", "<unk>", "b", "a")
  assert len(text.build_vocab(docs, max_size=2)) == 2
  with pytest.raises(ValueError, match="max_size = 1"):
    text.build_vocab(docs, max_size=1)


def test_build_vocab_ignores_special_tokens_in_input():
  v = text.build_vocab([["<pad>", "<unk>", "x", "<unk>"]])
  assert v.tokens == ("<pad>", "<unk>", "x")


def test_vocab_lookup_and_encode():
  v = text.Vocab(("<pad>", "<unk>", "the", "film"))
  assert len(v) == 4
  assert v.id_of("film") == 3 and v.id_of("zebra") == text.UNK_ID
  ids = v.encode(["the", "zebra", "film"])
  assert ids.dtype == np.int32 and ids.tolist() == [2, 1, 3]
  assert v.encode([]).shape == (0,)
  # an iterator of known length: the same ids
  assert v.encode(iter(["film", "zebra"]), count=2).tolist() == [3, 1]


def test_vocab_rejects_bad_tokens():
  with pytest.raises(ValueError, match="first two tokens"):
    text.Vocab(("a", "<unk>"))
  with pytest.raises(ValueError, match="duplicate tokens \\['x'\\]"):
    text.Vocab(("<pad>", "<unk>", "x", "x"))


def test_vocab_save_load_round_trip(tmp_path):
  # \x85 and \u2028 would be line breaks for str.splitlines(); the file format must not care.
  v = text.Vocab.from_words(["the", "café", "'s", "a\x85b", "c\u2028d", "", "."])
  path = tmp_path / "vocab.txt"
  v.save(path)
  assert text.Vocab.load(path) == v
  assert path.read_bytes().decode("utf-8").split("\n")[:3] == ["<pad>", "<unk>", "the"]
  with pytest.raises(ValueError, match="line break"):
    text.Vocab.from_words(["a\nb"]).save(tmp_path / "bad.txt")
  (tmp_path / "cut.txt").write_text("<pad>\n<unk>\nx", encoding="utf-8")
  with pytest.raises(ValueError, match="does not end with a newline"):
    text.Vocab.load(tmp_path / "cut.txt")


def test_vocab_from_counts_is_build_vocab():
  docs = [["b", "a", "c", "b"], ["c", "d", "b", "a", "<unk>"]]
  counts = {}
  for token in (t for doc in docs for t in doc):
    counts[token] = counts.get(token, 0) + 1
  for kw in (dict(), dict(min_freq=2), dict(max_size=4)):
    assert text.vocab_from_counts(dict(counts), **kw) == text.build_vocab(docs, **kw)
