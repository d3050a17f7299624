"""FID's bootstrap interval at the paper's sizes (n = 4,555 samples of 2048-d Inception features).

The interval is the percentile bootstrap over paired rows with the generic bootstrap's draws
(``stats.bootstrap_indices``), so it equals ``stats.bootstrap_ci`` with FID as the statistic; only each
replicate is computed more cheaply, and exactly:

- A replicate that draws row i c_i times has the mean sum_i c_i x_i / n and the covariance
  sum_i c_i (x_i - mu)(x_i - mu)^T / (n - 1) of the resampled rows: both come from the m ~ 0.632 n distinct
  rows, scaled by sqrt(c_i), instead of n rows with repeats.
- tr sqrt(S_a S_b) = sum of sqrt(eigenvalues of L^T S_b L), L the Cholesky factor of S_a (similar matrices:
  L^{-1} S_a S_b L = L^T S_b L): one Cholesky and one symmetric eigenvalue problem (no eigenvectors), d x d.
  A singular S_a (fewer distinct rows than dimensions) uses the symmetric square root of S_a instead.
- With n <= d the n x n side is smaller: ``functional.paired_fid`` solves all replicates from the Gram
  matrices in batches (exact as well).

The linear algebra runs in float64 through torch (on CPU its LAPACK is MKL's, measured ~3x faster than
numpy's OpenBLAS for the eigenvalues here) on ``device``.
"""

from __future__ import annotations

import numpy as np
import torch

from pigeon_bench import stats


def _centred(x: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, covariance, trace) of the rows of x each repeated counts[i] times."""
    rows = counts.nonzero().squeeze(1)
    w = counts[rows]
    n = w.sum()
    xs = x[rows]
    mu = (w @ xs) / n
    scaled = (xs - mu) * (w / (n - 1)).sqrt()[:, None]
    cov = scaled.T @ scaled
    return mu, cov, cov.diagonal().sum()


def _trace_sqrt_product(sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """tr sqrt(S_a S_b) for symmetric positive semi-definite S_a, S_b."""
    factor, info = torch.linalg.cholesky_ex(sa)
    if int(info) != 0:  # singular S_a: its symmetric square root gives a similar symmetric product
        w, v = torch.linalg.eigh(sa)
        factor = v * w.clamp(min=0).sqrt()
    ev = torch.linalg.eigvalsh(factor.T @ sb @ factor)
    return ev.clamp(min=0).sqrt().sum()


def fid_replicates(a: np.ndarray, b: np.ndarray, indices: np.ndarray,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """FID of a[rows] vs b[rows] for each row of ``indices`` (B, n): row i of a pairs with row i of b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    indices = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    n, d = len(a), a.shape[1]
    if indices.shape[1] <= d:  # the n x n side is the smaller one
        from pigeon_bench.metrics.functional import paired_fid

        return np.asarray(paired_fid(a, b)(indices), dtype=np.float64)
    ta = torch.from_numpy(a).to(device)
    tb = torch.from_numpy(b).to(device)
    out = np.empty(len(indices))
    for r, idx in enumerate(indices):
        counts = torch.from_numpy(np.bincount(idx, minlength=n).astype(np.float64)).to(device)
        mu_a, sa, tr_a = _centred(ta, counts)
        mu_b, sb, tr_b = _centred(tb, counts)
        fid = (mu_a - mu_b).pow(2).sum() + tr_a + tr_b - 2 * _trace_sqrt_product(sa, sb)
        out[r] = float(fid)
    return out


def fid_ci(a: np.ndarray, b: np.ndarray, n_boot: int = stats.DEFAULT_N_BOOT, seed: int = 0,
           level: float = 0.95, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Percentile bootstrap CI of FID(a, b) over paired rows: the interval of
    ``stats.bootstrap_ci(np.arange(n), n_boot, seed, level, statistic=<FID of the resampled rows>)``."""
    n = len(a)
    if n < 2:
        return (float("nan"), float("nan"))
    reps = fid_replicates(a, b, stats.bootstrap_indices(n, n_boot, seed), device)
    return stats.percentile_interval(reps, level)
