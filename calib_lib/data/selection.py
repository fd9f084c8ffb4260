"""Model-based calibration selectors: score a pool of candidate windows with the model to be compressed (the
dense one) and keep ``num_samples`` of them. Like every strategy they draw the pool of set ``set_index`` as
block ``set_index`` of the one seeded sequence of disjoint random windows (``strategies.candidate_windows``:
``num_samples x candidates`` windows), so sets with different set indices never share a window.

* ``activation-kmeans`` (COLA, He et al., NeurIPS 2025, stage 3): represent each candidate by the MLP output of
  every decoder layer averaged over its tokens, each layer's vector L2-normalised, concatenated over layers and
  randomly projected to 64 dimensions (Gaussian, seeded); k-means with k = num_samples; per cluster the member
  nearest its centroid. Taken from the paper's selection as its published code runs it; what differs: the
  candidates are random windows of one source (COLA: whole documents of chosen datasets, after its length and
  format stages 1-2), windows are full-length so no padding enters the means (COLA's code averages over
  padding too), k-means is scipy's (kmeans2, k-means++ start, best of 10 seeded starts) rather than
  scikit-learn's, and when two clusters share their nearest member or a cluster is empty the remaining picks
  are the candidates farthest from those already picked (so the set always has exactly num_samples rows).
* ``least-perplexity`` (the perplexity-based selection ZipCal, Monaco et al. 2026, compares against): each
  candidate's perplexity under the model (mean next-token loss over its window), the num_samples lowest kept
  (ties to the earlier candidate). Their code scores 128-token padded documents without masking the padding;
  here full-length windows.

Cost: one forward pass over every candidate (``num_samples x candidates x seq_len`` tokens).
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidInput
from .strategies import Strategy, TokenizedDocs, candidate_windows, register, seeded_rng

PROJECTION_DIM = 64          # COLA's reduced dimension
KMEANS_STARTS = 10           # COLA's n_init


def _rows(docs: TokenizedDocs, spec):
    windows = candidate_windows(docs, spec)
    return [docs.doc(d)[s:e] for d, s, e in windows], windows


def _batches(rows, batch_size: int):
    for start in range(0, len(rows), batch_size):
        yield start, torch.as_tensor(np.stack(rows[start:start + batch_size])).long()


def _mlp_modules(model) -> list[torch.nn.Module]:
    """The MLP of each decoder layer, found by name (``...layers.<i>.mlp``: Llama, Gemma, Qwen, Mistral, ...)."""
    found = [(name, module) for name, module in model.named_modules() if name.endswith(".mlp")
             and name.rsplit(".", 2)[-2].isdigit()]
    return [module for _, module in found]


@torch.no_grad()
def activation_features(model, rows: list[np.ndarray], *, seed: int = 0, dim: int = PROJECTION_DIM,
                        batch_size: int = 8) -> np.ndarray:
    """COLA's representation of each row: per decoder layer the MLP output averaged over the row's tokens and
    L2-normalised, concatenated over layers, projected to `dim` dimensions by a seeded Gaussian matrix
    (N(0, 1/dim) entries). A model without per-layer ``mlp`` modules uses each layer's output hidden state."""
    device = next(model.parameters()).device
    mlps = _mlp_modules(model)
    captured: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: captured.append(
        (out[0] if isinstance(out, tuple) else out).float().mean(dim=1))) for m in mlps]
    features = []
    try:
        for _, batch in _batches(rows, batch_size):
            captured.clear()
            out = model(batch.to(device), output_hidden_states=not mlps, use_cache=False)
            layers = captured if mlps else [h.float().mean(dim=1) for h in out.hidden_states[1:]]
            normed = [torch.nn.functional.normalize(layer, dim=-1) for layer in layers]
            features.append(torch.cat(normed, dim=-1).cpu().numpy().astype(np.float64))
    finally:
        for hook in hooks:
            hook.remove()
    stacked = np.concatenate(features)
    projection = seeded_rng(seed, "activation-projection", stacked.shape[1], dim).standard_normal(
        (stacked.shape[1], dim)) / np.sqrt(dim)
    return stacked @ projection


def kmeans_medoids(features: np.ndarray, k: int, seed: int = 0, starts: int = KMEANS_STARTS) -> list[int]:
    """k-means (scipy ``kmeans2``, k-means++ start, the best of `starts` seeded starts by inertia), then per
    cluster, in cluster order, the member nearest its centroid; exactly k distinct indices (empty or shared
    clusters are completed farthest-first from the picks, see the module docstring)."""
    from scipy.cluster.vq import kmeans2
    n = len(features)
    if k > n:
        raise InvalidInput(f"k-means asked for {k} clusters of only {n} candidates: raise candidates (the pool is "
                           "num_samples x candidates windows) or lower num_samples")
    if k == n:
        return list(range(n))
    import warnings
    best = None
    for start in range(starts):
        rng = seeded_rng(seed, "kmeans", start)
        # coincident candidates leave a cluster empty (scipy warns): the completion below handles it
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")
            centroids, labels = kmeans2(features, k, minit="++", seed=rng)
        inertia = float(((features - centroids[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, centroids, labels)
    _, centroids, labels = best
    picks: list[int] = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if len(members) == 0:
            continue
        distance = ((features[members] - centroids[cluster]) ** 2).sum(axis=1)
        for index in members[np.argsort(distance, kind="stable")]:
            if int(index) not in picks:
                picks.append(int(index))
                break
    while len(picks) < k:                       # farthest-first completion
        gaps = np.min(((features[:, None, :] - features[picks][None, :, :]) ** 2).sum(axis=2), axis=1)
        gaps[picks] = -1
        picks.append(int(np.argmax(gaps)))
    return picks


@torch.no_grad()
def window_perplexities(model, rows: list[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """Each row's perplexity under the model: exp(mean next-token cross-entropy over the row)."""
    device = next(model.parameters()).device
    out = np.empty(len(rows))
    for start, batch in _batches(rows, batch_size):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none")
        out[start:start + len(batch)] = torch.exp(loss.mean(dim=1)).cpu().numpy()
    return out


def _activation_kmeans_rows(docs: TokenizedDocs, spec, model):
    rows, windows = _rows(docs, spec)
    features = activation_features(model, rows, seed=spec.seed)
    picks = kmeans_medoids(features, spec.num_samples, seed=spec.seed)
    return [rows[i] for i in picks], [windows[i] for i in picks]


def _least_perplexity_rows(docs: TokenizedDocs, spec, model):
    rows, windows = _rows(docs, spec)
    scores = window_perplexities(model, rows)
    picks = np.argsort(scores, kind="stable")[:spec.num_samples]
    return [rows[i] for i in picks], [windows[i] for i in picks]


register(Strategy("activation-kmeans", 1, "COLA-style: of num_samples x candidates random windows, the medoids of "
                  "k-means on the model's layer-wise MLP activations", _activation_kmeans_rows,
                  options=("candidates",), needs_model=True))
register(Strategy("least-perplexity", 1, "of num_samples x candidates random windows, the num_samples the model "
                  "finds most predictable (the perplexity selection ZipCal compares with)", _least_perplexity_rows,
                  options=("candidates",), needs_model=True))
