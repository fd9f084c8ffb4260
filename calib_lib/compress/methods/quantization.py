"""Weight quantization: RTN and GPTQ (Frantar et al. 2023). Weights are stored dequantized
(fake-quant) in the model's dtype; each layer's grid is kept so tests can check every weight is on it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import FieldError
from ..quant import Grid, grid_params, rtn
from .base import (HessianParams, LayerCompressor, LayerwiseMethod, Method, QuantParams, added_option,
                   register)
from .hessian import QuantizingCollector, inverse_cholesky, prepare_hessian


class RTNCompressor(LayerCompressor):
    def solve(self) -> dict:
        m = self.method
        Q, grid = rtn(self.layer.weight.data.float(), m.bits, m.group_size, m.sym)
        self.layer.weight.data.copy_(Q.to(self.layer.weight.dtype))
        self.layer.calib_grid = grid
        return {}


@register
@dataclass
class RTN(QuantParams, Method):
    name = "rtn"
    needs_calibration = False
    layer_compressor = RTNCompressor


GROUP_GRIDS = ("updated", "reference")


def gptq_solve(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
               act_order: bool = False, static_groups: bool = False, blocksize: int = 128,
               percdamp: float = 0.01, group_grid: str = "updated") -> tuple[torch.Tensor, Grid, dict]:
    """GPTQ: quantize columns in order (by decreasing H_jj with act_order), spreading each column's
    rounding error over the remaining columns through the inverse-Hessian Cholesky factor, with lazy
    batch updates every ``blocksize`` columns. Group grids are computed up front from the original weights
    (static_groups), or when a group's first column is reached: from the weights with every earlier column's
    error applied (``group_grid="updated"``, the exact sequential algorithm), or, as the reference code
    does, from the weights as they stood when the current lazy block began, missing the updates of the
    block's earlier columns (``"reference"``). The two differ only when a group starts inside a block
    (group size below the block size): +0.8% layer error at g32 on SmolLM2 for "reference"."""
    W, H, dead = prepare_hessian(W, H)
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    n_groups = -(-cols // gs)
    scales = torch.zeros(rows, n_groups, dtype=W.dtype, device=W.device)
    zeros = torch.zeros(rows, n_groups, dtype=W.dtype, device=W.device)
    if static_groups or group_size == -1:
        for g in range(n_groups):
            scales[:, g:g + 1], zeros[:, g:g + 1] = grid_params(W[:, g * gs:(g + 1) * gs], bits, sym)
    perm = torch.arange(cols, device=W.device)
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W, H = W[:, perm], H[perm][:, perm]
    invperm = torch.argsort(perm)
    U, info = inverse_cholesky(H, percdamp)
    Q = torch.zeros_like(W)
    # Group of each (permuted) column: original position's group for static grids; in processing
    # order for dynamic ones (as the reference, groups are formed over the order columns are quantized).
    g_of_col = perm // gs if (static_groups or group_size == -1) else torch.arange(cols, device=W.device) // gs
    groups = g_of_col.tolist()            # a Python list: no device sync per column on a GPU
    maxq = 2 ** bits - 1
    # The column loop runs cols times per layer, so it is kept to a few in-place ops (the same
    # arithmetic as quantize(): round(w / scale) + zero, clamped, then scale * (q - zero)).
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        diag = torch.diag(U1).tolist()
        Q1 = Q[:, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = groups[col]
            if not (static_groups or group_size == -1) and col % gs == 0:
                if group_grid == "reference":       # W's block columns still hold their block-start values
                    upcoming = W[:, col:col + gs]
                else:
                    upcoming = W1[:, i:i + gs] if i + gs <= i2 - i1 else torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :gs]
                scales[:, g:g + 1], zeros[:, g:g + 1] = grid_params(upcoming, bits, sym)
            if i == 0 or g != groups[col - 1]:
                scale, zero = scales[:, g:g + 1], zeros[:, g:g + 1]
            w = W1[:, i:i + 1]
            q = torch.round(w / scale).add_(zero).clamp_(0, maxq).sub_(zero).mul_(scale)
            Q1[:, i:i + 1] = q
            err = Err1[:, i:i + 1]
            torch.sub(w, q, out=err).div_(diag[i])
            # Columns after i take column i's error (column i itself is done: its value is q).
            W1[:, i + 1:].addmm_(err, U1[i:i + 1, i + 1:], alpha=-1)
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)
    Q = Q[:, invperm]
    g_idx = g_of_col[invperm]
    info.update(dead_inputs=dead)
    return Q, Grid(bits, scales, zeros, g_idx), info


class GPTQCompressor(QuantizingCollector):
    def quantize(self):
        m = self.method
        return gptq_solve(self.layer.weight.data, self.H, m.bits, m.group_size, m.sym, m.act_order,
                          m.static_groups, m.blocksize, m.percdamp, m.group_grid)


@register
@dataclass
class GPTQ(QuantParams, HessianParams, LayerwiseMethod):
    act_order: bool = False
    static_groups: bool = False
    group_grid: str = added_option("updated")     # or "reference": see gptq_solve
    name = "gptq"
    layer_compressor = GPTQCompressor

    def variants(self) -> list[str]:
        # Column order moves GPTQ's result a lot on models with outlier channels (and today's llm-compressor
        # defaults to act-order with static groups), so every order is named wherever it is shown.
        return super().variants() + [text for text, on in [
            ("act-order", self.act_order), ("static groups", self.static_groups),
            ("reference group grid", self.group_grid == "reference")] if on]

    def validate(self):
        super().validate()
        if self.group_grid not in GROUP_GRIDS:
            raise FieldError("group_grid", f"group_grid must be one of {', '.join(GROUP_GRIDS)}, got {self.group_grid!r}")
