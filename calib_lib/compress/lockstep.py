"""Lockstep: one pass of a decoder block over every calibration batch, compressing each linear layer in turn.

The engine of the "layer" pipeline (GPTQ's true-sequential order); see ``Lockstep``.
"""
from __future__ import annotations

import threading

import torch
from torch import nn

from ..errors import Unsupported
from .blocks import block_linears, input_key, no_calibration_input
from .methods.base import Method


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
        uncalled = [name for name in self.linears if name not in self.info]
        if uncalled:
            raise Unsupported(no_calibration_input(uncalled, self.method))
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
                raise Unsupported(self._mismatch(j, self._END))
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
                    raise Unsupported(f"{name} is called twice in one forward of the block: "
                                       f"use sequential='block'")
                self.meeting = name
                self.compressors[name] = self.method.compressor(module)
            elif self.meeting != name:
                raise Unsupported(self._mismatch(j, name))
            # Only the previous layer's input is kept per batch (holding every input until the end of the
            # block would cost memory for all batches at once): q/k/v and gate/up are called one after
            # another. A layer that reads an older tensor again just accumulates its own, equal, statistics.
            previous = self.last_input[j]
            leader = previous[0] if previous is not None and input_key(previous[1]) == input_key(x) else name
            if leader == name:
                self.last_input[j] = (name, x)
            if j == 0 and leader != name:
                self.leaders[name] = leader
            elif self.leaders.get(name, name) != leader:
                raise Unsupported(f"batch {j} feeds {name} a different input tensor than batch 0 did: "
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
