"""embedlab.analysis.inspection and `embedlab inspect / export`: neighbours and analogies against brute-force
numpy (and gensim), summaries against the rebuilt initial table, the data behind each picture,
exports that round-trip, and an exported table initialising another run."""

import contextlib
import io
import json
import pathlib
import time

import numpy as np
import pytest

from embedlab import cli, config as config_lib
from embedlab.data import cache as cache_lib
from embedlab.data import synthetic as synthetic_lib
from embedlab.analysis import geometry
from embedlab.analysis import neighbours
from embedlab.run import inspection
from embedlab.run import report
from embedlab.run import build as build_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
QUICK = str(REPO / "experiments" / "quickstart.py")
TINY = ["data.synthetic_train_size=512", "data.synthetic_eval_size=64", "train.num_epochs=2",
        "train.eval_every=4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One tiny quickstart run, trained through the command (so the planted check runs too)."""
  workdir = tmp_path_factory.mktemp("inspect") / "run"
  out = io.StringIO()
  args = ["train", QUICK, "--workdir", str(workdir), "--no-progress"]
  with contextlib.redirect_stdout(out):
    assert cli.main(args + [x for o in TINY for x in ("--set", o)]) == 0
  return workdir, out.getvalue()


@pytest.fixture(scope="module")
def emb(run):
  return inspection.load_embedding(run[0])


# ----------------------------------------------------------------------------- references


def brute_force_neighbours(table, query, k, banned):
  """Cosine similarity of ``query`` with every row, one row at a time, in float64."""
  table = np.asarray(table, np.float64)
  query = np.asarray(query, np.float64)
  scored = []
  for i, row in enumerate(table):
    if i in banned:
      continue
    denom = np.linalg.norm(row) * np.linalg.norm(query)
    scored.append((-(row @ query / denom if denom > 0 else 0.0), i))
  scored.sort()
  return [i for _, i in scored[:k]], [-s for s, _ in scored[:k]]


def random_table(rows=300, features=12, seed=0):
  table = np.random.default_rng(seed).normal(size=(rows, features)).astype(np.float32)
  table[0] = 0  # a padding row
  table[7] = 0  # another all-zero row
  return table


# ----------------------------------------------------------------------------- neighbours


def test_nearest_neighbours_match_brute_force():
  table = random_table()
  queries = np.random.default_rng(1).normal(size=(9, 12)).astype(np.float32)
  skip = np.zeros(len(table), bool)
  skip[[0, 3, 5]] = True
  exclude = np.random.default_rng(2).integers(-1, len(table), size=(9, 2))
  ids, scores = neighbours.nearest_neighbours(table, queries, k=6, skip=skip,
                                              exclude_ids=exclude)
  assert ids.shape == scores.shape == (9, 6)
  for q in range(9):
    banned = {0, 3, 5} | {int(e) for e in exclude[q] if e >= 0}
    want_ids, want_scores = brute_force_neighbours(table, queries[q], 6, banned)
    assert ids[q].tolist() == want_ids
    np.testing.assert_allclose(scores[q], want_scores, atol=1e-5)


def test_nearest_neighbours_in_blocks_equal_one_block(monkeypatch):
  table = random_table()
  queries = table[10:60]
  whole = neighbours.nearest_neighbours(table, queries, k=4)
  monkeypatch.setattr(neighbours, "_SCORES_PER_BLOCK", 3 * len(table))  # 3 queries per block
  blocks = neighbours.nearest_neighbours(table, queries, k=4)
  np.testing.assert_array_equal(whole[0], blocks[0])
  np.testing.assert_array_equal(whole[1], blocks[1])


def test_word_neighbours_and_analogy_match_numpy_and_gensim():
  from gensim.models import KeyedVectors  # noqa: PLC0415
  table = random_table(200, 8, seed=3)
  tokens = ["<pad>", "<unk>"] + [f"w{i}" for i in range(198)]
  words = ["w5", "w77", "w150"]  # w5 is row 7, all zero: every cosine is 0, ties go to low ids
  got = neighbours.neighbours(table, tokens, words, k=5)
  for word, row in zip(words, got):
    want_ids, want_scores = brute_force_neighbours(table, table[tokens.index(word)], 5,
                                                   {0, 1, tokens.index(word)})
    assert [w for w, _ in row] == [tokens[i] for i in want_ids]
    np.testing.assert_allclose([s for _, s in row], want_scores, atol=1e-4)
  assert [w for w, _ in got[0]] == ["w0", "w1", "w2", "w3", "w4"]

  table[7] = 1.0  # gensim turns an all-zero vector into NaNs
  kv = KeyedVectors(8)
  kv.add_vectors(tokens[2:], table[2:])  # gensim without the two special rows
  for word, row in zip(words, neighbours.neighbours(table, tokens, words, k=5)):
    assert [w for w, _ in row] == [w for w, _ in kv.most_similar(word, topn=5)]

  a, b, c = "w10", "w20", "w30"
  unit = table / np.linalg.norm(table, axis=1, keepdims=True).clip(1e-12)
  query = unit[tokens.index(a)] - unit[tokens.index(b)] + unit[tokens.index(c)]
  want_ids, want_scores = brute_force_neighbours(
      table, query, 4, {0, 1} | {tokens.index(w) for w in (a, b, c)})
  got = neighbours.analogy(table, tokens, a, b, c, k=4)
  assert [w for w, _ in got] == [tokens[i] for i in want_ids]
  np.testing.assert_allclose([s for _, s in got], want_scores, atol=1e-4)
  gensim = kv.most_similar(positive=[a, c], negative=[b], topn=4)
  assert [w for w, _ in got] == [w for w, _ in gensim]
  np.testing.assert_allclose([s for _, s in got], [s for _, s in gensim], atol=1e-4)


def test_unknown_word_is_a_key_error_naming_close_words():
  tokens = ["<pad>", "<unk>", "movie", "film"]
  with pytest.raises(KeyError, match=r"'movei' is not in the vocabulary.*did you mean 'movie'"):
    neighbours.neighbours(np.eye(4, dtype=np.float32), tokens, ["movei"])


def test_a_single_string_where_a_list_of_words_belongs_is_an_error():
  # iterated, "cat" would be queried as "c", "a", "t"
  table = np.eye(5, 3, dtype=np.float32)
  tokens = ["<pad>", "cat", "c", "a", "t"]
  with pytest.raises(TypeError, match=r"neighbours: words must be a list of words, got the "
                                      r"string 'cat'; pass \['cat'\]"):
    neighbours.neighbours(table, tokens, "cat")
  assert [w for w, _ in neighbours.neighbours(table, tokens, ["cat"], k=3)[0]] == ["c", "a", "t"]
  # skip: a single string is one token, as in save_vectors (not its letters)
  assert [w for w, _ in neighbours.neighbours(table, tokens, ["cat"], k=4, skip="t")[0]] == [
      "<pad>", "c", "a"]
  assert "t" not in [w for w, _ in neighbours.analogy(table, tokens, "cat", "c", "a", k=2,
                                                       skip="t")]


def test_a_query_on_100k_rows_takes_well_under_a_second():
  table = np.random.default_rng(0).normal(size=(100_000, 64)).astype(np.float32)
  tokens = ["<pad>", "<unk>"] + [f"w{i}" for i in range(len(table) - 2)]
  neighbours.neighbours(table, tokens, ["w1"], k=10)  # warm-up (BLAS threads)
  start = time.perf_counter()
  (row,) = neighbours.neighbours(table, tokens, ["w99000"], k=10)
  answer = neighbours.analogy(table, tokens, "w3", "w4", "w5", k=10)
  took = time.perf_counter() - start
  assert took < 1.0, f"two queries on 100k rows took {took:.2f} s"
  query = table[tokens.index("w99000")]
  cosine = table @ query / (np.linalg.norm(table, axis=1) * np.linalg.norm(query))
  cosine[[0, 1, tokens.index("w99000")]] = -np.inf
  assert [w for w, _ in row] == [tokens[i] for i in np.argsort(-cosine)[:10]]
  assert len(answer) == 10


# ----------------------------------------------------------------------------- structure


def test_summarize_table_against_numpy():
  initial = random_table(50, 4)
  trained = initial.copy()
  trained[[3, 9, 20]] += 0.5
  trained[30, 2] = 7.0
  summary = geometry.summarize_table(trained, initial=initial, pretrained_rows=12, words=40)
  norms = np.linalg.norm(trained[1:], axis=1)
  assert (summary.rows, summary.features, summary.nbytes) == (50, 4, 50 * 4 * 4)
  assert summary.updated_rows == 4 and summary.zero_rows == 2
  np.testing.assert_allclose([summary.norm_min, summary.norm_median, summary.norm_mean,
                              summary.norm_max],
                             [norms.min(), np.median(norms), norms.mean(), norms.max()],
                             rtol=1e-6)
  text = str(summary)
  assert "50 rows (40 words + 10 n-gram buckets) x 4 features = 200 weights" in text
  assert "rows changed by training: 4 of 50" in text and "pretrained vectors: 12" in text


def test_run_summary_counts_exactly_the_rows_training_touched(emb):
  initial = inspection.initial_table(emb.config)
  summary = inspection.summarize_run(emb, initial=initial)
  data = cache_lib.encode_splits(emb.config.data, emb.config.seed)
  seen = set(np.unique(data.train_ids).tolist()) - {0}  # dense Adam moves exactly these rows
  changed = set(np.nonzero(np.any(initial != emb.table, axis=1))[0].tolist())
  assert changed == seen
  assert summary.updated_rows == len(seen) < summary.rows
  assert summary.pretrained_rows == 0
  np.testing.assert_array_equal(initial[0], 0)  # the padding row starts (and stays) zero


def test_pca_matches_the_covariance_eigenvectors():
  points = np.random.default_rng(0).normal(size=(80, 5)) * [5, 3, 1, 0.5, 0.1]
  coords, explained = geometry.pca(points, 2)
  centred = points - points.mean(0)
  values, vectors = np.linalg.eigh(centred.T @ centred)
  top = vectors[:, ::-1][:, :2]
  want = centred @ top
  for j in range(2):  # an eigenvector's sign is arbitrary
    sign = np.sign(want[:, j] @ coords[:, j])
    np.testing.assert_allclose(coords[:, j], sign * want[:, j], atol=1e-4)
  np.testing.assert_allclose(explained, values[::-1][:2] / values.sum(), rtol=1e-6)


def test_class_association_against_a_loop():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, 30, size=(200, 12))
  labels = rng.integers(0, 3, size=200)
  classes, counts = geometry.class_association(ids, labels, 30, 3, min_count=10)
  want = np.zeros((30, 3), np.int64)
  for doc, label in zip(ids, labels):
    for i in doc:
      if i != 0:
        want[i, label] += 1
  np.testing.assert_array_equal(counts, want)
  rates = want / want.sum(0)
  for i in range(30):
    assert classes[i] == (-1 if want[i].sum() < 10 else rates[i].argmax())


