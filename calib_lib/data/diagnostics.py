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


# -- what the model sees: the set's perplexity and its activations against a reference ------------------------

def _batches(ids: torch.Tensor, batch_size: int):
    for start in range(0, len(ids), batch_size):
        yield ids[start:start + batch_size]


@torch.no_grad()
def set_perplexity(model, ids: torch.Tensor, batch_size: int = 8) -> float:
    """The set's perplexity under the model: exp(total next-token loss / predicted tokens), rows scored
    independently (each row's first token has no prediction)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _batches(ids, batch_size):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += batch[:, 1:].numel()
    return float(np.exp(total / count))


@torch.no_grad()
def block_input_statistics(model, ids: torch.Tensor, batch_size: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per decoder block, the mean and covariance (over every token of the set) of its input hidden states
    (``hidden_states[l]`` for block l: what the block's calibration statistics are computed from)."""
    return set_statistics(model, ids, batch_size, perplexity=False)[1]


@torch.no_grad()
def set_statistics(model, ids: torch.Tensor, batch_size: int = 8, perplexity: bool = True):
    """(the set's perplexity or None, ``block_input_statistics``) from one forward pass per batch."""
    device = next(model.parameters()).device
    sums, products, count = None, None, 0
    total, predicted = 0.0, 0
    for batch in _batches(ids, batch_size):
        batch = batch.to(device)
        out = model(batch, output_hidden_states=True, use_cache=False)
        if perplexity:
            logits = out.logits.float()
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                             batch[:, 1:].reshape(-1), reduction="sum"))
            predicted += batch[:, 1:].numel()
        hidden = out.hidden_states[:-1]
        flat = [h.reshape(-1, h.shape[-1]).double().cpu() for h in hidden]
        if sums is None:
            sums = [torch.zeros(f.shape[1], dtype=torch.float64) for f in flat]
            products = [torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64) for f in flat]
        for layer, f in enumerate(flat):
            sums[layer] += f.sum(dim=0)
            products[layer] += f.T @ f
        count += flat[0].shape[0]
    out = []
    for s, p in zip(sums, products):
        mean = s / count
        cov = (p - count * torch.outer(mean, mean)) / (count - 1)
        out.append((mean.numpy(), cov.numpy()))
    return (float(np.exp(total / predicted)) if perplexity else None), out


def activation_distance(statistics: list, reference: list) -> dict:
    """How far a set's block inputs are from a reference's, averaged over blocks: ``activation_mean_distance``
    = ||mu - mu_ref|| / ||mu_ref||, ``activation_cov_distance`` = ||Sigma - Sigma_ref||_F / ||Sigma_ref||_F."""
    means = [np.linalg.norm(m - mr) / max(np.linalg.norm(mr), 1e-12) for (m, _), (mr, _) in zip(statistics, reference)]
    covs = [np.linalg.norm(c - cr) / max(np.linalg.norm(cr), 1e-12) for (_, c), (_, cr) in zip(statistics, reference)]
    return {"activation_mean_distance": float(np.mean(means)), "activation_cov_distance": float(np.mean(covs))}


def model_diagnostics(model, ids: torch.Tensor, reference_statistics: list | None = None) -> dict:
    """The set's perplexity under the (dense) model and, with the reference's ``block_input_statistics``, the
    distance of its block inputs to the reference's."""
    perplexity, statistics = set_statistics(model, ids)
    out = {"set_perplexity": perplexity}
    if reference_statistics is not None:
        out.update(activation_distance(statistics, reference_statistics))
    return out
