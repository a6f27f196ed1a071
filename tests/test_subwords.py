"""fastText-style character n-grams (``data.minn`` / ``data.maxn``): the ids against fastText's own
(``get_subwords``, ``get_word_vector``, ``get_sentence_vector`` over its trained input matrix),
the vectorized table against a plain code-point reference, the encoded layout, the cache, the
config checks, and a trained run's vectors for words it never saw (``Run.embed``, ``inspect``)."""

import contextlib
import io

import fasttext
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import embedlab as el
from embedlab import cli, config as config_lib
from embedlab.data import cache as cache_lib
from embedlab.data import encoding, ngrams, text
from embedlab.data.options import DataConfig
from embedlab.models import classifiers
from embedlab.run import inspection
from embedlab.run import train
from test_train import quiet, tiny

# in fastText's vocabulary (trained on) and never seen, ASCII and not, shorter than minn and not
TRAIN_WORDS = ["café", "naïve", "日本語", "a", "ab", "film", "films", "filming", "good", "bad",
               "😀ok", "e\u0301t\u00e9", "it's", "x"]
UNSEEN_WORDS = ["cafés", "naïveté", "日本", "z", "qq", "unfilmable", "über", "😀😀", "\u00e9"]


def fasttext_model(tmp_path, minn, maxn, bucket, dim=8):
  """A tiny fastText supervised model on lines of TRAIN_WORDS (every word seen)."""
  rng = np.random.default_rng(0)
  lines = []
  for i in range(40):
    words = rng.choice(TRAIN_WORDS, size=6)
    lines.append(f"__label__{i % 2} " + " ".join(words))
  lines.append("__label__0 " + " ".join(TRAIN_WORDS))
  path = tmp_path / f"train_{minn}_{maxn}_{bucket}.txt"
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return fasttext.train_supervised(str(path), minn=minn, maxn=maxn, bucket=bucket, dim=dim,
                                   epoch=2, minCount=1, wordNgrams=1, thread=1, seed=0,
                                   verbose=0)


def reference_subwords(word, minn, maxn, num_buckets, offset):
  """The n-grams of ``"<" + word + ">"`` by Python code points (not bytes), hashed byte by byte
  with fastText's signed-char FNV-1a: an independent spelling of ``computeSubwords``."""
  if word == text.EOS_TOKEN:
    return []
  wrapped = "<" + word + ">"
  out = []
  for i in range(len(wrapped)):
    for n in range(minn, maxn + 1):
      if i + n > len(wrapped) or (n == 1 and (i == 0 or i + n == len(wrapped))):
        continue
      h = 2166136261
      for b in wrapped[i:i + n].encode("utf-8"):
        h = ((h ^ (b if b < 128 else b | 0xFFFFFF00)) * 16777619) % 2**32
      out.append(offset + h % num_buckets)
  return out


# ----------------------------------------------------------------------------- ids vs fastText


@pytest.mark.parametrize("minn, maxn, bucket", [(3, 6, 2_000_000), (3, 6, 1000), (1, 2, 97),
                                                (2, 4, 50_000)])
def test_subword_ids_are_fasttexts(tmp_path, minn, maxn, bucket):
  model = fasttext_model(tmp_path, minn, maxn, bucket)
  nwords = len(model.words)
  assert set(TRAIN_WORDS) <= set(model.words)
  table = ngrams.subword_table(TRAIN_WORDS + UNSEEN_WORDS, minn, maxn, bucket, nwords)
  for i, word in enumerate(TRAIN_WORDS + UNSEEN_WORDS):
    grams, ids = model.get_subwords(word)
    if word in model.words:  # fastText lists the word's own id first
      assert grams[0] == word and ids[0] == model.words.index(word)
      grams, ids = grams[1:], ids[1:]
    assert len(ids) > 0
    got = ngrams.subword_ids(word, minn, maxn, bucket, nwords)
    assert got.tolist() == ids.tolist(), (word, grams)
    assert table[1][table[0][i]:table[0][i + 1]].tolist() == ids.tolist(), word
  # </s> is a word of every fastText line and has no n-grams
  assert model.get_subwords("</s>")[1].tolist() == [model.words.index("</s>")]
  assert ngrams.subword_ids("</s>", minn, maxn, bucket, nwords).size == 0


