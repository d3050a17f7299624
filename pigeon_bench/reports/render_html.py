"""A self-contained HTML page (templates/report.html.j2): the tables, then each table's gallery of cases."""

from __future__ import annotations

from pigeon_bench.metrics import table
from pigeon_bench.reports.gallery import gallery
from pigeon_bench.reports.ranking import Table, ci_text, printed
from pigeon_bench.templates import render


def _rows(t: Table, ci: bool) -> list[dict]:
    marked = t.marks()
    out = []
    previous_group = None
    for i, r in enumerate(t.rows):
        cells = [{"text": printed(r, m), "mark": marked.get((i, m)), "ci": ci_text(r, m) if ci else ""}
                 for m in t.columns]
        out.append({"group": r.group if r.group != previous_group else "", "label": r.label,
                    "source": r.source, "n": r.n, "cells": cells})
        previous_group = r.group
    return out


def _families(columns: tuple[str, ...]) -> list[list]:
    """[heading, colspan] runs of adjacent columns of one family ("" for a column of none)."""
    out: list[list] = []
    for m in columns:
        family = table.get(m).family
        name = family.name if family else ""
        if out and name and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return out


def render_html(tables: list[Table], ci: bool, n_cases: int = 8, seed: int = 0) -> str:
    blocks = []
    for t in tables:
        cases, note = gallery(t.rows, n_cases, seed)
        headers = [{"name": table.get(m).short, "arrow": table.get(m).arrow} for m in t.columns]
        blocks.append({"title": t.heading, "notices": t.notices, "headers": headers,
                       "families": _families(t.columns), "show_group": t.show_group, "rows": _rows(t, ci),
                       "cases": cases, "note": note})
    return render("report.html.j2", blocks=blocks, ci=ci)
