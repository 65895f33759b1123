"""Model downloads go to scratch folders that a killed process cannot leak (bc.core.scratch):
real processes hold folders, one is killed with SIGKILL, the next folder made removes only
the dead one's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bc.core.scratch import OWNER_FILE, UNLOCKED_GRACE_S, scratch_folder
from conftest import REPO

HOLDER = """
import sys, time
from pathlib import Path
from bc.core.scratch import scratch_folder
with scratch_folder("bc-model-", Path(sys.argv[1])) as folder:
    (folder / "model").mkdir()
    (folder / "model" / "weights.pt").write_bytes(bytes(8192))  # as a download in progress
    print(folder, flush=True)
    time.sleep(600)
"""


def hold_a_folder(root: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside ``scratch_folder`` (as during a model load) and its folder."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return process, Path(process.stdout.readline().strip())


def test_a_killed_loads_folder_goes_with_the_next_load_and_a_live_one_stays(tmp_path):
    root = tmp_path / "scratch"
    killed, leftover = hold_a_folder(root)
    alive, in_use = hold_a_folder(root)
    try:
        killed.kill()
        killed.wait()
        assert (leftover / "model" / "weights.pt").is_file()  # what a SIGKILL leaves behind
        with scratch_folder("bc-model-", root) as folder:
            assert folder.parent == root and not leftover.exists()
            assert (in_use / "model" / "weights.pt").is_file()
        assert not folder.exists() and sorted(root.iterdir()) == [in_use]
    finally:
        alive.kill()
        alive.wait()
    with scratch_folder("bc-model-", root):
        assert not in_use.exists()
    assert not root.exists()  # an empty root is removed too: nothing left in the temp folder


def test_a_folder_being_made_is_kept_until_it_is_old(tmp_path):
    root = tmp_path / "scratch"
    making = root / "bc-model-making"
    making.mkdir(parents=True)
    (making / OWNER_FILE).touch()  # made, not yet locked and written by its process
    with scratch_folder("bc-model-", root):
        assert making.is_dir()
    old = time.time() - 2 * UNLOCKED_GRACE_S
    os.utime(making, (old, old))  # its process died in that instant, long ago
    with scratch_folder("bc-model-", root):
        assert not making.exists()
