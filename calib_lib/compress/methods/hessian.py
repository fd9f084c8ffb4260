"""Shared pieces of the second-order methods (SparseGPT, GPTQ): the Hessian of the layer-wise
reconstruction loss, H = 2/N sum x x^T over the N calibration tokens, and its damped inverse Cholesky factor."""
from __future__ import annotations

import torch

from .base import LayerCompressor


class HessianCollector(LayerCompressor):
    def __init__(self, layer, method):
        super().__init__(layer, method)
        cols = layer.weight.shape[1]
        self.H = torch.zeros(cols, cols, dtype=torch.float32, device=layer.weight.device)
        self.tokens = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = inp.reshape(-1, inp.shape[-1]).float()
        n = x.shape[0]
        # Running mean keeps H on the same scale whatever the number of batches; addmm_ updates H
        # in place without a scaled copy of the activations.
        self.H.mul_(self.tokens / (self.tokens + n))
        self.tokens += n
        self.H.addmm_(x.T, x, alpha=2 / self.tokens)

    def share_statistics(self, leader) -> None:
        self.H, self.tokens = leader.H, leader.tokens   # solvers clone H before changing it


def solver_dtype(W: torch.Tensor) -> torch.dtype:
    """Solve in float32 (float64 when given float64, as the exact tests do)."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def prepare_hessian(W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dead input channels (never active: H_jj = 0) get H_jj = 1 and a zero weight, as in GPTQ."""
    dtype = solver_dtype(W)
    H = H.to(dtype).clone()
    W = W.to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H, int(dead.sum())


def inverse_cholesky(H: torch.Tensor, percdamp: float, max_retries: int = 6) -> tuple[torch.Tensor, dict]:
    """Upper Cholesky factor of (H + damp I)^-1 with damp = percdamp * mean(diag H).

    When H is not positive definite even after damping, damping grows tenfold and the factorisation
    is retried; the info dict records how often and with what final damping.
    """
    mean_diag = torch.mean(torch.diag(H))
    damp_frac = percdamp
    for attempt in range(max_retries + 1):
        Hd = H.clone()
        Hd.diagonal().add_(damp_frac * mean_diag)
        try:
            L = torch.linalg.cholesky(Hd)
            Hinv = torch.cholesky_inverse(L)
            U = torch.linalg.cholesky(Hinv, upper=True)
            if torch.isfinite(U).all():
                return U, {"damping": damp_frac, "damping_retries": attempt}
        except torch.linalg.LinAlgError:
            pass
        damp_frac = max(damp_frac * 10, 1e-4)
    raise RuntimeError(f"the Hessian is not positive definite even with damping {damp_frac / 10:g} x mean diag")