def test_word_and_sentence_vectors_are_fasttexts(tmp_path):
  # fastText's input matrix as an embedlab table: <pad>, <unk>, then its rows (words, buckets)
  bucket = 5000
  model = fasttext_model(tmp_path, 3, 6, bucket)
  vocab = text.Vocab.from_words(model.words)
  table = np.concatenate([np.zeros((2, 8), np.float32), model.get_input_matrix()])
  cfg = DataConfig(minn=3, maxn=6, num_buckets=bucket, eos=True, max_len=64)
  words = TRAIN_WORDS + UNSEEN_WORDS
  rows = cache_lib.word_rows(cfg, vocab, words)
  mine = np.asarray(el.bag({"table": table}, rows, mode="mean", padding_id=0))
  theirs = np.stack([model.get_word_vector(w) for w in words])
  np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)
  # a sentence: the mean over every word's id and n-gram ids, </s> included (the bag model)
  sentences = ["café film good", "naïve 日本語 a ab", "x", "films filming bad it's"]
  ids = encoding.encode([s.split() + [text.EOS_TOKEN] for s in sentences], vocab, max_len=64,
                    num_buckets=bucket, minn=3, maxn=6)
  assert ids.shape[1] > 64  # the subword block follows the word slots
  mine = np.asarray(el.bag({"table": table}, ids, mode="mean", padding_id=0))
  theirs = np.stack([model.get_sentence_vector(s) for s in sentences])
  np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-7)


def test_bag_model_pools_subwords_like_any_other_id():
  # the classifier's bag is the mean over every non-padding id of the row, n-grams included
  vocab = text.Vocab.from_words(["film", "good"])
  ids = encoding.encode([["good", "film", "zz"], ["film"]], vocab, max_len=4, ngrams=2,
                    num_buckets=64, minn=3, maxn=5)
  embedder = classifiers.make_embedder(len(vocab) + 64, 6)
  model = classifiers.make_model("bag", embedder, 2, pooling="mean", hidden=0)
  params = model.init(jax.random.key(0))
  table = np.asarray(params["embed"]["table"])
  pooled = np.stack([table[row[row != 0]].mean(axis=0) for row in ids])
  expected = pooled @ np.asarray(params["out"]["w"]) + np.asarray(params["out"]["b"])
  np.testing.assert_allclose(np.asarray(model.apply(params, ids)), expected, rtol=1e-5,
                             atol=1e-6)


# ----------------------------------------------------------------------------- references


@settings(max_examples=200, deadline=None)
@given(words=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                      max_size=8),
       minn=st.integers(1, 4), extra=st.integers(0, 3),
       bucket=st.sampled_from([1, 7, 1000, 2_000_000]))
def test_subword_table_matches_a_code_point_reference(words, minn, extra, bucket):
  maxn = minn + extra
  indptr, ids = ngrams.subword_table(words, minn, maxn, bucket, 5)
  assert indptr.tolist()[0] == 0 and len(indptr) == len(words) + 1
  for i, word in enumerate(words):
    expected = reference_subwords(word, minn, maxn, bucket, 5)
    assert ids[indptr[i]:indptr[i + 1]].tolist() == expected, word
    assert ngrams.subword_ids(word, minn, maxn, bucket, 5).tolist() == expected, word


def test_subword_ids_reject_bad_lengths():
  with pytest.raises(ValueError, match="1 <= minn <= maxn"):
    ngrams.subword_ids("word", 4, 3, 10, 0)
  with pytest.raises(ValueError, match="num_buckets"):
    ngrams.subword_table(["word"], 3, 6, 0, 0)


# ----------------------------------------------------------------------------- encoding


