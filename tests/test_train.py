"""End to end: the train loop, run directory, resume equivalence, NaN guard, experiments."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from embedlab.run import checkpoint as ckpt_lib
from embedlab import config as config_lib
from embedlab.run import inspection
from embedlab.models import classifiers as models
from embedlab.run import model_args
from embedlab.run import build as build_lib
from embedlab.run import loaded
from embedlab.run import steps as steps_lib
from embedlab.run import train
from embedlab.data import batches as batch_lib
from embedlab.data import cache as cache_lib
from embedlab.data import splits as splits_lib
from embedlab.data import synthetic as synthetic_lib
from embedlab.data import text as text_lib
from embedlab.config import Config

REPO = pathlib.Path(__file__).resolve().parent.parent

TINY = ["data.synthetic_train_size=320", "data.synthetic_eval_size=64",
        "data.synthetic_length=12", "data.max_len=16", "data.synthetic_words_per_topic=10",
        "data.synthetic_shared_words=30", "model.features=8", "train.batch_size=32",
        "train.num_epochs=2", "train.eval_every=7", "train.log_every=3",
        "train.checkpoint_every=4", "train.progress=false", "optim.learning_rate=0.05"]


def tiny(*extra) -> Config:
  return config_lib.apply_overrides(Config(name="tiny"), TINY + list(extra))


def quiet(*_):
  pass


def final_params(run_dir, cfg):
  """The latest checkpoint's parameters as numpy."""
  ckpt = ckpt_lib.Checkpoints(run_dir)
  _, state, _ = ckpt.read("latest")
  ckpt.close()
  return jax.tree.map(np.asarray, state["params"])


def metric_values(run_dir):
  keep = ("event", "split", "step", "loss", "accuracy")
  lines = (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k in keep} for line in lines]


def assert_same_metrics(run_a, run_b, rel=1e-6):
  """The two runs logged the same events (kinds, splits, steps) with the same losses and
  accuracies up to ``rel``."""
  a, b = metric_values(run_a), metric_values(run_b)
  assert [(e["event"], e.get("split"), e["step"]) for e in a] == [
      (e["event"], e.get("split"), e["step"]) for e in b]
  for x, y in zip(a, b):
    for key in ("loss", "accuracy"):
      assert x[key] == pytest.approx(y[key], rel=rel), (x, y)


def test_run_directory_holds_everything(tmp_path):
  cfg = tiny()
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  run = tmp_path / "run"
  for name in ("config.json", "vocab.txt", "labels.json", "metrics.jsonl", "results.json",
               "plots/loss.png", "plots/accuracy.png"):
    assert (run / name).is_file() and (run / name).stat().st_size > 0, name
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))
  assert (run / "checkpoints" / "latest").is_dir() and (run / "checkpoints" / "best").is_dir()
  assert config_lib.from_dict(json.loads((run / "config.json").read_text())) == cfg
  for key in ("dev_accuracy", "test_accuracy", "train_seconds", "steps", "num_params"):
    assert key in results
  assert results["steps"] == 20 and results["test_accuracy"] > 0.5  # 4 planted topics
  events = metric_values(run)
  assert [e["step"] for e in events if e.get("split") == "dev"] == [7, 14, 20]


def test_plots_off_and_one_checkpoint_at_the_end(tmp_path, monkeypatch):
  """train.plots=false writes no pictures (the metrics they come from are all there) and a
  checkpoint_every beyond the run saves the latest state once, at the last step."""
  steps = []
  real_save = ckpt_lib.Checkpoints.save_latest
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_latest",
                      lambda self, step, *a: (steps.append(step), real_save(self, step, *a)))
  results = train.train(tiny("train.plots=false", "train.checkpoint_every=1000000"),
                        tmp_path / "run", echo=quiet)
  run = tmp_path / "run"
  assert not (run / "plots").exists() and (run / "results.json").is_file()
  assert steps == [20] and results["best_step"] in (7, 14, 20)
  assert [e["step"] for e in metric_values(run) if e.get("split") == "dev"] == [7, 14, 20]
  assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_import_leaves_torch_importable():
  """report hides torch while tensorboardX loads (it would import it only for type hints); the
  hiding entry must not outlive the import, or a later `import torch` would fail."""
  import sys  # noqa: PLC0415
  from embedlab.run import startup  # noqa: PLC0415
  had = "torch" in sys.modules
  startup.import_tensorboardx()
  assert "tensorboardX" in sys.modules
  assert sys.modules.get("torch", "absent") is not None
  assert ("torch" in sys.modules) == had


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("optim.name=sgd", "optim.learning_rate=0.5",
                                        "model.name=cnn", "model.dropout=0.5"),
                                   ("optim.tables=sparse_lazy_adam",)])
