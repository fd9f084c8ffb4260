"""The results store: one SQLite file.

Why SQLite: it ships with Python, each finished run is one ACID transaction (a run is in the store
whole or not at all, whatever kills the process), the primary key on the run key makes duplicates
impossible, and concurrent writers are serialised by SQLite's file lock (WAL mode lets readers go on
while a run is written). Parquet files would need atomic renames and compaction for every append, and
DuckDB allows only one writing process at a time.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key        TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    label      TEXT NOT NULL,
    spec       TEXT NOT NULL,
    record     TEXT NOT NULL,
    finished   REAL NOT NULL
);
"""


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def put(self, key: str, status: str, label: str, spec: dict, record: dict) -> None:
        """Write one run in a single transaction. A done run is never replaced by a failed one."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if row and row[0] == "done":
                db.execute("ROLLBACK")
                return
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                       (key, status, label, json.dumps(spec, sort_keys=True),
                        json.dumps(record, default=str), time.time()))
            db.execute("COMMIT")

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
                    "suite": spec["eval"]["name"], "calibration_fingerprint": run.get("calibration_fingerprint")}
            for metric in run["metrics"]:
                rows.append({**base, **{k: v for k, v in metric.items() if k != "seconds"}})
        return pd.DataFrame(rows)
