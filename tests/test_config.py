"""Config: typed overrides, unknown keys with suggestions, validation, snapshots."""

import dataclasses
import json

import pytest

from embedlab import config as config_lib
from embedlab.config import Config, ConfigError


def test_overrides_parse_by_field_type_and_leave_the_original_alone():
  base = Config()
  cfg = config_lib.apply_overrides(base, ["train.batch_size=256", "optim.learning_rate=0.3",
                                          "train.skip_nonfinite=true", "model.name=cnn",
                                          "model.filter_widths=2,3", "seed=7"])
  assert cfg.train.batch_size == 256 and isinstance(cfg.train.batch_size, int)
  assert cfg.optim.learning_rate == 0.3 and cfg.train.skip_nonfinite is True
  assert cfg.model.filter_widths == (2, 3) and cfg.seed == 7
  assert base.train.batch_size == 64  # frozen dataclasses: nothing mutates
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.train.batch_size = 1  # type: ignore[misc]


@pytest.mark.parametrize("override,message", [
    ("train.batch_sise=256", r"unknown config key 'train.batch_sise' \(did you mean "
                             r"'train.batch_size'\?\)"),
    ("optim.learnig_rate=1", r"did you mean 'optim.learning_rate'"),
    ("train.batch_size=abc", r"train.batch_size='abc': cannot parse as int"),
    ("train.skip_nonfinite=maybe", r"cannot parse as bool"),
    ("train.batch_size", r"not of the form key=value"),
    ("train.batch_size=-4", r"train.batch_size = -4 must be positive"),
    ("optim.name=adamm", r"optim.name = 'adamm' is not one of .*did you mean 'adam'"),
    ("model.dropout=1.5", r"model.dropout = 1.5 must be in \[0, 1\)"),
    ("data.ngrams=2", r"data.ngrams > 1 needs data.num_buckets > 0"),
    ("data.source=files", r"needs data.train"),
])
def test_bad_overrides_fail_with_a_suggestion(override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(Config(), [override])


def test_json_round_trip():
  cfg = config_lib.apply_overrides(Config(), ["model.filter_widths=2,4", "data.max_len=9"])
  again = config_lib.from_dict(json.loads(config_lib.to_json(cfg)))
  assert again == cfg


def test_every_experiment_file_loads_and_validates():
  import pathlib
  files = sorted(pathlib.Path(__file__).parent.parent.glob("experiments/*.py"))
  assert len(files) >= 5
  for path in files:
    module = config_lib.load_experiment(path)
    cfg = config_lib.load_config(path)
    assert cfg.name == path.stem, f"{path}: name {cfg.name!r} differs from the file name"
    doc = module.__doc__ or ""
    assert f"embedlab train experiments/{path.name}" in doc, f"{path}: docstring lacks command"


def test_unknown_experiment_names_the_closest():
  with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
    config_lib.resolve_experiment_path("quickstar")


@pytest.mark.parametrize("override,message", [
    ("mesh.lookup=shardmap", r"mesh.lookup = 'shardmap' is not one of .*did you mean "
                             r"'shard_map'"),
    ("mesh.model=0", r"mesh.model = 0 must be at least 1"),
    ("mesh.data=-2", r"mesh.data = -2 must be >= 0"),
    ("mesh.table=columns", r"mesh.table = 'columns' is not one of rows, rows_columns"),
    ("mesh.distributed=yes", r"mesh.distributed = 'yes' is not one of auto, on, off"),
])
def test_bad_mesh_settings_fail_with_a_suggestion(override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(Config(), [override])


def test_process_id_must_be_below_num_processes():
  with pytest.raises(ConfigError, match="mesh.process_id = 2 must be below mesh.num_processes"):
    config_lib.apply_overrides(Config(), ["mesh.num_processes=2", "mesh.process_id=2"])


def test_config_json_written_before_meshes_existed_still_loads():
  old = json.loads(config_lib.to_json(Config()))
  del old["mesh"]
  assert config_lib.from_dict(old) == Config()
  assert config_lib.flatten(Config())["mesh.data"] == 0  # all devices on "data" by default


def test_mesh_that_does_not_match_the_devices_says_how_many_there_are():
  from embedlab.run import placement
  with pytest.raises(ValueError, match=r"does not match the 1 device\(s\) available .*"
                                       r"--set mesh.data=1 --set mesh.model=1"):
    placement.mesh_from_config(config_lib.MeshConfig(data=4, model=2))
  assert placement.mesh_from_config(config_lib.MeshConfig()) is None  # one device: unsharded
