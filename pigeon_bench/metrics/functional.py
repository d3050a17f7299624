"""Pure functions over features (no models): image/text similarities, LPIPS from maps, MS-SSIM, FID."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F


def cosine_100(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """100 x cosine similarity of matching rows of ``a`` and ``b`` (n, d); not clamped."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return 100.0 * (a * b).sum(-1)


def lpips_from_maps(maps_a: list[torch.Tensor], maps_b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS of matching rows from per-layer maps that are channel-normalized and scaled by sqrt(lin weight).

    With a_l = sqrt(w_l) * a_l / ||a_l||_channels (and b_l alike), LPIPS = sum_l mean_hw ||a_l - b_l||^2,
    which equals lpips.LPIPS's sum_l spatial_average(lin_l((a_l - b_l)^2)) for non-negative lin weights.
    """
    total = None
    for a, b in zip(maps_a, maps_b, strict=True):
        d = (a.float() - b.float()).pow(2).sum(1).mean((-2, -1))
        total = d if total is None else total + d
    return total


def ms_ssim_255(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pair MS-SSIM of (n, 3, H, W) 0-255 tensors (pytorch_msssim, data_range=255, defaults otherwise)."""
    from pytorch_msssim import ms_ssim

    return ms_ssim(x.float(), y.float(), data_range=255, size_average=False)


def _weighted_fid_terms(g_aa: np.ndarray, g_bb: np.ndarray, g_ab: np.ndarray, c: np.ndarray) -> float:
    """FID of paired feature sets given their Gram matrices and row counts ``c`` (bootstrap weights)."""
    n = c.sum()
    keep = c > 0
    c = c[keep].astype(np.float64)
    g_aa, g_bb, g_ab = g_aa[np.ix_(keep, keep)], g_bb[np.ix_(keep, keep)], g_ab[np.ix_(keep, keep)]
    ra, rb = g_aa @ c / n, g_bb @ c / n  # x_i . mu
    mm_aa, mm_bb = c @ ra / n, c @ rb / n  # ||mu||^2
    r_ab, s_ab = g_ab @ c / n, c @ g_ab / n  # a_i . mu_b, mu_a . b_j
    mm_ab = c @ r_ab / n
    tr_a = (c @ np.diag(g_aa) - n * mm_aa) / (n - 1)
    tr_b = (c @ np.diag(g_bb) - n * mm_bb) / (n - 1)
    centred = g_ab - r_ab[:, None] - s_ab[None, :] + mm_ab
    sq = np.sqrt(c)
    m = sq[:, None] * centred * sq[None, :] / (n - 1)
    tr_sqrt = np.linalg.svd(m, compute_uv=False).sum()
    return float(mm_aa + mm_bb - 2 * mm_ab + tr_a + tr_b - 2 * tr_sqrt)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets a (n1, d) and b (n2, d), in float64.

    tr sqrt(S_a S_b) is computed exactly without a matrix square root of a non-symmetric product: the
    non-zero eigenvalues of S_a S_b are the squared singular values of A B^T (A, B centred and scaled by
    1/sqrt(n-1)), so it is the nuclear norm of the (n1, n2) matrix A B^T; when both sets exceed d rows the
    symmetric (d, d) form sqrt(S_a) S_b sqrt(S_a) is used instead.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n1, n2, d = len(a), len(b), a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac = (a - mu_a) / np.sqrt(n1 - 1)
    bc = (b - mu_b) / np.sqrt(n2 - 1)
    tr_a, tr_b = float((ac * ac).sum()), float((bc * bc).sum())
    if min(n1, n2) <= d:
        tr_sqrt = float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum())
    else:
        w, v = np.linalg.eigh(ac.T @ ac)
        sqrt_sa = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        ev = np.linalg.eigvalsh(sqrt_sa @ (bc.T @ bc) @ sqrt_sa)
        tr_sqrt = float(np.sqrt(np.clip(ev, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2 * tr_sqrt)


def paired_fid(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], float]:
    """f(indices) = FID of a[indices] vs b[indices] (row i of a pairs with row i of b), for bootstrapping.

    When n <= d the Gram matrices are computed once and each call only re-weights them (exact).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = len(a)
    if n > a.shape[1]:
        return lambda idx: frechet_distance(a[idx], b[idx])
    g_aa, g_bb, g_ab = a @ a.T, b @ b.T, a @ b.T
    return lambda idx: _weighted_fid_terms(g_aa, g_bb, g_ab, np.bincount(idx, minlength=n))