def test_resumed_run_equals_uninterrupted_bitwise(tmp_path, monkeypatch, extra):
  cfg = tiny(*extra)
  train.train(cfg, tmp_path / "straight", echo=quiet)

  saves = {"n": 0}
  real_save = ckpt_lib.Checkpoints.save_latest

  def dying_save(self, step, state, meta):
    real_save(self, step, state, meta)
    saves["n"] += 1
    if saves["n"] == 2:  # die after the second checkpoint (step 8), mid-epoch
      raise KeyboardInterrupt

  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_latest", dying_save)
  with pytest.raises(KeyboardInterrupt):
    train.train(cfg, tmp_path / "resumed", echo=quiet)
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_latest", real_save)
  # events after the last checkpoint (a log at step 9) are replayed, not duplicated
  train.train(cfg, tmp_path / "resumed", echo=quiet)

  a, b = final_params(tmp_path / "straight", cfg), final_params(tmp_path / "resumed", cfg)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert metric_values(tmp_path / "straight") == metric_values(tmp_path / "resumed")
  ra = json.loads((tmp_path / "straight" / "results.json").read_text())
  rb = json.loads((tmp_path / "resumed" / "results.json").read_text())
  assert ra["test_accuracy"] == rb["test_accuracy"] and ra["dev_accuracy"] == rb["dev_accuracy"]


def test_rerun_of_a_finished_run_does_not_train_again(tmp_path):
  cfg = tiny()
  first = train.train(cfg, tmp_path / "run", echo=quiet)
  messages = []
  second = train.train(cfg, tmp_path / "run", echo=messages.append)
  assert any("finished at step 20" in m for m in messages), messages
  assert first == second


def test_different_config_in_existing_run_dir_is_refused(tmp_path):
  train.train(tiny(), tmp_path / "run", echo=quiet)
  with pytest.raises(Exception, match=r"different config \(model.features: 8 there, 9 now\).*"
                                      r"--restart"):
    train.train(tiny("model.features=9"), tmp_path / "run", echo=quiet)
  train.train(tiny("model.features=9"), tmp_path / "run", restart=True, echo=quiet)


def poison(monkeypatch, bad_step_rows):
  """Makes the bag model's logits NaN for batches holding a marked training example."""
  real_encode = cache_lib.encode_splits

  def encode(cfg, seed, **kw):
    data = real_encode(cfg, seed, **kw)
    ids = data.train_ids.copy()
    ids[bad_step_rows, :3] = data.num_embeddings - 1
    import dataclasses
    return dataclasses.replace(data, train_ids=ids)

  real_bag = models.bag_model

  def bag(embedder, num_classes, **kw):
    model = real_bag(embedder, num_classes, **kw)
    num_embeddings = embedder.num_embeddings

    def apply(params, ids, **kw):
      logits = model.apply(params, ids, **kw)
      marked = jnp.any(jnp.all(ids[:, :3] == num_embeddings - 1, axis=1))
      return jnp.where(marked, jnp.nan, logits)

    return models.Model(model.init, apply, model.stages)

  monkeypatch.setattr(cache_lib, "encode_splits", encode)
  monkeypatch.setattr(models, "bag_model", bag)


def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch):
  cfg = tiny()
  # batch order is a pure function of (seed, epoch): poison the first example of step 6
  order = batch_lib.batch_indices(320, 32, seed=cfg.seed, epoch=0)
  bad_step = 6
  poison(monkeypatch, [int(order[bad_step, 0])])
  with pytest.raises(steps_lib.NonFiniteError, match=rf"NaN/inf at step {bad_step} "):
    train.train(cfg, tmp_path / "run", echo=quiet)
  params = final_params(tmp_path / "run", cfg)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  ckpt = ckpt_lib.Checkpoints(tmp_path / "run")
  assert ckpt.latest.all_steps() == [4]  # the last checkpoint before the bad step
  ckpt.close()


def test_skip_nonfinite_counts_skipped_batches_and_finishes(tmp_path, monkeypatch):
  poison(monkeypatch, [5])
  results = train.train(tiny("train.skip_nonfinite=true"), tmp_path / "run", echo=quiet)
  assert results["skipped_nonfinite"] == 2  # example 5 is in one batch of each of 2 epochs
  params = final_params(tmp_path / "run", tiny())
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("tables", ["dense", "sparse_sgd", "sparse_lazy_adam"])
def test_an_update_that_overflows_is_not_applied(tmp_path, tables):
  # finite loss and gradients, but a learning rate that sends the weights to inf
  cfg = tiny("optim.name=sgd", "optim.learning_rate=1e38", f"optim.tables={tables}",
             "train.skip_nonfinite=true")
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  assert results["skipped_nonfinite"] >= 1
  params = final_params(tmp_path / "run", cfg)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  with pytest.raises(steps_lib.NonFiniteError, match=r"the update was NaN/inf at step \d+ "):
    train.train(tiny("optim.name=sgd", "optim.learning_rate=1e38"), tmp_path / "stop",
                echo=quiet)


def test_train_step_compiles_once(tmp_path):
  cfg = tiny()
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  setup = build_lib.build(cfg, data, 10)
  traces = {"n": 0}
  inner = steps_lib.make_multi_step(steps_lib.make_train_step(setup.model, setup.optimizer))

  def counted(*args):
    traces["n"] += 1
    return inner(*args)

  step = jax.jit(counted, donate_argnums=0)
  state = build_lib.init_state(cfg, setup)
  for k in range(5):
    rows = np.arange(k * 64, (k + 1) * 64).reshape(2, 32)  # 2 steps per dispatch
    state, _ = step(state, data.train_ids[rows], data.train_labels[rows])
  assert traces["n"] == 1


def test_predict_and_eval_use_the_best_checkpoint(tmp_path):
  cfg = tiny("train.num_epochs=4")
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  again = loaded.evaluate_run(tmp_path / "run", "test")
  assert again["accuracy"] == pytest.approx(results["test_accuracy"])
  words = synthetic_lib.synthetic_word_topics(cfg.data)
  topic0 = [w for w, t in words.items() if t == 0][:8]
  rows = loaded.predict(tmp_path / "run", [" ".join(topic0)])
  assert rows[0]["label"] == json.loads((tmp_path / "run" / "labels.json").read_text())[0]
  assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-3


@pytest.mark.parametrize("prune", [False, True])
def test_predict_encodes_texts_as_training_did(tmp_path, prune):
  # with data.eos the texts end with </s> in training, so they must in predict too; with
  # data.prune_buckets predict renumbers the n-grams by the run's kept buckets
  cfg = tiny("data.eos=true", "data.ngrams=2", "data.num_buckets=4096",
             f"data.prune_buckets={str(prune).lower()}")
  train.train(cfg, tmp_path / "run", echo=quiet)
  data = cache_lib.encode_splits(cfg.data, cfg.seed)
  assert text_lib.EOS_TOKEN in data.vocab.tokens
  texts = splits_lib.load_splits(cfg.data, cfg.seed)[0]["test"].texts[:3]
  run_cfg, vocab, names = train.report.load_run(tmp_path / "run")
  kept = train.report.load_buckets(tmp_path / "run", run_cfg)
  model, params = loaded.restore_for_eval(tmp_path / "run", run_cfg, vocab, names, kept)
  want = np.asarray(jax.nn.softmax(model.apply(params, data.test_ids[:3]), -1))
  rows = loaded.predict(tmp_path / "run", list(texts))
  for row, p in zip(rows, want):
    np.testing.assert_allclose([row["probabilities"][n] for n in names], p, atol=1e-4)
  if prune:
    np.testing.assert_array_equal(kept, data.kept_buckets)
    assert data.num_embeddings == len(vocab) + len(kept) + 1 < len(vocab) + 4096
    emb = inspection.load_embedding(tmp_path / "run")
    assert emb.table.shape[0] == len(emb.tokens) == data.num_embeddings
    assert emb.tokens[-1] == "<other buckets>"
    assert emb.tokens[len(vocab)] == f"<bucket {int(kept[0]) - len(vocab)}>"
  else:
    assert kept is None and data.num_embeddings == len(vocab) + 4096


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "experiments").glob("*.py")))
def test_every_experiment_runs_a_few_steps_on_tiny_data(tmp_path, experiment):
  overrides = ["train.num_steps=3", "train.batch_size=8", "train.eval_every=3",
               "train.eval_batch_size=16", "data.max_examples=48", "train.progress=false"]
  cfg = config_lib.load_config(REPO / "experiments" / f"{experiment}.py", overrides)
  if cfg.data.num_buckets:
    cfg = config_lib.apply_overrides(cfg, ["data.num_buckets=1024"])
  results = train.train(cfg, tmp_path / experiment, echo=quiet)
  assert results["steps"] == 3 and 0.0 <= results["dev_accuracy"] <= 1.0
  if cfg.model.pretrained:
    assert results["pretrained_rows_found"] > 0


