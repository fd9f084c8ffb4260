"""SpQR (Dettmers et al. 2023, "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM Weight
Compression"): GPTQ with small groups whose statistics are themselves quantized, plus a sparse set of
outlier weights kept in full precision.

Weights are stored dequantized (fake-quant) like GPTQ's; each layer keeps an ``OutlierGrid``: the grid
every weight except the outliers lies on, and the outliers' positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...errors import FieldError
from ..quant import Grid
from .base import HessianParams, LayerwiseMethod, QuantParams, register
from .hessian import QuantizingCollector, inverse_cholesky, prepare_hessian

STAT_PARAM_BITS = 16     # each second-level grid's scale and zero point are stored in 16 bits
OUTLIER_BITS = 32        # each outlier: its 16-bit value and its 16-bit column index


def range_grid(xmin: torch.Tensor, xmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SpQR's min-max grid spanning exactly [xmin, xmax] (not widened to include 0 like GPTQ's, since a
    group of 16 weights is often all of one sign) with a real-valued zero point (SpQR quantizes zero
    points at the second level instead of rounding them).

    A constant set (xmin == xmax = c) gets scale 1 and zero -c, which stores c exactly at code 0 (the
    reference widens it to [-1, 1], which loses c).
    """
    flat = xmax == xmin
    scale = torch.where(flat, torch.ones_like(xmin), (xmax - xmin) / (2 ** bits - 1))
    return scale, -xmin / scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """scale * (code - zero), code = round(x / scale + zero) clamped to [0, 2^bits - 1]. With a real-valued
    zero point the zero goes inside the rounding (``quant.quantize`` adds an integer zero after it)."""
    q = torch.clamp(torch.round(x / scale + zero), 0, 2 ** bits - 1)
    return scale * (q - zero)


