"""Tokenize a corpus pool once per (corpus, tokenizer) and cache it as flat arrays on disk."""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from ..paths import cache_dir


def tokenizer_digest(tokenizer) -> str:
    """A digest of everything that decides how text becomes ids (vocab, merges, normalizer, specials)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(payload.encode()).hexdigest()


class TokenizedDocs:
    """Documents as one flat int64 array plus offsets: doc i is ``ids[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray):
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def _atomic_save_npz(path: Path, **arrays) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tokenize_documents(docs: list[str], tokenizer, cache_key: str | None = None,
                       batch: int = 256) -> TokenizedDocs:
    """Token ids of each document (no special tokens), cached under ``cache_key`` when given."""
    path = None
    if cache_key:
        path = cache_dir() / "tokenized" / f"{cache_key}-{tokenizer_digest(tokenizer)[:16]}.npz"
        if path.exists():
            try:
                with np.load(path) as data:
                    return TokenizedDocs(data["ids"], data["offsets"])
            except (OSError, ValueError, KeyError):
                path.unlink(missing_ok=True)     # unreadable cache: rebuild below
    from transformers.utils import logging as hf_logging

    pieces, offsets = [], [0]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # documents are longer than model_max_length by design
    try:
        for start in range(0, len(docs), batch):
            for ids in tokenizer(docs[start:start + batch], add_special_tokens=False)["input_ids"]:
                pieces.append(np.asarray(ids, dtype=np.int64))
                offsets.append(offsets[-1] + len(ids))
    finally:
        hf_logging.set_verbosity(verbosity)
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    result = TokenizedDocs(flat, np.asarray(offsets, dtype=np.int64))
    if path is not None:
        _atomic_save_npz(path, ids=result.ids, offsets=result.offsets)
    return result