def test_topic_check_against_brute_force():
  table = random_table(60, 6, seed=4)
  tokens = ["<pad>", "<unk>"] + [f"w{i}" for i in range(58)]
  topics = {f"w{i}": (i % 3 if i < 45 else -1) for i in range(58)}
  check = geometry.topic_neighbour_accuracy(table, tokens, topics, k=4)
  hits, total, chance = 0, 0, []
  for i, token in enumerate(tokens):
    if topics.get(token, -1) < 0:
      continue
    ids, _ = brute_force_neighbours(table, table[i], 4, {0, 1, i})
    hits += sum(topics.get(tokens[j], -1) == topics[token] for j in ids)
    total += 4
    same = sum(t == topics[token] for t in topics.values()) - 1
    chance.append(same / (58 - 1))
  assert check.num_words == 45 and check.k == 4
  assert check.accuracy == pytest.approx(hits / total)
  assert check.chance == pytest.approx(np.mean(chance))


def test_training_recovers_the_planted_topics_and_train_reports_it(run, emb):
  workdir, out = run
  results = json.loads((workdir / "results.json").read_text())
  accuracy = results["planted_topic_neighbour_accuracy"]
  chance = results["planted_topic_neighbour_chance"]
  assert chance == pytest.approx(49 / 399, abs=1e-6)  # 50 words a topic, 400 candidates
  assert accuracy > 4 * chance  # even this 16-step run; the quickstart reaches 1.0
  last = out.strip().splitlines()[-1]
  assert last.startswith(f"planted structure: {accuracy:.1%} of the 5 nearest neighbours")
  assert str(workdir / "plots" / "embedding.png") in last
  assert (workdir / "plots" / "embedding.png").read_bytes().startswith(PNG_MAGIC)


