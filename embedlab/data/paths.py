"""Where the data lives: the data directory (``EMBEDLAB_DATA``) and relative paths under it.

Example:
  >>> import os; os.environ["EMBEDLAB_DATA"] = "/tmp/d"
  >>> str(resolve("sst2/train.tsv.gz")), str(resolve("/abs/train.tsv"))
  ('/tmp/d/sst2/train.tsv.gz', '/abs/train.tsv')
  >>> del os.environ["EMBEDLAB_DATA"]
"""

from __future__ import annotations

import os
import pathlib


def data_dirs() -> list[tuple[pathlib.Path, str]]:
  """Where the data directory is looked for, in order, each with how it was chosen.

  ``$EMBEDLAB_DATA`` alone if set; otherwise ``../shared/data`` from the current directory,
  ``shared/data`` beside the checkout embedlab runs from (an editable install), then
  ``~/.cache/embedlab/data``.
  """
  env = os.environ.get("EMBEDLAB_DATA")
  if env:
    return [(pathlib.Path(env).expanduser().absolute(), "$EMBEDLAB_DATA")]
  checkout = pathlib.Path(__file__).resolve().parents[2]  # <checkout>/embedlab/data/paths.py
  found = [(pathlib.Path.cwd().parent / "shared" / "data", "../shared/data from the current "
            "directory"),
           (checkout.parent / "shared" / "data", "shared/data beside the embedlab checkout"),
           (pathlib.Path("~/.cache/embedlab/data").expanduser().absolute(), "the default")]
  unique: dict[pathlib.Path, str] = {}
  for path, why in found:
    unique.setdefault(path.resolve() if path.exists() else path, why)
  return list(unique.items())


def data_dir() -> pathlib.Path:
  """The directory relative data paths are resolved against: the first of ``data_dirs()`` that
  exists, else the last.

  Returns:
    An absolute path (which may not exist).

  Example:
    >>> import os; os.environ["EMBEDLAB_DATA"] = "/tmp/d"; str(data_dir())
    '/tmp/d'
    >>> del os.environ["EMBEDLAB_DATA"]
  """
  places = data_dirs()
  return next((path for path, _ in places if path.is_dir()), places[-1][0])


def where_data_was_looked_for(relative: str | os.PathLike) -> str:
  """A sentence naming every place ``relative`` was looked for, and how to point embedlab at
  the data (for 'not found' errors)."""
  tried = "; ".join(f"{path / relative} ({why})" for path, why in data_dirs())
  return (f"looked for {relative} in: {tried}. Set EMBEDLAB_DATA to the folder holding the data "
          f"(sst2/, imdb/, trec/, glove6b50d/), or give an absolute path; the README's Data "
          f"section says which experiment needs which folder")


def resolve(path: str | os.PathLike) -> pathlib.Path:
  """An absolute path stays as it is; a relative one is taken under ``data_dir()``.

  Example:
    >>> str(resolve("/abs/train.tsv"))
    '/abs/train.tsv'
  """
  p = pathlib.Path(path).expanduser()
  return p if p.is_absolute() else data_dir() / p
