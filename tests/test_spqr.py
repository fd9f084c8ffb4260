"""SpQR against a straightforward re-derivation from the paper's procedure on small matrices, and end to end."""
import math

import numpy as np
import pytest
import torch

from calib_lib.compress import METHODS, compress, decoder_blocks
from calib_lib.compress.blocks import block_linears
from calib_lib.compress.methods.spqr import loo_reduction, spqr_avg_bits, spqr_solve
from calib_lib.compress.quant import Grid
from calib_lib.errors import FieldError
from calib_lib.models import load_model

D = torch.float64
INF = math.inf


def problem(rows=20, cols=22, tokens=120, seed=0, spikes=4):
    """Correlated inputs (mixed columns, one much louder) and a few weights far larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=D)
    X = torch.randn(tokens, cols, generator=g, dtype=D)
    X = X @ (torch.eye(cols, dtype=D) + 0.4 * torch.randn(cols, cols, generator=g, dtype=D))
    X[:, 3] *= 4
    for k in range(spikes):
        W[(5 * k + 1) % rows, (7 * k + 2) % cols] = 12.0 * (-1) ** k
    return W, X, 2 / tokens * X.T @ X


# -- the re-derivation: explicit loops in float64, an explicit inverse of H over the remaining columns

def minmax(x, bits):
    """Min-max grid over exactly [min, max]; a constant set c: scale 1, zero -c (c exact at code 0)."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo == hi:
        return 1.0, -lo
    scale = (hi - lo) / (2 ** bits - 1)
    return scale, -lo / scale


def fq(x, scale, zero, bits):
    return scale * (np.clip(np.round(x / scale + zero), 0, 2 ** bits - 1) - zero)


def group_error(x, u, bits):
    """sum_j ((q_j - x_j) / u_j)^2 with x's own min-max grid (0 for an empty set)."""
    if len(x) == 0:
        return 0.0
    return float(np.sum(((fq(x, *minmax(x, bits), bits) - x) / u) ** 2))


def brute_loo_reduction(x, u, bits):
    """For each weight: the error of the row's group minus the error of the others refitted without it."""
    base = group_error(x, u, bits)
    return np.array([base - group_error(np.delete(x, k), np.delete(u, k), bits) for k in range(len(x))])


