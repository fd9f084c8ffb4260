"""Sampling strategies: how token windows are cut from a source's tokenized calibration pool.

All sets of one (source, seq_len, seed, strategy) come from one seeded sequence of disjoint windows:
set k takes windows ``k*n .. (k+1)*n - 1``, so sets with different ``set_index`` never share a window,
and a set of n samples is the first n windows of the same set with more samples (nested sizes).

Each strategy is registered with a ``version`` that enters the run key: bump it when a change moves
any sampled token (``tests/test_golden.py`` checks).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import InvalidInput
from .registry import STRATEGIES
from .tokenized import TokenizedDocs


def seeded_rng(seed: int, *keys) -> np.random.Generator:
    """A generator seeded by ``seed`` and the given keys (each hashed): independent streams per purpose."""
    return np.random.default_rng(np.random.SeedSequence([seed, *(zlib.crc32(str(k).encode()) for k in keys)]))


class NotEnoughDataError(InvalidInput):
    pass


def _shortfall(spec, available: int, what: str) -> NotEnoughDataError:
    sets = available // spec.num_samples
    if sets == 0:
        fits = (f"not even one set of {spec.num_samples} samples fits (the largest possible set has "
                f"{available} samples)" if available else "no window fits at all")
    else:
        fits = (f"so at most {sets} set(s) of {spec.num_samples} samples (set_index 0..{sets - 1}), or one set "
                f"of at most {available} samples")
    return NotEnoughDataError(
        f"source {spec.source!r} supplies only {available} non-overlapping windows of {spec.seq_len} "
        f"tokens ({what}): {fits}. Lower num_samples, seq_len or set_index, or use the other strategy.")


def document_windows(docs: TokenizedDocs, spec) -> list[tuple[int, int, int]]:
    """GPTQ-style windows without replacement: a uniformly chosen document (one with at least
    seq_len tokens), then a random one of its disjoint window slots, until set ``set_index`` is full."""
    L, need = spec.seq_len, spec.num_samples * (spec.set_index + 1)
    rng = seeded_rng(spec.seed, spec.source, "document-window", L)
    lengths = docs.lengths()
    eligible = np.flatnonzero(lengths >= L)
    # Tile each eligible document with disjoint slots from a random offset, then draw slots.
    slots: dict[int, list[int]] = {}
    for d in eligible:
        count = int(lengths[d] // L)
        offset = int(rng.integers(0, lengths[d] - count * L + 1))
        slots[int(d)] = list(offset + L * rng.permutation(count))
    available = sum(len(s) for s in slots.values())
    if available < need:
        raise _shortfall(spec, available, f"{len(eligible)} documents have at least {L} tokens")
    alive = [int(d) for d in eligible]
    chosen = []
    while len(chosen) < need:
        pick = int(rng.integers(len(alive)))
        doc = alive[pick]
        start = int(slots[doc].pop())
        chosen.append((doc, start, start + L))
        if not slots[doc]:
            alive[pick] = alive[-1]
            alive.pop()
    return chosen[spec.set_index * spec.num_samples:]


def concat_chunks(docs: TokenizedDocs, spec) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """AWQ-style: documents in a seeded order, concatenated, cut into consecutive seq_len blocks."""
    L, n = spec.seq_len, spec.num_samples
    order = seeded_rng(spec.seed, spec.source, "concat-chunk").permutation(len(docs))
    stream = np.concatenate([docs.doc(int(i)) for i in order]) if len(docs) else np.zeros(0, np.int64)
    available = len(stream) // L
    if available < n * (spec.set_index + 1):
        raise _shortfall(spec, available, f"{len(stream)} tokens in the pool")
    first = spec.set_index * n
    windows = [(-1, (first + j) * L, (first + j + 1) * L) for j in range(n)]
    return stream, windows


@dataclass(frozen=True)
class Strategy:
    name: str
    version: int
    description: str
    cut: Callable            # (tokenized docs, spec) -> (rows of token ids, windows)


def _document_window_rows(docs: TokenizedDocs, spec) -> tuple[list[np.ndarray], list]:
    windows = document_windows(docs, spec)
    return [docs.doc(d)[s:e] for d, s, e in windows], windows


def _concat_chunk_rows(docs: TokenizedDocs, spec) -> tuple[list[np.ndarray], list]:
    stream, windows = concat_chunks(docs, spec)
    return [stream[s:e] for _, s, e in windows], windows


def register(strategy: Strategy) -> Strategy:
    return STRATEGIES.add(strategy.name, strategy)


register(Strategy("document-window", 1, "GPTQ-style: random disjoint windows of random documents",
                  _document_window_rows))
register(Strategy("concat-chunk", 1, "AWQ-style: documents in a seeded order, concatenated, cut in blocks",
                  _concat_chunk_rows))
