"""The forward loop over perplexity windows that perplexity and the dense reference share: both see the same
logits for the same windows and batch size (a module of its own so ``fidelity`` and ``perplexity``, which
imports ``fidelity``'s scoring, do not import each other)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInput
from ..models.context import context_length


def _default_batch_size(model, seq_len: int) -> int:
    # Bound the fp32 logits tensor (batch x seq_len x vocab) to ~1 GiB: Gemma's 262k vocabulary
    # makes the logits, not the activations, the memory peak.
    vocab = model.config.vocab_size
    return max(1, min(16, (1 << 28) // max(1, seq_len * vocab)))


def window_logits(model, windows: torch.Tensor, batch_size: int | None = None, progress: bool = True,
                  desc: str = "perplexity"):
    """Yield ``(start, batch, logits)`` for consecutive batches of ``windows``: the one forward loop that
    perplexity and the dense reference (``fidelity.compute_reference``) share."""
    n, seq_len = windows.shape
    limit = context_length(model)
    if limit is not None and seq_len > limit:
        raise InvalidInput(f"window of {seq_len} tokens is longer than the model's context of {limit}")
    batch_size = batch_size or _default_batch_size(model, seq_len)
    device = next(model.parameters()).device
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
        batch = windows[start:start + batch_size].to(device)
        yield start, batch, model(input_ids=batch, use_cache=False).logits


