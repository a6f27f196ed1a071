"""The smaller tables inside experiments: ``model.table`` switches the embedding of every model,
the row-sparse step updates hashed and factorized tables by rows, and runs can be summarized,
inspected, quantized, evaluated and exported."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import embedlab as el
from embedlab import config as config_lib
from embedlab.core import hashing
from embedlab.core import quantize
from embedlab.core.variants import hash_embedding
from embedlab.data import cache as cache_lib
from embedlab.run import inspection
from embedlab.models import classifiers as models
from embedlab.run import model_args
from embedlab.run import report
from embedlab.run import build as build_lib
from embedlab.run import loaded
from embedlab.run import train
from embedlab.config import ConfigError, ModelConfig

from test_train import final_params, quiet, tiny

V = 300
VARIANTS = {
    "hashed": dict(table_buckets=40, table_exact=20),
    "hash_embedding": dict(table_buckets=32, table_hashes=3),
    "qr": dict(table_collisions=17, table_combine="mult"),
    "qr_concat": dict(table=None, table_combine="concat"),
    "factorized": dict(table_rank=3),
}


def variant_cfg(name, **extra):
  kw = dict(VARIANTS[name])
  table = kw.pop("table", name) or name.split("_")[0]
  return ModelConfig(features=6, table=table, **kw, **extra)


def reference_vectors(cfg, embed, ids):
  """Each id's vector from the variant's own functions (embedlab.core.variants), in numpy."""
  ids = np.asarray(ids)
  if cfg.table == "hashed":
    rows = hashing.hash_ids(ids, cfg.table_buckets, exact_size=cfg.table_exact)
    out = np.asarray(embed["table"])[rows]
  elif cfg.table == "factorized":
    out = np.asarray(embed["table"])[ids] @ np.asarray(embed["projection"])
  elif cfg.table == "qr":
    m = embed["remainder"].shape[0]
    q, r = np.asarray(embed["quotient"])[ids // m], np.asarray(embed["remainder"])[ids % m]
    out = q * r if cfg.table_combine == "mult" else np.concatenate([q, r], -1)
  else:
    pool, imp = np.asarray(embed["pool"]), np.asarray(embed["importance"])
    buckets = np.asarray(hash_embedding.hash_embedding_buckets(ids, imp.shape[1],
                                                            pool.shape[0]))
    out = np.einsum("...k,...kd->...d", imp[ids], pool[buckets])
  return out * (ids != 0)[..., None]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_embedder_values_and_bag_match_the_variant_in_numpy(name):
  cfg = variant_cfg(name)
  embedder = model_args.make_embedder(cfg, V)
  embed = embedder.init(jax.random.key(1))
  # perturb every weight so no entry sits at its initial constant (importance starts at 1)
  embed = jax.tree.map(
      lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape, x.dtype), embed)
  rng = np.random.default_rng(0)
  ids = rng.integers(0, V, size=(5, 7)).astype(np.int32)
  ids[0, 3:] = 0
  ids[1] = 0
  ids[2, :2] = [V - 1, V - 1]
  want = reference_vectors(cfg, embed, ids)
  np.testing.assert_allclose(jax.jit(embedder.lookup)(embed, ids), want, rtol=1e-5, atol=1e-6)
  mask = ids != 0
  want_mean = want.sum(1) / np.maximum(mask.sum(1), 1)[:, None]
  got = jax.jit(embedder.bag, static_argnums=2)(embed, ids, "mean")
  np.testing.assert_allclose(got, want_mean, rtol=1e-5, atol=1e-6)
  assert not np.any(got[1])  # the empty bag
  want_max = np.where(mask.any(1)[:, None],
                      np.where(mask[..., None], want, -np.inf).max(1), 0)
  np.testing.assert_allclose(jax.jit(embedder.bag, static_argnums=2)(embed, ids, "max"),
                             want_max, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(models.materialize(embedder, embed, V)[ids],
                             want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_embedder_gradients_match_finite_differences_and_skip_padding(name):
  cfg = variant_cfg(name)
  embedder = model_args.make_embedder(cfg, V)
  embed = embedder.init(jax.random.key(3))
  ids = jnp.array([[5, 0, 77, 5], [0, 0, 0, 0], [299, 1, 2, 0]], jnp.int32)
  cot = jax.random.normal(jax.random.key(4), (3, 6))

  def f(e):
    return jnp.sum(embedder.bag(e, ids, "sum") * cot)

  grads = jax.grad(f)(embed)
  # directional derivative along a random direction equals the finite difference
  direction = jax.tree.map(lambda x: jax.random.normal(jax.random.key(5), x.shape), embed)
  eps = 1e-3
  plus = f(jax.tree.map(lambda x, d: x + eps * d, embed, direction))
  minus = f(jax.tree.map(lambda x, d: x - eps * d, embed, direction))
  analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
  np.testing.assert_allclose(analytic, (plus - minus) / (2 * eps), rtol=2e-2, atol=1e-3)
  if "table" in grads and cfg.table != "hashed":
    assert not np.any(grads["table"][0])  # the padding row gets no gradient
  if "importance" in grads:
    assert not np.any(grads["importance"][0])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_embedder_bad_ids_raise_eagerly_and_under_jit(name):
  embedder = model_args.make_embedder(variant_cfg(name), V)
  embed = embedder.init(jax.random.key(0))
  with pytest.raises(ValueError, match=rf"id {V} at position \(0, 1\).*0\.\.{V - 1}"):
    embedder.lookup(embed, np.array([[1, V]], np.int32))
  with pytest.raises(Exception, match=r"id -3 at position \(1, 0\)"):
    jax.block_until_ready(jax.jit(embedder.bag, static_argnums=2)(
        embed, jnp.array([[1, 2], [-3, 0]]), "mean"))
  with pytest.raises(TypeError, match="integer"):
    embedder.lookup(embed, np.array([[1.5, 2.0]]))


def test_hashed_rows_keep_frequent_ids_and_share_the_rest():
  embedder = model_args.make_embedder(variant_cfg("hashed"), V)
  ids = np.arange(V, dtype=np.int32)
  rows = np.asarray(embedder.rows(ids))
  np.testing.assert_array_equal(rows[:20], ids[:20])
  assert rows[20:].min() >= 20 and rows[20:].max() < 60
  assert len(np.unique(rows[20:])) > 30  # spread over the 40 buckets
  np.testing.assert_array_equal(rows, hashing.hash_ids(ids, 40, exact_size=20))


@pytest.mark.parametrize("table", ["hashed", "factorized"])
def test_sparse_sgd_on_a_smaller_table_equals_dense_sgd_end_to_end(tmp_path, table):
  size = ("model.table_buckets=40" if table == "hashed" else "model.table_rank=3")
  common = ("optim.name=sgd", "optim.learning_rate=0.5", f"model.table={table}", size,
            "model.table_exact=20", "train.num_epochs=4")
  dense, sparse = tiny(*common), tiny(*common, "optim.tables=sparse_sgd")
  ra = train.train(dense, tmp_path / "dense", echo=quiet)
  rb = train.train(sparse, tmp_path / "sparse", echo=quiet)
  a, b = final_params(tmp_path / "dense", dense), final_params(tmp_path / "sparse", sparse)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert ra["test_accuracy"] == rb["test_accuracy"]
  data = cache_lib.encode_splits(sparse.data, sparse.seed)
  initial = build_lib.build(sparse, data, 10).params["embed"]["table"]
  moved = np.any(np.asarray(initial) != b["embed"]["table"], axis=1)
  assert 0 < moved[1:].sum() < len(moved) and not moved[0]  # rows of seen ids; never padding
  assert rb["table"] == table and rb["embedding_bytes"] < ra["num_embeddings"] * 8 * 4


@pytest.mark.parametrize("table,size", [("qr", "model.table_collisions=8"),
                                        ("hash_embedding", "model.table_buckets=48")])
def test_shared_weight_tables_train_summarize_inspect_and_quantize(tmp_path, table, size):
  cfg = tiny(f"model.table={table}", size, "train.num_epochs=4", "optim.learning_rate=0.1")
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  assert results["test_accuracy"] > 0.6, results  # 4 planted topics: chance is 0.25
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  setup = build_lib.build(cfg, data, 10)
  text = report.summary_text(cfg, data, setup)
  want = models.table_summary(model_args.make_embedder(cfg.model, data.num_embeddings), setup.params["embed"])
  assert f"{want.weights:,} weights" in text and f"{want.ratio:.1f}x smaller" in text
  emb = inspection.load_embedding(tmp_path / "run")
  stored = emb.embed
  assert set(stored) == set(setup.params["embed"])
  embedder = model_args.make_embedder(cfg.model, data.num_embeddings)
  ids = np.arange(data.num_embeddings, dtype=np.int32)
  np.testing.assert_allclose(emb.table, embedder.lookup(stored, ids), rtol=1e-6)
  q8 = loaded.evaluate_run(tmp_path / "run", quantize="int8")
  plain = loaded.evaluate_run(tmp_path / "run")
  assert q8["quantized_bytes"] < q8["embedding_bytes"]
  assert abs(q8["accuracy"] - plain["accuracy"]) <= 0.05


def test_int8_export_round_trips_through_lookup_quantized(tmp_path):
  cfg = tiny()
  train.train(cfg, tmp_path / "run", echo=quiet)
  paths, info = inspection.export_quantized(tmp_path / "run", tmp_path / "out" / "t", "int8")
  assert paths[0].name == "t.npz" and "int8" in info and "smaller" in info
  q = np.load(paths[0])
  emb = inspection.load_embedding(tmp_path / "run")
  ids = np.array([[1, 2, 3], [0, 5, 5]], np.int32)
  got = quantize.lookup_quantized({"q8": q["table_q8"], "scale": q["table_scale"]}, ids,
                                  padding_id=0)
  want = emb.table[ids] * (ids != 0)[..., None]
  step = np.abs(emb.table).max(1, keepdims=True) / 127
  assert np.all(np.abs(np.asarray(got) - want) <= step[ids] / 2 + 1e-7)
  assert paths[1].read_text().splitlines() == list(emb.tokens)
  result = loaded.evaluate_run(tmp_path / "run", quantize="int8")
  plain = loaded.evaluate_run(tmp_path / "run")
  rows = emb.table.shape[0]
  assert (result["embedding_bytes"], result["quantized_bytes"]) == (rows * 8 * 4, rows * (8 + 4))
  assert abs(result["accuracy"] - plain["accuracy"]) <= 0.02
  with pytest.raises(ValueError, match="quantize='int3'"):
    loaded.evaluate_run(tmp_path / "run", quantize="int3")


def test_bfloat16_tables_train_and_store_half_the_bytes(tmp_path):
  # on CPU a bfloat16 table is stored in bfloat16 only with bfloat16 compute (models.stored_dtype)
  cfg = tiny("model.param_dtype=bfloat16", "model.compute_dtype=bfloat16", "train.num_epochs=4",
             "optim.learning_rate=0.1")
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  params = final_params(tmp_path / "run", cfg)
  assert params["embed"]["table"].dtype == jnp.bfloat16
  assert results["embedding_bytes"] == results["num_embeddings"] * 8 * 2
  assert results["test_accuracy"] > 0.6


@pytest.mark.parametrize("overrides,match", [
    (["model.table=hashed"], r"model.table_buckets > 0, e.g. --set model.table_buckets="),
    (["model.table=factorized"], r"model.table_rank > 0"),
    (["model.table=qr", "optim.tables=sparse_sgd"], r"has none.*optim.tables=dense"),
    (["model.table=hashd"], r"did you mean 'hashed'"),
    (["model.table=hashed", "model.table_buckets=9", "model.pretrained=x.txt"],
     r"model.pretrained needs model.table = 'plain'"),
    (["model.table=qr", "model.max_norm=1"], r"max_norm applies to model.table = 'plain'"),
])
def test_bad_table_settings_name_the_fix(overrides, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.apply_overrides(config_lib.Config(), overrides)


def test_max_norm_renormalizes_the_plain_tables_output():
  cfg = ModelConfig(features=4, max_norm=0.5, init_scale=3.0)
  embedder = model_args.make_embedder(cfg, 50)
  embed = embedder.init(jax.random.key(0))
  vecs = embedder.lookup(embed, jnp.array([[1, 2, 3]]))
  np.testing.assert_array_less(np.linalg.norm(vecs, axis=-1), 0.5 + 1e-5)
  want = el.lookup(embed, jnp.array([[1, 2, 3]]), max_norm=0.5).mean(1)
  np.testing.assert_allclose(embedder.bag(embed, jnp.array([[1, 2, 3]]), "mean"), want, rtol=1e-6)


def test_cli_eval_and_export_quantize(tmp_path, capsys):
  from embedlab import cli
  cfg = tiny()
  train.train(cfg, tmp_path / "run", echo=quiet)
  assert cli.main(["eval", str(tmp_path / "run"), "--quantize", "int4"]) == 0
  out = json.loads(capsys.readouterr().out)
  # 8 features: 4 bytes of nibbles + a 4-byte scale per row, against 32 bytes of float32
  assert out["quantize"] == "int4" and out["quantized_bytes"] * 4 == out["embedding_bytes"]
  assert cli.main(["eval", str(tmp_path / "run"), "--quantize", "int2"]) == 0
  out2 = json.loads(capsys.readouterr().out)
  # 2 bytes of 2-bit codes + the scale per row: 6 of 32 bytes
  assert out2["quantized_bytes"] * 32 == out2["embedding_bytes"] * 6
  assert abs(out2["accuracy"] - out["accuracy"]) <= 0.1
  assert cli.main(["export", str(tmp_path / "run"), "--format", "word2vec", "--quantize",
                   "int8", str(tmp_path / "x")]) == 1
  assert "use --format npy" in capsys.readouterr().err
  assert cli.main(["export", str(tmp_path / "run"), "--quantize", "int8", str(tmp_path / "q")]) == 0
  assert (tmp_path / "q.npz").is_file() and "smaller" in capsys.readouterr().out
  assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "q")]) == 1
  assert "choose --format" in capsys.readouterr().err