@pytest.mark.slow
def test_sparse_sgd_table_updates_equal_dense_sgd_end_to_end(tmp_path):
  dense = tiny("optim.name=sgd", "optim.learning_rate=0.5")
  sparse = tiny("optim.name=sgd", "optim.learning_rate=0.5", "optim.tables=sparse_sgd")
  ra = train.train(dense, tmp_path / "dense", echo=quiet)
  rb = train.train(sparse, tmp_path / "sparse", echo=quiet)
  a, b = final_params(tmp_path / "dense", dense), final_params(tmp_path / "sparse", sparse)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert ra["test_accuracy"] == rb["test_accuracy"]
  assert rb["table_update"] == "sparse_sgd"
  assert (ra["table_update_path"], rb["table_update_path"]) == ("dense", "scatter_add")
  adagrad = tiny("optim.name=sgd", "optim.tables=sparse_adagrad")
  assert train.train(adagrad, tmp_path / "adagrad", echo=quiet)["table_update_path"] == "dedup"
  decayed = tiny("optim.name=sgd", "optim.tables=sparse_sgd", "optim.weight_decay=0.01")
  lines = []
  assert train.train(decayed, tmp_path / "decayed", echo=lines.append)[
      "table_update_path"] == "dedup"
  assert "scatter-added" not in "\n".join(lines)
  lines = []
  train.train(sparse, tmp_path / "again", echo=lines.append, restart=True)
  assert "updates: row-sparse sparse_sgd, each occurrence's gradient scatter-added" in "\n".join(
      lines)


@pytest.mark.slow
@pytest.mark.parametrize("tables", ["dense", "sparse_adagrad"])
def test_pretrained_freeze_found_keeps_found_rows_and_trains_the_rest(tmp_path, tables):
  from embedlab.data import vectors as pretrained
  cfg0 = tiny()
  data = cache_lib.encode_splits(cfg0.data, cfg0.seed)
  words = list(data.vocab.tokens[2:12])  # 10 words with vectors, the rest without
  vectors = np.random.default_rng(0).standard_normal((len(words), 8)).astype(np.float32)
  path = tmp_path / "vectors.txt"
  pretrained.save_vectors(path, {"table": vectors}, words)
  cfg = tiny(f"model.pretrained={path}", "model.pretrained_mode=freeze_found",
             f"optim.tables={tables}")
  results = train.train(cfg, tmp_path / "run", echo=quiet)
  assert results["pretrained_rows_found"] == 10
  table = final_params(tmp_path / "run", cfg)["embed"]["table"]
  np.testing.assert_array_equal(table[2:12], vectors)
  assert np.all(table[0] == 0)
  assert not np.allclose(table[12:], build_lib.build(cfg, data, 10).params["embed"]["table"][12:])


