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
