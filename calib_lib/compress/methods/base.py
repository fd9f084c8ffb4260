"""The protocol every compression method follows, and its registry.

A layer-wise method gives a ``LayerCompressor`` per ``nn.Linear``: the pipeline feeds it the layer's
inputs for the calibration batch (``add_batch``) and then asks it to ``solve``, which writes the
compressed weight in place and returns a small dict of what happened. A block-wise method (AWQ)
overrides ``compress_block(block, hidden, calls)`` instead, returning (the next block's inputs, or None to
have the compressed block run for them; per-layer info). The method names its pipeline (``pipeline``), its family
(pruning or quantization) and how it reads in a figure (``label``).

Every method carries a ``version`` that enters the run key: bump it when a change moves any number the
method produces (``tests/test_golden.py`` fails until you do), and leave it when a refactor does not, so
stored runs stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from ...errors import FieldError
from ...registry import Registry

METHODS: Registry[type["Method"]] = Registry("compression method")


def register(cls):
    """Class decorator: register a Method subclass under its ``name``."""
    METHODS.add(cls.name, cls)
    return cls


class LayerCompressor:
    def __init__(self, layer: nn.Linear, method: "Method"):
        self.layer, self.method = layer, method

    def add_batch(self, inp: torch.Tensor) -> None:
        pass

    def share_statistics(self, leader: "LayerCompressor") -> None:
        """Take the statistics ``leader`` collected from the very same inputs (q/k/v, gate/up).

        The driver calls this instead of add_batch for layers that read the tensor another layer
        already read, so shared statistics are computed once.
        """

    def solve(self) -> dict:
        raise NotImplementedError


@dataclass
class Method:
    """Parameters of a method; subclasses are dataclasses whose fields are the method's options."""

    name = "base"
    version = 1                    # bump when the numbers change (enters the run key)
    family = "none"                # "pruning" | "quantization"
    needs_calibration = True
    block_level = False            # True: the method compresses a whole block (compress_block)
    layer_compressor = LayerCompressor

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        pass

    def params(self) -> dict:
        """The method's parameters as they enter the run key: every field, except options added later
        (``added_option``) while they hold their default, so adding an option keeps every stored run."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init
                and not (f.metadata.get("omit_at_default") and getattr(self, f.name) == f.default)}

    def compressor(self, layer: nn.Linear) -> LayerCompressor:
        return self.layer_compressor(layer, self)

    @property
    def pipeline(self) -> str:
        """The registered compression pipeline that runs this method (``compress.pipelines``)."""
        if not self.needs_calibration:
            return "data-free"
        return "block-level" if self.block_level else "block"

    def setting(self) -> str:
        """The method's main setting in a few characters ('50%', '2:4', '3-bit g128')."""
        return ""

    def variants(self) -> list[str]:
        """The options set away from the published defaults, named in the label wherever the method is shown
        (two arms of one method must never share a label); the published defaults go unnamed."""
        return []

    def label(self) -> str:
        """How the method reads in tables and figures: 'wanda 50%', 'gptq 3-bit g128 (layer order, act-order)'."""
        variants = self.variants()
        return " ".join(part for part in (self.name, self.setting()) if part) + \
            (f" ({', '.join(variants)})" if variants else "")


def added_option(default):
    """A dataclass field for an option added to an existing method: its default must reproduce the method's
    earlier numbers, and it enters the run key only when set to something else."""
    return field(default=default, metadata={"omit_at_default": True})


SEQUENTIAL = ("layer", "block")


@dataclass
class LayerwiseMethod(Method):
    """A calibrated method that compresses each nn.Linear from its own inputs (Wanda, SparseGPT, GPTQ).

    ``sequential`` says which inputs a layer's statistics come from:
    - "block" (default, the published order): every layer's statistics come from the dense block, as in
      the reference Wanda and SparseGPT code and GPTQ's script without ``--true-sequential``; the block then
      runs a second time, compressed, to feed the next block.
    - "layer": the block's earlier layers are already compressed when a layer's inputs are collected
      (GPTQ's ``--true-sequential``), so each layer also corrects the error of those before it. The driver
      runs each block once: the calibration batches advance in lockstep and every layer is compressed as
      soon as all of them have reached it. A variant, named in every label that uses it.
    """

    sequential: str = "block"

    def __post_init__(self):
        if self.sequential not in SEQUENTIAL:
            raise FieldError("sequential", f"sequential must be one of {', '.join(SEQUENTIAL)}, "
                                           f"got {self.sequential!r}")
        super().__post_init__()

    @property
    def pipeline(self) -> str:
        return self.sequential            # the "layer" and "block" pipelines

    def variants(self) -> list[str]:
        return super().variants() + (["layer order"] if self.sequential == "layer" else [])


