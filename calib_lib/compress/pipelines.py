"""Compression pipelines: how the driver walks a model for a method, registered and chosen from the method.

- ``data-free`` (magnitude, RTN): each linear layer is compressed from its weights alone.
- ``block`` (Wanda, SparseGPT, GPTQ with ``sequential="block"``): the reference Wanda/SparseGPT order.
  Every linear layer of a block collects statistics from the dense block; all are compressed; the
  compressed block runs again to produce the next block's inputs (two passes per block).
- ``layer`` (``sequential="layer"``): GPTQ's true-sequential order in one pass per block: the
  calibration batches advance through the block in lockstep (``lockstep.Lockstep``) and each layer is
  compressed as soon as all batches reached it, so its statistics come from inputs computed by the
  block's already compressed layers.
- ``block-level`` (AWQ): the method compresses a whole block from the block's inputs and says what feeds
  the next block (AWQ by default: the full-precision outputs, as llm-awq searches on the unquantized model).

Calibrated pipelines hold one block's activations at a time. A pipeline carries a ``version`` that
enters the run key: bump it when a change moves any number (``tests/test_golden.py`` checks).

Numerical-noise replicates (``float_noise`` > 0, from a run spec's ``replicate``) dither every block's
inputs by one unit in the last place, seeded by the replicate and the block: the size of the rounding
differences another machine's kernels make in every block's outputs. Replicate 0 (every ordinary run) is
untouched.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..errors import Unsupported
from ..registry import Registry
from .blocks import block_linears, capture_block_inputs, input_key, no_calibration_input, run_block
from .lockstep import Lockstep
from .methods.base import Method


class Pipeline:
    name = "base"
    version = 1
    needs_calibration = True

    def run(self, model, blocks, method: Method, calibration, batch_size: int, progress: bool,
            float_noise: int = 0) -> dict:
        """Compress every block in place; return per-layer info keyed ``"<block>.<layer>"``."""
        raise NotImplementedError


def dither(hidden: list[torch.Tensor], seed: int, block: int) -> list[torch.Tensor]:
    """``hidden`` with every element left as it is or moved to its next float below or above, each with
    probability 1/3, from a generator seeded by (seed, block): a difference of one rounding, as another
    machine's kernels make it. The same noise for a replicate whatever its batch size."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
    out = []
    for h in hidden:
        step = torch.randint(-1, 2, h.shape, generator=generator).to(h.device)
        up = torch.nextafter(h, torch.full_like(h, float("inf")))
        down = torch.nextafter(h, torch.full_like(h, -float("inf")))
        out.append(torch.where(step > 0, up, torch.where(step < 0, down, h)))
    return out


PIPELINES: Registry[Pipeline] = Registry("compression pipeline")


def register(cls: type[Pipeline]) -> type[Pipeline]:
    PIPELINES.add(cls.name, cls())
    return cls


@register
class DataFree(Pipeline):
    name = "data-free"
    needs_calibration = False

    def run(self, model, blocks, method, calibration, batch_size, progress, float_noise=0):
        info = {}                     # the weights alone decide: float_noise has nothing to act on
        for b, block in enumerate(tqdm(blocks, desc=method.name, disable=not progress, leave=False)):
            for name, layer in block_linears(block).items():
                info[f"{b}.{name}"] = method.compressor(layer).solve()
        return info


class BlockByBlock(Pipeline):
    """Calibrated pipelines: capture the first block's inputs, then compress block after block, each
    block's outputs being the next one's inputs: the compressed block's, unless ``compress_block`` returns
    other outputs (AWQ's full-precision ones)."""

    def compress_block(self, block, hidden, calls, method) -> tuple[list | None, dict]:
        """(the compressed block's outputs, or None when another pass must compute them; per-layer info)."""
        raise NotImplementedError

    def run(self, model, blocks, method, calibration, batch_size, progress, float_noise=0):
        info = {}
        hidden, per_block = capture_block_inputs(model, blocks, calibration, batch_size)
        for b, block in enumerate(tqdm(blocks, desc=method.name, disable=not progress, leave=False)):
            calls, per_block[b] = per_block[b], None
            if float_noise:
                hidden = dither(hidden, float_noise, b)
            outputs, block_info = self.compress_block(block, hidden, calls, method)
            info.update({f"{b}.{k}": v for k, v in block_info.items()})
            if outputs is None and b + 1 < len(blocks):     # the last block's outputs feed nothing
                outputs = run_block(block, hidden, calls)
            hidden = outputs
        return info


@register
class LayerOrder(BlockByBlock):
    name = "layer"

    def compress_block(self, block, hidden, calls, method):
        return Lockstep(block, hidden, calls, method).run()


@register
class BlockOrder(BlockByBlock):
    name = "block"

    def compress_block(self, block, hidden, calls, method):
        linears = block_linears(block)
        compressors = {name: method.compressor(layer) for name, layer in linears.items()}
        leaders, called = _collect_statistics(block, hidden, calls, linears, compressors)
        if len(called) < len(linears):
            raise Unsupported(no_calibration_input([n for n in linears if n not in called], method))
        for name, leader in leaders.items():
            compressors[name].share_statistics(compressors[leader])
        return None, {name: comp.solve() for name, comp in compressors.items()}


@register
class BlockLevel(BlockByBlock):
    """The method compresses the whole block and returns (the next block's inputs, or None to have the
    quantized block run for them; per-layer info). AWQ returns its full-precision outputs by default."""
    name = "block-level"

    def compress_block(self, block, hidden, calls, method):
        return method.compress_block(block, hidden, calls)


def _collect_statistics(block, hidden, calls, linears, compressors) -> tuple[dict[str, str], set[str]]:
    """Run the block once, feeding each layer's input to its compressor. Layers that read a tensor
    another layer already read in the same batch (q/k/v, gate/up) are not fed: the returned map names,
    for each such follower, the leader whose statistics it shares. Also returns the layers that were called."""
    followers: dict[str, str] = {}
    called: set[str] = set()
    # Holding every seen input until the batch ends keeps its memory from being reused by a later
    # tensor, so an equal data_ptr really means the same tensor.
    seen: dict[tuple, tuple[str, torch.Tensor]] = {}

    def hook(name):
        def feed(module, inp, out):
            called.add(name)
            x = inp[0]
            leader = seen.setdefault(input_key(x), (name, x))[0]
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
    return followers, called
