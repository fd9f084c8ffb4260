"""Run-key schemes of a store, and the one-time migration from code-digest keys to version keys.

Until 2026-11-25 a run key hashed the spec plus a digest of the source files that produce the numbers,
so any refactor re-keyed every run. Keys now hash the spec plus component versions (``spec.py``). A
store records its scheme in a ``meta`` table; a store written under the old scheme is refused on open
with a message naming ``calib store migrate PATH``, never treated as empty or re-run into duplicates.

The migration is exact, not a guess: version 1 of every component reproduces, bit for bit, the numbers
of the last code-digest release (commit 4f1c7ce; ``tests/golden.json`` was recorded from that code and
the refactored code reproduces it). So a run whose recorded code digest is that release's digest for
its method is re-keyed under the new scheme; any other run was already stale (no current spec could
reach its key) and is dropped, as are failed runs (a sweep retries them anyway). The file is copied to
``<store>.before-migration`` first, and the rewrite is one transaction.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from ..errors import StoreError

KEY_SCHEME = "component-versions/1"

# Code digests (runs/spec.py ``code_version`` at commit 4f1c7ce) of the code that version 1 reproduces.
LEGACY_CURRENT = {"dense": "2c4f384bfa9bdf61", "magnitude": "9df1f2ed8cd42916", "wanda": "9df1f2ed8cd42916",
                  "sparsegpt": "9df1f2ed8cd42916", "rtn": "2f3f82ea724ccf85", "gptq": "2f3f82ea724ccf85",
                  "awq": "755c337ede279b11"}

META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)"


class MigrationNeeded(StoreError):
    """The store's run keys are of another scheme: the message names the migration command."""


def key_scheme(db: sqlite3.Connection) -> str | None:
    """The store's key scheme; None for a store from before schemes were recorded."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE name = 'key_scheme'").fetchone()
    return row[0] if row else None


def check_key_scheme(db: sqlite3.Connection, path: Path, writable: bool) -> None:
    """Accept a store of the current scheme; stamp a new, empty one; refuse anything else with the fix."""
    scheme = key_scheme(db)
    if scheme == KEY_SCHEME:
        return
    if scheme is not None:
        raise MigrationNeeded(f"results store {path} uses run-key scheme {scheme!r}, which this calib_lib does "
                              f"not know (it writes {KEY_SCHEME!r}): update calib_lib, or choose another --store")
    runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    if runs:
        raise MigrationNeeded(f"results store {path} holds {runs} run(s) keyed by the old code digests: run "
                              f"`calib store migrate {path}` once (it re-keys them in place and keeps a backup)")
    if writable:
        db.execute(META_SCHEMA)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('key_scheme', ?)", (KEY_SCHEME,))


def migrate(path: str | Path) -> dict:
    """Re-key a code-digest store in place (backup first). Returns counts of what happened."""
    from .spec import parse_spec, spec_data
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if key_scheme(db) == KEY_SCHEME:
            return {"migrated": 0, "stale": 0, "failed": 0, "backup": None, "already": True}
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")        # the backup must hold every committed run
        backup = path.with_name(path.name + ".before-migration")
        shutil.copy2(path, backup)
        rows = db.execute("SELECT key, status, label, spec, record, finished FROM runs").fetchall()
        kept, stale, failed = [], 0, 0
        for _, status, _, spec_text, record_text, finished in rows:
            if status != "done":
                failed += 1
                continue
            normalized, record = json.loads(spec_text), json.loads(record_text)
            if record.get("code_version") != LEGACY_CURRENT.get(normalized["method"]["name"]):
                stale += 1
                continue
            spec = parse_spec(spec_data(normalized))
            record["versions"] = spec.versions()
            record["legacy_code_version"] = record.pop("code_version")
            kept.append((spec.key, "done", spec.label(), json.dumps(spec.normalized(), sort_keys=True),
                         json.dumps(record, default=str), finished))
        if len({row[0] for row in kept}) != len(kept):
            raise RuntimeError(f"{path}: two stored runs map to one new key; nothing was changed")
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM runs")
        db.executemany("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)", kept)
        db.execute(META_SCHEMA)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('key_scheme', ?)", (KEY_SCHEME,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
    finally:
        db.close()
    return {"migrated": len(kept), "stale": stale, "failed": failed, "backup": str(backup), "already": False}
