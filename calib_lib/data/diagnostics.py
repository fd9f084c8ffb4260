"""What a calibration set looks like: coverage, diversity, Zipf coefficient, distance to evaluation text.

The Zipf coefficient follows Williams et al. (2024, Table 4): the negated slope of a least-squares fit
of log frequency against log rank of the set's token counts.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon


def vocabulary_coverage(ids: torch.Tensor, vocab_size: int) -> float:
    """Share of the vocabulary that occurs at least once in the set."""
    return torch.unique(ids).numel() / vocab_size


def distinct_n(ids: torch.Tensor, n: int) -> float:
    """Distinct n-grams / total n-grams, counted within rows (windows are not contiguous text)."""
    grams, total = set(), 0
    for row in ids.tolist():
        total += max(0, len(row) - n + 1)
        grams.update(tuple(row[i:i + n]) for i in range(len(row) - n + 1))
    return len(grams) / total if total else 0.0


def zipf_coefficient(ids: torch.Tensor) -> float:
    counts = np.sort(np.bincount(ids.flatten().numpy()))[::-1]
    counts = counts[counts > 0]
    if len(counts) < 2:
        return float("nan")
    ranks = np.arange(1, len(counts) + 1)
    return float(-stats.linregress(np.log(ranks), np.log(counts)).slope)


def unigram_divergence(ids: torch.Tensor, reference_ids: torch.Tensor, vocab_size: int,
                       alpha: float = 0.01) -> dict:
    """KL(set || reference) and Jensen-Shannon divergence (bits) of add-alpha smoothed unigram distributions."""
    p = np.bincount(ids.flatten().numpy(), minlength=vocab_size).astype(np.float64) + alpha
    q = np.bincount(reference_ids.flatten().numpy(), minlength=vocab_size).astype(np.float64) + alpha
    p, q = p / p.sum(), q / q.sum()
    return {"kl_bits": float(stats.entropy(p, q, base=2)),
            "js_bits": float(jensenshannon(p, q, base=2) ** 2)}


def diagnostics(ids: torch.Tensor, vocab_size: int, reference_ids: torch.Tensor | None = None) -> dict:
    out = {
        "tokens": int(ids.numel()),
        "vocab_coverage": vocabulary_coverage(ids, vocab_size),
        "distinct_1": distinct_n(ids, 1),
        "distinct_2": distinct_n(ids, 2),
        "distinct_4": distinct_n(ids, 4),
        "zipf_coefficient": zipf_coefficient(ids),
    }
    if reference_ids is not None:
        out.update({f"unigram_{k}": v for k, v in unigram_divergence(ids, reference_ids, vocab_size).items()})
    return out
