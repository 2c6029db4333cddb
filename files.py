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
import stat
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


def _refuse_special_target(path: str, what: str) -> None:
    """Publishing renames a new file over ``path``: a device, FIFO or socket there would be replaced (as root,
    ``/dev/null`` itself), not written to — refuse it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return                                  # nothing there yet (or a link to nothing): a new file
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "special file")
        raise PermissionError(f"cannot write {what} to {path}: it is a {kind}, not a regular file; give the "
                              "path of a regular file")


def write_atomic(path, data, what: str = "the output") -> str:
    """Publish ``data`` (``bytes`` or ``str``) as ``path``: written to ``temp_name(path)``, then renamed over
    ``path``, so readers see the old file or the whole new one; the temp is removed on any failure (and
    temps of writers killed earlier are swept first). Returns ``path``."""
    path = os.fspath(path)
    _refuse_special_target(path, what)
    sweep_stale_temps(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def check_writable_target(path, what: str = "the output") -> None:
    """Refuse, before any work, an output path a writer could not publish: empty, an existing directory,
    device, FIFO or socket (publishing renames a new file over the path, which would replace a device such
    as ``/dev/null`` rather than write to it), or in a folder that does not exist or is not writable (one
    ``OSError`` subclass saying which)."""
    path = os.fspath(path)
    if not path:
        raise FileNotFoundError(f"{what}: the path is empty; give a file name")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {what} to {path}: it is a directory; give a file name inside it")
    _refuse_special_target(path, what)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        if os.path.exists(parent):
            raise NotADirectoryError(f"cannot write {what} to {path}: {parent} is a file, not a folder")
        raise FileNotFoundError(f"cannot write {what} to {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} to {path}: directory {parent} is not writable")
    probe = temp_name(path)         # what os.access cannot tell: /proc, or a read-only mount for root
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise PermissionError(f"cannot write {what} to {path}: a file cannot be created in {parent} "
                              f"({exc.strerror or exc})") from None
    os.remove(probe)


_SPECIAL_FILES = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
                  (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def check_regular_file(path, what: str) -> None:
    """Refuse, before it is opened, a ``path`` that is not a readable regular file once links are followed:
    missing, a link to nothing or a link loop, a directory, or a FIFO, device or socket (reading one blocks
    or never ends) — one ``OSError`` subclass naming ``what`` was expected."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise FileNotFoundError(f"{path} is a link to {os.readlink(path)}, which does not exist; give the "
                                    f"{what} itself") from None
        raise FileNotFoundError(f"no {what} at {path}") from None
    except OSError as exc:                      # a link loop (ELOOP), a folder on the way that is not one
        raise OSError(f"cannot open {path} ({exc.strerror or exc}); give the {what} itself") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a directory, not an {what}" + ("" if what.endswith(" file") else " file"))
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), None)
    if kind is not None:
        raise OSError(f"{path} is a {kind}, not a regular file (reading it could block); give the {what} itself")


def read_whole(path, what: str) -> bytes:
    """All bytes of ``path`` through one open file (a file replaced while it is read is still read whole, old
    or new), or one ``OSError`` subclass that names ``what`` was expected and why it cannot be read
    (``check_regular_file`` first: a FIFO or device is refused, not read)."""
    path = os.fspath(path)
    check_regular_file(path, what)
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


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same inode where both exist, else the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_folder(path, what: str) -> None:
    """Refuse, before any work, a folder output a command could not create or write into: an existing file,
    or a path whose nearest existing parent is not a writable folder (one ``OSError`` subclass saying which)."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is a file; give a folder (it is created if missing)")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: folder {existing} is not writable")
