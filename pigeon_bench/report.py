"""Reports: Table 1 (and Table 3-style ablations) in Markdown, LaTeX, CSV and self-contained HTML.

Rows come from run folders (RUN/summary.json, written by scoring) and, with ``paper=True``, from the paper's
own numbers (results/paper/table1.csv) placed beside ours method by method. Overall is always recomputed from
its components with :func:`pigeon_bench.metrics.overall`, never copied.

Marking rule: per column, among the rows of one source (ours, or the paper's) outside the Reference and
Sanity groups, the best value is bold and the second-best underlined; a sweep's fixed-α_r rows are shown but
not ranked when their method has a selection row. Values are compared as printed (after rounding), so rows
that print the same number tie: every tied best row is bold and the next distinct value is underlined.
"""

from __future__ import annotations

import base64
import io as _io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pandas as pd

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import overall
from pigeon_bench.schema import HIGHER_IS_BETTER, METRICS, PER_SAMPLE_METRICS, TINY_PROFILE_NOTICE

FORMATS = ("md", "latex", "csv", "html")
TABLE1_COLUMNS: tuple[str, ...] = (
    "overall", "p_cs", "p_cis", "p_dis", "p_lpips", "p_msssim", "a_cs", "a_cis", "a_dis", "fid",
)
TABLE3_COLUMNS: tuple[str, ...] = ("p_cis", "p_lpips", "a_cs")
DIGITS: dict[str, int] = {m: 4 if m in ("p_lpips", "p_msssim") else 2 for m in METRICS}
GROUP_ORDER: tuple[str, ...] = ("DM-based", "LLM-based", "LMM-based", "Reference", "Sanity")
UNRANKED_GROUPS = frozenset({"Reference", "Sanity"})
METHOD_ORDER: tuple[str, ...] = (
    "ti", "pmg", "llava*", "llava", "lavit*", "lavit", "pigeon", "recon", "grd", "hist",
)
SCENARIO_TITLES = {"sticker": "Sticker", "movie": "Movie poster"}
PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"
SHORT_NAMES = {"cs": "CS", "cis": "CIS", "dis": "DIS", "lpips": "LPIPS", "msssim": "MS-SSIM", "fid": "FID",
               "overall": "Overall"}
FAMILIES = {"p": "Personalization", "a": "Semantic alignment"}
MD_FAMILIES = {"p": "Pers.", "a": "Sem."}


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    """One table row: a scored run ("ours") or a transcribed row of the paper ("paper")."""

    label: str
    method: str
    group: str
    scenario: str
    source: str
    mean: dict[str, float]
    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)
    n: int | None = None
    notice: str | None = None
    selection: str | None = None
    alpha_r: float = float("nan")
    run: Path | None = None


def _num(x) -> float:
    """A JSON/CSV number, or NaN for null/empty."""
    try:
        return float("nan") if x is None or x == "" else float(x)
    except (TypeError, ValueError):
        return float("nan")


def method_key(method: str) -> str:
    """Canonical method name: lower case, folder spelling "-star" read as "*"."""
    return method.strip().lower().replace("-star", "*")


def resolve_run(path: str | Path) -> Path:
    """The scored run folder behind ``path``: the folder itself, or a sweep's ``selected/`` run."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder not found: {path}")
    if (path / "summary.json").is_file():
        return path
    manifest = path / "manifest.json"
    if manifest.is_file() and fileio.read_json(manifest).get("sweep") is not None:
        if (path / "selected" / "summary.json").is_file():
            return path / "selected"
        raise UserError(f"{path} is a sweep without a scored selected/ run "
                        f"(select and score it, or pass one sub-run such as {path / 'alpha_r=0.5'})")
    raise UserError(f"missing file: {path / 'summary.json'} (score the run first: pigeon-bench score {path})")


def load_summary(run_dir: Path) -> dict:
    """RUN/summary.json, checked for the metrics block the reports need."""
    summary = fileio.read_json(run_dir / "summary.json")
    metrics = summary.get("metrics") if isinstance(summary, dict) else None
    if not isinstance(metrics, dict):
        raise UserError(f"{run_dir / 'summary.json'}: no \"metrics\" object")
    missing = [m for m in METRICS if not isinstance(metrics.get(m), dict) or "mean" not in metrics[m]]
    if missing:
        raise UserError(f"{run_dir / 'summary.json'}: missing metric(s) {', '.join(missing)}")
    return summary


def load_run(path: str | Path) -> Row:
    """A Table 1 row from a run folder (Overall recomputed from the p_cis and a_cs means)."""
    run_dir = resolve_run(path)
    summary = load_summary(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = fileio.read_json(manifest_path) if manifest_path.is_file() else {}
    metrics = summary["metrics"]
    mean = {m: _num(metrics[m]["mean"]) for m in METRICS}
    mean["overall"] = float(overall(mean["p_cis"], mean["a_cs"]))
    method = str(summary.get("method") or manifest.get("method") or run_dir.name)
    label = str(summary.get("label") or manifest.get("label") or method)
    selection = summary.get("selection") or manifest.get("selection")
    if selection and selection not in label:
        label = f"{label} ({selection})"
    alpha_r = summary.get("alpha_r", manifest.get("alpha_r"))
    if alpha_r is not None and not selection and "α_r" not in label:
        label = f"{label} (α_r={float(alpha_r):.1f})"
    scenario = summary.get("scenario") or manifest.get("scenario")
    if not scenario:
        raise UserError(f"{run_dir / 'summary.json'}: no scenario")
    profile = summary.get("profile") or manifest.get("profile")
    notice = summary.get("notice") or (TINY_PROFILE_NOTICE if profile == "tiny" else None)
    n = summary.get("n")
    return Row(label=label, method=method_key(method),
               group=str(summary.get("group") or manifest.get("group") or "Other"), scenario=str(scenario),
               source="ours", mean=mean, lo={m: _num(metrics[m].get("lo")) for m in METRICS},
               hi={m: _num(metrics[m].get("hi")) for m in METRICS}, n=int(n) if n is not None else None,
               notice=notice, selection=selection, alpha_r=_num(alpha_r), run=run_dir)


def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's transcribed tables (results/paper/<name>.csv)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise UserError(f"missing file: {path} (the paper's tables ship in results/paper/ of the checkout)")
    return pd.read_csv(path)


def paper_rows(scenario: str | None = None) -> list[Row]:
    """The paper's Table 1 rows (one scenario or both), Overall recomputed from CIS and CS."""
    df = paper_table("table1")
    rows = []
    for r in df.to_dict("records"):
        if scenario is not None and r["scenario"] != scenario:
            continue
        mean = {m: _num(r.get(m)) for m in TABLE1_COLUMNS}
        mean["overall"] = float(overall(mean["p_cis"], mean["a_cs"]))
        rows.append(Row(label=str(r["method"]), method=method_key(str(r["method"])), group=str(r["group"]),
                        scenario=str(r["scenario"]), source="paper", mean=mean))
    return rows


# ---------------------------------------------------------------- formatting and marks


def format_value(x: float, digits: int) -> str:
    """Round half up at ``digits`` (36.905 -> 36.91, as the paper prints); NaN -> "-"."""
    if x is None or not math.isfinite(x):
        return "-"
    d = Decimal(repr(round(float(x), 9))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{abs(d) if d == 0 else d:.{digits}f}"  # no "-0.00"


def marks(rows: Sequence[Row], metric: str) -> dict[int, str]:
    """Row index -> "best" / "second" for one column; ranks each source apart, skips Reference/Sanity rows
    and a sweep's fixed-α_r rows where the same method has a selection row (they are diagnostics)."""
    out: dict[int, str] = {}
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    skip = sweep_rows(rows)
    for source in {r.source for r in rows}:
        printed: dict[int, Decimal] = {}
        for i, r in enumerate(rows):
            text = format_value(r.mean.get(metric, float("nan")), DIGITS[metric])
            if r.source == source and r.group not in UNRANKED_GROUPS and i not in skip and text != "-":
                printed[i] = Decimal(text)
        distinct = sorted(set(printed.values()), key=lambda v: -sign * v)
        for i, v in printed.items():
            if v == distinct[0]:
                out[i] = "best"
            elif len(distinct) > 1 and v == distinct[1]:
                out[i] = "second"
    return out


def sweep_rows(rows: Sequence[Row]) -> set[int]:
    """Indices of fixed-α_r rows whose method also has a selection row from the same source."""
    selected = {(r.source, r.method) for r in rows if r.selection}
    return {i for i, r in enumerate(rows)
            if not r.selection and math.isfinite(r.alpha_r) and (r.source, r.method) in selected}


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


def _family(metric: str) -> str | None:
    prefix = metric.split("_", 1)[0]
    return prefix if "_" in metric and prefix in FAMILIES else None


def _short(metric: str) -> str:
    return SHORT_NAMES[metric.split("_", 1)[1] if _family(metric) else metric]


def _arrow(metric: str, latex: bool = False) -> str:
    up = HIGHER_IS_BETTER.get(metric, True)
    if latex:
        return r"$\uparrow$" if up else r"$\downarrow$"
    return "↑" if up else "↓"


def _ci_text(row: Row, metric: str) -> str:
    lo, hi = row.lo.get(metric, float("nan")), row.hi.get(metric, float("nan"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f"[{format_value(lo, DIGITS[metric])}, {format_value(hi, DIGITS[metric])}]"


def _sort_key(row: Row, groups: list[str]) -> tuple:
    order = METHOD_ORDER.index(row.method) if row.method in METHOD_ORDER else len(METHOD_ORDER)
    # ours before the paper's; selections first, then fixed runs, then a sweep's alpha_r runs in order
    alpha = row.alpha_r if math.isfinite(row.alpha_r) else -1.0
    return (groups.index(row.group), order, row.method, row.source != "ours", row.selection is None, alpha,
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
            r.label = f"{r.label} [{r.run.name if r.run.name != 'selected' else r.run.parent.name}]"
    return sorted(rows, key=lambda r: _sort_key(r, groups))


# ---------------------------------------------------------------- renderers


def render_markdown(tables: list[Table], ci: bool) -> str:
    out: list[str] = []
    for t in tables:
        out.append(f"### {t.heading}")
        out.append("")
        out.extend(f"> **{n}**" for n in t.notices)
        if t.notices:
            out.append("")
        marked = t.marks()
        head = ["Group", "Method"] if t.show_group else ["Variant"]
        for m in t.columns:
            fam = _family(m)
            head.append(f"{MD_FAMILIES[fam] + ' ' if fam else ''}{_short(m)} {_arrow(m)}")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * (len(head) - len(t.columns)) + ["--:"] * len(t.columns)) + "|")
        previous_group = None
        for i, r in enumerate(t.rows):
            cells = []
            if t.show_group:
                cells.append(r.group if r.group != previous_group else "")
                previous_group = r.group
            cells.append(r.label.replace("|", "\\|"))
            for m in t.columns:
                text = format_value(r.mean.get(m, float("nan")), DIGITS[m])
                kind = marked.get((i, m))
                text = f"**{text}**" if kind == "best" else f"<u>{text}</u>" if kind == "second" else text
                extra = _ci_text(r, m) if ci else ""
                cells.append(f"{text} {extra}" if extra else text)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        legend = []
        if t.marked:
            unranked = "Reference and Sanity rows" + (" and fixed-α_r rows beside a selection"
                                                       if sweep_rows(t.rows) else "")
            legend.append(f"**bold**: best, <u>underlined</u>: second best ({unranked} excluded; ours and "
                          "the paper's ranked apart)")
        if ci and any(r.source == "ours" for r in t.rows):
            legend.append("[lo, hi]: seeded bootstrap 95% CI")
        if any(r.source == "paper" for r in t.rows):
            legend.append("paper rows: transcribed from the paper" + (
                ", Overall recomputed as (CIS + CS) / 2" if "overall" in t.columns else ""))
        if legend:
            out.append("; ".join(legend) + ".")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


_LATEX_SPECIALS = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
})


def _latex_escape(text: str) -> str:
    return text.translate(_LATEX_SPECIALS)


def render_latex(tables: list[Table], ci: bool) -> str:
    """booktabs tables through pandas' Styler (needs \\usepackage{booktabs,multirow})."""
    out = ["% pigeon-bench report: \\usepackage{booktabs} and \\usepackage{multirow} in the preamble"]
    for t in tables:
        marked = t.marks()
        columns = pd.MultiIndex.from_tuples([
            (FAMILIES[_family(m)] if _family(m) else "", f"{_short(m)} {_arrow(m, latex=True)}")
            for m in t.columns])
        index_tuples = [(_latex_escape(r.group), _latex_escape(r.label)) if t.show_group
                        else (_latex_escape(r.label),) for r in t.rows]
        index = pd.MultiIndex.from_tuples(index_tuples)
        body = []
        for i, r in enumerate(t.rows):
            line = []
            for m in t.columns:
                text = format_value(r.mean.get(m, float("nan")), DIGITS[m])
                kind = marked.get((i, m))
                if kind:
                    text = rf"\{'textbf' if kind == 'best' else 'underline'}{{{text}}}"
                extra = _ci_text(r, m) if ci else ""
                line.append(rf"{text} {{\scriptsize {extra}}}" if extra else text)
            body.append(line)
        df = pd.DataFrame(body, index=index, columns=columns)
        caption = t.title + "".join(f" ({n})" for n in t.notices) + (
            ". Best in bold, second best underlined (Reference rows excluded)" if t.marked else "")
        styler = df.style
        out.append(styler.to_latex(hrules=True, multicol_align="c", multirow_align="t",
                                   column_format="l" * index.nlevels + "r" * len(t.columns),
                                   caption=_latex_escape(caption), position="t"))
    return "\n".join(out)


def table_frame(tables: list[Table]) -> pd.DataFrame:
    """All rows as a flat frame: the CSV contract columns, CIs, then provenance."""
    records = []
    for t in tables:
        for r in t.rows:
            rec: dict = {"method": r.label, "group": r.group}
            rec.update({m: r.mean.get(m, float("nan")) for m in TABLE1_COLUMNS})
            rec["n"] = r.n
            for m in TABLE1_COLUMNS:
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


# ---------------------------------------------------------------- HTML


def thumbnail_uri(path: Path, size: int = 160) -> str:
    """A base64 JPEG data URI of an image, at most ``size`` px on its long side."""
    im = fileio.load_rgb(path)
    im.thumbnail((size, size))
    buf = _io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Case:
    sample_id: str
    instruction: str
    history: list[str]
    reference: str | None
    reference_text: str
    outputs: list[tuple[str, str | None, dict[str, str]]]  # (label, data URI, printed scores)


def load_scores(run_dir: Path) -> pd.DataFrame:
    """RUN/scores.parquet indexed by sample id (unique ids required), sorted by id."""
    df = fileio.read_parquet(run_dir / "scores.parquet", ["sample_id", *PER_SAMPLE_METRICS])
    df = df.assign(sample_id=df["sample_id"].astype(str))
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise UserError(f"{run_dir / 'scores.parquet'}: duplicate sample id {dup.iloc[0]!r}")
    return df.set_index("sample_id").sort_index()


def gallery(rows: list[Row], n_cases: int, seed: int = 0) -> tuple[list[Case], str | None]:
    """A seeded sample of cases shown by every run of one scenario; returns (cases, note when degraded)."""
    from pigeon_bench.data import Dataset

    runs = [r for r in rows if r.run is not None]
    if not runs or n_cases <= 0:
        return [], None
    common: set[str] | None = None
    for r in runs:
        ids = {p.stem for p in (r.run / "images").glob("*.png")}
        common = ids if common is None else common & ids
    if not common:
        return [], "no sample has an image in every run"
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(sorted(common), size=min(n_cases, len(common)), replace=False).tolist())
    manifest_path = runs[0].run / "manifest.json"
    manifest = fileio.read_json(manifest_path) if manifest_path.is_file() else {}
    data_dir = Path(manifest["data"]) if manifest.get("data") else None
    dataset = Dataset(data_dir) if data_dir is not None and data_dir.is_dir() else None
    samples = {s.sample_id: s for s in dataset.samples()} if dataset else {}
    scores = {r.label: load_scores(r.run) if (r.run / "scores.parquet").is_file() else None for r in runs}
    cases = []
    for sid in chosen:
        s = samples.get(sid)
        outputs = []
        for r in runs:
            table = scores[r.label]
            printed: dict[str, str] = {}
            if table is not None and sid in table.index:
                vals = table.loc[sid]
                printed["Overall"] = format_value(overall(vals["p_cis"], vals["a_cs"]), 2)
                printed.update({f"{MD_FAMILIES[_family(m)]} {_short(m)}": format_value(vals[m], DIGITS[m])
                                for m in PER_SAMPLE_METRICS})
            outputs.append((r.label, thumbnail_uri(r.run / "images" / f"{sid}.png"), printed))
        cases.append(Case(
            sample_id=sid, instruction=s.instruction if s else "",
            history=[thumbnail_uri(dataset.image_path(h), 96) for h in s.history] if s else [],
            reference=thumbnail_uri(dataset.image_path(s.reference_id)) if s else None,
            reference_text=dataset.item(s.reference_id).semantics if s else "", outputs=outputs))
    note = None if dataset else f"dataset folder {data_dir} not found: history and reference images not shown"
    return cases, note


def _html_cells(t: Table, ci: bool) -> list[dict]:
    marked = t.marks()
    out = []
    previous_group = None
    for i, r in enumerate(t.rows):
        cells = []
        for m in t.columns:
            cells.append({"text": format_value(r.mean.get(m, float("nan")), DIGITS[m]),
                          "mark": marked.get((i, m)), "ci": _ci_text(r, m) if ci else ""})
        out.append({"group": r.group if r.group != previous_group else "", "label": r.label,
                    "source": r.source, "cells": cells})
        previous_group = r.group
    return out


def render_html(tables: list[Table], ci: bool, n_cases: int = 8, seed: int = 0) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    blocks = []
    for t in tables:
        cases, note = gallery(t.rows, n_cases, seed)
        headers = [{"name": _short(m), "arrow": _arrow(m)} for m in t.columns]
        families: list[list] = []  # [family, colspan] runs of adjacent columns
        for m in t.columns:
            fam = FAMILIES[_family(m)] if _family(m) else ""
            if families and fam and families[-1][0] == fam:
                families[-1][1] += 1
            else:
                families.append([fam, 1])
        blocks.append({"title": t.heading, "notices": t.notices, "headers": headers, "families": families,
                       "show_group": t.show_group,
                       "rows": _html_cells(t, ci), "cases": cases, "note": note})
    return env.get_template("report.html.j2").render(blocks=blocks, ci=ci)


# ---------------------------------------------------------------- entry points


def _render(tables: list[Table], fmt: str, ci: bool, n_cases: int) -> str:
    if fmt == "md":
        return render_markdown(tables, ci)
    if fmt == "latex":
        return render_latex(tables, ci)
    if fmt == "csv":
        return render_csv(tables)
    return render_html(tables, ci, n_cases)


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


def build_report(run_dirs: Sequence[str | Path], scenario: str | None = None, fmt: str = "md",
                 paper: bool = False, *, ci: bool = True, n_cases: int = 8) -> str:
    """Table 1 for the given runs (and/or the paper's numbers), one block per scenario, as ``fmt``."""
    check_format(fmt)
    if not run_dirs and not paper:
        raise UserError("nothing to report: give at least one run folder, or --paper")
    ours = [load_run(d) for d in run_dirs]
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
        rows = arrange([r for r in ours if r.scenario == sc], [r for r in theirs if r.scenario == sc])
        tables.append(Table(title=SCENARIO_TITLES.get(sc, sc), scenario=sc,
                            columns=TABLE1_COLUMNS, rows=rows))
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
    unknown = [m for m in columns if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
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
                            scenario="sticker", source="paper",
                            mean={m: _num(rec.get(m)) for m in columns}))
    scenarios = sorted({r.scenario for r in rows})
    table = Table(title=", ".join(SCENARIO_TITLES.get(s, s) for s in scenarios), scenario=None,
                  columns=tuple(columns), rows=rows, show_group=False, marked=False, name="Ablation")
    if fmt == "csv":
        df = table_frame([table]).rename(columns={"method": "variant"})
        keep = ["variant", *columns, "n", *[f"{m}_{b}" for m in columns for b in ("lo", "hi")],
                "scenario", "source", "notice", "run"]
        return df[keep].to_csv(index=False, lineterminator="\n")
    return _render([table], fmt, ci, n_cases=0)