def test_encode_appends_each_rows_subwords_unknown_words_included():
  docs = [["good", "film", "zqx", text.EOS_TOKEN], [], ["film"] * 5, ["über", "日本語"]]
  vocab = text.Vocab.from_words(["film", "good", text.EOS_TOKEN])
  max_len, buckets = 4, 1000
  ids = encoding.encode(docs, vocab, max_len=max_len, ngrams=2, num_buckets=buckets, minn=3, maxn=6)
  plain = encoding.encode(docs, vocab, max_len=max_len, ngrams=2, num_buckets=buckets)
  np.testing.assert_array_equal(ids[:, :2 * max_len], plain)  # words and bigrams unchanged
  block = ids[:, 2 * max_len:]
  expected = [[i for t in doc[:max_len] for i in ngrams.subword_ids(t, 3, 6, buckets, len(vocab))]
              for doc in docs]
  assert block.shape[1] == max(map(len, expected))
  for row, want in zip(block, expected):
    assert row[:len(want)].tolist() == want and not row[len(want):].any()
  # the unknown word keeps <unk> in its slot and still has its n-grams; </s> has none
  assert ids[0, 2] == text.UNK_ID
  assert expected[0] == [i for w in ("good", "film", "zqx")
                         for i in ngrams.subword_ids(w, 3, 6, buckets, len(vocab))]


def test_encode_shards_equal_encode_with_subwords():
  texts = ["a fine film", "naïve café film", "", "unseen wordz here", "film " * 9, "日本語 ok"]
  splits = {"train": texts[:4], "test": texts[3:]}
  kwargs = dict(max_len=6, ngrams=2, num_buckets=512, minn=2, maxn=5)
  vocab, encoded = encoding.encode_corpus(splits, **kwargs)
  shards = [encoding.tokenize_parts({"all": texts[:3]}),
            encoding.tokenize_parts({"all": texts[3:]})]
  layout = {"train": [(0, "all", None), (1, "all", np.array([0]))],
            "test": [(1, "all", None)]}
  vocab2, sharded = encoding.encode_shards(shards, layout, **kwargs)
  assert vocab2 == vocab
  for name, split in splits.items():
    direct = encoding.encode(text.tokenize_many(split), vocab, **kwargs)
    np.testing.assert_array_equal(encoded[name], direct)
    np.testing.assert_array_equal(sharded[name], direct)


@pytest.mark.parametrize("prune", [False, True])
def test_cache_round_trips_subwords(tmp_path, prune):
  cfg = DataConfig(synthetic_train_size=60, synthetic_eval_size=20, max_len=10, ngrams=2,
                   num_buckets=4096, minn=3, maxn=6, prune_buckets=prune)
  data = cache_lib.encode_splits(cfg, 0, cache_dir=tmp_path)
  back = cache_lib.encode_splits(cfg, 0, cache_dir=tmp_path)
  assert cache_lib.is_cached(cfg, 0, cache_dir=tmp_path)
  for name in ("train", "dev", "test"):
    np.testing.assert_array_equal(back.split(name)[0], data.split(name)[0])
  assert data.train_ids.shape[1] > 2 * cfg.max_len
  assert data.num_embeddings == cache_lib.table_rows(cfg, len(data.vocab), data.kept_buckets)
  assert data.train_ids.max() < data.num_embeddings
  plain = cache_lib.encode_splits(DataConfig(**{**cfg.__dict__, "minn": 0, "maxn": 0}), 0,
                                  cache_dir=tmp_path)
  assert cache_lib.cache_key(cfg, 0) != cache_lib.cache_key(
      DataConfig(**{**cfg.__dict__, "minn": 0, "maxn": 0}), 0)
  if not prune:  # the same words and bigrams, then the subword block
    np.testing.assert_array_equal(data.train_ids[:, :2 * cfg.max_len], plain.train_ids)