# ----------------------------------------------------------------------------- pictures


def test_embedding_picture_shows_every_selected_word_in_its_group(emb, tmp_path):
  pic = inspection.plot_embedding(emb, tmp_path / "embedding.png", top=300, num_labels=12)
  assert pic.path.read_bytes().startswith(PNG_MAGIC) and pic.path.stat().st_size > 5000
  groups, names = inspection.word_groups(emb)
  shown = groups[2:302]  # the 300 most frequent words, after <pad> and <unk>
  assert sum(len(v) for v in pic.series.values()) == 300
  for g in set(shown.tolist()):
    assert len(pic.series[names[g]]) == (shown == g).sum()
  coords, _ = geometry.pca(emb.words[2:302], 2)
  drawn = np.concatenate([pic.series[names[g]] for g in sorted(set(shown.tolist()))])
  want = np.concatenate([coords[shown == g] for g in sorted(set(shown.tolist()))])
  np.testing.assert_allclose(drawn, want, atol=1e-5)
  assert len(pic.labels) == 12 and set(pic.labels) <= set(emb.tokens)

  chosen = inspection.plot_embedding(emb, tmp_path / "chosen.png", words=["t0_w1", "t2_w3", "s0"])
  assert sum(len(v) for v in chosen.series.values()) == 3
  assert set(chosen.labels) == {"t0_w1", "t2_w3", "s0"}


