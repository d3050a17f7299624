"""Set-level aggregates that need no model: the paper's Overall score.

Finding (checked on every row of the paper's Table 1, both scenarios): the printed "Overall" column is the
arithmetic mean of history CIS and reference CS, ``(p_cis + a_cs) / 2``, to the printed two decimals
(all 16 rows within 0.005). The harmonic mean ``2ab / (a + b)`` that an "F1" would suggest does not reproduce
it (e.g. sticker PMG: harmonic 26.41 vs printed 32.83; arithmetic 32.825). The paper's implementation details
also choose the reference mask ratio "by averaging the history CIS and the reference CS".
Because the mean is linear, the Overall of the per-sample means equals the mean of per-sample Overall values.
"""

from __future__ import annotations

import numpy as np


def overall(p_cis, a_cs):
    """The paper's Overall: ``(p_cis + a_cs) / 2`` (floats or arrays; NaN propagates)."""
    if np.ndim(p_cis) == 0 and np.ndim(a_cs) == 0:
        return (float(p_cis) + float(a_cs)) / 2.0
    return (np.asarray(p_cis, dtype=np.float64) + np.asarray(a_cs, dtype=np.float64)) / 2.0
