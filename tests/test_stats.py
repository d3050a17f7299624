"""Seeded bootstrap CIs, the paired test, Holm, and the cluster bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from pigeon_bench import stats
from pigeon_bench.metrics import overall
from pigeon_bench.stats import (
    bootstrap_ci,
    bootstrap_indices,
    cluster_bootstrap_mean,
    holm,
    paired_bootstrap,
    paired_test,
)


def test_bootstrap_ci_is_reproducible_with_a_seed():
    x = np.random.default_rng(1).normal(10, 2, 40)
    a, b = bootstrap_ci(x, n_boot=500, seed=3), bootstrap_ci(x, n_boot=500, seed=3)
    assert a == b
    assert bootstrap_ci(x, n_boot=500, seed=4) != a
    lo, hi = a
    assert lo < x.mean() < hi


def test_bootstrap_ci_statistic_is_vectorised_over_resamples():
    x = np.random.default_rng(2).normal(0, 1, 30)
    seen = []

    def median(rows: np.ndarray) -> np.ndarray:
        seen.append(rows.shape)
        return np.median(rows, axis=1)

    lo, hi = bootstrap_ci(x, n_boot=400, seed=1, statistic=median)
    assert seen == [(400, 30)]  # one call for all resamples
    idx = bootstrap_indices(30, 400, 1)
    expected = np.percentile([np.median(x[i]) for i in idx], [2.5, 97.5])
    assert (lo, hi) == pytest.approx(tuple(expected))
    assert bootstrap_ci(x, n_boot=400, seed=1) != (lo, hi)


def test_paired_test_known_case_is_exact():
    # Five pairs, the candidate higher by exactly 1 everywhere: of the 2^5 swap patterns only "none" and "all"
    # reach |delta| >= 1, so the exact two-sided p-value is 2/32.
    base = np.array([1.0, 5.0, 2.0, 8.0, 3.0])
    t = paired_test(base, base + 1, n_boot=200, n_perm=2000, seed=0)
    assert t.exact and t.n == 5
    assert t.delta == pytest.approx(1.0)
    assert t.p == pytest.approx(2 / 32)
    assert (t.lo, t.hi) == pytest.approx((1.0, 1.0))


def test_paired_test_identical_runs_and_pure_noise():
    x = np.random.default_rng(0).normal(50, 5, 200)
    same = paired_test(x, x.copy(), n_boot=300, n_perm=300)
    assert same.delta == 0 and same.p == 1.0 and same.lo == same.hi == 0
    shifted = paired_test(x, x - 2.0, n_boot=300, n_perm=300)
    assert not shifted.exact and shifted.p == pytest.approx(1 / 301)  # no swap pattern reaches |-2|
    assert shifted.hi == pytest.approx(-2.0) and shifted.lo == pytest.approx(-2.0)
    noise = paired_test(x, x + np.random.default_rng(1).normal(0, 1, 200), n_boot=300, n_perm=300)
    assert noise.p > 0.05 and noise.lo < 0 < noise.hi


def test_paired_test_is_seeded_and_pairs_matter():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 10, 60)  # large between-sample spread, small paired shift
    cand = base + 1.0 + rng.normal(0, 0.5, 60)
    t1, t2 = paired_test(base, cand, seed=5), paired_test(base, cand, seed=5)
    assert t1 == t2
    assert t1.p < 0.001 and t1.lo > 0
    # Unpaired (independent) resampling would drown the shift in the between-sample spread.
    rng2 = np.random.default_rng(0)
    diffs = [cand[rng2.integers(0, 60, 60)].mean() - base[rng2.integers(0, 60, 60)].mean()
             for _ in range(500)]
    assert np.percentile(diffs, 2.5) < 0 < t1.lo


def test_combined_statistic_matches_its_per_sample_form():
    # Overall is linear: the paired test on (p_cis, a_cs) with overall() equals the one on per-sample Overall.
    rng = np.random.default_rng(3)
    base = rng.normal(40, 5, (30, 2))
    cand = base + rng.normal(0.5, 1, (30, 2))
    joint = paired_test(base, cand, lambda m: overall(m[:, 0], m[:, 1]), n_boot=400, n_perm=400, seed=1)
    single = paired_test(overall(base[:, 0], base[:, 1]), overall(cand[:, 0], cand[:, 1]), n_boot=400,
                         n_perm=400, seed=1)
    assert joint.delta == pytest.approx(single.delta)
    assert joint.p == pytest.approx(single.p)
    assert (joint.lo, joint.hi) == pytest.approx((single.lo, single.hi))
    with pytest.raises(ValueError):
        paired_bootstrap(base, cand)  # two columns need a combine function


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_cluster_bootstrap_is_wider_than_iid_for_clustered_data():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(10), 20)
    values = np.repeat(rng.integers(0, 2, 10), 20).astype(float)  # every judgment of a case agrees
    mean, lo, hi = cluster_bootstrap_mean(values, clusters, n_boot=500, seed=1)
    assert mean == pytest.approx(values.mean())
    iid_lo, iid_hi = bootstrap_ci(values, n_boot=500, seed=1)
    assert hi - lo > 2 * (iid_hi - iid_lo)
    assert cluster_bootstrap_mean(values, clusters, n_boot=500, seed=1) == (mean, lo, hi)


def test_mean_intervals_in_chunks_equal_the_whole_draw_bit_for_bit():
    """``bootstrap_mean_cis`` draws replicates in chunks (bounded memory at n = 8,000) and must give each
    column exactly ``bootstrap_ci``'s interval."""
    rng = np.random.default_rng(4)
    columns = [rng.standard_normal(301), rng.random(301) * 100]
    got = stats.bootstrap_mean_cis(columns, n_boot=97, seed=11, chunk_bytes=16 * 301 * 5)  # chunks of 5
    assert got == [stats.bootstrap_ci(c, 97, 11) for c in columns]
    assert stats.bootstrap_mean_cis(columns, 97, 12) != got
