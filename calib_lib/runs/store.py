"""The results store: one SQLite file.

Why SQLite: it ships with Python, each finished run is one ACID transaction (a run is in the store
whole or not at all, whatever kills the process), the primary key on the run key makes duplicates
impossible, and concurrent writers are serialised by SQLite's file lock (WAL mode lets readers go on
while a run is written). Parquet files would need atomic renames and compaction for every append, and
DuckDB allows only one writing process at a time.

Concurrent sweeps of one store split the work: a sweep claims a run (a row in ``leases`` with its
process id, host and a heartbeat it renews every ``HEARTBEAT_S``) before computing it, and other
sweeps leave claimed runs alone. A claim whose process is gone (checked on the same host) or whose
heartbeat is older than ``LEASE_STALE_S`` is taken over.

A read-only store (``Store(path, read_only=True)``) never creates or changes a file, and SQLite's
anticipated failures (not a database, damaged pages, an unwritable folder, a lock held too long) are
raised as ``StoreError`` naming the store and the fix.

With an archive folder (``Store(path, archive=folder)``, see ``archive.py``) the SQLite file is a local
cache and the folder, one immutable file per finished run, is what git keeps. Opening the store imports
every archived run it lacks; ``put`` writes a finished run's file before its row, so a process killed
between the two loses nothing (the next opening imports the file). A read-only store never writes
either: when the archive holds runs its file lacks (or it has no file, as in a fresh clone), it reads a
private copy in a temporary folder, completed from the archive and removed when the store is.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from ..files import HOST, owner_tag, process_alive
from .archive import RunArchive
from .migrate import check_key_scheme

HEARTBEAT_S = 30.0          # a sweep renews its claims this often ...
LEASE_STALE_S = 600.0       # ... and a claim not renewed for this long belongs to a dead or hung sweep
IMPORT_BATCH = 64           # archived runs imported per transaction: few fsyncs, bounded memory

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key        TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    label      TEXT NOT NULL,
    spec       TEXT NOT NULL,
    record     TEXT NOT NULL,
    finished   REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    key        TEXT NOT NULL,          -- the run
    kind       TEXT NOT NULL,          -- task or perplexity
    name       TEXT NOT NULL,          -- the task or the text
    data       BLOB NOT NULL,          -- evaluate.records.DocumentBlock, packed (compressed npz)
    PRIMARY KEY (key, kind, name)
);
CREATE TABLE IF NOT EXISTS leases (
    key        TEXT PRIMARY KEY,       -- a run that a sweep is computing now
    owner      TEXT NOT NULL,          -- that sweep: pid@host~token
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    heartbeat  REAL NOT NULL           -- renewed every HEARTBEAT_S while the sweep lives
);
"""

# SQLite primary result codes of failures the user can fix -> what to tell them. Any other code
# (a syntax error, a constraint) is a bug in calib_lib and keeps its traceback.
_FAULTS = {
    3: "permission denied: make the store and its folder writable, or choose another --store",
    5: "it stayed locked by another process for 60 s: retry when that process is done",
    6: "it stayed locked by another process for 60 s: retry when that process is done",
    8: "it cannot be written: make the store and its folder writable, or choose another --store",
    10: "I/O error: check that the path is a file and the disk is healthy",
    11: "the file is damaged: restore it from a copy or version control (git checkout -- PATH), or move "
        "it away to start a new store",
    13: "the disk is full: free space and rerun",
    14: "it cannot be opened: its folder must exist and be writable, and the path must be a file; choose "
        "another --store",
    23: "permission denied: make the store and its folder writable, or choose another --store",
    26: "it is not a results store (not an SQLite database): check --store, or move the file away to "
        "start a new store there",
}

# Claimants of sweeps running in this process: a lease carrying this process's pid is alive only
# while its sweep is (an interrupted sweep of an earlier call left nothing running).
_LIVE_OWNERS: set[str] = set()


@dataclass(frozen=True)
class Claimant:
    """One sweep, as recorded in the leases it holds."""

    owner: str
    pid: int
    host: str


