"""Printed values and marks: rounding as the paper prints, best/second-best per column, and one table block.

Marking rule: per column, among the rows of one source (ours, or the paper's) outside the Reference and
Sanity groups, the best value (in the metric table's direction) is bold and the second-best underlined; a
sweep's fixed-α_r rows are shown but not ranked when their method has a selection row. Values are compared
as printed (after rounding to the table's digits), so rows that print the same number tie: every tied best
row is bold and the next distinct value is underlined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from pigeon_bench.metrics import table
from pigeon_bench.reports.rows import Row

UNRANKED_GROUPS = frozenset({"Reference", "Sanity"})


def format_value(x: float, digits: int) -> str:
    """Round half up at ``digits`` (36.905 -> 36.91, as the paper prints); NaN -> "-"."""
    if x is None or not math.isfinite(x):
        return "-"
    d = Decimal(repr(round(float(x), 9))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{abs(d) if d == 0 else d:.{digits}f}"  # no "-0.00"


def printed(row: Row, metric: str) -> str:
    """``row``'s mean of ``metric`` as printed."""
    return format_value(row.mean.get(metric, float("nan")), table.get(metric).digits)


def ci_text(row: Row, metric: str) -> str:
    """"[lo, hi]" as printed, or "" when the row has no CI for ``metric``."""
    lo, hi = row.lo.get(metric, float("nan")), row.hi.get(metric, float("nan"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    digits = table.get(metric).digits
    return f"[{format_value(lo, digits)}, {format_value(hi, digits)}]"


def sweep_rows(rows: Sequence[Row]) -> set[int]:
    """Indices of fixed-α_r rows whose method also has a selection row from the same source."""
    selected = {(r.source, r.method) for r in rows if r.selection}
    return {i for i, r in enumerate(rows)
            if not r.selection and math.isfinite(r.alpha_r) and (r.source, r.method) in selected}


def marks(rows: Sequence[Row], metric: str) -> dict[int, str]:
    """Row index -> "best" / "second" for one column; ranks each source apart, skips Reference/Sanity rows
    and a sweep's fixed-α_r rows where the same method has a selection row (they are diagnostics)."""
    out: dict[int, str] = {}
    sign = 1 if table.get(metric).higher_is_better else -1
    skip = sweep_rows(rows)
    for source in {r.source for r in rows}:
        values: dict[int, Decimal] = {}
        for i, r in enumerate(rows):
            text = printed(r, metric)
            if r.source == source and r.group not in UNRANKED_GROUPS and i not in skip and text != "-":
                values[i] = Decimal(text)
        distinct = sorted(set(values.values()), key=lambda v: -sign * v)
        for i, v in values.items():
            if v == distinct[0]:
                out[i] = "best"
            elif len(distinct) > 1 and v == distinct[1]:
                out[i] = "second"
    return out


@dataclass
class Table:
    """One rendered block: rows in display order, the metric columns and the marks."""

    title: str
    scenario: str | None
    columns: tuple[str, ...]
    rows: list[Row]
    show_group: bool = True
    marked: bool = True
    name: str = "Table 1"

    @property
    def heading(self) -> str:
        return f"{self.name}: {self.title}"

    def marks(self) -> dict[tuple[int, str], str]:
        if not self.marked:
            return {}
        return {(i, m): kind for m in self.columns for i, kind in marks(self.rows, m).items()}

    @property
    def notices(self) -> list[str]:
        return sorted({r.notice for r in self.rows if r.notice})
