"""One sequential layer-wise driver for any Hugging Face causal LM whose decoder blocks hold nn.Linear layers.

1. Capture the input of every decoder block for the calibration batch: each block's forward is swapped
   for a recorder that stores its hidden states and keyword arguments (masks, rotary embeddings, which
   differ per block in models such as Gemma 3 that mix sliding and global attention) and passes the
   hidden states on unchanged; the first block's hidden states are kept, the rest discarded.
2. For each block in turn, by the method's ``sequential`` setting:
   - "layer": run the block once, all calibration batches in lockstep (``Lockstep``): every batch stops
     before each linear layer and hands it its input; when the last batch has arrived the layer is
     compressed, and all batches go on through the compressed layer. A layer's statistics thus come
     from inputs computed by the block's already compressed layers (GPTQ's true-sequential order), and
     the block's outputs are the next block's inputs: one pass per block.
   - "block": run the block with hooks that feed every linear layer's input to its compressor, compress
     all layers, then run the compressed block again to produce the next block's inputs (the reference
     Wanda and SparseGPT order): two passes per block.
   Only one block's activations are held at a time.
Embeddings and lm_head are left untouched.
"""
from __future__ import annotations

import threading
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


def _input_key(x: torch.Tensor) -> tuple:
    return x.data_ptr(), tuple(x.shape), x.stride(), x.dtype


class _Aborted(Exception):
    """Raised in the batches still waiting when another batch failed."""


class Lockstep:
    """One pass of a block over every calibration batch that compresses each linear layer in turn.

    Each batch runs the block's ordinary forward in its own thread, but only one thread runs at a time,
    in a fixed order (batch 0, 1, ..., k-1), so statistics accumulate in the same order on every run
    and the BLAS threads are never shared. A pre-hook on each linear layer is the meeting point: the
    arriving batch feeds its input to the layer's compressor and hands over to the next batch; the last
    batch to arrive compresses the layer and hands back to batch 0, which goes on through the now
    compressed layer. A layer that reads the very tensor the layer before it read (q/k/v, gate/up) shares
    that layer's statistics instead of accumulating them again.

    Every batch must reach the same layers in the same order (true of dense decoder blocks; not of
    mixture-of-experts blocks, which route tokens): otherwise a clear error names the first difference.
    """

    _END = "<end of block>"

    def __init__(self, block: nn.Module, hidden: list[torch.Tensor], calls: list, method: Method):
        self.block, self.hidden, self.calls, self.method = block, hidden, calls, method
        self.linears = block_linears(block)
        self.k = len(hidden)
        self.cond = threading.Condition()
        self.turn = 0
        self.error: BaseException | None = None
        self.local = threading.local()
        self.meeting: str | None = None           # the layer batch 0 reached; the others must follow
        self.compressors: dict = {}
        self.leaders: dict[str, str] = {}         # follower -> the layer whose statistics it shares
        self.last_input: list[tuple | None] = [None] * self.k   # per batch: (layer, its input)
        self.info: dict[str, dict] = {}
        self.outputs: list = [None] * self.k

    def run(self) -> tuple[list, dict]:
        """(the compressed block's outputs per batch, per-layer info)."""
        hooks = [layer.register_forward_pre_hook(self._arrive(name)) for name, layer in self.linears.items()]
        threads = [threading.Thread(target=self._batch, args=(j,), daemon=True, name=f"calib-batch-{j}")
                   for j in range(self.k)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException as err:              # e.g. KeyboardInterrupt in the main thread
            self._fail(err)
            for t in threads:
                t.join()
            raise
        finally:
            for handle in hooks:
                handle.remove()
        if self.error is not None:
            raise self.error
        for name, layer in self.linears.items():  # never called in the forward: no statistics, as in "block"
            if name not in self.info:
                self.info[name] = self.method.compressor(layer).solve()
        return self.outputs, self.info

    # -- turn taking ------------------------------------------------------------------------------
    def _wait_turn(self, j: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == j or self.error is not None)
            if self.error is not None:
                raise _Aborted

    def _hand_to(self, j: int) -> None:
        with self.cond:
            self.turn = j
            self.cond.notify_all()

    def _fail(self, err: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = err
            self.cond.notify_all()

    def _batch(self, j: int) -> None:
        self.local.index = j
        try:
            self._wait_turn(j)
            args, kwargs = self.calls[j]
            with torch.no_grad():                 # grad mode is per thread
                self.outputs[j] = self.block(self.hidden[j], *args, **kwargs)
            if j == 0:
                self.meeting = self._END
            elif self.meeting != self._END:
                raise RuntimeError(self._mismatch(j, self._END))
            self._hand_to(j + 1)
        except _Aborted:
            pass
        except BaseException as err:
            self._fail(err)

    def _mismatch(self, j: int, reached: str) -> str:
        return (f"sequential='layer' needs every calibration batch to reach the same layers in the same "
                f"order, but batch {j} reached {reached} where batch 0 reached {self.meeting} (a block that "
                f"routes tokens, such as a mixture of experts?): use sequential='block'")

    # -- the meeting point before each linear layer ----------------------------------------------
    def _arrive(self, name: str):
        def pre_hook(module, args):
            j = self.local.index
            x = args[0]
            if j == 0:
                if name in self.info:
                    raise RuntimeError(f"{name} is called twice in one forward of the block: "
                                       f"use sequential='block'")
                self.meeting = name
                self.compressors[name] = self.method.compressor(module)
            elif self.meeting != name:
                raise RuntimeError(self._mismatch(j, name))
            # Only the previous layer's input is kept per batch (holding every input until the end of the
            # block would cost memory for all batches at once): q/k/v and gate/up are called one after
            # another. A layer that reads an older tensor again just accumulates its own, equal, statistics.
            previous = self.last_input[j]
            leader = previous[0] if previous is not None and _input_key(previous[1]) == _input_key(x) else name
            if leader == name:
                self.last_input[j] = (name, x)
            if j == 0 and leader != name:
                self.leaders[name] = leader
            elif self.leaders.get(name, name) != leader:
                raise RuntimeError(f"batch {j} feeds {name} a different input tensor than batch 0 did: "
                                   f"use sequential='block'")
            if leader == name:
                self.compressors[name].add_batch(x)
            if j == self.k - 1:
                comp = self.compressors.pop(name) if name in self.leaders else self.compressors[name]
                if name in self.leaders:
                    comp.share_statistics(self.compressors[self.leaders[name]])
                self.info[name] = comp.solve()
                self._hand_to(0)
            else:
                self._hand_to(j + 1)
            self._wait_turn(j)
        return pre_hook


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
        elif getattr(method, "sequential", "block") == "layer":
            hidden, info = Lockstep(block, hidden, calls, method).run()
            layers_info.update({f"{b}.{k}": v for k, v in info.items()})
            per_block[b] = None
            continue
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
