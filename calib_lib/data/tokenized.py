"""Tokenize a corpus pool once per (corpus, tokenizer) and cache it as flat arrays on disk.

A cache entry is an ``.npz`` file holding the arrays and a sha256 of their bytes. It is written
atomically and checked on every read; an entry that is truncated, emptied, altered or from an older
layout is deleted and rebuilt, never used.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from ..files import atomic_write
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


class DamagedCacheEntry(Exception):
    """A cache file that cannot be trusted; the caller deletes it and builds the entry again."""


def _arrays_digest(ids: np.ndarray, offsets: np.ndarray) -> str:
    h = hashlib.sha256()
    for array in (ids, offsets):
        h.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
        h.update(b"\x00")
    return h.hexdigest()


def save_tokenized(path: Path, docs: TokenizedDocs) -> None:
    with atomic_write(path) as handle:
        np.savez(handle, ids=docs.ids, offsets=docs.offsets, sha256=np.array(_arrays_digest(docs.ids, docs.offsets)))


def load_tokenized(path: Path) -> TokenizedDocs:
    """The arrays of a cache entry, after checking their digest; DamagedCacheEntry when they fail it."""
    try:
        with np.load(path) as data:     # allow_pickle stays False: a damaged file cannot run code
            ids, offsets, recorded = data["ids"], data["offsets"], str(data["sha256"])
    # What np.load and zipfile raise for truncated, emptied or altered files (found by flipping every
    # byte of an entry: altered flag bits give NotImplementedError and RuntimeError).
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as err:
        raise DamagedCacheEntry(f"{path}: {type(err).__name__}: {err}") from err
    if ids.dtype != np.int64 or offsets.dtype != np.int64 or ids.ndim != 1 or offsets.ndim != 1:
        raise DamagedCacheEntry(f"{path}: arrays of unexpected type")
    if _arrays_digest(ids, offsets) != recorded:
        raise DamagedCacheEntry(f"{path}: content does not match its recorded sha256")
    return TokenizedDocs(ids, offsets)


def tokenize_documents(docs: list[str], tokenizer, cache_key: str | None = None,
                       batch: int = 256) -> TokenizedDocs:
    """Token ids of each document (no special tokens), cached under ``cache_key`` when given."""
    path = None
    if cache_key:
        path = cache_dir() / "tokenized" / f"{cache_key}-{tokenizer_digest(tokenizer)[:16]}.npz"
        if path.exists():
            try:
                return load_tokenized(path)
            except DamagedCacheEntry:
                path.unlink(missing_ok=True)     # rebuilt below
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
        save_tokenized(path, result)
    return result
