"""Table 1 and Table 3-style ablation tables from scored runs (and the paper's rows), in every format."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.reports.paper import paper_rows, paper_table
from pigeon_bench.reports.ranking import Table
from pigeon_bench.reports.render_csv import render_csv, table_frame
from pigeon_bench.reports.render_html import render_html
from pigeon_bench.reports.render_latex import render_latex
from pigeon_bench.reports.render_md import render_markdown
from pigeon_bench.reports.rows import OURS, PAPER, Row, load_run, number, on_samples
from pigeon_bench.runs.folder import SUMMARY, RunFolder, report_runs
from pigeon_bench.schema import read_scores

FORMATS = ("md", "latex", "csv", "html")
TABLE1_COLUMNS: tuple[str, ...] = table.NAMES  # the metric table is in Table 1's column order
TABLE3_COLUMNS: tuple[str, ...] = ("p_cis", "p_lpips", "a_cs")
GROUP_ORDER: tuple[str, ...] = ("DM-based", "LLM-based", "LMM-based", "Reference", "Sanity")
METHOD_ORDER: tuple[str, ...] = (
    "ti", "pmg", "llava*", "llava", "lavit*", "lavit", "pigeon", "recon", "grd", "hist", "oracle",
    "other-user",
)
SCENARIO_TITLES = {"sticker": "Sticker", "movie": "Movie poster"}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def _render(tables: list[Table], fmt: str, ci: bool, n_cases: int) -> str:
    if fmt == "md":
        return render_markdown(tables, ci)
    if fmt == "latex":
        return render_latex(tables, ci)
    if fmt == "csv":
        return render_csv(tables)
    return render_html(tables, ci, n_cases)


def _sort_key(row: Row, groups: list[str]) -> tuple:
    order = METHOD_ORDER.index(row.method) if row.method in METHOD_ORDER else len(METHOD_ORDER)
    # ours before the paper's; selections first, then fixed runs, then a sweep's alpha_r runs in order
    alpha = row.alpha_r if math.isfinite(row.alpha_r) else -1.0
    return (groups.index(row.group), order, row.method, row.source != OURS, row.selection is None, alpha,
            row.label)


def arrange(ours: list[Row], paper: list[Row]) -> list[Row]:
    """Display order: by group (the paper's order), then method; a paper row follows ours of its method."""
    rows = list(ours)
    ours_methods = {r.method for r in ours}
    for p in paper:
        if ours:
            p.label = f"{p.label} (paper)"
            if p.method in ours_methods:  # keep the paper row next to ours even if our group spelling differs
                p.group = next(r.group for r in ours if r.method == p.method)
        rows.append(p)
    extra = [g for g in dict.fromkeys(r.group for r in rows) if g not in GROUP_ORDER]
    groups = [*GROUP_ORDER[:3], *extra, *GROUP_ORDER[3:]]
    # Duplicate labels among our rows (e.g. two checkpoints of one method) get their run folder's name.
    seen: dict[str, int] = {}
    for r in ours:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in ours:
        if seen[r.label] > 1 and r.run is not None:
            r.label = f"{r.label} [{r.run.name if r.run.name != 'selected' else r.run.path.parent.name}]"
    return sorted(rows, key=lambda r: _sort_key(r, groups))


def scored_runs(paths: Sequence[str | Path]) -> list[RunFolder]:
    """The scored runs the given folders stand for (``runs.folder.report_runs``: a run, a sweep's selections
    and α_r runs, or every run of a folder of runs), each once; a folder with none is an error."""
    out: list[RunFolder] = []
    for path in paths:
        found = report_runs(path)
        if not found:
            raise UserError(f"{path}: no scored run there ({SUMMARY} in it or in its runs); score it first: "
                            f"pigeon-bench score {path}")
        out += [r for r in found if r not in out]
    return out


def same_samples(rows: list[Row], common_samples: bool) -> list[Row]:
    """Our rows of one table, on one sample set: refused when their sample counts differ, unless
    ``common_samples`` (then each is recomputed on the samples all of them share)."""
    counts = {r.n for r in rows}
    if len(counts) <= 1:
        return rows
    if not common_samples:
        detail = "; ".join(f"n = {n}: " + ", ".join(r.label for r in rows if r.n == n)
                           for n in sorted(counts, key=lambda n: (n is None, n)))
        raise UserError(f"the runs hold different numbers of samples ({detail}), so they cannot be ranked "
                        "together: score them on the same samples, or pass --common-samples to rank them "
                        "on the samples they share")
    ids = set.intersection(*(set(read_scores(r.run).index) for r in rows))
    if not ids:
        raise UserError("the runs share no sample: nothing to rank on")
    return [on_samples(r, sorted(ids)) for r in rows]


def build_report(run_dirs: Sequence[str | Path], scenario: str | None = None, fmt: str = "md",
                 paper: bool = False, *, ci: bool = True, n_cases: int = 8,
                 common_samples: bool = False) -> str:
    """Table 1 for the given runs (and/or the paper's numbers), one block per scenario, as ``fmt``.

    Runs of one scenario must hold the same samples (``common_samples``: rank them on those they share)."""
    check_format(fmt)
    if not run_dirs and not paper:
        raise UserError("nothing to report: give at least one run folder, or --paper")
    ours = [load_run(r) for r in scored_runs(run_dirs)]
    if scenario is not None:
        known = set(SCENARIO_TITLES) | {r.scenario for r in ours}
        if scenario not in known:
            raise UserError(f"unknown scenario {scenario!r} (known: {', '.join(sorted(known))})")
        for r in ours:
            if r.scenario != scenario:
                raise UserError(f"{r.run}: scenario {r.scenario!r}, not {scenario!r}")
    theirs = paper_rows(scenario) if paper else []
    if ours and scenario is None:  # beside runs, the paper's rows of those runs' scenarios only
        theirs = [r for r in theirs if r.scenario in {o.scenario for o in ours}]
    scenarios = list(dict.fromkeys([r.scenario for r in ours] + [r.scenario for r in theirs]))
    if not scenarios:
        raise UserError(f"the paper has no Table 1 rows for scenario {scenario!r}")
    tables = []
    for sc in scenarios:
        mine = same_samples([r for r in ours if r.scenario == sc], common_samples)
        rows = arrange(mine, [r for r in theirs if r.scenario == sc])
        tables.append(Table(title=SCENARIO_TITLES.get(sc, sc), scenario=sc, columns=TABLE1_COLUMNS,
                            rows=rows))
    return _render(tables, fmt, ci, n_cases)


def parse_named_run(text: str) -> tuple[str, Path]:
    """NAME=RUN for ablation tables."""
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise UserError(f"ablation {text!r}: expected NAME=RUN, e.g. 'w/o encoding=runs/no_enc'")
    return name.strip(), Path(path.strip())


def build_ablation(named_runs: Sequence[tuple[str, str | Path]], fmt: str = "md", paper: bool = False,
                   columns: Sequence[str] = TABLE3_COLUMNS, *, ci: bool = True) -> str:
    """A Table 3-style ablation: one row per named run, the given metric columns (Table 3's by default)."""
    check_format(fmt)
    table.check_names(list(columns))
    if not named_runs:
        raise UserError("nothing to report: give at least one NAME=RUN")
    rows = []
    for name, path in named_runs:
        r = load_run(path)
        r.label, r.group = name, "Ablation"
        rows.append(r)
    if paper:
        if "sticker" not in {r.scenario for r in rows}:
            raise UserError("the paper's Table 3 is on stickers only: --paper needs a sticker run")
        for rec in paper_table("table3").to_dict("records"):
            rows.append(Row(label=f"{rec['variant']} (paper)", method=str(rec["variant"]), group="Ablation",
                            scenario="sticker", source=PAPER,
                            mean={m: number(rec.get(m)) for m in columns}))
    scenarios = sorted({r.scenario for r in rows})
    block = Table(title=", ".join(SCENARIO_TITLES.get(s, s) for s in scenarios), scenario=None,
                  columns=tuple(columns), rows=rows, show_group=False, marked=False, name="Ablation")
    if fmt == "csv":
        df = table_frame([block]).rename(columns={"method": "variant"})
        keep = ["variant", *columns, "n", *[f"{m}_{b}" for m in columns for b in ("lo", "hi")],
                "scenario", "source", "notice", "run"]
        return df[keep].to_csv(index=False, lineterminator="\n")
    return _render([block], fmt, ci, n_cases=0)
