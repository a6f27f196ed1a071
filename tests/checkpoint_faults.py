"""Test-only fault injection into checkpoint writes, outside the library.

Two environment variables, read when ``install()`` runs:

* ``EMBEDLAB_FAULT_KILL_AT_SAVE=N``: the N-th checkpoint write of the process (latest and best
  counted together, from 1) kills its own process with SIGKILL after all files are in the
  temporary directory and before the rename that commits them.
* ``EMBEDLAB_FAULT_SLEEP_IN_SAVE=SECONDS``: every write sleeps at that same point, so a kill
  from outside lands inside a write more often.

``install()`` wraps orbax's ``AtomicRenameTemporaryPath.finalize`` (the commit of a step
directory; the items inside a step are not counted). Run as a script, it installs the hooks
(when one of the variables is set) and then runs the ``embedlab`` command with the remaining
arguments, which is how ``tests/test_reliability_crash.py`` starts its training runs:

  python tests/checkpoint_faults.py train experiments/x.py --workdir /tmp/run
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import time

KILL_AT_SAVE = "EMBEDLAB_FAULT_KILL_AT_SAVE"
SLEEP_IN_SAVE = "EMBEDLAB_FAULT_SLEEP_IN_SAVE"


def install() -> None:
  """Wraps the commit of every step directory with the hooks the environment asks for."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel

  real = atomicity.AtomicRenameTemporaryPath.finalize
  commits = [0]  # step directories of this process that reached the commit point

  async def finalize(self, *args, **kwargs):
    if self.get_final().name.isdigit():
      commits[0] += 1
      pause = float(os.environ.get(SLEEP_IN_SAVE) or 0)
      if pause > 0:
        time.sleep(pause)
      if str(commits[0]) == os.environ.get(KILL_AT_SAVE, "").strip():
        os.kill(os.getpid(), signal.SIGKILL)
    return await real(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


if __name__ == "__main__":
  if os.environ.get(KILL_AT_SAVE) or os.environ.get(SLEEP_IN_SAVE):
    install()
  sys.argv = ["embedlab"] + sys.argv[1:]
  runpy.run_module("embedlab.cli", run_name="__main__", alter_sys=True)