def reference_spqr(W, H, bits, gs, sbits, sgs, tau, perm=None):
    """SpQR column by column: at a group's first column fit each row's grid on the group's current
    weights without its likely outliers (brute-force leave-one-out), quantize the rows' scales and zeros
    in groups of ``sgs`` rows, then quantize each column, keep weights whose scaled error^2 exceeds the
    threshold, and move the others' error onto the remaining columns with inv(H[i:, i:])."""
    W, H = W.numpy().copy(), H.numpy()
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    rows, cols = W.shape
    u = np.array([math.sqrt(np.linalg.inv(H[j:, j:])[0, 0]) for j in range(cols)])   # diag of U, U^T U = H^-1
    thr = tau * np.mean(W.var(axis=0, ddof=1) / u ** 2) if tau != INF else INF
    Q, out = np.zeros_like(W), np.zeros(W.shape, dtype=bool)
    scales, zeros = np.zeros((rows, -(-cols // gs))), np.zeros((rows, -(-cols // gs)))
    for i in range(cols):
        if i % gs == 0:
            g = i // gs
            for r in range(rows):
                x = W[r, i:i + gs]
                keep = np.ones(len(x), dtype=bool)
                if tau != INF:
                    keep = brute_loo_reduction(x, u[i:i + gs], bits) <= thr
                    if not keep.any():
                        keep[:] = True
                scales[r, g], zeros[r, g] = minmax(x[keep], bits)
            for stat in (scales, zeros):
                for a in range(0, rows, sgs):
                    chunk = stat[a:a + sgs, g]
                    stat[a:a + sgs, g] = fq(chunk, *minmax(chunk, sbits), sbits)
        Hinv = np.linalg.inv(H[i:, i:])
        w = W[:, i].copy()
        q = fq(w, scales[:, i // gs], zeros[:, i // gs], bits)
        o = ((w - q) / math.sqrt(Hinv[0, 0])) ** 2 > thr
        q[o] = w[o]
        Q[:, i], out[:, i] = q, o
        W[:, i:] -= np.outer((w - q) / Hinv[0, 0], Hinv[0, :])
    if perm is not None:
        inv = np.argsort(perm)
        Q, out = Q[:, inv], out[:, inv]
    return torch.from_numpy(Q), torch.from_numpy(out), scales


@pytest.mark.parametrize("act_order, tau, blocksize", [(False, 0.2, 128), (True, 0.2, 5), (True, 0.05, 7),
                                                       (False, INF, 5), (True, INF, 128)])
def test_spqr_equals_sequential_reference(act_order, tau, blocksize):
    W, _, H = problem()
    Q, grid, info = spqr_solve(W, H, bits=3, group_size=8, stat_bits=3, stat_group_size=8, outlier_threshold=tau,
                               act_order=act_order, blocksize=blocksize, percdamp=0.0)
    perm = torch.argsort(torch.diag(H), descending=True, stable=True).numpy() if act_order else None
    R, out, scales = reference_spqr(W, H, 3, 8, 3, 8, tau, perm)
    assert torch.allclose(Q, R, atol=1e-9)
    assert torch.equal(grid.outliers, out)
    assert np.allclose(grid.scale.numpy(), scales, atol=1e-12)
    assert info["outliers"] == int(out.sum()) and (info["outliers"] > 0) == (tau != INF)


def test_damping_is_the_mean_diagonal_fraction():
    W, _, H = problem(seed=1)
    Q, grid, info = spqr_solve(W, H, group_size=8, stat_group_size=8, act_order=False, percdamp=0.05)
    Hd = H + 0.05 * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=D)
    R, out, _ = reference_spqr(W, Hd, 3, 8, 3, 8, 0.2)
    assert torch.allclose(Q, R, atol=1e-9) and torch.equal(grid.outliers, out)
    assert info["damping"] == 0.05 and info["damping_retries"] == 0


def test_loo_reduction_equals_refitting_without_each_weight():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 9, generator=g, dtype=D)
    w[1, [2, 5]] = w[1].min() - 1          # a tied minimum
    w[2, [0, 8]] = w[2].max() + 1          # a tied maximum
    w[3] = 0.7                             # a constant row
    w[4, 4] = 30.0                         # an outlier
    d = torch.rand(9, generator=g, dtype=D) + 0.5
    fast = loo_reduction(w, d, 3)
    for r in range(6):
        assert np.allclose(fast[r].numpy(), brute_loo_reduction(w[r].numpy(), d.numpy(), 3), atol=1e-10), r
    assert fast[4].argmax() == 4 and (fast[3] == 0).all()
    pair = w[:, :2]                        # width 2: each weight left out leaves a constant, exact grid
    assert torch.allclose(loo_reduction(pair, d[:2], 3), torch.stack(
        [torch.from_numpy(brute_loo_reduction(p.numpy(), d[:2].numpy(), 3)) for p in pair]), atol=1e-12)
    assert (loo_reduction(w[:, :1], d[:1], 3) == 0).all()


def test_outliers_are_kept_exactly_and_left_out_of_the_grid():
    """With a diagonal H no error moves, so outliers keep their original values; the large weight is left
    out of its row's grid fit, so the rest of its group gets a grid far finer than one stretched to reach it."""
    W, _, _ = problem(rows=16, cols=32, seed=3, spikes=0)
    W[4, 10] = 40.0
    H = torch.diag(torch.rand(32, generator=torch.Generator().manual_seed(4), dtype=D) + 0.5)
    Q, grid, info = spqr_solve(W, H, group_size=16, outlier_threshold=0.2, act_order=False)
    Qi, _, _ = spqr_solve(W, H, group_size=16, outlier_threshold=INF, act_order=False)
    assert grid.outliers[4, 10] and Q[4, 10] == 40.0
    assert torch.equal(Q[grid.outliers], W[grid.outliers])
    assert grid.scale[4, 0] * (7 - grid.zero[4, 0]) < 10            # the grid's top is nowhere near 40
    rest = (torch.arange(32) < 16) & (torch.arange(32) != 10)      # the rest of its group
    assert (Q[4, rest] - W[4, rest]).abs().mean() < 0.25 * (Qi[4, rest] - W[4, rest]).abs().mean()
    assert info["outliers"] == int(grid.outliers.sum()) < 0.05 * W.numel()


def test_non_outliers_lie_on_their_group_grid_with_quantized_statistics():
    W, _, H = problem(rows=32, cols=40, seed=5)
    Q, grid, info = spqr_solve(W, H, bits=3, group_size=16, stat_bits=3, stat_group_size=16)
    assert info["outliers"] > 0
    assert grid.on_grid(Q)                                                 # outliers excepted
    assert not Grid(grid.bits, grid.scale, grid.zero, grid.g_idx).on_grid(Q)   # they are off it
    assert grid.scale.shape == (32, 3) and (grid.scale > 0).all()
    # Bilevel: each group of 16 rows' scales (and zero points) of a column group take at most 2^3 values.
    for stat in (grid.scale, grid.zero):
        for a in (0, 16):
            for g in range(3):
                assert len(torch.unique(stat[a:a + 16, g])) <= 8
    codes = grid.codes(Q)[~grid.outliers].round()
    assert codes.min() >= 0 and codes.max() <= 7


def test_infinite_threshold_is_gptq_on_the_bilevel_grids():
    """Without outliers, SpQR is GPTQ column by column on its own (bilevel) group grids."""
    W, _, H = problem(seed=6)
    Q, grid, info = spqr_solve(W, H, group_size=8, stat_group_size=8, outlier_threshold=INF, act_order=False,
                               percdamp=0.0, blocksize=4)
    assert info["outliers"] == 0 and not grid.outliers.any()
    V, H_ = W.numpy().copy(), H.numpy()
    expected = np.zeros_like(V)
    for i in range(V.shape[1]):
        Hinv = np.linalg.inv(H_[i:, i:])
        g = int(grid.g_idx[i])
        expected[:, i] = fq(V[:, i], grid.scale[:, g].numpy(), grid.zero[:, g].numpy(), 3)
        V[:, i:] -= np.outer((V[:, i] - expected[:, i]) / Hinv[0, 0], Hinv[0, :])
    assert torch.allclose(Q, torch.from_numpy(expected), atol=1e-9)


def test_avg_bits_and_outlier_share_are_counted_as_documented():
    W, _, H = problem(rows=32, cols=48, seed=7)
    Q, grid, info = spqr_solve(W, H, bits=3, group_size=16, stat_bits=3, stat_group_size=16)
    n = int(grid.outliers.sum())
    assert info["outlier_share"] == n / W.numel() and info["weights"] == W.numel()
    # Divisible shapes: the reference's bits + (3 + 3) / 16 + 2 (16 + 16) / (16 * 16) + 32 * share.
    assert info["avg_bits"] == pytest.approx(3 + 6 / 16 + 64 / 256 + 32 * n / W.numel())
    _, _, info = spqr_solve(W, H, bits=4, group_size=16, outlier_threshold=INF)
    assert info["avg_bits"] == pytest.approx(4.625) and info["outlier_share"] == 0
    # Narrow last groups count whole: 20 x 22 in groups of 8 columns (3) and 16 rows (2).
    total = 20 * 22 * 3 + 20 * 3 * 2 * 3 + 3 * 2 * 64 + 5 * 32
    assert spqr_avg_bits(20, 22, 5, 3, 8, 3, 16) == pytest.approx(total / (20 * 22))
    assert spqr_avg_bits(16, 32, 0, 3, -1, 3, 16) == pytest.approx(3 + 6 / 32 + 64 / (32 * 16))


def test_spqr_has_lower_output_error_than_without_outliers():
    W, X, H = problem(rows=32, cols=64, tokens=256, seed=8, spikes=8)
    err = lambda V: float(((X @ (W - V).T) ** 2).sum())
    Q, _, _ = spqr_solve(W, H)
    Qi, _, _ = spqr_solve(W, H, outlier_threshold=INF)
    assert err(Q) < 0.8 * err(Qi)


def test_dead_inputs_are_counted_and_pass_no_error_on():
    """A dead input is zeroed before quantization (as in GPTQ); SpQR's min-max grid need not hold 0, so its
    quantized weight may not be 0, which is harmless: its input is always 0 and H couples it to nothing."""
    W, X, _ = problem(rows=8, cols=16, seed=9, spikes=0)
    X[:, 5] = 0
    H = 2 / X.shape[0] * X.T @ X
    Q, grid, info = spqr_solve(W, H, act_order=False, percdamp=0.0)
    assert info["dead_inputs"] == 1 and torch.isfinite(Q).all() and grid.on_grid(Q)
    W0 = W.clone()
    W0[:, 5] = 0
    R, _, _ = reference_spqr(W0, H + torch.diag((torch.diag(H) == 0).to(D)), 3, 16, 3, 16, 0.2)
    assert torch.allclose(Q, R, atol=1e-9)


@pytest.mark.parametrize("field, value", [
    ("bits", 1), ("bits", 3.0), ("group_size", 1), ("group_size", 0), ("sym", True), ("stat_bits", 1),
    ("stat_bits", 9), ("stat_bits", True), ("stat_group_size", 1), ("stat_group_size", 16.0),
    ("outlier_threshold", 0), ("outlier_threshold", -0.2), ("outlier_threshold", math.nan),
    ("outlier_threshold", "0.2"), ("act_order", 1), ("percdamp", -1.0), ("blocksize", 0),
    ("sequential", "both")])
def test_bad_parameters_name_the_field(field, value):
    with pytest.raises(FieldError) as err:
        METHODS["spqr"](**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_labels_and_family():
    spqr = METHODS["spqr"]
    assert spqr.family == "quantization" and spqr().pipeline == "block"
    assert spqr().label() == "spqr 3-bit g16"
    assert spqr(bits=4, outlier_threshold=INF, sequential="layer").label() == "spqr 4-bit g16 no outliers (layer order)"
    assert (spqr(stat_bits=4, stat_group_size=32, outlier_threshold=0.5).setting()
            == "3-bit g16 stats 4-bit g32 outliers 0.5")


@pytest.mark.parametrize("sequential", ["layer", "block"])
def test_compress_tiny_model_end_to_end(sequential):
    model, tok = load_model("tiny-llama", log=lambda *a: None)
    ids = torch.randint(4, len(tok), (6, 32), generator=torch.Generator().manual_seed(0))
    embed = model.get_input_embeddings().weight.clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = compress(model, "spqr", ids, batch_size=4, progress=False, sequential=sequential)
    assert report["method"] == "spqr" and report["params"]["outlier_threshold"] == 0.2
    names = dict((id(p), n) for n, p in model.named_parameters())
    for b, block in enumerate(decoder_blocks(model)):
        for name, layer in block_linears(block).items():
            info, grid, W = report["layers"][f"{b}.{name}"], layer.calib_grid, layer.weight.data
            assert grid.on_grid(W), name
            assert info["outliers"] == int(grid.outliers.sum()) and 0 <= info["outlier_share"] < 0.05
            assert info["avg_bits"] == pytest.approx(spqr_avg_bits(*W.shape, info["outliers"], 3, 16, 3, 16))
            assert not torch.equal(W, before[names[id(layer.weight)]]), name
    assert sum(v["outliers"] for v in report["layers"].values()) > 0
    assert torch.equal(model.get_input_embeddings().weight, embed)
    with torch.no_grad():
        assert torch.isfinite(model(ids[:2]).logits).all()
