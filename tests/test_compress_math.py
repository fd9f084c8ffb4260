"""The solvers against independent, straightforward formulations on small random matrices."""
import numpy as np
import pytest
import torch

from calib_lib.compress.methods.base import lowest_k_mask, nm_mask
from calib_lib.compress.methods.hessian import HessianCollector, inverse_cholesky
from calib_lib.compress.methods.pruning import sparsegpt_solve
from calib_lib.compress.methods.quantization import gptq_solve
from calib_lib.compress.quant import grid_params, quantize, rtn

D = torch.float64


def problem(rows=6, cols=12, tokens=80, seed=0, correlated=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g, dtype=D)
    X = torch.randn(tokens, cols, generator=g, dtype=D)
    if correlated:                       # real activations are correlated: mix the columns
        X = X @ (torch.eye(cols, dtype=D) + 0.5 * torch.randn(cols, cols, generator=g, dtype=D))
    H = 2 / tokens * X.T @ X
    return W, X, H


def sequential_obs(W, H, prune_mask):
    """Independent reference: process columns left to right; when a weight is pruned, update the
    not-yet-processed weights of its row optimally, with an explicit inverse of H over those columns."""
    W = W.numpy().copy()
    H = H.numpy()
    rows, cols = W.shape
    for i in range(cols):
        Hinv = np.linalg.inv(H[i:, i:])
        for r in range(rows):
            if prune_mask[r, i]:
                W[r, i:] -= W[r, i] / Hinv[0, 0] * Hinv[0, :]
                W[r, i] = 0.0
    return torch.from_numpy(W)


def sequential_gptq(W, H, scale, zero, bits):
    """Independent reference for GPTQ with one fixed grid per row: quantize column i, then move its
    error onto the remaining columns with an explicit inverse of H over them."""
    W = W.numpy().copy()
    H = H.numpy()
    Q = np.zeros_like(W)
    for i in range(W.shape[1]):
        Hinv = np.linalg.inv(H[i:, i:])
        q = quantize(torch.from_numpy(W[:, i:i + 1]), scale, zero, bits).numpy()[:, 0]
        Q[:, i] = q
        W[:, i:] -= np.outer((W[:, i] - q) / Hinv[0, 0], Hinv[0, :])
    return torch.from_numpy(Q)


def test_sparsegpt_front_mask_equals_closed_form_obs():
    """Pruning the first columns with one block is the closed-form OBS solution
    w_K <- w_K + w_P H_PK H_KK^-1 (the optimal reconstruction with the pruned weights at zero)."""
    W, _, H = problem(cols=10)
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask[:, :4] = True
    out, _, _ = sparsegpt_solve(W, H, 0.4, percdamp=0.0, blocksize=128, mask=mask)
    P, K = slice(0, 4), slice(4, 10)
    closed = W[:, K] + W[:, P] @ H[P, K] @ torch.linalg.inv(H[K, K])
    assert torch.allclose(out[:, K], closed, atol=1e-9)
    assert (out[:, P] == 0).all()