@pytest.mark.slow
def test_several_steps_per_dispatch_train_like_one_at_a_time(tmp_path):
  one = tiny()
  four = tiny("train.steps_per_dispatch=4")
  ra = train.train(one, tmp_path / "one", echo=quiet)
  rb = train.train(four, tmp_path / "four", echo=quiet)
  a, b = final_params(tmp_path / "one", one), final_params(tmp_path / "four", four)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert_same_metrics(tmp_path / "one", tmp_path / "four")
  assert ra["test_accuracy"] == rb["test_accuracy"]


def test_bad_ids_in_the_data_are_refused_before_training(tmp_path, monkeypatch):
  real_encode = cache_lib.encode_splits

  def encode(cfg, seed, **kw):
    import dataclasses
    data = real_encode(cfg, seed, **kw)
    ids = data.dev_ids.copy()
    ids[3, 2] = data.num_embeddings + 5
    return dataclasses.replace(data, dev_ids=ids)

  monkeypatch.setattr(cache_lib, "encode_splits", encode)
  with pytest.raises(ValueError, match=r"data \(dev split\): id \d+ at position \(3, 2\) is "
                                       r"outside the table"):
    train.train(tiny(), tmp_path / "run", echo=quiet)


def test_pretrained_vectors_fill_the_first_columns_of_a_wider_table(tmp_path):
  from embedlab.data import vectors as pretrained
  cfg0 = tiny()
  data = cache_lib.encode_splits(cfg0.data, cfg0.seed)
  words = list(data.vocab.tokens[2:7])
  vectors = np.random.default_rng(1).standard_normal((len(words), 3)).astype(np.float32)
  path = tmp_path / "vectors.txt"
  pretrained.save_vectors(path, {"table": vectors}, words)
  cfg = tiny(f"model.pretrained={path}", "model.pretrained_scale=0.5")  # 3 of 8 features
  table = np.asarray(build_lib.build(cfg, data, 10).params["embed"]["table"])
  assert table.shape[1] == 8
  np.testing.assert_allclose(table[2:7, :3], 0.5 * vectors, rtol=1e-6)
  assert np.all(table[0] == 0) and np.std(table[2:, 3:]) > 0
  with pytest.raises(config_lib.ConfigError, match="has 3 features but model.features=2"):
    build_lib.build(tiny(f"model.pretrained={path}", "model.features=2"), data, 10)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("optim.tables=sparse_sgd", "optim.name=sgd"),
                                   ("optim.tables=sparse_lazy_adam", "model.table=factorized",
                                    "model.table_rank=4", "train.steps_per_dispatch=3",
                                    "data.ngrams=2", "data.num_buckets=64")])
def test_ragged_batches_train_like_padded_ones(tmp_path, monkeypatch, extra):
  """train.ragged_batches packs each batch's real ids into one list: the same losses and
  parameters as the padded [B, L] batches, on the dense and the row-sparse path."""
  padded = tiny(*extra)
  ragged = tiny(*extra, "train.ragged_batches=true")
  packed = []
  real_pack = batch_lib.ragged_batches
  monkeypatch.setattr(batch_lib, "ragged_batches",
                      lambda ids, length: (packed.append(length), real_pack(ids, length))[1])
  ra = train.train(padded, tmp_path / "padded", echo=quiet)
  assert not packed
  rb = train.train(ragged, tmp_path / "ragged", echo=quiet)
  # the blocks were packed, all to one length (within a padded batch's B x L slots)
  padded_slots = ragged.train.batch_size * ragged.data.max_len * ragged.data.ngrams
  assert len(packed) >= rb["steps"] // max(ragged.train.steps_per_dispatch, 3)
  assert len(set(packed)) == 1 and packed[0] <= padded_slots
  a, b = final_params(tmp_path / "padded", padded), final_params(tmp_path / "ragged", ragged)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert_same_metrics(tmp_path / "padded", tmp_path / "ragged", rel=1e-4)
  assert ra["test_accuracy"] == rb["test_accuracy"]


def test_ragged_batches_in_bfloat16_train_like_padded_ones(tmp_path):
  """Both layouts pool in float32 and round once to bfloat16: the same losses and accuracies."""
  extra = ("model.compute_dtype=bfloat16", "model.param_dtype=bfloat16")
  train.train(tiny(*extra), tmp_path / "padded", echo=quiet)
  train.train(tiny(*extra, "train.ragged_batches=true"), tmp_path / "ragged", echo=quiet)
  assert_same_metrics(tmp_path / "padded", tmp_path / "ragged", rel=1e-2)


