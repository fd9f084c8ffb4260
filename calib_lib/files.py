"""Write files so that a crash never leaves half of one, and recognise what a killed writer left behind.

Every cache entry and output file of calib_lib is written through ``atomic_write``: the bytes go to a
temporary file beside the target, are flushed and fsync'd, the temporary file is renamed over the
target and the directory is fsync'd, so the rename itself survives a power cut. Readers see the old
file or the new one, never a part. Temporary names carry ``pid@host`` of their writer: a process killed
mid-write leaves only its temporary file, and the next write into that directory removes it once that
process is gone (or, for a writer on another host, after a day).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from .errors import UserError

HOST = socket.gethostname()
# A leftover whose writer cannot be checked (another host sharing the cache, an old name without an
# owner) is stale after this long; nothing calib_lib writes takes nearly as long.
LEFTOVER_MAX_AGE_S = 24 * 3600
TMP_SUFFIX = ".tmp"


def owner_tag() -> str:
    """``pid@host`` of this process, as embedded in temporary names and run leases."""
    return f"{os.getpid()}@{HOST}"


def process_alive(pid: int, host: str) -> bool | None:
    """Whether process ``pid`` runs on ``host``: True or False on this host, None (unknown) elsewhere."""
    if host != HOST:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # it exists, owned by another user
        return True
    return True


def is_stale(owner: str, mtime: float, max_age: float = LEFTOVER_MAX_AGE_S) -> bool:
    """Whether something written by ``owner`` (``pid@host``) at ``mtime`` was abandoned."""
    pid, _, host = owner.partition("@")
    alive = process_alive(int(pid), host) if pid.isdigit() else None
    return alive is False or time.time() - mtime > max_age


def temp_name(prefix: str, suffix: str = "") -> str:
    """``prefix + pid@host~random + suffix``: unique, and traceable to its writer by ``remove_stale``."""
    return f"{prefix}{owner_tag()}~{secrets.token_hex(4)}{suffix}"


def remove_stale(directory: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Delete entries of ``directory`` named like ``temp_name(prefix, suffix)`` whose writer is gone
    (what a killed process left). Best effort: an entry that cannot be removed is left alone."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(suffix) or len(name) <= len(prefix) + len(suffix):
            continue
        owner = name[len(prefix):len(name) - len(suffix)].rpartition("~")[0]
        try:
            if not is_stale(owner, entry.lstat().st_mtime):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue                  # finished or removed by someone else meanwhile, or not ours to remove
        removed.append(entry)
    return removed


def _fsync_fd_of(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    _fsync_fd_of(path, os.O_RDONLY)


def fsync_dir(directory: Path) -> None:
    """Make renames and new entries in ``directory`` durable."""
    _fsync_fd_of(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def durable_replace(src: Path, dst: Path) -> None:
    """``os.replace`` of a file that was written without fsync (by pip, say), made durable."""
    fsync_file(src)
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def _naming(err: OSError, path: Path) -> OSError:
    """The same error, naming the target instead of the temporary file the user never asked for."""
    if err.errno is None:
        return err
    return type(err)(err.errno, err.strerror, str(path))


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """A binary file handle whose content replaces ``path`` when the block ends without an exception.

    The new file gets the permissions of any new file (0666 less the umask); its parent directories
    are created. An OSError about the temporary file is raised naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    remove_stale(path.parent, prefix, TMP_SUFFIX)
    tmp = path.parent / temp_name(prefix, TMP_SUFFIX)
    try:
        # O_EXCL: never write into another writer's file. Mode 0666 (the kernel applies the umask),
        # where tempfile.mkstemp would make every exported file private (0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            raise _naming(err, path) from err
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    with atomic_write(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def check_writable(path: str | Path, what: str) -> None:
    """Fail before any work when ``path`` (given as ``what``, e.g. ``--out``) cannot be written later.

    Nothing is created: the nearest existing ancestor must be a writable directory.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file path")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what} {path}: {ancestor} is a file, not a directory; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: the directory {ancestor} is not writable; choose "
                        "another path or change its permissions")