@pytest.mark.parametrize("blocksize", [128, 4, 5])
def test_sparsegpt_updates_equal_sequential_obs_for_any_mask(blocksize):
    W, _, H = problem(cols=13, seed=1)
    mask = torch.rand(W.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    out, _, _ = sparsegpt_solve(W, H, 0.5, percdamp=0.0, blocksize=blocksize, mask=mask)
    assert torch.allclose(out, sequential_obs(W, H, mask), atol=1e-9)


def test_sparsegpt_mask_per_block_uses_inverse_cholesky_diagonal():
    W, _, H = problem(rows=4, cols=8, seed=2)
    out, mask, _ = sparsegpt_solve(W, H, 0.5, percdamp=0.01, blocksize=8)
    Hd = H + 0.01 * torch.diag(H).mean() * torch.eye(8, dtype=D)
    # [U]_jj^2 of the upper Cholesky factor of Hd^-1 equals [(Hd[j:, j:])^-1]_00.
    u2 = torch.tensor([torch.linalg.inv(Hd[j:, j:])[0, 0] for j in range(8)], dtype=D)
    expected = lowest_k_mask(W ** 2 / u2.unsqueeze(0), 16, None)
    assert torch.equal(mask, expected)
    assert int((out == 0).sum()) == 16


def test_sparsegpt_exact_sparsity_per_block_with_narrow_last_block():
    W, _, H = problem(rows=8, cols=20, seed=4)
    out, mask, _ = sparsegpt_solve(W, H, 0.5, blocksize=8)
    for a, b in [(0, 8), (8, 16), (16, 20)]:
        assert int(mask[:, a:b].sum()) == int(8 * (b - a) * 0.5)
    assert torch.equal(out == 0, mask)


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_sparsegpt_nm_every_group_has_exactly_n_zeros(n, m):
    W, _, H = problem(rows=5, cols=16, seed=5)
    out, _, _ = sparsegpt_solve(W, H, 0.0, n=n, m=m, blocksize=8)
    zeros = (out == 0).reshape(5, -1, m).sum(-1)
    assert (zeros == n).all()


def test_nm_and_lowest_k_masks():
    score = torch.tensor([[4., 1., 3., 2., 8., 7., 5., 6.]])
    assert nm_mask(score, 2, 4).tolist() == [[False, True, False, True, False, False, True, True]]
    assert lowest_k_mask(score, 3, 1).tolist() == [[False, True, True, True, False, False, False, False]]
    # Whole matrix: exactly k, and weights tied at the threshold are taken in index order.
    tied = torch.tensor([[1., 2., 2., 2.], [2., 3., 0., 5.]])
    assert lowest_k_mask(tied, 3, None).tolist() == [[True, True, False, False], [False, False, True, False]]
    assert lowest_k_mask(tied, 6, None).sum() == 6 and lowest_k_mask(tied, 8, None).all()
    g = torch.Generator().manual_seed(0)
    rand = torch.rand(7, 9, generator=g)
    assert torch.equal(lowest_k_mask(rand, 20, None).flatten(),
                       torch.zeros(63, dtype=torch.bool).scatter_(0, rand.flatten().argsort()[:20], True))


def test_sparsegpt_beats_magnitude_on_reconstruction_error():
    # Real layers span many 128-column blocks, so the mask adapts as the OBS updates change the
    # weights; a single block here would choose the whole mask up front (see the docstring), so the
    # small matrix uses small blocks.
    W, X, H = problem(rows=32, cols=64, tokens=256, seed=6)
    out, _, _ = sparsegpt_solve(W, H, 0.5, blocksize=16)
    magnitude = W.clone()
    magnitude[lowest_k_mask(W.abs(), W.numel() // 2, None)] = 0
    err = lambda V: ((X @ (W - V).T) ** 2).sum()
    assert err(out) < 0.8 * err(magnitude)


def test_gptq_with_diagonal_hessian_is_rtn():
    W, _, _ = problem(rows=6, cols=20)
    H = torch.diag(torch.rand(20, generator=torch.Generator().manual_seed(1), dtype=D) + 0.1)
    Q, grid, _ = gptq_solve(W, H, bits=3, group_size=8, blocksize=8)
    R, rgrid = rtn(W, bits=3, group_size=8, sym=False)
    assert torch.allclose(Q, R, atol=1e-12)
    assert torch.allclose(grid.scale, rgrid.scale) and torch.equal(grid.g_idx, rgrid.g_idx)


@pytest.mark.parametrize("sym", [False, True])
def test_gptq_equals_sequential_reference_per_channel(sym):
    W, _, H = problem(rows=5, cols=11, seed=7)
    Q, grid, _ = gptq_solve(W, H, bits=3, group_size=-1, sym=sym, percdamp=0.0, blocksize=4)
    scale, zero = grid_params(W, 3, sym)
    assert torch.allclose(Q, sequential_gptq(W, H, scale, zero, 3), atol=1e-9)
    assert grid.on_grid(Q)


def test_gptq_groups_weights_on_grid_with_narrow_last_group():
    W, _, H = problem(rows=7, cols=20, seed=8)
    Q, grid, _ = gptq_solve(W, H, bits=4, group_size=8)
    assert grid.scale.shape == (7, 3)
    assert grid.g_idx.tolist() == [0] * 8 + [1] * 8 + [2] * 4
    assert grid.on_grid(Q)
    codes = grid.codes(Q).round()
    assert codes.min() >= 0 and codes.max() <= 15


@pytest.mark.parametrize("static_groups", [False, True])
def test_gptq_act_order_equals_permuted_back_computation(static_groups):
    W, _, H = problem(rows=6, cols=16, seed=9)
    Q, grid, _ = gptq_solve(W, H, bits=3, group_size=4, act_order=True, static_groups=static_groups, blocksize=8)
    perm = torch.argsort(torch.diag(H), descending=True, stable=True)
    if static_groups:
        # Static grids come from the original column groups: give the permuted problem the same grids
        # by solving per-channel-equivalent groups explicitly is not possible, so compare grids instead.
        assert grid.on_grid(Q)
        assert torch.equal(grid.g_idx, torch.arange(16) // 4)
    else:
        Qp, _, _ = gptq_solve(W[:, perm], H[perm][:, perm], bits=3, group_size=4, blocksize=8)
        assert torch.allclose(Q, Qp[:, torch.argsort(perm)], atol=1e-12)
        assert grid.on_grid(Q)


def test_gptq_beats_rtn_at_3_bits():
    W, X, H = problem(rows=32, cols=64, tokens=256, seed=10)
    Q, _, _ = gptq_solve(W, H, bits=3, group_size=16)
    R, _ = rtn(W, 3, 16, False)
    err = lambda V: ((X @ (W - V).T) ** 2).sum()
    assert err(Q) < 0.8 * err(R)


def test_rtn_grid_definition():
    w = torch.tensor([[-1.0, 0.5, 2.0, 0.25]], dtype=D)
    scale, zero = grid_params(w, 2, sym=False)          # range [-1, 2], 3 steps of 1
    assert scale.item() == pytest.approx(1.0) and zero.item() == 1
    assert quantize(w, scale, zero, 2).tolist() == [[-1.0, 0.0, 2.0, 0.0]]
    scale, zero = grid_params(w, 2, sym=True)           # range [-2, 2]
    assert scale.item() == pytest.approx(4 / 3) and zero.item() == 2


def test_not_positive_definite_hessian_raises_damping_and_records_it():
    H = torch.diag(torch.tensor([1.0, 1.0, -0.05, 1.0], dtype=D))
    U, info = inverse_cholesky(H, percdamp=0.01)
    assert info["damping_retries"] >= 1 and info["damping"] > 0.05 / 0.7
    assert torch.isfinite(U).all()
    singular = torch.zeros(3, 3, dtype=D)
    singular[0, 0] = 1.0
    _, info = inverse_cholesky(singular + torch.diag(torch.tensor([0.0, 1e-300, 0.0], dtype=D)), percdamp=0.0)
    assert info["damping_retries"] >= 1


def test_dead_input_channels_are_zeroed_like_gptq():
    W, X, _ = problem(rows=4, cols=6, seed=11)
    X[:, 2] = 0
    H = 2 / X.shape[0] * X.T @ X
    Q, _, info = gptq_solve(W, H, bits=4, group_size=-1)
    assert info["dead_inputs"] == 1 and (Q[:, 2] == 0).all() and torch.isfinite(Q).all()
    P, _, info = sparsegpt_solve(W, H, 0.5)
    assert info["dead_inputs"] == 1 and torch.isfinite(P).all()


def test_hessian_collector_is_a_running_mean():
    layer = torch.nn.Linear(5, 3)
    collector = HessianCollector(layer, method=None)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 7, 5, generator=g) for _ in range(3)]
    for x in xs:
        collector.add_batch(x)
    X = torch.cat([x.reshape(-1, 5) for x in xs])
    assert torch.allclose(collector.H, 2 / X.shape[0] * X.T @ X, atol=1e-5)