def test_norm_histogram_counts_every_row_but_padding(emb, tmp_path):
  initial = inspection.initial_table(emb.config)
  pic = inspection.plot_norms(emb, tmp_path / "norms.png", initial=initial)
  assert pic.path.read_bytes().startswith(PNG_MAGIC)
  assert pic.series["trained"].sum() == pic.series["initial"].sum() == emb.table.shape[0] - 1


def test_training_curves_show_every_logged_event(run, tmp_path):
  workdir = run[0]
  events = report.read_metrics(workdir)
  pic = report.plot_training_curves([workdir, workdir], tmp_path / "curves.png")
  assert pic.path.read_bytes().startswith(PNG_MAGIC)
  name = workdir.name
  train_points = [(e["step"], e["loss"]) for e in events if e["event"] == "train"]
  dev = [e for e in events if e.get("split") == "dev"]
  np.testing.assert_allclose(pic.series[f"loss: {name} train"], train_points)
  np.testing.assert_allclose(pic.series[f"dev accuracy: {name}"],
                             [(e["step"], e["accuracy"]) for e in dev])
  assert len(pic.series[f"loss: {name} dev"]) == len(dev) > 1


# ----------------------------------------------------------------------------- exports


def test_word2vec_export_round_trips_through_gensim(run, emb, tmp_path):
  from gensim.models import KeyedVectors  # noqa: PLC0415
  path = inspection.export_run(run[0], "word2vec", tmp_path / "vectors.txt")[0]
  kv = KeyedVectors.load_word2vec_format(str(path))
  assert list(kv.index_to_key) == list(emb.tokens[1:])  # every row but <pad>, in id order
  np.testing.assert_array_equal(kv.vectors, emb.words[1:])


