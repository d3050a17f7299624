"""Pure functions over features (no models): image/text similarities, LPIPS from maps, MS-SSIM, FID."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def cosine_100(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """100 x cosine similarity of matching rows of ``a`` and ``b`` (n, d); not clamped."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return 100.0 * (a * b).sum(-1)


_LPIPS_SCRATCH_BYTES = 1 << 22  # each of lpips_from_maps' two float32 row buffers


def lpips_from_maps(maps_a: list[torch.Tensor], maps_b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS of matching rows from per-layer maps that are channel-normalized and scaled by sqrt(lin weight).

    With a_l = sqrt(w_l) * a_l / ||a_l||_channels (and b_l alike), LPIPS = sum_l mean_hw ||a_l - b_l||^2,
    which equals lpips.LPIPS's sum_l spatial_average(lin_l((a_l - b_l)^2)) for non-negative lin weights.
    Maps are (..., C, H, W) and broadcast against each other (e.g. (m, 1, C, H, W) against (m, k, C, H, W)).

    Pair by pair, a band of rows at a time through two reused float32 buffers of at most
    _LPIPS_SCRATCH_BYTES (the band follows from the map's shape alone), so a pair gives the same bits
    whatever the other rows of the batch. Against the whole-map expression it agrees to float32 rounding
    (bit-equal at the VGG shapes of the 512 px profile), at ~1/3 of its time there: a fresh float32 copy
    of each map and a mixed-dtype subtraction cost ~3x the arithmetic.
    """
    pairs = [torch.broadcast_tensors(a, b) for a, b in zip(maps_a, maps_b, strict=True)]
    batch = pairs[0][0].shape[:-3]
    # rows per band of each layer: as many as the buffer holds, at least one
    bands = [max(1, _LPIPS_SCRATCH_BYTES // (4 * a.shape[-3] * a.shape[-1])) for a, _ in pairs]
    scratch = torch.empty(2, max(a.shape[-3] * rows * a.shape[-1]
                                 for (a, _), rows in zip(pairs, bands, strict=True)))
    summed = [torch.empty(a.shape[-2:]) for a, _ in pairs]
    out = torch.zeros(batch)
    for index in itertools.product(*map(range, batch)):
        total = None
        for (a, b), rows, s in zip(pairs, bands, summed, strict=True):
            a, b = a[index], b[index]
            c, h, w = a.shape
            for r in range(0, h, rows):
                n = min(rows, h - r)
                x = scratch[0, :c * n * w].view(c, n, w).copy_(a[:, r:r + n])
                y = scratch[1, :c * n * w].view(c, n, w).copy_(b[:, r:r + n])
                torch.sum(x.sub_(y).square_(), -3, out=s[r:r + n])
            value = s.mean((-2, -1))
            total = value if total is None else total + value
        out[index] = total
    return out


# pytorch_msssim.ms_ssim's defaults: 11-tap Gaussian (sigma 1.5), K = (0.01, 0.03), five level weights
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

MsssimStats = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]




@functools.lru_cache(maxsize=8)
def _msssim_window(channels: int) -> torch.Tensor:
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    return _fspecial_gauss_1d(11, 1.5).repeat(channels, 1, 1, 1)


def gaussian_blur(x: torch.Tensor) -> torch.Tensor:
    """pytorch_msssim's own ``gaussian_filter`` with its default window, on a batch (n, C, H, W), in
    channels-last memory.

    Its grouped conv2d gives bit-identical rows whatever the batch size and memory format, so batching pairs
    changes no score; channels-last runs it ~3x faster on CPU (measured at 192 px). Two dense banded
    matmuls were measured 2.3x faster than the contiguous conv at 192 px but differ from pytorch_msssim by up
    to 2.3e-6 in MS-SSIM, beyond the 1e-6 parity tolerance, so they are not used.
    """
    from pytorch_msssim.ssim import gaussian_filter

    return gaussian_filter(x.contiguous(memory_format=torch.channels_last), _msssim_window(x.shape[1]))


def msssim_stats(x: torch.Tensor) -> MsssimStats:
    """Per-image MS-SSIM terms of (n, C, H, W) 0-255 images, per level: (image, mu, sigma^2).

    These are the parts of pytorch_msssim's computation that depend on one image only; ``ms_ssim_from_stats``
    adds the pair term. Each image's terms are computed once however many pairs it is in (a generated image
    has 5, a history image is shared across samples).
    """
    x = x.float().contiguous(memory_format=torch.channels_last)  # every level and term stays channels-last
    levels = []
    for i in range(len(MSSSIM_WEIGHTS)):
        mu = gaussian_blur(x)
        levels.append((x, mu, gaussian_blur(x * x) - mu.pow(2)))
        if i < len(MSSSIM_WEIGHTS) - 1:
            x = F.avg_pool2d(x, kernel_size=2, padding=[s % 2 for s in x.shape[2:]])
    return levels


def cat_msssim_stats(items: Sequence[MsssimStats]) -> MsssimStats:
    """Several images' (or batches') terms as one batch, level by level."""
    return [tuple(torch.cat(parts) for parts in zip(*level, strict=True))
            for level in zip(*items, strict=True)]


def ms_ssim_from_stats(a: MsssimStats, b: MsssimStats) -> torch.Tensor:
    """pytorch_msssim.ms_ssim (data_range=255) of matching rows (broadcasting) from ``msssim_stats``."""
    mcs = []
    for i, ((xa, mua, sa), (xb, mub, sb)) in enumerate(zip(a, b, strict=True)):
        mu12 = mua * mub
        cs_map = (2 * (gaussian_blur(xa * xb) - mu12) + _C2) / (sa + sb + _C2)
        if i < len(a) - 1:
            mcs.append(torch.relu(torch.flatten(cs_map, 2).mean(-1)))
        else:
            ssim_map = ((2 * mu12 + _C1) / (mua.pow(2) + mub.pow(2) + _C1)) * cs_map
            mcs.append(torch.relu(torch.flatten(ssim_map, 2).mean(-1)))
    # the levels' combination in float64, rounded once: vectorised float32 pow gives some rows another last
    # bit by their place in the batch, so a pair's value would depend on the pairs computed beside it
    weights = torch.tensor(MSSSIM_WEIGHTS, dtype=torch.float64).view(-1, 1, 1)
    return torch.prod(torch.stack(mcs).double() ** weights, dim=0).mean(1).to(mcs[0].dtype)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets a (n1, d) and b (n2, d), in float64.

    tr sqrt(S_a S_b) is computed exactly without a matrix square root of a non-symmetric product: the
    non-zero eigenvalues of S_a S_b are the squared singular values of A B^T (A, B centred and scaled by
    1/sqrt(n-1)), so it is the nuclear norm of the (n1, n2) matrix A B^T; when both sets exceed d rows the
    eigenvalues of the symmetric (d, d) form L^T S_b L (L L^T = S_a) are used instead, accumulated over chunks
    of rows (``fid_ci.fid_from_covariances``: memory independent of n).
    """
    n1, n2, d = len(a), len(b), np.shape(a)[1]
    if min(n1, n2) > d:  # the (d, d) side, over row chunks (memory independent of n)
        from pigeon_bench.metrics.fid_ci import fid_from_covariances

        def every_row(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            unit = torch.ones(len(x), dtype=torch.float64)
            return torch.as_tensor(np.asarray(x)), torch.arange(len(x)), unit

        return float(fid_from_covariances(*every_row(a), *every_row(b)))
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac = (a - mu_a) / np.sqrt(n1 - 1)
    bc = (b - mu_b) / np.sqrt(n2 - 1)
    tr_a, tr_b = float((ac * ac).sum()), float((bc * bc).sum())
    tr_sqrt = float(np.linalg.svd(ac @ bc.T, compute_uv=False).sum())
    return float(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2 * tr_sqrt)

