"""Fig. 4-style plots: metrics against a swept parameter (``param=value`` sub-runs of a sweep folder)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.reports.rows import load_run
from pigeon_bench.runs.folder import RunFolder, param_points

PARAM_LABELS = {"alpha_r": r"reference mask ratio $\alpha_r$", "alpha_h": r"history mask ratio $\alpha_h$"}


@dataclass
class SweepPoints:
    """One sweep's line: its label, the swept parameter and one point per sub-run."""

    label: str
    param: str
    points: pd.DataFrame  # x, then <metric>, <metric>_lo, <metric>_hi
    notice: str | None
    scenario: str


def sweep_points(sweep_dir: str | Path) -> SweepPoints:
    """The points of a sweep folder's ``param=value`` sub-runs (x = value; metric means and CIs)."""
    found = param_points(sweep_dir)
    if not found:
        raise UserError(f"{sweep_dir}: no sub-runs named like alpha_r=0.5")
    params = {param for param, _, _ in found}
    if len(params) > 1:
        raise UserError(f"{sweep_dir}: sub-runs sweep several parameters ({', '.join(sorted(params))})")
    rows = [(x, load_run(run)) for _, x, run in found]
    points = [{"x": x, **{f"{m}{part}": getattr(row, attr)[m] for m in table.NAMES
                          for part, attr in (("", "mean"), ("_lo", "lo"), ("_hi", "hi"))}} for x, row in rows]
    manifest = RunFolder(sweep_dir).manifest_or_empty()
    label = str(manifest.get("label") or manifest.get("method") or rows[0][1].label)
    notice = next((row.notice for _, row in rows if row.notice), None)
    scenarios = {row.scenario for _, row in rows}
    if len(scenarios) > 1:
        raise UserError(f"{sweep_dir}: sub-runs of several scenarios ({', '.join(sorted(scenarios))})")
    return SweepPoints(label, params.pop(), pd.DataFrame(points), notice, scenarios.pop())


def parse_labelled(text: str | Path) -> tuple[str | None, Path]:
    """``NAME=DIR`` -> (NAME, DIR); a plain DIR (or a folder whose own name holds "=") -> (None, DIR)."""
    name, sep, path = str(text).partition("=")
    if sep and name and path and not Path(text).exists():
        return name.strip(), Path(path.strip())
    return None, Path(text)


def plot_sweeps(sweep_dirs: Sequence[str | Path], out: str | Path,
                metrics: Sequence[str] = ("p_cis", "a_cs")) -> Path:
    """Fig. 4-style line plots: a panel per metric, a line (with its 95% CI band) per sweep; writes a PNG.

    Each sweep is a folder or ``NAME=DIR`` (NAME labels its line); sweeps of different scenarios are refused.
    """
    table.check_names(list(metrics))
    if not sweep_dirs:
        raise UserError("give at least one sweep folder")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"{out}: the plot is written as PNG; name the file *.png")
    named = [parse_labelled(d) for d in sweep_dirs]
    sweeps = [sweep_points(d) for _, d in named]
    for s, (name, _) in zip(sweeps, named, strict=True):
        s.label = name or s.label
    scenarios = {s.scenario for s in sweeps}
    if len(scenarios) > 1:
        raise UserError(f"sweeps of different scenarios ({', '.join(sorted(scenarios))}) cannot share a plot")
    labels = [s.label for s in sweeps]
    for s, (name, d) in zip(sweeps, named, strict=True):
        if labels.count(s.label) > 1 and name is None:  # tell same-label sweeps apart by folder
            s.label = f"{s.label} [{d.name}]"
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
        metric = table.get(m)
        ax.set_title(f"{metric.title} {metric.arrow}", fontsize=9)
        ax.set_xlabel(PARAM_LABELS.get(param, param), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    notices = {s.notice for s in sweeps if s.notice}
    if notices:
        width = int(16 * 3.2 * len(metrics))  # characters of 8 pt text across the figure
        fig.suptitle(textwrap.fill("; ".join(sorted(notices)), width), fontsize=8, color="firebrick")
    with fileio.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
