"""Each notebook states its finding once; the overview collects them from ``findings.json``."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_write_text


def save_finding(results_dir: str | Path, notebook: str, text: str, numbers: dict | None = None) -> None:
    """Store a notebook's finding (written atomically: a reader never sees half a file)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "findings.json"
    findings = json.loads(path.read_text()) if path.exists() else {}
    findings[notebook] = {"text": text, "numbers": numbers or {}}
    atomic_write_text(path, json.dumps(findings, indent=2, sort_keys=True, default=float))


def load_findings(results_dir: str | Path) -> dict:
    path = Path(results_dir) / "findings.json"
    return json.loads(path.read_text()) if path.exists() else {}