def quantize_stats(v: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """SpQR's second level: a first-level statistic (one per output row, ``[rows]``) quantized with a
    min-max grid of ``bits`` per ``group`` consecutive rows (the last group may be narrower)."""
    full = len(v) - len(v) % group
    parts = ([v[:full].reshape(-1, group)] if full else []) + ([v[full:].unsqueeze(0)] if full < len(v) else [])
    out = []
    for part in parts:
        scale, zero = range_grid(part.amin(1, keepdim=True), part.amax(1, keepdim=True), bits)
        out.append(fake_quant(part, scale, zero, bits).flatten())
    return torch.cat(out)


def loo_reduction(w: torch.Tensor, d: torch.Tensor, bits: int) -> torch.Tensor:
    """For every weight of a group ``w`` (``[rows, width]``): how much the row's sensitivity-weighted error
    sum_j ((q_j - w_j) / d_j)^2 drops when that weight is left out of the grid fit (and unquantized).

    The reference refits a grid for each left-out weight. A min-max grid depends only on the row's
    minimum and maximum, so leaving out any other weight keeps the grid and the drop is that weight's own
    error; only the row's minimum and maximum need a refit (on the second-smallest / second-largest
    value; a tied minimum or maximum refits to the same grid). Three grids per row, whatever the width.
    """
    if w.shape[1] < 2:
        return torch.zeros_like(w)            # a lone weight is exact on its own (constant) grid
    order = w.argsort(dim=1)
    s = w.gather(1, order)
    lo, hi = order[:, :1], order[:, -1:]

    def errors(xmin, xmax):
        scale, zero = range_grid(xmin, xmax, bits)
        return ((fake_quant(w, scale, zero, bits) - w) / d).square()

    full = errors(s[:, :1], s[:, -1:])
    total = full.sum(1, keepdim=True)
    loo = total - full                        # the grid without a weight that is neither min nor max
    for pos, err in ((lo, errors(s[:, 1:2], s[:, -1:])), (hi, errors(s[:, :1], s[:, -2:-1]))):
        loo.scatter_(1, pos, err.sum(1, keepdim=True) - err.gather(1, pos))
    return total - loo


def fit_group(w: torch.Tensor, d: torch.Tensor, bits: int, stat_bits: int, stat_group_size: int,
              threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The group's grid per row (``[rows]`` scale and zero, both already quantized at the second level).

    With outliers enabled, weights whose leave-one-out error reduction exceeds ``threshold`` are likely
    outliers and are left out of the min-max fit, so one large weight does not coarsen the grid of the
    other 15 (the reference replaces them by the row mean of the others, which spans the same range). A
    row whose every weight is a likely outlier is fitted on all of them (the reference fits it on zeros).
    """
    if math.isinf(threshold):
        xmin, xmax = w.amin(1), w.amax(1)
    else:
        keep = loo_reduction(w, d, bits) <= threshold
        keep |= ~keep.any(1, keepdim=True)
        xmin = torch.where(keep, w, torch.inf).amin(1)
        xmax = torch.where(keep, w, -torch.inf).amax(1)
    scale, zero = range_grid(xmin, xmax, bits)
    return quantize_stats(scale, stat_bits, stat_group_size), quantize_stats(zero, stat_bits, stat_group_size)


def spqr_avg_bits(rows: int, cols: int, outliers: int, bits: int, group_size: int, stat_bits: int,
                  stat_group_size: int) -> float:
    """Storage of a [rows, cols] SpQR layer in bits per weight, as the paper and the reference count it:

    - ``bits`` per weight, outliers' positions included (the dense code matrix has a slot for every weight);
    - per row and column group: the scale's and the zero point's ``stat_bits`` codes (first level);
    - per column group and group of ``stat_group_size`` rows: two second-level grids (one for the scales,
      one for the zero points), each a 16-bit scale and a 16-bit zero point: 64 bits;
    - per outlier: 32 bits (16-bit value, 16-bit column index).

    Not counted, as in the reference: the sparse matrix's row pointers (32 bits per row in the paper's
    CSR layout) and the act-order permutation (one index per input column). Narrow last groups count as
    whole groups; with dimensions that are multiples of the group sizes this is the reference's
    bits + 2 stat_bits / g + 64 / (g sg) + 32 * outlier share.
    """
    col_groups = -(-cols // (cols if group_size == -1 else group_size))
    row_groups = -(-rows // stat_group_size)
    total = (rows * cols * bits + rows * col_groups * 2 * stat_bits
             + col_groups * row_groups * 2 * 2 * STAT_PARAM_BITS + outliers * OUTLIER_BITS)
    return total / (rows * cols)


@dataclass
class OutlierGrid(Grid):
    """A Grid with SpQR's sparse part: the weights at ``outliers`` are kept in full precision, off the grid."""

    outliers: torch.Tensor | None = None     # [rows, cols] bool

    def on_grid(self, weight: torch.Tensor, atol: float = 1e-3) -> bool:
        """Whether every weight except the outliers is on the grid."""
        if self.outliers is None:
            return super().on_grid(weight, atol)
        # Stand in for each outlier the grid's value at code 0, which is on the grid.
        code_zero = -(self.scale * self.zero)[:, self.g_idx]
        return super().on_grid(torch.where(self.outliers, code_zero, weight.float()), atol)


def spqr_solve(W: torch.Tensor, H: torch.Tensor, bits: int = 3, group_size: int = 16, stat_bits: int = 3,
               stat_group_size: int = 16, outlier_threshold: float = 0.2, act_order: bool = True,
               blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, OutlierGrid, dict]:
    """SpQR on one layer: (the dequantized weight with its outliers kept, its grid, info).

    As the paper's Algorithm 1 and the reference (``spqr_engine.py``):
    - columns are quantized one at a time (by decreasing H_jj with ``act_order``, the reference's
      ``permutation_order=act_order``), each column's error spread over the columns not yet quantized
      through the upper Cholesky factor U of the damped H^-1, with lazy batch updates every ``blocksize``;
    - when a group's first column is reached, each row's min-max grid (``bits``) over the group's
      ``group_size`` error-updated columns is fitted without the likely outliers (``fit_group``); its
      scales and zero points are then quantized in groups of ``stat_group_size`` rows with ``stat_bits``
      min-max grids (bilevel quantization), and the weights are quantized on the resulting grids;
    - a weight is an outlier when its sensitivity-scaled error ((w - q) / U_jj)^2 exceeds
      ``outlier_threshold`` times the layer's typical scale, mean_j Var_rows(W_:j) / U_jj^2 (the
      reference's ``outlier_relative_threshold`` and ``outlier_scale``); an outlier keeps its (error-
      updated) value, so it passes no error on. ``outlier_threshold = inf`` turns outliers off: GPTQ on
      SpQR's bilevel group grids.

    Dead inputs (H_jj = 0) are zeroed first, as in GPTQ and the reference; 0 need not lie on a min-max
    grid, so their quantized weights may not be 0, which is harmless (their input is always 0).

    Differences from the reference: damping and dead inputs come from the package's Hessian helpers
    (damping added after dead inputs get H_jj = 1, not before); the leave-one-out step is computed in
    closed form (``loo_reduction``, equal to the reference's refits); constant groups get an exact grid
    (``range_grid``); a group that runs past a lazy-batch block is fitted on fully updated columns, so the
    result does not depend on ``blocksize``; a row whose weights are all likely outliers is fitted on all
    of them; one ``stat_bits`` for scales and zero points (the paper's setting; the reference has one
    each); the base grid is asymmetric only. The reference's recommended settings use ``percdamp=1.0``.

    info: ``outliers`` (count), ``outlier_share`` (outliers / weights), ``avg_bits`` (``spqr_avg_bits``),
    ``weights`` (rows * cols, to weight averages over layers), ``dead_inputs``, ``damping`` and
    ``damping_retries``.
    """
    W, H, dead = prepare_hessian(W, H)
    rows, cols = W.shape
    gs = cols if group_size == -1 else group_size
    perm = (torch.argsort(torch.diag(H), descending=True, stable=True) if act_order
            else torch.arange(cols, device=W.device))
    W, H = W[:, perm], H[perm][:, perm]
    U, info = inverse_cholesky(H, percdamp)
    d = torch.diag(U)
    with_outliers = not math.isinf(outlier_threshold)
    threshold = outlier_threshold * float((W.var(dim=0) / d.square()).mean()) if with_outliers else math.inf
    n_groups = -(-cols // gs)
    scales = torch.empty(rows, n_groups, dtype=W.dtype, device=W.device)
    zeros = torch.empty_like(scales)
    Q = torch.empty_like(W)
    outliers = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)
    diag = d.tolist()                     # a Python list: no device sync per column on a GPU
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        E = torch.zeros(rows, i2 - i1, dtype=W.dtype, device=W.device)   # scaled errors of the block
        for j in range(i1, i2):
            if j % gs == 0:
                end = min(j + gs, cols)
                group = W[:, j:end].clone()
                if end > i2:
                    # Columns past the block have not yet received this block's errors (lazy update).
                    group[:, i2 - j:] -= E[:, :j - i1] @ U[i1:j, i2:end]
                scale, zero = fit_group(group, d[j:end], bits, stat_bits, stat_group_size, threshold)
                scales[:, j // gs], zeros[:, j // gs] = scale, zero
            w = W[:, j]
            q = fake_quant(w, scale, zero, bits)
            err = (w - q) / diag[j]
            if with_outliers:
                out = err.square() > threshold
                q = torch.where(out, w, q)
                err = err.masked_fill(out, 0)
                outliers[:, j] = out
            Q[:, j] = q
            E[:, j - i1] = err
            # Columns after j in this block take column j's error now; those after the block at its end.
            W[:, j + 1:i2].addr_(err, U[j, j + 1:i2], alpha=-1)
        W[:, i2:].addmm_(E, U[i1:i2, i2:], alpha=-1)
    invperm = torch.argsort(perm)
    Q, outliers = Q[:, invperm], outliers[:, invperm]
    # Groups are formed in processing order, as the reference's; g_idx maps each original column to its own.
    g_idx = (torch.arange(cols, device=W.device) // gs)[invperm]
    n_out = int(outliers.sum())
    info.update(dead_inputs=dead, weights=rows * cols, outliers=n_out, outlier_share=n_out / (rows * cols),
                avg_bits=spqr_avg_bits(rows, cols, n_out, bits, group_size, stat_bits, stat_group_size))
    return Q, OutlierGrid(bits, scales, zeros, g_idx, outliers=outliers), info


class SpQRCompressor(QuantizingCollector):
    def quantize(self):
        m = self.method
        return spqr_solve(self.layer.weight.data, self.H, m.bits, m.group_size, m.stat_bits, m.stat_group_size,
                          m.outlier_threshold, m.act_order, m.blocksize, m.percdamp)


def _check_int(field: str, value, low: int, high: int | None, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise FieldError(field, f"{field} must be {what}, got {value!r}")


@register
@dataclass
class SpQR(QuantParams, HessianParams, LayerwiseMethod):
    """SpQR: ``bits`` per weight in groups of ``group_size`` inputs, the groups' scales and zero points
    quantized with ``stat_bits`` per ``stat_group_size`` rows, outliers above ``outlier_threshold`` (relative
    to the layer's typical sensitivity-scaled error; inf: none) kept in full precision. Defaults: the
    paper's 3-bit setting (w3, groups of 16, 3-bit statistics in groups of 16, the reference's 0.2)."""

    bits: int = 3
    group_size: int = 16
    stat_bits: int = 3
    stat_group_size: int = 16
    outlier_threshold: float = 0.2
    act_order: bool = True
    name = "spqr"
    layer_compressor = SpQRCompressor

    def validate(self) -> None:
        super().validate()
        if self.sym is not False:
            raise FieldError("sym", f"spqr's grids are asymmetric min-max grids with quantized zero points: "
                                    f"sym must be False, got {self.sym!r}")
        if self.group_size == 1:
            raise FieldError("group_size", "spqr's group_size must be at least 2 or -1 (per-channel): a group "
                                           "of one weight would be stored by its statistics alone")
        _check_int("stat_bits", self.stat_bits, 2, 8, "an integer in 2..8")
        _check_int("stat_group_size", self.stat_group_size, 2, None, "an integer of at least 2")
        t = self.outlier_threshold
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not t > 0:
            raise FieldError("outlier_threshold", f"outlier_threshold must be a positive number (inf: no "
                                                  f"outliers), got {t!r}")
        if not isinstance(self.act_order, bool):
            raise FieldError("act_order", f"act_order must be true or false, got {self.act_order!r}")

    def variants(self) -> list[str]:
        return super().variants() + ([] if self.act_order else ["natural order"])   # the paper permutes

    def setting(self) -> str:
        """'3-bit g16', with the statistics and the outlier threshold named when not the defaults:
        '3-bit g16 stats 4-bit g32 outliers 0.5', '4-bit g16 no outliers'."""
        parts = [super().setting()]
        if (self.stat_bits, self.stat_group_size) != (3, 16):
            parts.append(f"stats {self.stat_bits}-bit g{self.stat_group_size}")
        t = self.outlier_threshold
        if t != 0.2:
            parts.append("no outliers" if math.isinf(t) else f"outliers {t:g}")
        return " ".join(parts)