@pytest.mark.slow
def test_ragged_step_gradients_equal_padded_ones():
  """One step on random padded bags and on the same bags packed ragged: same loss, same
  gradient of every parameter."""
  cfg = tiny("model.hidden=5")
  model = model_args.make_model(cfg.model, 50, 3)
  params = model.init(jax.random.key(1))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 50, (6, 9)) * (rng.random((6, 9)) < 0.5)
  ids[2] = 0  # an empty bag
  labels = jnp.asarray(rng.integers(0, 3, 6))
  packed = batch_lib.ragged_batches(ids, 64)

  def loss(p, batch):
    logits = steps_lib.apply_model(model, p, batch, 6)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  la, ga = jax.value_and_grad(loss)(params, jnp.asarray(ids))
  lb, gb = jax.value_and_grad(loss)(params, jax.tree.map(jnp.asarray, packed))
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(ga["embed"]["table"]).sum()) > 0


def test_ragged_batches_on_a_mesh_stay_padded():
  """One ragged list does not split over the data axis: on a mesh (several devices) the run
  trains on padded batches and says so, instead of failing."""
  cfg = tiny("train.ragged_batches=true")
  said = []
  pack = build_lib.ragged_packer(cfg, None, 10, 20, None, object(), said.append)
  ids = np.arange(12).reshape(1, 3, 4)
  assert pack(ids) is ids and "padded batches" in said[0]


def test_ragged_batches_need_a_bag_model():
  with pytest.raises(config_lib.ConfigError, match="ragged_batches.*model.name = 'bag'"):
    config_lib.validate(tiny("train.ragged_batches=true", "model.name=cnn"))
  with pytest.raises(config_lib.ConfigError, match="ragged_batches.*max_norm"):
    config_lib.validate(tiny("train.ragged_batches=true", "model.max_norm=1.0"))


def test_best_parameters_are_written_with_the_next_checkpoint(tmp_path, monkeypatch):
  """With checkpoints rarer than evaluations the best parameters wait on the host and are
  written once, with the final checkpoint; the test accuracy is that of what was written."""
  saves = []
  real_best, real_latest = ckpt_lib.Checkpoints.save_best, ckpt_lib.Checkpoints.save_latest
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_best",
                      lambda self, step, *a: (saves.append(("best", step)),
                                              real_best(self, step, *a)))
  monkeypatch.setattr(ckpt_lib.Checkpoints, "save_latest",
                      lambda self, step, *a: (saves.append(("latest", step)),
                                              real_latest(self, step, *a)))
  results = train.train(tiny("train.checkpoint_every=1000000"), tmp_path / "run", echo=quiet)
  assert saves == [("best", results["best_step"]), ("latest", 20)]
  assert loaded.evaluate_run(tmp_path / "run", "test")["accuracy"] == results["test_accuracy"]
  saves.clear()  # the default (a checkpoint at each evaluation): each better one right away
  results = train.train(tiny("train.checkpoint_every=0"), tmp_path / "run2", echo=quiet)
  bests = [s for w, s in saves if w == "best"]
  assert bests and bests[-1] == results["best_step"]
  assert all(("latest", s) in saves[saves.index(("best", s)):] for s in bests)


def test_timings_count_compilation_and_stop_listening(tmp_path):
  """results.json's timings hold JAX's compile seconds of the run; the clock stops listening
  when the run ends (a later compilation is not added to it)."""
  from embedlab.run import report  # noqa: PLC0415
  results = train.train(tiny(), tmp_path / "run", echo=quiet)
  timings = results["timings"]
  assert timings["compile_seconds"] > 0
  assert {"data_seconds", "setup_seconds", "first_dispatch_seconds", "train_loop_seconds",
          "test_seconds"} <= set(timings)
  clock = report.PhaseClock()
  jax.jit(lambda x: x * 3 + 1)(jnp.arange(5.0)).block_until_ready()
  first = clock.rounded()["compile_seconds"]
  jax.jit(lambda x: x * 5 - 2)(jnp.arange(6.0)).block_until_ready()
  assert first > 0 and clock.rounded()["compile_seconds"] == first
