"""The Overall definition must reproduce every row of the paper's Table 1 from that table's own components."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pigeon_bench.metrics import overall


def test_overall_reproduces_table1(shared_dir):
    df = pd.read_csv(shared_dir / "paper" / "table1.csv")
    assert len(df) == 16
    got = overall(df["p_cis"].to_numpy(), df["a_cs"].to_numpy())
    # Printed with two decimals: every row within half a unit of the last digit (plus float slack).
    assert np.all(np.abs(got - df["overall"].to_numpy()) <= 0.005 + 1e-9)
    # The harmonic mean (an "F1") does not reproduce the column.
    hm = 2 * df["p_cis"] * df["a_cs"] / (df["p_cis"] + df["a_cs"])
    assert (np.abs(hm - df["overall"]) > 0.5).sum() >= 10


def test_overall_scalar_and_array():
    assert overall(40.0, 30.0) == 35.0
    assert isinstance(overall(40.0, 30.0), float)
    np.testing.assert_allclose(overall([10.0, 20.0], [30.0, 0.0]), [20.0, 10.0])