# -- parameter blocks shared by the methods of a family (dataclass mixins: put them before the Method base)

@dataclass
class SparsityParams:
    """Unstructured sparsity (a fraction in [0, 1)) or N:M (n of every m consecutive inputs of a row zero)."""
    sparsity: float = 0.5
    n: int = 0
    m: int = 0
    family = "pruning"

    def validate(self) -> None:
        super().validate()
        sparsity = self.sparsity
        if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 <= sparsity < 1:
            raise FieldError("sparsity", f"sparsity must be in [0, 1), got {sparsity!r}")
        if (self.n, self.m) != (0, 0):
            if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
                raise FieldError("n", f"N:M sparsity needs 0 < N < M, got {self.n}:{self.m}")

    def setting(self) -> str:
        return f"{self.n}:{self.m}" if self.n else f"{round(100 * self.sparsity)}%"


@dataclass
class QuantParams:
    """Uniform asymmetric (or symmetric) integer grids of ``bits`` per group of ``group_size`` inputs
    (-1: one grid per output channel)."""
    bits: int = 4
    group_size: int = 128
    sym: bool = False
    family = "quantization"

    def validate(self) -> None:
        super().validate()
        bits, group_size = self.bits, self.group_size
        if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
            raise FieldError("bits", f"bits must be an integer in 2..8, got {bits!r}")
        if not isinstance(group_size, int) or isinstance(group_size, bool) or (group_size <= 0 and group_size != -1):
            raise FieldError("group_size", f"group_size must be a positive integer or -1 (per-channel), "
                                           f"got {group_size!r}")

    def setting(self) -> str:
        return f"{self.bits}-bit " + ("per-channel" if self.group_size == -1 else f"g{self.group_size}")


@dataclass
class HessianParams:
    """The second-order solvers' options (SparseGPT, GPTQ): columns per lazy batch update, and the damping
    added to the Hessian's diagonal as a fraction of its mean."""
    blocksize: int = 128
    percdamp: float = 0.01

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.percdamp, (int, float)) or self.percdamp < 0:
            raise FieldError("percdamp", f"percdamp must be non-negative, got {self.percdamp!r}")
        if not isinstance(self.blocksize, int) or isinstance(self.blocksize, bool) or self.blocksize <= 0:
            raise FieldError("blocksize", f"blocksize must be a positive integer, got {self.blocksize!r}")


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where pruned: the n lowest scores of each group of m consecutive columns in every row."""
    rows, cols = score.shape
    full = cols - cols % m
    mask = torch.zeros_like(score, dtype=torch.bool)
    groups = score[:, :full].reshape(rows, -1, m)
    idx = torch.topk(groups, n, dim=2, largest=False).indices
    mask[:, :full] = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True).reshape(rows, full)
    return mask


def lowest_k_mask(score: torch.Tensor, k: int, dim: int | None) -> torch.Tensor:
    """True at exactly k lowest scores per row (dim=1) or in the whole matrix (dim=None)."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k == 0:
        return mask
    if dim is None:
        # The k-th smallest value as threshold (kthvalue: ~3.5x faster than topk for k = half of a
        # 1536 x 128 SparseGPT block); weights tied at the threshold are taken in index order, so the
        # count is exact and the choice among ties does not depend on the sorting algorithm.
        threshold = torch.kthvalue(score.flatten(), k).values
        mask = score < threshold
        short = k - int(mask.sum())
        if short:
            ties = torch.nonzero((score == threshold).flatten()).flatten()[:short]
            mask.view(-1)[ties] = True
    else:
        idx = torch.topk(score, k, dim=dim, largest=False).indices
        mask.scatter_(dim, idx, True)
    return mask
