"""Scratch folders that a killed process cannot leak (model downloads while a model loads).

``tempfile.TemporaryDirectory`` is removed by a ``finally``, which a SIGKILL (or the OOM
killer) never runs: every kill during a load left a ``bc-model-*`` folder in the temporary
directory for good. Here each folder lives under one per-user root,
``<tempdir>/bc-scratch-<uid>/``, and holds an ``.owner`` file that its process locks
(``flock``), then writes its pid into, and keeps locked for as long as the folder is in use;
the kernel drops the lock when the process dies however it dies. Making a new folder first
removes every folder whose owner file names a process but is locked by none, so a leftover
lasts until the next load on the machine, and folders of live processes (parallel drive
servers, evaluations) are never touched.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: plain temporary folders
    fcntl = None  # type: ignore[assignment]

OWNER_FILE = ".owner"
# A folder without a written owner file is being made right now, or its process died in the
# instant between making it and locking it: only the second kind is this old.
UNLOCKED_GRACE_S = 60.0
MAKE_ATTEMPTS = 5  # the root, emptied by another process, may vanish under a new folder


def default_root() -> Path:
    """``<tempdir>/bc-scratch-<uid>``: one root per user (folders of another user are
    neither readable nor removable)."""
    return Path(tempfile.gettempdir()) / f"bc-scratch-{os.getuid()}"


def _private_root(root: Path) -> Path | None:
    """``root``, made if needed, if it is a real folder of ours and only ours; else None
    (someone else made it, or it is a link: then nothing in it is trusted)."""
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(root)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        return None
    return root


def _recent(folder: Path) -> bool:
    try:
        return time.time() - os.lstat(folder).st_mtime < UNLOCKED_GRACE_S
    except OSError:
        return True  # gone already: nothing to remove


def _owned(folder: Path) -> bool:
    """Whether a live process holds ``folder`` (or may be about to take it)."""
    try:
        handle = os.open(folder / OWNER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _recent(folder)
    except OSError:
        return True
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # locked: its process is alive
        return not os.read(handle, 32) and _recent(folder)
    finally:
        os.close(handle)  # also releases the lock just taken


def sweep(root: Path) -> list[Path]:
    """Remove the folders under ``root`` that no live process owns; returns them."""
    removed = []
    if fcntl is None or not root.is_dir():
        return removed
    for folder in root.iterdir():
        if folder.is_dir() and not folder.is_symlink() and not _owned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def scratch_folder(prefix: str, root: Path | None = None) -> Iterator[Path]:
    """A new folder (holding only its owner file), removed on exit and, should this process
    be killed first, by the next `scratch_folder` (module doc). ``root``: default
    `default_root`."""
    base = _private_root(root or default_root()) if fcntl is not None else None
    if base is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as plain:
            yield Path(plain)
        return
    sweep(base)
    folder = None
    for _ in range(MAKE_ATTEMPTS):
        if _private_root(base) is None:
            break
        try:
            folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            break
        except FileNotFoundError:  # another process removed the empty root just now
            continue
    if folder is None:
        raise OSError(f"cannot make a scratch folder in {base}")
    owner = os.open(folder / OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX)
        os.write(owner, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(owner)
        try:
            base.rmdir()  # only when empty: no trace left in the temporary folder
        except OSError:
            pass
