"""FID's bootstrap CI from weighted covariances: each replicate is the FID of the resampled rows, and the
interval is the generic bootstrap's (same draws, same percentiles)."""

from __future__ import annotations

import numpy as np
import pytest

from pigeon_bench import stats
from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics.fid_ci import fid_ci, fid_replicates


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