@pytest.mark.parametrize("overrides, message", [
    (["data.minn=3"], "data.minn = 3, data.maxn = 0"),
    (["data.maxn=6"], "data.minn = 0, data.maxn = 6"),
    (["data.minn=5", "data.maxn=3", "data.num_buckets=10"], "0 < data.minn <= data.maxn"),
    (["data.minn=-1", "data.maxn=3"], "data.minn = -1 must be >= 0"),
    (["data.minn=3", "data.maxn=6"], "need data.num_buckets > 0"),
])
def test_config_checks_the_character_ngram_lengths(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    tiny(*overrides)


def test_config_accepts_subwords_and_prunes_their_buckets():
  cfg = tiny("data.minn=3", "data.maxn=6", "data.num_buckets=1000", "data.prune_buckets=true")
  assert cfg.data.subwords and cfg.data.pruned and cfg.data.ngrams == 1


# ----------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def subword_run(tmp_path_factory):
  path = tmp_path_factory.mktemp("subwords") / "run"
  train.train(tiny("data.minn=3", "data.maxn=6", "data.num_buckets=997",
                   "data.prune_buckets=true", "train.num_epochs=3"), path, echo=quiet)
  return path


def test_run_embeds_unseen_words_as_the_mean_of_their_ngram_rows(subword_run):
  run = el.load_run(subword_run)
  emb = inspection.load_embedding(subword_run)
  vocab, data = run.vocab, run.config.data
  kept = list(run.kept_buckets)

  def row_of(gram_id):  # pruned: kept buckets get their own rows, the rest share the last
    return (len(vocab) + kept.index(gram_id)) if gram_id in kept else len(vocab) + len(kept)

  words = ["t0_w1", "s0", "t0_w1zz", "unseenword"]
  got = run.embed(words)
  for word, vector in zip(words, got):
    grams = ngrams.subword_ids(word, 3, 6, data.num_buckets, len(vocab))
    rows = [row_of(int(g)) for g in grams]
    if word in vocab.tokens:
      rows = [vocab.id_of(word)] + rows
    np.testing.assert_allclose(vector, emb.table[rows].mean(axis=0), rtol=1e-5, atol=1e-6)
  assert "unseenword" not in vocab.tokens
  np.testing.assert_allclose(inspection.word_vectors(emb, words), got, rtol=1e-5, atol=1e-6)
  with pytest.raises(el.UnknownWordsError, match="'two words'"):
    run.embed(["s0", "two words"])


def test_inspect_gives_neighbours_of_an_unseen_word(subword_run):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["inspect", str(subword_run), "--word", "t0_w1zz", "s0", "-k", "3"]) == 0
  lines = [line.split() for line in out.getvalue().splitlines()
           if line.strip().startswith(("t0_w1zz", "s0 "))]
  assert [line[0] for line in lines] == ["t0_w1zz", "s0"]
  emb = inspection.load_embedding(subword_run)
  found = inspection.word_neighbours(emb, ["t0_w1zz", "s0"], k=3)
  assert lines[0][1::2] == [w for w, _ in found[0]]
  assert "s0" not in [w for w, _ in found[1]]  # a vocabulary word is not its own neighbour
  # the neighbours of the unseen word: brute force over the vocabulary's fastText vectors
  vectors = inspection.vocabulary_vectors(emb)
  query = inspection.word_vectors(emb, ["t0_w1zz"])[0]
  cosine = vectors[2:] @ query / (np.linalg.norm(vectors[2:], axis=1) * np.linalg.norm(query))
  assert [w for w, _ in found[0]] == [emb.tokens[2 + i] for i in np.argsort(-cosine)[:3]]


def test_without_subwords_unseen_words_stay_an_error(tmp_path):
  path = tmp_path / "run"
  train.train(tiny(), path, echo=quiet)
  with pytest.raises(el.UnknownWordsError, match="'unseenword' not in the run's vocabulary"):
    el.load_run(path).embed(["s0", "unseenword"])
  emb = inspection.load_embedding(path)
  with pytest.raises(KeyError, match="unseenword"):
    inspection.word_neighbours(emb, ["unseenword"])
  with pytest.raises(KeyError, match="data.minn = 0"):
    inspection.word_vectors(emb, ["unseenword"])
