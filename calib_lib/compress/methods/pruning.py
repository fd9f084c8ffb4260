"""Pruning: magnitude, Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023).

Sparsity is unstructured (a fraction in [0, 1)) or N:M (n of every m consecutive input weights of a row
are zero). Comparison groups: magnitude, the whole layer (as the Wanda repository's magnitude baseline);
Wanda, each output row; SparseGPT, each 128-column block (lazy batch) of the layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import FieldError
from .base import (LayerCompressor, LayerwiseMethod, Method, HessianParams, SparsityParams, lowest_k_mask,
                   nm_mask, register)
from .hessian import HessianCollector, inverse_cholesky, prepare_hessian


def _sparsity_info(W: torch.Tensor) -> dict:
    return {"sparsity": float((W == 0).float().mean())}


def prune_lowest(W: torch.Tensor, score: torch.Tensor, method: SparsityParams, per_row: bool) -> dict:
    """Zero the weights of lowest score in place: n of every m (N:M), else the ``sparsity`` fraction of
    each row (``per_row``) or of the whole matrix."""
    if method.n:
        mask = nm_mask(score, method.n, method.m)
    elif per_row:
        mask = lowest_k_mask(score, int(W.shape[1] * method.sparsity), 1)
    else:
        mask = lowest_k_mask(score, int(W.numel() * method.sparsity), None)
    W[mask] = 0
    return _sparsity_info(W)


class MagnitudeCompressor(LayerCompressor):
    def solve(self) -> dict:
        W = self.layer.weight.data
        return prune_lowest(W, W.abs().float(), self.method, per_row=False)


@register
@dataclass
class Magnitude(SparsityParams, Method):
    name = "magnitude"
    needs_calibration = False
    layer_compressor = MagnitudeCompressor


class WandaCompressor(LayerCompressor):
    def __init__(self, layer, method):
        super().__init__(layer, method)
        self.sq_norm = torch.zeros(layer.weight.shape[1], dtype=torch.float64, device=layer.weight.device)

    def add_batch(self, inp):
        x = inp.reshape(-1, inp.shape[-1]).double()
        self.sq_norm += (x * x).sum(0)

    def share_statistics(self, leader) -> None:
        self.sq_norm = leader.sq_norm

    def solve(self) -> dict:
        W = self.layer.weight.data
        score = W.abs().double() * self.sq_norm.sqrt().unsqueeze(0)     # |W_ij| * ||X_j||_2
        return prune_lowest(W, score, self.method, per_row=True)


@register
@dataclass
class Wanda(SparsityParams, LayerwiseMethod):
    name = "wanda"
    layer_compressor = WandaCompressor


def sparsegpt_solve(W: torch.Tensor, H: torch.Tensor, sparsity: float, n: int = 0, m: int = 0,
                    blocksize: int = 128, percdamp: float = 0.01,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SparseGPT: prune column by column with OBS updates of the not-yet-processed columns.

    For unstructured sparsity the mask of each ``blocksize``-column block is chosen when the block
    starts, as the ``sparsity`` fraction of its weights with the lowest w^2 / [U]_jj^2 (U the upper
    Cholesky factor of the damped inverse Hessian); exactly that many per block. For N:M the mask of
    every m columns is chosen when its first column is reached. ``mask`` (True = prune) fixes the mask
    instead, for tests against closed forms. Returns (pruned weight, mask, info).
    """
    W, H, dead = prepare_hessian(W, H)
    U, info = inverse_cholesky(H, percdamp)
    rows, cols = W.shape
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        if mask is not None:
            mask1 = mask[:, i1:i2].clone()
        elif n == 0:
            score = W1 ** 2 / torch.diag(U1).reshape(1, -1) ** 2
            mask1 = lowest_k_mask(score, int(score.numel() * sparsity), None)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        diag = torch.diag(U1).tolist()          # Python floats: no indexing op per column
        for i in range(i2 - i1):
            if mask is None and n and i % m == 0 and i + m <= i2 - i1:
                score = W1[:, i:i + m] ** 2 / torch.diag(U1)[i:i + m].reshape(1, -1) ** 2
                mask1[:, i:i + m] = nm_mask(score, n, m)
            w, pruned = W1[:, i:i + 1], mask1[:, i:i + 1]
            # The error w - q is w where the weight is pruned and 0 where it is kept.
            err = Err1[:, i:i + 1]
            torch.mul(w, pruned, out=err).div_(diag[i])
            W1[:, i + 1:].addmm_(err, U1[i:i + 1, i + 1:], alpha=-1)
            w.masked_fill_(pruned, 0)
        W[:, i1:i2] = W1
        full_mask[:, i1:i2] = mask1
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)
    info.update(dead_inputs=dead)
    return W, full_mask, info


class SparseGPTCompressor(HessianCollector):
    def solve(self) -> dict:
        m = self.method
        W, _, info = sparsegpt_solve(self.layer.weight.data, self.H, m.sparsity, m.n, m.m,
                                     m.blocksize, m.percdamp)
        self.layer.weight.data.copy_(W.to(self.layer.weight.dtype))
        return {**info, **_sparsity_info(self.layer.weight.data)}


@register
@dataclass
class SparseGPT(SparsityParams, HessianParams, LayerwiseMethod):
    name = "sparsegpt"
    layer_compressor = SparseGPTCompressor

    def validate(self):
        super().validate()
        if self.n and self.blocksize % self.m:
            raise FieldError("blocksize", f"blocksize {self.blocksize} must be a multiple of M={self.m}")
