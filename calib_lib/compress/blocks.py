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
from ..errors import InvalidInput


class StopForward(Exception):
    pass


def decoder_blocks(model) -> nn.ModuleList:
    """The model's decoder blocks: the ``layers`` of its decoder when the model has ``get_decoder()`` (the
    Llama, Gemma, Mistral, Qwen, OPT, GPT-NeoX families), else the one ModuleList whose length is the config's
    num_hidden_layers. Several such lists (a vision tower of the same depth, say) are refused, not guessed."""
    n = getattr(model.config, "num_hidden_layers", None)
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            layers = getattr(get_decoder(), "layers", None)
        except (AttributeError, NotImplementedError, TypeError):
            layers = None
        if isinstance(layers, nn.ModuleList) and len(layers) and (not n or len(layers) == n):
            return layers
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and n and len(m) == n]
    if len(candidates) == 1:
        return candidates[0][1]
    if not candidates:
        raise InvalidInput(f"could not find the decoder blocks of {type(model).__name__}: no ModuleList of "
                           f"num_hidden_layers={n} modules")
    raise InvalidInput(f"{type(model).__name__} has {len(candidates)} ModuleLists of num_hidden_layers={n} modules "
                       f"({', '.join(name for name, _ in candidates)}): which one holds the decoder blocks is "
                       "ambiguous; give the model a get_decoder() whose .layers are the blocks")


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The block's nn.Linear layers in execution order. A block that also holds weight matrices outside
    nn.Linear (fused mixture-of-experts tensors, GPT-2's Conv1D) is refused: compressing only its linear
    layers would leave those weights dense without a word."""
    linears = {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
    in_linears = {id(p) for m in linears.values() for p in m.parameters(recurse=False)}
    owners = dict(block.named_modules())
    other = [(name, p) for name, p in block.named_parameters() if p.dim() >= 2 and id(p) not in in_linears]
    if other:
        kinds = sorted({type(owners[name.rpartition(".")[0]]).__name__ for name, _ in other})
        hint = " (GPT-2 style Conv1D layers are not supported: use a model with nn.Linear layers)" \
            if "Conv1D" in kinds else " (fused expert weights are not supported)"
        shown = ", ".join(f"{name} {list(p.shape)}" for name, p in other[:3]) + (" ..." if len(other) > 3 else "")
        raise InvalidInput(f"decoder block {type(block).__name__} holds weights outside nn.Linear layers "
                           f"({shown}; in {', '.join(kinds)}){hint}: they would stay uncompressed")
    if not linears:
        raise InvalidInput(f"decoder block {type(block).__name__} holds no nn.Linear layers")
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


def no_calibration_input(layers: list[str], method) -> str:
    """Why a calibrated method cannot compress layers the calibration data never reached."""
    return (f"{', '.join(layers)} received no calibration input (never called in the block's forward on these "
            f"batches): {method.name} would solve with no statistics (SparseGPT and GPTQ would zero every weight), "
            "so it refuses; use calibration data that reaches the layer, or a data-free method")


def input_key(x: torch.Tensor) -> tuple:
    """Identifies a tensor while it is alive: layers that read the same tensor share statistics."""
    return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype
