"""Finished runs as immutable files, one per run, so results can be committed to git append-only.

Why: the SQLite store is one binary file. Committing it after every sweep stores the whole file again
in history (git keeps binary blobs whole, with no useful diff), so a long study grows the repository by
a full store per commit, and soon runs into the 256 MiB diff limit of issue #18 (and GitHub refuses any
file over 100 MiB). Here each finished run is written once to ``<folder>/<key>.zip`` and never changed:
a commit adds only the files of new runs, two clones that computed different runs merge without
conflicts (different keys, different files), and the SQLite file becomes a local, git-ignored cache,
rebuilt from the files by ``Store(path, archive=folder)`` when it is missing or behind.

A file holds ``run.json`` (the key, status, label, spec, the record exactly as the store holds it, the
finished time, the key scheme and this format's version) and one member per per-document block,
``documents/<kind>/<name>``, whose bytes are the packed block unchanged (already compressed npz, so they
are stored, not deflated again).

The bytes are a function of the run only (fixed member dates and permissions, ``run.json`` with a
fixed field order and then the blocks in sorted order): exporting a run again writes the same bytes, so git sees no
change. A file is written to a temporary name and then linked into place, so a killed writer leaves no
half file, and an existing file is never replaced: keys name the configuration, so the first finished
run of a key is the run.

Keys are lowercase hex digests in practice; any other character is %-escaped in the file name (the
name stays readable and maps back to the key). Keys that differ only in letter case would collide on a
case-insensitive file system.
"""
from __future__ import annotations

import io
import json
import os
import urllib.parse
import zipfile
import zlib
from pathlib import Path

from ..errors import StoreError
from ..files import TMP_SUFFIX, fsync_dir, remove_stale, temp_name
from .migrate import KEY_SCHEME

FORMAT = 1                           # of the files; a reader refuses a newer one instead of misreading it
SUFFIX = ".zip"
RUN_MEMBER = "run.json"
DOCUMENTS = "documents/"
_DATE = (1980, 1, 1, 0, 0, 0)        # the earliest a zip can record: no wall-clock time in the bytes
_MODE = 0o100644 << 16               # a regular file, rw-r--r--, whoever writes it
_TMP_PREFIX = ".calib-run-"          # temporary files start with a dot: keys() never lists them
_FIELDS = ("key", "status", "label", "spec", "record", "finished", "documents")


def file_name(key: str) -> str:
    """``<key>.zip``, with any character outside ``[A-Za-z0-9_.~-]`` (and a leading dot) %-escaped."""
    if not key:
        raise ValueError("a run key cannot be empty")
    name = urllib.parse.quote(key, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name + SUFFIX


def key_of(name: str) -> str | None:
    """The key a file name stands for, or None for what is not a run file (temporary files included)."""
    if not name.endswith(SUFFIX) or name.startswith(".") or len(name) == len(SUFFIX):
        return None
    return urllib.parse.unquote(name[:-len(SUFFIX)])


def _member(name: str, data: bytes, method: int, zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = method
    info.create_system = 3           # unix, so that external_attr means the same on every host
    info.external_attr = _MODE
    zf.writestr(info, data, compresslevel=9 if method == zipfile.ZIP_DEFLATED else None)


def pack(run: dict) -> bytes:
    """The file's bytes for ``run`` (a dict of ``_FIELDS``; ``documents``: ``{"kind/name": bytes}``)."""
    documents = run.get("documents") or {}
    # The spec's field order is canonical (the store sorts it too); the record keeps its own order, which
    # is the store's (frame() takes its columns in that order), so a record read back is stored unchanged.
    spec = json.loads(json.dumps(run["spec"], sort_keys=True))
    meta = {"format": FORMAT, "key_scheme": KEY_SCHEME, "key": run["key"], "status": run["status"],
            "label": run["label"], "finished": float(run["finished"]), "documents": sorted(documents),
            "spec": spec, "record": run["record"]}
    text = json.dumps(meta, indent=1, default=str) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        _member(RUN_MEMBER, text.encode(), zipfile.ZIP_DEFLATED, zf)
        for where in sorted(documents):
            _member(DOCUMENTS + where, bytes(documents[where]), zipfile.ZIP_STORED, zf)
    return buffer.getvalue()


def _fix(path: Path) -> str:
    return (f"restore it with `git checkout -- {path}`, or delete it and the run's row in the store's runs.sqlite "
            "cache (or the whole cache) to recompute that run")


class RunArchive:
    """The folder of run files: ``keys()``, ``read(key)``, ``write(run)``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"RunArchive({str(self.directory)!r})"

    def path(self, key: str) -> Path:
        return self.directory / file_name(key)

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def keys(self) -> set[str]:
        """The keys of every run file, from the file names alone (no file is opened). A missing folder
        holds no runs."""
        try:
            with os.scandir(self.directory) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            return set()
        except OSError as err:
            raise StoreError(f"cannot list the run archive {self.directory}: {err.strerror}; it must be a "
                             "readable folder (check --archive)") from err
        return {key for key in map(key_of, names) if key is not None}

    def ensure_writable(self) -> None:
        """Create the folder if needed; refuse, naming the fix, one that cannot be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the run archive folder {self.directory}: {err.strerror} "
                             f"({err.filename}); choose another --archive") from err
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise StoreError(f"the run archive folder {self.directory} is not writable: change its permissions, "
                             "or choose another --archive")

    def read(self, key: str) -> dict:
        """The run of ``key``: a dict of ``key, status, label, spec, record, finished, documents``
        (``{"kind/name": bytes}``), as it was written."""
        path = self.path(key)
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read(RUN_MEMBER))
                if not isinstance(meta, dict):
                    raise ValueError(f"{RUN_MEMBER} is not a mapping")
                if meta.get("format", 0) > FORMAT:
                    raise StoreError(f"archived run {path} is of archive format {meta['format']}, newer than "
                                     f"this calib_lib reads ({FORMAT}): update calib_lib")
                if meta.get("key_scheme") != KEY_SCHEME:
                    raise StoreError(f"archived run {path} is keyed by scheme {meta.get('key_scheme')!r}, not "
                                     f"{KEY_SCHEME!r}: update calib_lib, or delete the file to recompute that run")
                missing = [f for f in _FIELDS if f not in meta]
                if missing or meta["key"] != key or meta["status"] != "done":
                    raise ValueError(f"fields missing {missing}" if missing else
                                     f"it holds run {meta['key']!r} ({meta['status']})")
                documents = {where: zf.read(DOCUMENTS + where) for where in meta["documents"]}
        except StoreError:
            raise
        except FileNotFoundError as err:
            raise StoreError(f"archived run {path} disappeared while it was read: {_fix(path)}") from err
        except OSError as err:
            raise StoreError(f"cannot read archived run {path}: {err.strerror}; check its permissions, or "
                             f"{_fix(path)}") from err
        except (zipfile.BadZipFile, zlib.error, KeyError, ValueError, TypeError, EOFError) as err:
            # KeyError: a member is missing; ValueError covers bad JSON; BadZipFile a failed CRC check
            raise StoreError(f"archived run {path} is damaged ({type(err).__name__}: {err}): {_fix(path)}") from err
        return {**{f: meta[f] for f in _FIELDS if f != "documents"}, "documents": documents}

    def write(self, run: dict) -> bool:
        """Write the file of a finished ``run`` unless the key has one. True when this call wrote it.

        A file already there is left as it is, whatever it holds: runs are immutable, the first finished
        run of a key is the run (and its bytes are what git has)."""
        if run["status"] != "done":
            raise ValueError(f"only finished runs are archived, not {run['status']!r} ones")
        path = self.path(run["key"])
        if path.exists():
            return False
        data = pack(run)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale(self.directory, _TMP_PREFIX, TMP_SUFFIX)      # what killed writers left
            tmp = self.directory / temp_name(_TMP_PREFIX, TMP_SUFFIX)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                written = _link_new(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            if written:
                fsync_dir(self.directory)
            return written
        except OSError as err:
            raise StoreError(f"cannot write archived run {path}: {err.strerror or err}; make the folder "
                             f"{self.directory} writable, or choose another --archive") from err


def _link_new(tmp: Path, path: Path) -> bool:
    """Put ``tmp`` in place as ``path`` unless ``path`` exists (True when it did). A hard link fails if
    the target exists, where a rename would replace it (a concurrent writer of the same key)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # a file system without hard links: check, then rename (a race here needs two writers of one key
        # within microseconds, and the two files would then hold the same configuration's results)
        if path.exists():
            return False
        os.replace(tmp, path)
        return True
