"""Decoder blocks of any Hugging Face causal LM: find them, list their linear layers, capture their inputs.

Capturing swaps each block's forward for a recorder that stores its hidden states and keyword arguments
(masks, rotary embeddings, which differ per block in models such as Gemma 3 that mix sliding and global
attention) and passes the hidden states on unchanged; the first block's hidden states are kept, the rest
discarded. Only the compression pipelines use this module; methods that work on a whole block (AWQ) use
``block_linears``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    pass


def decoder_blocks(model) -> nn.ModuleList:
    """The ModuleList of decoder blocks (the one whose length is the config's num_hidden_layers)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n:
            return module
    raise ValueError(f"could not find the decoder blocks of {type(model).__name__}: no ModuleList of "
                     f"num_hidden_layers={n} modules")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        kinds = {type(m).__name__ for m in block.modules()}
        hint = " (GPT-2 style Conv1D layers are not supported: use a model with nn.Linear layers)" \
            if "Conv1D" in kinds else ""
        raise ValueError(f"decoder block {type(block).__name__} holds no nn.Linear layers{hint}")
    return linears


@contextmanager
def _recording(blocks: nn.ModuleList, records: list):
    """Swap each block's forward for a recorder; stop the model after the last block."""
    originals = [b.forward for b in blocks]

    def recorder(index):
        def forward(hidden_states, *args, **kwargs):
            records.append((index, hidden_states, args, kwargs))
            if index == len(blocks) - 1:
                raise StopForward
            return hidden_states
        return forward

    for i, b in enumerate(blocks):
        b.forward = recorder(i)
    try:
        yield
    finally:
        for b, f in zip(blocks, originals):
            b.forward = f


def capture_block_inputs(model, blocks, input_ids: torch.Tensor, batch_size: int):
    """(first block's hidden states per batch, per block a list of (args, kwargs) per batch)."""
    device = next(model.parameters()).device
    hidden, per_block = [], [[] for _ in blocks]
    for start in range(0, input_ids.shape[0], batch_size):
        records = []
        batch = input_ids[start:start + batch_size].to(device)
        with _recording(blocks, records), torch.no_grad():
            try:
                model(input_ids=batch, use_cache=False)
            except StopForward:
                pass
        for index, h, args, kwargs in records:
            if index == 0:
                hidden.append(h)
            per_block[index].append((args, kwargs))
    return hidden, per_block


def run_block(block, hidden: list[torch.Tensor], calls: list) -> list[torch.Tensor]:
    with torch.no_grad():
        return [block(h, *args, **kwargs) for h, (args, kwargs) in zip(hidden, calls)]


def input_key(x: torch.Tensor) -> tuple:
    """Identifies a tensor while it is alive: layers that read the same tensor share statistics."""
    return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype
