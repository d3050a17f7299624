"""FID's bootstrap CI from weighted covariances: each replicate is the FID of the resampled rows, and the
interval is the generic bootstrap's (same draws, same percentiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pigeon_bench import stats
from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics.fid_ci import fid_ci, fid_replicates, weighted_covariance


def _sets(n: int, d: int, seed: int = 0, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features (unlike a plain Gaussian); with ``rank`` < d they lie in a subspace."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((rank or d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, rank or d)) @ mix,
            rng.standard_normal((n, rank or d)) @ mix * 1.3 + 0.2)


@pytest.mark.parametrize("n, d, rank", [(300, 48, None), (300, 48, 30), (40, 64, None), (70, 64, None)])
def test_each_replicate_is_the_fid_of_the_resampled_rows(n, d, rank):
    """More distinct rows than dimensions (the d x d side; with rank < d a singular covariance), fewer (the
    m x m side: n <= d, and n > d with m < d distinct rows drawn)."""
    a, b = _sets(n, d, rank=rank)
    idx = stats.bootstrap_indices(n, 12, seed=3)
    want = np.array([Fn.frechet_distance(a[i], b[i]) for i in idx])
    np.testing.assert_allclose(fid_replicates(a, b, idx), want, rtol=1e-7)


def test_the_interval_is_the_generic_bootstraps():
    a, b = _sets(150, 24, seed=1)
    lo, hi = fid_ci(a, b, n_boot=60, seed=5)
    generic = stats.bootstrap_ci(np.arange(150), 60, 5, statistic=lambda rows: np.array(
        [Fn.frechet_distance(a[r], b[r]) for r in rows.astype(np.int64)]))
    assert (lo, hi) == pytest.approx(generic, rel=1e-9)
    assert lo < hi
    assert fid_ci(a, b, n_boot=60, seed=6) != (lo, hi)  # seeded


def test_fewer_than_two_rows_have_no_interval():
    a, b = _sets(1, 8)
    assert all(np.isnan(fid_ci(a, b, n_boot=10)))


def test_more_rows_than_one_chunk_from_float32_features_match_the_float64_formula():
    """Past 1,024 rows the covariances are accumulated chunk by chunk from float32 rows (no float64 copy of
    the set): the same FID and replicates as numpy's covariance of the float64 rows."""
    a, b = (x.astype(np.float32) for x in _sets(2500, 12, seed=2))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mu, cov = (t.numpy() for t in weighted_covariance(torch.from_numpy(a), torch.arange(2500),
                                                          torch.ones(2500, dtype=torch.float64), chunk=700))
    np.testing.assert_allclose(mu, a64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(a64, rowvar=False), rtol=1e-10, atol=1e-13)
    sa, sb = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    want = ((a64.mean(0) - b64.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(
        np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    assert Fn.frechet_distance(a, b) == pytest.approx(want, rel=1e-10)
    idx = stats.bootstrap_indices(2500, 3, seed=1)
    np.testing.assert_allclose(fid_replicates(a, b, idx), [Fn.frechet_distance(a64[i], b64[i]) for i in idx],
                               rtol=1e-9)
