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
    # spec fields beyond the common ones that this strategy reads (they enter the spec's normalised form and
    # so the run key); a selector reads ``candidates``
    options: tuple = ()
    # True: ``cut(docs, spec, model)`` scores candidates with the model to be compressed (the dense one)
    needs_model: bool = False


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


def _document_start_rows(docs: TokenizedDocs, spec) -> tuple[list[np.ndarray], list]:
    """One sample per document, its first seq_len tokens (what production tools do with one example per row
    and truncation: llm-compressor without ``concatenate_data``, GPTQModel's default): documents with at least
    seq_len tokens in a seeded order, set k taking documents k*n .. (k+1)*n - 1. Shorter documents are left out
    (the tools pad them; calib_lib's sets have no padding)."""
    L, n = spec.seq_len, spec.num_samples
    eligible = np.flatnonzero(docs.lengths() >= L)
    order = eligible[seeded_rng(spec.seed, spec.source, "document-start", L).permutation(len(eligible))]
    if len(order) < n * (spec.set_index + 1):
        raise _shortfall(spec, len(order), f"{len(order)} documents have at least {L} tokens, one sample each")
    chosen = order[spec.set_index * n:(spec.set_index + 1) * n]
    return [docs.doc(int(d))[:L] for d in chosen], [(int(d), 0, L) for d in chosen]


register(Strategy("document-start", 1, "one sample per document, its first seq_len tokens (production tools' "
                  "one example per row, truncated)", _document_start_rows))


# -- selectors: choose n of a larger pool of candidate windows ------------------------------------------------

def candidate_windows(docs: TokenizedDocs, spec) -> list[tuple[int, int, int]]:
    """The candidate pool of a selector's set ``set_index``: the ``document-window`` windows of that set at
    ``num_samples * candidates`` samples, i.e. block ``set_index`` of the one seeded sequence of disjoint
    windows. The blocks of different set indices never share a window, so neither do the selected sets."""
    from dataclasses import replace
    if spec.candidates < 1:
        raise InvalidInput(f"candidates must be >= 1 (the pool is num_samples x candidates windows), got {spec.candidates}")
    pool = replace(spec, num_samples=spec.num_samples * spec.candidates, strategy="document-window")
    try:
        return document_windows(docs, pool)
    except NotEnoughDataError as err:
        raise NotEnoughDataError(f"{err} (a {spec.strategy!r} set draws its {spec.candidates} x {spec.num_samples} "
                                 "candidates from the pool; lower candidates too)") from err


def greedy_coverage(token_sets: list[np.ndarray], n: int) -> list[int]:
    """Greedy maximum coverage: repeatedly the candidate that adds the most distinct tokens not yet covered;
    ties go to the candidate with more distinct tokens, then to the earlier one. Returns n indices in pick
    order (a candidate adding nothing new is still picked when it is the best left: the set keeps its size)."""
    if n > len(token_sets):
        raise InvalidInput(f"cannot pick {n} of {len(token_sets)} candidates")
    sets = [np.unique(t) for t in token_sets]
    sizes = np.array([len(t) for t in sets])
    vocab = int(max((t.max() for t in sets if len(t)), default=-1)) + 1
    covered = np.zeros(max(vocab, 1), dtype=bool)
    alive = np.ones(len(sets), dtype=bool)
    # gains only shrink as coverage grows (submodularity): keep an upper bound per candidate and re-evaluate
    # lazily, best bound first (the lazy greedy of Minoux, 1978): the same picks as the plain loop, far fewer
    # set differences
    bound = sizes.astype(np.int64).copy()
    picks = []
    for _ in range(n):
        while True:
            order = np.lexsort((np.arange(len(sets)), -sizes, -np.where(alive, bound, -1)))
            best = int(order[0])
            fresh = int((~covered[sets[best]]).sum())
            if fresh == bound[best]:
                break
            bound[best] = fresh
        picks.append(best)
        alive[best] = False
        covered[sets[best]] = True
    return picks


def _coverage_rows(docs: TokenizedDocs, spec) -> tuple[list[np.ndarray], list]:
    windows = candidate_windows(docs, spec)
    rows = [docs.doc(d)[s:e] for d, s, e in windows]
    picks = greedy_coverage(rows, spec.num_samples)
    return [rows[i] for i in picks], [windows[i] for i in picks]


register(Strategy(
    "coverage", 1, "ZipCal-style lexical diversity: of num_samples x candidates random windows, greedily the "
                   "ones covering the most distinct tokens not yet covered", _coverage_rows, options=("candidates",)))