def _lease_alive(owner: str, pid: int, host: str, heartbeat: float) -> bool:
    if time.time() - heartbeat > LEASE_STALE_S:
        return False
    if pid == os.getpid() and host == HOST:
        return owner in _LIVE_OWNERS
    return process_alive(pid, host) is not False       # on another host, the heartbeat decides


def _done_keys(db) -> set[str]:
    return {key for (key,) in db.execute("SELECT key FROM runs WHERE status = 'done'")}


def _insert(db, run: dict) -> None:
    """The rows of ``run`` (a dict as ``RunArchive.read`` returns), replacing any of its key."""
    key = run["key"]
    db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
               (key, run["status"], run["label"], json.dumps(run["spec"], sort_keys=True),
                json.dumps(run["record"], default=str), run["finished"]))
    db.execute("DELETE FROM documents WHERE key = ?", (key,))
    for where, blob in run["documents"].items():
        kind, _, name = where.partition("/")
        db.execute("INSERT INTO documents VALUES (?, ?, ?, ?)", (key, kind, name, sqlite3.Binary(blob)))


class Store:
    def __init__(self, path: str | Path, read_only: bool = False, archive: str | Path | None = None):
        """Open the store at ``path``; unless ``read_only``, create it (and its folder) when missing.

        A read-only store refuses a missing path instead of creating one (unless ``archive`` holds runs),
        and leaves no file behind. ``archive``: the folder of archived runs (``archive.py``), imported
        here; None: the SQLite file alone.
        """
        self.path = Path(path)
        self.read_only = read_only
        self.archive = None if archive is None else RunArchive(archive)
        self._private: Path | None = None    # a read-only store's completed copy, when it needs one
        if read_only:
            self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the folder of the results store {self.path}: {err.strerror} "
                             f"({err.filename}); choose a --store in a writable folder") from err
        if self.archive is not None:
            self.archive.ensure_writable()           # now, not when the first finished run is to be kept
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._check_pages(db)
            check_key_scheme(db, self.path, writable=True)     # old code-digest keys: refused with the fix
        if self.archive is not None:
            with self._connect() as db:
                self._import(db, self.archive.keys() - _done_keys(db))
            # and the other way: finished runs the cache has but the archive lacks (recorded without an
            # archive, or a file deleted or cleaned away) are written out now, so a run is never kept in the
            # git-ignored cache alone
            self.export_archive()

    def _open_read_only(self) -> None:
        archived = self.archive.keys() if self.archive is not None else set()
        exists = self.path.is_file()
        if not exists and (self.path.is_dir() or not archived):       # an archive alone is a store too
            what = "is a directory" if self.path.is_dir() else "does not exist"
            also = f", and the run archive {self.archive.directory} holds no runs" if self.archive else ""
            raise StoreError(f"no results store at {self.path}: the path {what}{also}. Check --store "
                             "(reading a store never creates one)")
        missing = archived
        if exists:
            with self._connect() as db:
                if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is None:
                    raise StoreError(f"{self.path} is an SQLite file but not a results store (it has no "
                                     "runs table); check --store")
                self._check_pages(db)
                check_key_scheme(db, self.path, writable=False)
                missing = archived - _done_keys(db) if archived else set()
        if not missing:
            return
        # Runs only the archive has (a fresh clone, a pull): read a private copy completed from it, so
        # that neither the store nor the archive folder is touched.
        folder = Path(tempfile.mkdtemp(prefix="calib-store-"))
        weakref.finalize(self, shutil.rmtree, folder, True)      # also at exit; True: ignore errors
        private = folder / "runs.sqlite"
        if exists:
            with self._connect() as source:
                copy = sqlite3.connect(private)
                try:
                    source.backup(copy)          # consistent even while a sweep writes (through the WAL)
                finally:
                    copy.close()
        self._private = private
        with self._connect() as db:
            db.executescript(SCHEMA)
            check_key_scheme(db, self.path, writable=True)     # stamps a new copy; the store's was checked
            self._import(db, missing)

    def _import(self, db, keys) -> int:
        """Import the archived runs of ``keys`` not done in ``db`` (a failed row is replaced). The number
        imported."""
        keys = sorted(keys)
        imported = 0
        for start in range(0, len(keys), IMPORT_BATCH):
            runs = [self.archive.read(key) for key in keys[start:start + IMPORT_BATCH]]
            db.execute("BEGIN IMMEDIATE")
            for run in runs:
                row = db.execute("SELECT status FROM runs WHERE key = ?", (run["key"],)).fetchone()
                if row and row[0] == "done":         # another process imported or recorded it meanwhile
                    continue
                _insert(db, run)
                imported += 1
            db.execute("COMMIT")
        return imported

    def export_archive(self, directory: str | Path | None = None) -> int:
        """Write every finished run of the store that ``directory`` (default: the store's archive) lacks
        into it, leaving the store unchanged: how a store from before archives is migrated. Returns how
        many files were written."""
        archive = self.archive if directory is None else RunArchive(directory)
        if archive is None:
            raise StoreError(f"no archive folder to export {self.path} to: give one (--archive)")
        archive.ensure_writable()
        present = archive.keys()
        written = 0
        with self._connect() as db:
            keys = [k for (k,) in db.execute("SELECT key FROM runs WHERE status = 'done' ORDER BY finished")]
            for key in keys:
                if key in present:
                    continue
                label, spec, record, finished = db.execute(
                    "SELECT label, spec, record, finished FROM runs WHERE key = ?", (key,)).fetchone()
                documents = {f"{kind}/{name}": bytes(blob) for kind, name, blob in db.execute(
                    "SELECT kind, name, data FROM documents WHERE key = ?", (key,))}
                written += archive.write({"key": key, "status": "done", "label": label, "spec": json.loads(spec),
                                          "record": json.loads(record), "finished": finished,
                                          "documents": documents})
        return written

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"results store {self.path} was opened read-only; open it writable to record runs")

    def _check_pages(self, db) -> None:
        """Find damaged pages on opening (one quick read of the file), not when a query happens to touch
        one, or when a sweep cannot record the run it has just computed."""
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise StoreError(f"results store {self.path}: {_FAULTS[11].replace('PATH', str(self.path))} "
                             f"(SQLite: {verdict})")

    @contextlib.contextmanager
    def _connect(self):
        """A connection that is closed afterwards; anticipated SQLite failures become StoreError."""
        try:
            if self._private is not None:
                db = sqlite3.connect(self._private, timeout=60, isolation_level=None)
            elif self.read_only:
                # Without a -wal file no writer is active (a sweep keeps one open while it runs): open
                # the file as immutable, which creates no -wal/-shm files (a mode=ro connection would
                # create both and could not remove them). With one, read through it in mode=ro, with
                # SQLite's locks; those files exist already.
                flag = "mode=ro" if Path(f"{self.path}-wal").exists() else "immutable=1"
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{flag}", uri=True, timeout=60,
                                     isolation_level=None)
            else:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=60000")
                if not self.read_only:
                    db.execute("PRAGMA synchronous=FULL")
                elif self._private is not None:
                    db.execute("PRAGMA synchronous=OFF")      # a throwaway copy: no need to survive a crash
                yield db
            finally:
                db.close()               # also rolls back a transaction an exception left open
        except sqlite3.DatabaseError as err:
            fault = _FAULTS.get(getattr(err, "sqlite_errorcode", 0) & 0xFF)
            if fault is None:
                raise
            raise StoreError(f"results store {self.path}: {fault.replace('PATH', str(self.path))} "
                             f"(SQLite: {err})") from err

    def put(self, key: str, status: str, label: str, spec: dict, record: dict) -> None:
        """Write one run, with its per-document records (``record["documents"]``: ``{"kind/name": packed
        bytes}``, kept in their own table), in a single transaction and release its lease. A done run is
        never replaced by a failed one.

        With an archive, a done run's file is written first (failed runs are not archived: they are
        retried anyway), then its row: killed in between, the run is imported at the next opening. If
        the archive has a file of this key already, that file is the run (runs are immutable)."""
        self._writable()
        record = dict(record)
        documents = record.pop("documents", None) or {}
        run = {"key": key, "status": status, "label": label, "spec": spec, "record": record,
               "finished": time.time(), "documents": documents}
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if not (row and row[0] == "done"):
                if self.archive is not None and key in self.archive.keys():
                    run = self.archive.read(key)          # runs are immutable: the archived one is the run
                elif status == "done" and self.archive is not None and not self.archive.write(run):
                    run = self.archive.read(key)
                _insert(db, run)
            db.execute("DELETE FROM leases WHERE key = ?", (key,))     # settled: nobody needs to hold it
            db.execute("COMMIT")

    # -- leases: concurrent sweeps split the work ------------------------------------------------

    @contextlib.contextmanager
    def claimant(self):
        """A ``Claimant`` for one sweep, whose leases a background thread renews; on exit the leases
        it still holds are released."""
        self._writable()
        me = Claimant(f"{owner_tag()}~{secrets.token_hex(4)}", os.getpid(), HOST)
        with self._connect() as keeper:
            # SQLite deletes the -wal file when the last connection that has read the store closes. One
            # held open for the whole sweep keeps it in place, so a read-only reader sees that a writer
            # is active and reads through SQLite's locks instead of opening the file as immutable.
            keeper.execute("SELECT COUNT(*) FROM leases").fetchone()
            _LIVE_OWNERS.add(me.owner)
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(me, stop), daemon=True,
                                    name="calib-lease-heartbeat")
            beat.start()
            try:
                yield me
            finally:
                stop.set()
                beat.join()
                _LIVE_OWNERS.discard(me.owner)
                try:
                    with self._connect() as db:
                        db.execute("DELETE FROM leases WHERE owner = ?", (me.owner,))
                except StoreError:
                    pass      # do not hide what ended the sweep; the leases lapse with this process anyway

    def _heartbeat(self, me: Claimant, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                with self._connect() as db:
                    db.execute("UPDATE leases SET heartbeat = ? WHERE owner = ?", (time.time(), me.owner))
            except StoreError:
                pass      # a missed beat is retried at the next; only LEASE_STALE_S without one loses a lease

    def claim(self, key: str, me: Claimant, since: float) -> str:
        """Claim run ``key`` for ``me`` unless it is settled or another live sweep holds it.

        Returns "claimed"; "done", or "failed" for a failure recorded at or after ``since`` (an older
        failure is retried); "busy" while another sweep holds a live lease on it.
        """
        self._writable()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status, finished FROM runs WHERE key = ?", (key,)).fetchone()
            if row and (row[0] == "done" or row[1] >= since):
                db.execute("ROLLBACK")
                return row[0]
            lease = db.execute("SELECT owner, pid, host, heartbeat FROM leases WHERE key = ?", (key,)).fetchone()
            if lease and lease[0] != me.owner and _lease_alive(*lease):
                db.execute("ROLLBACK")
                return "busy"
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)",
                       (key, me.owner, me.pid, me.host, time.time()))
            db.execute("COMMIT")
        return "claimed"

    def status(self, keys: list[str]) -> dict[str, str]:
        with self._connect() as db:
            out = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = db.execute(f"SELECT key, status FROM runs WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk).fetchall()
                out.update(dict(rows))
        return out

    def get(self, key: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT status, spec, record FROM runs WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"status": row[0], "spec": json.loads(row[1]), **json.loads(row[2])}

    def records(self, status: str = "done") -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT key, spec, record FROM runs WHERE status = ? ORDER BY finished",
                              (status,)).fetchall()
        return [{"key": k, "spec": json.loads(s), **json.loads(r)} for k, s, r in rows]

    def count(self) -> dict[str, int]:
        with self._connect() as db:
            return dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    def frame(self):
        """One row per metric of every finished run, with the spec's fields as columns."""
        import pandas as pd
        rows = []
        for run in self.records("done"):
            spec = run["spec"]
            cal = spec.get("calibration") or {}
            base = {"key": run["key"], "model": spec["model"], "method": spec["method"]["name"],
                    **{f"method.{k}": v for k, v in spec["method"].items() if k != "name"},
                    **{f"calibration.{k}": v for k, v in cal.items()},
                    "suite": spec["eval"]["name"], "batch_size": spec.get("batch_size"),
                    "replicate": spec.get("replicate", 0),
                    "calibration_fingerprint": run.get("calibration_fingerprint"),
                    # a run that pruned its vocabulary (runs.spec.VocabularySpec.label), else None
                    "vocabulary": _vocabulary_label(spec.get("vocabulary"))}
            for metric in run["metrics"]:
                rows.append({**base, **{k: v for k, v in metric.items() if k != "seconds"}})
        return pd.DataFrame(rows)

    # -- per-document records ----------------------------------------------------------------------

    def _blocks(self, keys=None):
        """(run key, label, DocumentBlock) of every finished run (or of ``keys``) that has records."""
        from ..evaluate.records import DocumentBlock
        with self._connect() as db:
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'documents'").fetchone()
            rows = [] if has_table is None else db.execute(
                "SELECT d.key, r.label, d.kind, d.name, d.data FROM documents d JOIN runs r ON r.key = d.key "
                "WHERE r.status = 'done' ORDER BY r.finished, d.kind, d.name").fetchall()
        wanted = None if keys is None else set(keys)
        blocks = [(k, label, DocumentBlock.unpack(kind, name, blob)) for k, label, kind, name, blob in rows
                  if wanted is None or k in wanted]
        if not blocks:
            which = "" if keys is None else " for the runs asked for"
            raise StoreError(f"{self.path} has no per-document records{which}: its runs were scored before "
                             "evaluation version 2 (or have no evaluation); rerun their specs (calib run / calib "
                             "study computes every run whose key changed) to record them")
        return blocks

    def documents(self, keys=None):
        """One row per (run key, kind, name, doc_id): ``correct``, ``correct_norm``, ``gold_loglik``,
        ``best_other_loglik`` (tasks), ``nll``, ``tokens`` (windows: summed NLL and scored tokens; tasks: the
        gold continuation's tokens), ``kl_sum``, ``top1_matches`` (windows scored against the dense
        reference); NaN where a column does not apply. Join with ``frame()`` on ``key``."""
        import pandas as pd
        parts = []
        for key, label, block in self._blocks(keys):
            if block.kind == "summary":          # generated texts: Store.summaries()
                continue
            part = pd.DataFrame(block.rows())
            part.insert(0, "name", block.name)
            part.insert(0, "kind", block.kind)
            part.insert(0, "label", label)
            part.insert(0, "key", key)
            parts.append(part)
        if not parts:
            raise StoreError(f"{self.path} has only generated summaries for the runs asked for, no scored tasks or "
                             "windows: read them with Store.summaries()")
        return pd.concat(parts, ignore_index=True)

    def summaries(self, keys=None):
        """One row per (run key, dataset, doc_id) of every run that generated summaries
        (``evaluate.summarization``): every per-document metric, the token counts, ``summary`` and ``generation``.
        Join with ``frame()`` on ``key``."""
        import pandas as pd
        parts = []
        for key, label, block in self._blocks(keys):
            if block.kind != "summary":
                continue
            part = pd.DataFrame({k: v for k, v in block.columns.items()})
            part.insert(0, "dataset", block.name)
            part.insert(0, "label", label)
            part.insert(0, "key", key)
            parts.append(part)
        if not parts:
            raise StoreError(f"{self.path} has no generated summaries for the runs asked for: give their suite a "
                             "summarization field (calib_lib.evaluate.summarization.SummarizationEval)")
        return pd.concat(parts, ignore_index=True)

    def choices(self, keys=None):
        """One row per (run key, task, doc_id, choice): ``is_gold``, ``loglik`` (summed over the
        continuation), ``tokens``, ``chars``, ``greedy``: enough to rescore any choice rule."""
        import pandas as pd
        parts = []
        for key, label, block in self._blocks(keys):
            if block.kind != "task":
                continue
            part = pd.DataFrame(block.choice_rows())
            part.insert(0, "name", block.name)
            part.insert(0, "label", label)
            part.insert(0, "key", key)
            parts.append(part)
        if not parts:
            raise StoreError(f"{self.path} has per-document records of perplexity windows only, no task choices")
        return pd.concat(parts, ignore_index=True)


def _vocabulary_label(normalized: dict | None) -> str | None:
    """The label of a stored spec's vocabulary step ('vocab: suite'), None for a run without one."""
    if not normalized:
        return None
    from .spec import _vocabulary
    return _vocabulary(normalized, "vocabulary", None).label()     # a stored spec names its calibration
