"""Statistics: seeded bootstrap confidence intervals (and, in reports/compare, paired tests)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_N_BOOT = 1000


def bootstrap_indices(n: int, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) resampling indices; the same (n, n_boot, seed) always gives the same indices."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def bootstrap_ci(values: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
                 statistic: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` (default: the mean) over the rows of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    idx = bootstrap_indices(n, n_boot, seed)
    if statistic is None:
        stats = values[idx].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in idx])
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)
