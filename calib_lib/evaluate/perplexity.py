"""Perplexity over non-overlapping windows of a token stream (the GPTQ/SparseGPT protocol).

Each window of ``seq_len`` tokens is scored independently; the first token of a window has no
context and is not scored, so a window contributes ``seq_len - 1`` predicted tokens. The exact
number of scored tokens is returned with every number.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..models.context import context_length
from ..errors import InvalidInput


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float               # mean negative log-likelihood per scored token (nats)
    scored_tokens: int
    windows: int
    seq_len: int

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


def _default_batch_size(model, seq_len: int) -> int:
    # Bound the fp32 logits tensor (batch x seq_len x vocab) to ~1 GiB: Gemma's 262k vocabulary
    # makes the logits, not the activations, the memory peak.
    vocab = model.config.vocab_size
    return max(1, min(16, (1 << 28) // max(1, seq_len * vocab)))


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, batch_size: int | None = None,
               progress: bool = True, desc: str = "perplexity") -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (LongTensor ``[n, seq_len]``)."""
    n, seq_len = windows.shape
    limit = context_length(model)
    if limit is not None and seq_len > limit:
        raise InvalidInput(f"window of {seq_len} tokens is longer than the model's context of {limit}")
    batch_size = batch_size or _default_batch_size(model, seq_len)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                              batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    mean = total_nll / total_tokens
    return PerplexityResult(math.exp(mean), mean, total_tokens, n, seq_len)
