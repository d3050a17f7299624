"""Statistics: seeded bootstrap confidence intervals, paired tests between two runs, multiple-testing control.

Everything is seeded: the same inputs and seed always give the same intervals and p-values.
Paired statistics are functions of column means (``combine``), so per-sample metrics (``combine=None``: the
mean) and set-level aggregates of per-sample columns (e.g. Overall from the p_cis and a_cs means) share one
vectorised code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_N_BOOT = 1000  # every bootstrap's default: scoring's CIs (run summaries), compare, human-eval scores
DEFAULT_N_PERM = 2000
_CHUNK = 256  # resamples per block: bounds memory at _CHUNK x n x k floats

Combine = Callable[[np.ndarray], np.ndarray]  # (B, k) column means -> (B,) statistic


def bootstrap_indices(n: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) resampling indices; the same (n, n_boot, seed) always gives the same indices."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
                 statistic: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (default: the mean) over the rows of ``values``.

    ``statistic`` is vectorised: it maps all resamples at once, (n_boot, n, ...) rows -> (n_boot,) values.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    resampled = values[bootstrap_indices(n, n_boot, seed)]
    stats = resampled.mean(axis=1) if statistic is None else np.asarray(statistic(resampled), np.float64)
    return percentile_interval(stats, level)


def bootstrap_mean_cis(columns: Sequence[np.ndarray], n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                       level: float = 0.95, chunk_bytes: int = 1 << 24) -> list[tuple[float, float]]:
    """``bootstrap_ci`` of the mean of each of ``columns`` (n values each), with the same draws and the
    same bits, from chunks of replicates: memory bounded by ``chunk_bytes`` instead of (n_boot, n) indices and
    resamples per column."""
    columns = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(columns[0]) if columns else 0
    if n == 0:
        return [(float("nan"), float("nan"))] * len(columns)
    rng = np.random.default_rng(seed)  # as bootstrap_indices: consecutive chunks give the same draws
    step = max(1, chunk_bytes // (16 * n))
    means = [np.empty(n_boot) for _ in columns]
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        for values, out in zip(columns, means, strict=True):
            out[start:start + len(idx)] = values[idx].mean(axis=1)
    return [percentile_interval(m, level) for m in means]


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of a bootstrap distribution."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(stats, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedTest:
    """Candidate minus base: the observed delta, its paired-bootstrap CI, the two-sided permutation p."""

    delta: float
    lo: float
    hi: float
    p: float
    n: int
    exact: bool  # True when the permutation p-value enumerates all 2^n swaps


def _as_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def _apply(combine: Combine | None, means: np.ndarray) -> np.ndarray:
    """Statistic of (B, k) column means: the single column itself when ``combine`` is None."""
    if combine is None:
        if means.shape[1] != 1:
            raise ValueError("several columns need a combine function")
        return means[:, 0]
    return np.asarray(combine(means), dtype=np.float64)


def paired_bootstrap(base: np.ndarray, cand: np.ndarray, combine: Combine | None = None,
                     n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of stat(cand) - stat(base), resampling paired rows (the same indices for both runs)."""
    b, c = _as_matrix(base), _as_matrix(cand)
    n = len(b)
    rng = np.random.default_rng(seed)
    deltas = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        stat_c, stat_b = _apply(combine, c[idx].mean(axis=1)), _apply(combine, b[idx].mean(axis=1))
        deltas[start:start + size] = stat_c - stat_b
    return percentile_interval(deltas, level)


def paired_permutation_p(base: np.ndarray, cand: np.ndarray, combine: Combine | None = None,
                         n_perm: int = DEFAULT_N_PERM, seed: int = 0) -> tuple[float, bool]:
    """Two-sided p-value of H0 "the two runs are exchangeable within each pair" (random swaps of the pair).

    Exact (all 2^n swap patterns) when 2^n <= n_perm, else Monte Carlo with the (1 + hits) / (1 + n_perm)
    rule.
    Returns (p, exact).
    """
    b, c = _as_matrix(base), _as_matrix(cand)
    n = len(b)
    diff = b - c  # swapping pair i moves diff[i] from the base mean to the candidate mean
    mean_b, mean_c = b.mean(axis=0), c.mean(axis=0)
    observed = float((_apply(combine, mean_c[None]) - _apply(combine, mean_b[None]))[0])
    tol = 1e-9 * max(1.0, abs(observed))
    exact = n < 63 and 2 ** n <= n_perm
    rng = np.random.default_rng(seed)
    hits, total = 0, 0
    n_masks = 2 ** n if exact else n_perm
    for start in range(0, n_masks, _CHUNK):
        size = min(_CHUNK, n_masks - start)
        if exact:
            codes = np.arange(start, start + size, dtype=np.int64)
            swap = ((codes[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(np.float64)
        else:
            swap = rng.integers(0, 2, size=(size, n)).astype(np.float64)
        shift = swap @ diff / n  # (size, k)
        stat = _apply(combine, mean_c + shift) - _apply(combine, mean_b - shift)
        hits += int(np.count_nonzero(np.abs(stat) >= abs(observed) - tol))
        total += size
    p = hits / total if exact else (1 + hits) / (1 + total)
    return min(1.0, p), exact


def paired_test(base: np.ndarray, cand: np.ndarray, combine: Combine | None = None,
                n_boot: int = DEFAULT_N_BOOT, n_perm: int = DEFAULT_N_PERM, seed: int = 0,
                level: float = 0.95) -> PairedTest:
    """Paired comparison of two runs on the same samples (rows aligned): delta, bootstrap CI, p-value."""
    b, c = _as_matrix(base), _as_matrix(cand)
    if b.shape != c.shape:
        raise ValueError(f"paired arrays differ in shape: {b.shape} vs {c.shape}")
    if len(b) == 0:
        nan = float("nan")
        return PairedTest(nan, nan, nan, nan, 0, False)
    delta = float(_apply(combine, c.mean(axis=0)[None])[0] - _apply(combine, b.mean(axis=0)[None])[0])
    lo, hi = paired_bootstrap(b, c, combine, n_boot, seed, level)
    p, exact = paired_permutation_p(b, c, combine, n_perm, seed)
    return PairedTest(delta, lo, hi, p, len(b), exact)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def cluster_bootstrap_mean(values: np.ndarray, clusters: np.ndarray, n_boot: int = DEFAULT_N_BOOT,
                           seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile CI that resamples whole clusters (e.g. all judgments of one case).

    Returns (mean, lo, hi).
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        nan = float("nan")
        return nan, nan, nan
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse).astype(np.float64)
    n_clusters = len(sums)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        idx = rng.integers(0, n_clusters, size=(size, n_clusters))
        stats[start:start + size] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = percentile_interval(stats, level)
    return float(values.mean()), lo, hi
