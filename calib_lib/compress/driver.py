"""One sequential layer-wise driver for any Hugging Face causal LM whose decoder blocks hold nn.Linear layers.

1. Capture the input of every decoder block for the calibration batch: each block's forward is swapped
   for a recorder that stores its hidden states and keyword arguments (masks, rotary embeddings, which
   differ per block in models such as Gemma 3 that mix sliding and global attention) and passes the
   hidden states on unchanged; the first block's hidden states are kept, the rest discarded.
2. For each block in turn: run it on its inputs with hooks that feed every linear layer's input to its
   compressor (statistics), compress, then run the compressed block again to produce the next block's
   inputs, as the reference implementations do. Only one block's activations are held at a time.
Embeddings and lm_head are left untouched.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from ..evaluate.perplexity import context_length
from .methods import METHODS, Method


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


def _collect_statistics(block, hidden, calls, linears, compressors) -> dict[str, str]:
    """Run the block once, feeding each layer's input to its compressor. Layers that read a tensor
    another layer already read in the same batch (q/k/v, gate/up) are not fed: the returned map names,
    for each such follower, the leader whose statistics it shares."""
    followers: dict[str, str] = {}
    # Holding every seen input until the batch ends keeps its memory from being reused by a later
    # tensor, so an equal data_ptr really means the same tensor.
    seen: dict[tuple, tuple[str, torch.Tensor]] = {}

    def hook(name):
        def feed(module, inp, out):
            x = inp[0]
            key = (x.data_ptr(), tuple(x.shape), x.stride(), x.dtype)
            leader = seen.setdefault(key, (name, x))[0]
            if leader == name:
                compressors[name].add_batch(x)
            else:
                followers[name] = leader
        return feed

    hooks = [layer.register_forward_hook(hook(name)) for name, layer in linears.items()]
    try:
        with torch.no_grad():
            for h, (args, kwargs) in zip(hidden, calls):
                seen.clear()
                block(h, *args, **kwargs)
    finally:
        for handle in hooks:
            handle.remove()
    return followers


def make_method(method: str | Method, **params) -> Method:
    if isinstance(method, Method):
        if params:
            raise ValueError("pass parameters either in the Method object or as keywords, not both")
        return method
    if method not in METHODS:
        raise ValueError(f"unknown compression method {method!r}; known: {', '.join(METHODS)}")
    try:
        return METHODS[method](**params)
    except TypeError as err:
        raise ValueError(f"{method}: {err}") from err


@torch.no_grad()
def compress(model, method: str | Method, calibration: torch.Tensor | None = None, *,
             batch_size: int = 8, progress: bool = True, **params) -> dict:
    """Compress ``model`` in place with ``method`` using ``calibration`` (LongTensor [n, seq_len]).

    Returns a report: the method and its parameters, per-layer info (sparsity, damping retries, ...)
    and wall time.
    """
    method = make_method(method, **params)
    started = time.time()
    blocks = decoder_blocks(model)
    layers_info: dict[str, dict] = {}
    if not method.needs_calibration:
        for b, block in enumerate(tqdm(blocks, desc=method.name, disable=not progress, leave=False)):
            for name, layer in block_linears(block).items():
                layers_info[f"{b}.{name}"] = method.compressor(layer).solve()
        return _report(method, layers_info, started, calibration)
    if calibration is None or calibration.dim() != 2:
        raise ValueError(f"{method.name} needs calibration data: a LongTensor [num_samples, seq_len]")
    limit = context_length(model)
    if limit is not None and calibration.shape[1] > limit:
        raise ValueError(f"calibration seq_len {calibration.shape[1]} exceeds the model context of {limit}")
    was_training = model.training
    model.eval()
    hidden, per_block = capture_block_inputs(model, blocks, calibration, batch_size)
    for b, block in enumerate(tqdm(blocks, desc=method.name, disable=not progress, leave=False)):
        calls = per_block[b]
        if method.block_level:
            info = method.compress_block(block, hidden, calls)
            layers_info.update({f"{b}.{k}": v for k, v in info.items()})
        else:
            linears = block_linears(block)
            compressors = {name: method.compressor(layer) for name, layer in linears.items()}
            leaders = _collect_statistics(block, hidden, calls, linears, compressors)
            for name, leader in leaders.items():
                compressors[name].share_statistics(compressors[leader])
            for name, comp in compressors.items():
                layers_info[f"{b}.{name}"] = comp.solve()
            del compressors
        if b + 1 < len(blocks):                  # the last block's outputs feed nothing
            hidden = run_block(block, hidden, calls)
        per_block[b] = None
    model.train(was_training)
    return _report(method, layers_info, started, calibration)


def _report(method: Method, layers: dict, started: float, calibration) -> dict:
    retries = sum(v.get("damping_retries", 0) for v in layers.values())
    return {"method": method.name, "params": method.params(), "layers": layers,
            "damping_retries": retries, "seconds": time.time() - started,
            "calibration_shape": list(calibration.shape) if calibration is not None else None}