# ---------------------------------------------------------------- sweeps (Fig. 4)


@dataclass
class Sweep:
    label: str
    param: str
    points: pd.DataFrame  # x, then <metric>, <metric>_lo, <metric>_hi
    notice: str | None


def sweep_points(sweep_dir: str | Path) -> Sweep:
    """The points of a sweep folder's ``param=value`` sub-runs (x = value; metric means and CIs)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder not found: {sweep_dir}")
    points, params, label, notice = [], set(), None, None
    for sub in sorted(sweep_dir.iterdir()):
        param, sep, value = sub.name.partition("=")
        if not sep or not sub.is_dir():
            continue
        try:
            x = float(value)
        except ValueError:
            raise UserError(f"{sub}: sweep sub-run value {value!r} is not a number") from None
        row = load_run(sub)
        label = label or row.label
        notice = notice or row.notice
        params.add(param)
        rec = {"x": x}
        for m in METRICS:
            rec[m], rec[f"{m}_lo"], rec[f"{m}_hi"] = row.mean[m], row.lo[m], row.hi[m]
        points.append(rec)
    if not points:
        raise UserError(f"{sweep_dir}: no sub-runs named like alpha_r=0.5")
    if len(params) > 1:
        raise UserError(f"{sweep_dir}: sub-runs sweep several parameters ({', '.join(sorted(params))})")
    manifest = sweep_dir / "manifest.json"
    if manifest.is_file():
        m = fileio.read_json(manifest)
        label = str(m.get("label") or m.get("method") or label)
    frame = pd.DataFrame(points).sort_values("x").reset_index(drop=True)
    return Sweep(str(label), params.pop(), frame, notice)


PARAM_LABELS = {"alpha_r": r"reference mask ratio $\alpha_r$", "alpha_h": r"history mask ratio $\alpha_h$"}


def plot_sweeps(sweep_dirs: Sequence[str | Path], out: str | Path,
                metrics: Sequence[str] = ("p_cis", "a_cs")) -> Path:
    """Fig. 4-style line plots: a panel per metric, a line (with its 95% CI band) per sweep; writes a PNG."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    if not sweep_dirs:
        raise UserError("give at least one sweep folder")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the plot is written as PNG; name the file *.png")
    sweeps = [sweep_points(d) for d in sweep_dirs]
    labels = [s.label for s in sweeps]
    for s, d in zip(sweeps, sweep_dirs, strict=True):
        if labels.count(s.label) > 1:  # tell same-label sweeps (e.g. two checkpoints) apart by folder
            s.label = f"{s.label} [{Path(d).name}]"
    params = {s.param for s in sweeps}
    if len(params) > 1:
        raise UserError(f"sweeps over different parameters ({', '.join(sorted(params))}) "
                        "cannot share an axis")
    param = params.pop()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(metrics), 2.8), dpi=150, layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics, strict=True):
        for sweep in sweeps:
            df = sweep.points
            ax.plot(df["x"], df[m], marker="o", markersize=3, label=sweep.label)
            if df[[f"{m}_lo", f"{m}_hi"]].notna().all().all():
                ax.fill_between(df["x"], df[f"{m}_lo"], df[f"{m}_hi"], alpha=0.2)
        fam = _family(m)
        ax.set_title(f"{FAMILIES[fam] + ' ' if fam else ''}{_short(m)} {_arrow(m)}", fontsize=9)
        ax.set_xlabel(PARAM_LABELS.get(param, param), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    notices = {s.notice for s in sweeps if s.notice}
    if notices:
        fig.suptitle("; ".join(sorted(notices)), fontsize=8, color="firebrick")
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
