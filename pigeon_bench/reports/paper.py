"""The paper's transcribed tables, shipped inside the package (``pigeon_bench/paper_tables/<name>.csv``:
Table 1 both scenarios, Table 2 human evaluation, Table 3 ablation, Table 4 dataset statistics)."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable

import pandas as pd

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.reports.rows import PAPER, Row, method_key, number, with_derived

PAPER_TABLES = "paper_tables"  # the package-data folder of pigeon_bench


def paper_table_file(name: str) -> Traversable:
    """Where the installed package keeps the paper's table ``name`` (e.g. "table1")."""
    return resources.files("pigeon_bench").joinpath(PAPER_TABLES, f"{name}.csv")


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's transcribed tables."""
    source = paper_table_file(name)
    if not source.is_file():
        raise UserError(f"the paper's {name} is not in this installation (no {source})")
    with source.open("rb") as f:
        return pd.read_csv(f)


def paper_rows(scenario: str | None = None) -> list[Row]:
    """The paper's Table 1 rows (one scenario or both), derived metrics recomputed (Overall from CIS, CS)."""
    rows = []
    for r in paper_table("table1").to_dict("records"):
        if scenario is not None and r["scenario"] != scenario:
            continue
        mean = with_derived({m: number(r.get(m)) for m in table.NAMES})
        rows.append(Row(label=str(r["method"]), method=method_key(str(r["method"])), group=str(r["group"]),
                        scenario=str(r["scenario"]), source=PAPER, mean=mean))
    return rows
