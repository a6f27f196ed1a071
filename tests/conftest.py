"""Test settings: real data from EMBEDLAB_DATA (default ../shared/data beside the repository),
and a per-session cache directory for encoded datasets."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("EMBEDLAB_DATA", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _encoded_cache(tmp_path_factory):
  if "EMBEDLAB_CACHE" not in os.environ:
    os.environ["EMBEDLAB_CACHE"] = str(tmp_path_factory.mktemp("encoded-cache"))
  yield


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  path = pathlib.Path(os.environ["EMBEDLAB_DATA"])
  assert (path / "sst2").is_dir(), (
      f"the shared data is missing at {path}: set EMBEDLAB_DATA to the folder holding sst2/, "
      "imdb/, trec/ and glove6b50d/ (../shared/data beside the repository).")
  return path


# What `python -m pytest -m "not slow"` leaves out for everyday work: end-to-end runs
# (training, checkpoints on disk, subprocesses, compiled memory analyses) and the broad matrices
# over every model, table variant, optimizer and device count. Other slow tests carry
# @pytest.mark.slow themselves.
SLOW_MODULES = frozenset((
    "test_cli", "test_variants", "test_compress_train", "test_device_check", "test_inspect",
    "test_loaded", "test_models", "test_properties", "test_readme",
    "test_reliability_checkpoints", "test_reliability_crash", "test_reliability_inputs",
    "test_resources", "test_run_dir", "test_scatter_step", "test_sharding",
    "test_sharding_train", "test_sparse", "test_train",
    # the doctests of these modules
    "contract", "plain", "hashed", "hash_embedding", "qr", "factorized", "quantize", "hashing",
    "sharding", "sparse"))
QUICK_README_CHECKS = ("test_readme_opens", "test_readme_example", "test_readme_one_hot",
                       "test_every_readme_command")


def pytest_collection_modifyitems(items):
  for item in items:
    if pathlib.Path(str(item.fspath)).stem in SLOW_MODULES:
      if item.name.startswith(QUICK_README_CHECKS):
        continue  # the README's quick checks stay in the fast subset
      item.add_marker(pytest.mark.slow)
