"""Writing files that readers never see half of: per-writer temp names, and sweeping what a killed writer left.

A writer puts its bytes in ``temp_name(path)`` — ``<path>.tmp-<pid>-<random>``,
unique per writer even for two threads of one process — then renames it over
``path`` (atomic on one file system) and removes the temp on any exception.
Only SIGKILL (or a power cut) can leave the temp behind; the next writer of
the same path removes every such temp whose process no longer exists
(``sweep_stale_temps``).
"""
from __future__ import annotations

import glob
import os
import uuid


def temp_name(path, suffix: str = "") -> str:
    """A temp path beside ``path`` that no other writer uses: ``<path>.tmp-<pid>-<random><suffix>``."""
    return f"{os.fspath(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}"


def sweep_stale_temps(path) -> list[str]:
    """Remove the temps of ``path`` (``temp_name``) left by processes that no longer run; returns them."""
    removed = []
    for temp in glob.glob(glob.escape(os.fspath(path)) + ".tmp-*-*"):
        pid = temp[len(os.fspath(path)) + len(".tmp-"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(temp)
                removed.append(temp)
            except FileNotFoundError:           # another writer swept it first
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                     # someone else's process: alive
        return True
    return True


def check_writable_target(path, what: str = "the output") -> None:
    """Refuse, before any work, an output path a writer could not publish: empty, an existing directory, or
    in a folder that does not exist or is not writable (one ``OSError`` subclass saying which)."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError(f"{what}: the path is empty; give a file name")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {what} to {path}: it is a directory; give a file name inside it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {what} to {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} to {path}: directory {parent} is not writable")


def read_whole(path, what: str) -> bytes:
    """All bytes of ``path`` through one open file (a file replaced while it is read is still read whole, old
    or new), or one ``OSError`` subclass that names ``what`` was expected and why it cannot be read."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path} is a directory, not an {what} file") from None
    except PermissionError:
        raise PermissionError(f"cannot read {path}: permission denied (an {what} file must be readable by "
                              "this user)") from None
    except OSError as exc:
        raise OSError(f"cannot read {path}: {exc.strerror or exc}") from None