def test_projector_files_keep_vectors_and_metadata_aligned(run, emb, tmp_path):
  paths = inspection.export_run(run[0], "projector", tmp_path / "projector")
  out = tmp_path / "projector"
  assert {p.name for p in paths} == {"tensors.tsv", "metadata.tsv", "projector_config.pbtxt",
                                     "projector_config.json"}
  vectors = np.loadtxt(out / "tensors.tsv", delimiter="\t", dtype=np.float32)
  lines = (out / "metadata.tsv").read_text().splitlines()
  header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
  assert header == ["word", "id", "count", "topic"]
  assert len(rows) == len(vectors) == emb.num_words - 1
  truth = synthetic_lib.synthetic_word_topics(emb.config.data)
  data = cache_lib.encode_splits(emb.config.data, emb.config.seed)
  counts = np.bincount(data.train_ids.ravel(), minlength=emb.num_words)
  for vector, (word, ident, count, topic) in zip(vectors, rows):
    np.testing.assert_array_equal(vector, emb.words[int(ident)])
    assert emb.tokens[int(ident)] == word and int(count) == counts[int(ident)]
    assert topic == ("shared word" if truth.get(word, -1) < 0 else f"topic {truth[word]}")
  config = (out / "projector_config.pbtxt").read_text()
  assert 'tensor_path: "tensors.tsv"' in config and 'metadata_path: "metadata.tsv"' in config
  standalone = json.loads((out / "projector_config.json").read_text())["embeddings"][0]
  assert standalone["tensorShape"] == list(vectors.shape)


def test_npy_export_holds_the_whole_table(run, emb, tmp_path):
  npy, tokens = inspection.export_run(run[0], "npy", tmp_path / "table")
  assert npy.name == "table.npy" and tokens.name == "table.tokens.txt"
  np.testing.assert_array_equal(np.load(npy), emb.table)
  assert tokens.read_text().splitlines() == list(emb.tokens)


def test_an_exported_table_initialises_another_experiment(run, emb, tmp_path):
  path = inspection.export_run(run[0], "word2vec", tmp_path / "from_run.txt.gz")[0]
  other = config_lib.load_config(QUICK, ["seed=1", "data.synthetic_train_size=256",
                                         f"model.pretrained={path.absolute()}"])
  data = cache_lib.encode_splits(other.data, other.seed)
  _, steps = build_lib.total_steps(other, len(data.train_labels))
  setup = build_lib.build(other, data, steps)
  table = np.asarray(setup.params["embed"]["table"])
  exported = dict(zip(emb.tokens, emb.words))
  shared = [i for i, t in enumerate(data.vocab.tokens) if t in exported and t != "<pad>"]
  assert len(shared) > 300 and setup.pretrained_found == len(shared)
  assert data.vocab.tokens[2:] != emb.tokens[2:len(data.vocab)]  # the ids differ: aligned by word
  for i in shared:
    np.testing.assert_array_equal(table[i], exported[data.vocab.tokens[i]])


# ----------------------------------------------------------------------------- commands


