"""Calibration sets as files: export (jsonl: a header, then one line per sample with ids and decoded text)
and import (the identical tensor, checked against the recorded fingerprint and tokenizer).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InvalidInput
from .spec import CalibrationSet, CalibrationSpec, fingerprint
from .tokenized import tokenizer_digest

EXPORT_FORMAT = "calib_lib.calibration_set"


def export_set(cal: CalibrationSet, path: str | Path, tokenizer) -> str:
    """Write ``cal`` as jsonl (a header line, then one line per sample with ids and decoded text).

    The file appears complete or not at all. Returns the fingerprint, which the header records.
    """
    from ..files import atomic_write_bytes
    header = {"format": EXPORT_FORMAT, "version": 1, **cal.metadata(), "windows": cal.windows}
    lines = [json.dumps(header)]
    for i, row in enumerate(cal.input_ids.tolist()):
        lines.append(json.dumps({"index": i, "input_ids": row, "text": tokenizer.decode(row)}))
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode())
    return cal.fingerprint


def is_exported_set(path: str | None) -> bool:
    if not path or not Path(path).expanduser().is_file() or not str(path).endswith(".jsonl"):
        return False
    with open(Path(path).expanduser(), encoding="utf-8") as handle:
        first = handle.readline()
    try:
        return json.loads(first).get("format") == EXPORT_FORMAT
    except (ValueError, AttributeError):
        return False


def import_set(path: str | Path, tokenizer=None) -> CalibrationSet:
    """Read an exported set back: the identical tensor, checked against the recorded fingerprint."""
    path = Path(path).expanduser()
    line_no = 1
    try:
        with open(path, encoding="utf-8") as handle:
            header = json.loads(handle.readline())
            rows = []
            for line_no, line in enumerate(handle, start=2):
                if line.strip():
                    rows.append(json.loads(line)["input_ids"])
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise InvalidInput(f"{path} is not an exported calibration set")
        ids = torch.tensor(rows, dtype=torch.long)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, InvalidInput):
            raise
        raise InvalidInput(f"{path}, line {line_no}: not a readable exported calibration set ({type(err).__name__}: "
                           f"{err}); export it again with `calib data sample --out`") from err
    if fingerprint(ids) != header.get("fingerprint"):
        raise InvalidInput(f"{path}: token ids do not match the recorded fingerprint (file edited or damaged)")
    if tokenizer is not None and header.get("tokenizer_digest") not in (None, tokenizer_digest(tokenizer)):
        raise InvalidInput(f"{path} was tokenized with a different tokenizer than the model's; its ids "
                         "would mean different text. Re-sample it for this model.")
    spec = CalibrationSpec.from_dict(header["spec"])
    windows = [tuple(w) for w in header.get("windows", [])]
    return CalibrationSet(spec, ids, header["origin"], header.get("tokenizer_digest", ""), windows)
