"""CSV: every row flat, the contract columns (method, group, every metric of the table, n), their CIs, then
provenance."""

from __future__ import annotations

import pandas as pd

from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import Table


def table_frame(tables: list[Table]) -> pd.DataFrame:
    records = []
    for t in tables:
        for r in t.rows:
            rec: dict = {"method": r.label, "group": r.group}
            rec.update({m: r.mean.get(m, float("nan")) for m in table.NAMES})
            rec["n"] = r.n
            for m in table.NAMES:
                rec[f"{m}_lo"] = r.lo.get(m, float("nan"))
                rec[f"{m}_hi"] = r.hi.get(m, float("nan"))
            rec.update({"scenario": r.scenario, "source": r.source, "selection": r.selection,
                        "notice": r.notice, "run": str(r.run) if r.run else None})
            records.append(rec)
    df = pd.DataFrame.from_records(records)
    df["n"] = df["n"].astype("Int64")
    return df


def render_csv(tables: list[Table]) -> str:
    return table_frame(tables).to_csv(index=False, lineterminator="\n")
