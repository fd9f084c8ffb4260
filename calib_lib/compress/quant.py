"""Uniform min-max quantization grids (as the GPTQ reference quantizer), per output row and input group.

A grid is (scale, zero) per output row and per group of ``group_size`` consecutive input columns
(``group_size = -1``: one group per row, i.e. per-channel). Asymmetric grids span [min(w, 0), max(w, 0)];
symmetric ones span [-max|w|, max|w|] with the zero point in the middle. When the input width is not a
multiple of the group size the last group is narrower, as in the reference GPTQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def grid_params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero), each ``[rows, 1]``, for the columns of ``w`` (``[rows, cols]``)."""
    maxq = 2 ** bits - 1
    xmin = torch.minimum(w.min(dim=1).values, torch.zeros(1, dtype=w.dtype, device=w.device))
    xmax = torch.maximum(w.max(dim=1).values, torch.zeros(1, dtype=w.dtype, device=w.device))
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` to the grid and return the dequantized values (fake quantization)."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
    return scale * (q - zero)


def group_bounds(cols: int, group_size: int) -> list[tuple[int, int]]:
    if group_size == -1 or group_size >= cols:
        return [(0, cols)]
    return [(s, min(s + group_size, cols)) for s in range(0, cols, group_size)]


@dataclass
class Grid:
    """The grid a quantized weight lies on: ``weight[:, j] * in_scale[j]`` is on (scale, zero)[:, g_idx[j]]."""

    bits: int
    scale: torch.Tensor          # [rows, n_groups]
    zero: torch.Tensor           # [rows, n_groups]
    g_idx: torch.Tensor          # [cols] group of each input column
    in_scale: torch.Tensor | None = None   # AWQ's per-input-channel scale (None: 1)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``weight`` (real-valued where it is off the grid)."""
        w = weight.float() * (self.in_scale if self.in_scale is not None else 1)
        return w / self.scale[:, self.g_idx] + self.zero[:, self.g_idx]

    def on_grid(self, weight: torch.Tensor, atol: float = 1e-3) -> bool:
        codes = self.codes(weight)
        return bool(((codes - codes.round()).abs() <= atol).all()
                    and (codes.round() >= 0).all() and (codes.round() <= 2 ** self.bits - 1).all())


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool, clip=None) -> tuple[torch.Tensor, Grid]:
    """Round-to-nearest on a per-row, per-group grid: the one group-wise quantizer of the package.

    ``clip(w_group, a, b)``, when given, returns the group's columns ``a:b`` clipped before their grid is
    fitted (AWQ's clipping search); RTN and the AWQ scale search use the plain min-max grid.
    """
    out = torch.empty_like(w)
    bounds = group_bounds(w.shape[1], group_size)
    scales, zeros = [], []
    g_idx = torch.empty(w.shape[1], dtype=torch.long)
    for g, (a, b) in enumerate(bounds):
        group = w[:, a:b] if clip is None else clip(w[:, a:b], a, b)
        scale, zero = grid_params(group, bits, sym)
        out[:, a:b] = quantize(group, scale, zero, bits)
        scales.append(scale)
        zeros.append(zero)
        g_idx[a:b] = g
    return out, Grid(bits, torch.cat(scales, 1), torch.cat(zeros, 1), g_idx)