def test_inspect_command_prints_summary_neighbours_analogy_and_writes_pictures(run, emb, tmp_path,
                                                                               capsys):
  args = ["inspect", str(run[0]), "--word", "t0_w1", "s3", "--analogy", "t0_w1", "t0_w2",
          "t1_w3", "-k", "3", "--plots", str(tmp_path / "pics")]
  assert cli.main(args) == 0
  out = capsys.readouterr().out
  assert f"{emb.table.shape[0]} rows x 16 features" in out
  assert "rows changed by training:" in out and "rows from pretrained vectors: 0" in out
  for word, row in zip(["t0_w1", "s3"], neighbours.neighbours(emb.words, emb.tokens[:emb.num_words],
                                                              ["t0_w1", "s3"], k=3)):
    line = next(x for x in out.splitlines() if x.strip().startswith(word + " "))
    assert line.split()[1:] == [x for w, s in row for x in (w, f"{s:.3f}")]
  assert "t0_w1 - t0_w2 + t1_w3 = " in out
  for name in ("embedding.png", "norms.png", "curves.png"):
    assert (tmp_path / "pics" / name).read_bytes().startswith(PNG_MAGIC)


def test_export_command_writes_each_format(run, tmp_path, capsys):
  for fmt, out in (("word2vec", "v.txt"), ("projector", "proj"), ("npy", "t.npy")):
    assert cli.main(["export", str(run[0]), "--format", fmt, str(tmp_path / out)]) == 0
  out = capsys.readouterr().out
  assert "--set model.pretrained=" in out and "tensorboard --logdir" in out
  assert (tmp_path / "v.txt").exists() and (tmp_path / "proj" / "tensors.tsv").exists()
  assert (tmp_path / "t.npy").exists() and (tmp_path / "t.tokens.txt").exists()


def test_inspect_errors_are_one_line(run, tmp_path, capsys):
  assert cli.main(["inspect", str(run[0]), "--word", "t0_w1zz"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "'t0_w1zz' is not in the vocabulary" in err[0]
  assert cli.main(["inspect", str(tmp_path / "nothing")]) == 1
  assert "is not a run directory" in capsys.readouterr().err


def test_compare_command_draws_the_runs_side_by_side(run, tmp_path, capsys):
  assert cli.main(["compare", str(run[0]), str(run[0]), "--plots", str(tmp_path)]) == 0
  assert f"picture: {tmp_path / 'curves.png'}" in capsys.readouterr().out
  assert (tmp_path / "curves.png").read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_pca_names_a_number_of_components_it_cannot_give(k):
  with pytest.raises(ValueError, match=r"pca: num_components must be a positive integer"):
    geometry.pca(np.random.default_rng(0).normal(size=(6, 3)), k)


def test_pca_names_points_that_are_not_finite():
  points = np.random.default_rng(0).normal(size=(6, 3))
  points[4, 2] = np.nan  # SVD would give NaN coordinates for every point
  with pytest.raises(ValueError, match=r"pca: 1 points hold NaN or infinite values \(first: "
                                       r"point 4\)"):
    geometry.pca(points)


@pytest.mark.parametrize("options,match", [
    ({"k": True}, "k must be a positive integer, got True"),
    ({"k": "3"}, "k must be a positive integer, got '3'"),
    ({"k": 0}, "k must be a positive integer, got 0"),
    ({"exclude_ids": [[7]]}, r"exclude_ids holds 7, not a row of the 5-row table"),
    ({"exclude_ids": [[-2]]}, r"exclude_ids holds -2, not a row"),
])
def test_nearest_neighbours_names_a_k_or_excluded_row_it_cannot_use(options, match):
  table = np.eye(5, 3, dtype=np.float32)
  with pytest.raises(ValueError, match=f"nearest_neighbours: {match}"):
    neighbours.nearest_neighbours(table, table[:1], **options)


def test_export_skip_given_as_one_string_is_one_token(tmp_path):
  from embedlab.analysis import exports  # noqa: PLC0415

  table = np.eye(4, 3, dtype=np.float32)
  tokens = ["<pad>", "p", "a", "d"]  # a string iterated would leave out p, a and d
  assert exports.export_word2vec(tmp_path / "v.txt", table, tokens, skip="<pad>") == 3
  written = exports.export_projector(tmp_path / "proj", table, tokens, skip="<pad>")
  assert len(np.loadtxt(next(p for p in written if p.suffix == ".tsv" and "meta" not in p.name),
                        ndmin=2)) == 3
