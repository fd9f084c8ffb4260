"""Perplexity over non-overlapping windows of a token stream (the GPTQ/SparseGPT protocol).

Each window of ``seq_len`` tokens is scored independently; the first token of a window has no
context and is not scored, so a window contributes ``seq_len - 1`` predicted tokens. The exact
number of scored tokens is returned with every number, and every window's summed NLL, so two runs
scored on the same windows can be compared window by window.

Given the dense model's reference (``fidelity.DenseReference``) the same forward pass also measures
fidelity to the dense model: KL divergence of the next-token distribution (mean and 99th percentile
over tokens) and top-1 agreement, as llama.cpp's perplexity tool reports them for quantized models.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from ..errors import InvalidInput
from .fidelity import DenseReference, check_reference, score_logits
from .windows import window_logits


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float               # mean negative log-likelihood per scored token (nats)
    scored_tokens: int
    windows: int
    seq_len: int
    window_nll: tuple[float, ...] = ()      # summed NLL of each window (nats)
    window_tokens: tuple[int, ...] = ()     # scored tokens of each window (seq_len - 1)
    # With a dense reference only (None without one):
    # KL(dense || this model) per scored token (nats), as the reference estimates it (fidelity.kl_topk)
    kl_mean: float | None = None            # its mean
    kl_p99: float | None = None             # its 99th percentile over tokens (linear interpolation)
    top1_agreement: float | None = None     # share of tokens whose argmax equals the dense model's
    window_kl: tuple[float, ...] | None = None      # summed KL of each window
    window_top1: tuple[int, ...] | None = None      # top-1 agreements of each window

    def to_dict(self) -> dict:
        return asdict(self)


def make_windows(token_ids: torch.Tensor, seq_len: int, num_windows: int | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into ``[n, seq_len]`` non-overlapping windows (the tail is dropped)."""
    if token_ids.dim() != 1:
        raise InvalidInput("token_ids must be a 1-D stream of token ids")
    if seq_len < 2:
        raise InvalidInput(f"seq_len must be at least 2, got {seq_len}")
    available = token_ids.numel() // seq_len
    if available == 0:
        raise InvalidInput(f"the text has {token_ids.numel()} tokens, fewer than one window of {seq_len}")
    n = available if num_windows is None else num_windows
    if n > available:
        raise InvalidInput(f"asked for {n} windows of {seq_len} tokens but the text holds only "
                         f"{available}; lower num_windows or seq_len")
    return token_ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int | None = None, progress: bool = True,
               desc: str = "perplexity", reference: DenseReference | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (LongTensor ``[n, seq_len]``), per window too; with the dense
    model's ``reference`` on the same windows, also KL to the dense model and top-1 agreement."""
    n, seq_len = windows.shape
    if reference is not None:
        check_reference(reference, windows)          # before any compute
    window_nll, window_kl, window_top1, token_kl, bound = [], [], [], [], []
    for start, batch, logits in window_logits(model, windows, batch_size, progress, desc):
        slices = {} if reference is None else reference.slices(start, start + batch.size(0), logits.device)
        scores = score_logits(logits[:, :-1], batch[:, 1:], **slices)
        window_nll.extend(scores.nll.sum(-1).tolist())
        if reference is not None:
            window_kl.extend(scores.kl.sum(-1).tolist())
            bound.append(float(scores.kl_bound.sum()))
            window_top1.extend(scores.top1.sum(-1).tolist())
            token_kl.append(scores.kl.cpu().numpy().ravel())
    total_tokens = n * (seq_len - 1)
    # fsum: the total is then the exact sum of the per-window numbers a reader adds up again.
    mean = math.fsum(window_nll) / total_tokens
    fidelity = {}
    if reference is not None:
        # The tail-sampled mean is unbiased, but near KL 0 it can fall below the merged lower bound of the same
        # tokens, which the exact mean never does: the bound is then the closer value (and is never negative).
        fidelity = dict(kl_mean=max(math.fsum(window_kl), math.fsum(bound)) / total_tokens,
                        kl_p99=float(np.percentile(np.concatenate(token_kl), 99)),
                        top1_agreement=sum(window_top1) / total_tokens,
                        window_kl=tuple(window_kl), window_top1=tuple(int(m) for m in window_top1))
    return PerplexityResult(math.exp(mean), mean, total_tokens, n, seq_len, tuple(window_nll),
                            (seq_len - 1,) * n, **fidelity)
