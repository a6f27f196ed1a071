"""Writing a file whole or not at all (the encoded cache, a run directory's records).

Example:
  >>> import pathlib, tempfile
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.json"
  >>> atomic_write(path, '{"accuracy": 0.9}\\n')
  >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
  ('{"accuracy": 0.9}\\n', ['results.json'])
"""

from __future__ import annotations

import os
import pathlib
import secrets
from typing import Callable, Union

Content = Union[str, bytes, Callable[[str], None]]


def atomic_write(path: str | os.PathLike, content: Content) -> None:
  """Writes ``path`` through a temporary file beside it and ``os.replace``.

  A reader, or a process killed midway, sees the old file or the new one, never half of one;
  a write that fails leaves the old file and removes the temporary one. The file gets the
  permissions a plain ``open(path, "w")`` would give it.

  Args:
    path: the file; its directory must exist.
    content: text (written as UTF-8), bytes, or a function that writes the file at the path it
      is given (``lambda p: vocab.save(p)``).

  Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vocab.txt"
    >>> atomic_write(path, lambda p: pathlib.Path(p).write_text("the\\nof\\n"))
    >>> path.read_text().split()
    ['the', 'of']
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 less the umask
  try:
    if callable(content):
      os.close(fd)
      fd = -1
      content(str(tmp))
    else:
      with os.fdopen(fd, "wb") as f:
        fd = -1
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
    os.replace(tmp, path)
  except BaseException:
    if fd >= 0:
      os.close(fd)
    tmp.unlink(missing_ok=True)
    raise
