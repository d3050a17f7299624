"""Report rows: one scored run ("ours", read through its RunFolder) or one transcribed row of the paper
("paper"). Derived metrics (Overall) are always recomputed from their components, never copied."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.runs.folder import RunFolder
from pigeon_bench.schema import METRICS, PER_SAMPLE_METRICS, read_scores, read_summary, scored_run

OURS, PAPER = "ours", "paper"  # where a row comes from


@dataclass
class Row:
    """One table row: a scored run (source OURS) or a transcribed row of the paper (source PAPER)."""

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
    run: RunFolder | None = None


def number(x) -> float:
    """A JSON/CSV number, or NaN for null/empty."""
    try:
        return float("nan") if x is None or x == "" else float(x)
    except (TypeError, ValueError):
        return float("nan")


def with_derived(mean: dict[str, float]) -> dict[str, float]:
    """``mean`` with each derived metric of the table recomputed from its inputs (NaN when one is missing)."""
    out = dict(mean)
    for m in table.TABLE:
        if m.inputs:
            out[m.name] = float(m.function(*(out.get(i, math.nan) for i in m.inputs)))
    return out


def method_key(method: str) -> str:
    """Canonical method name: lower case, folder spelling "-star" read as "*"."""
    return method.strip().lower().replace("-star", "*")


def load_run(path: str | Path | RunFolder) -> Row:
    """The Table 1 row of the scored run behind ``path`` (a sweep stands for its selected/ run)."""
    run = scored_run(path)
    summary = read_summary(run)
    manifest = run.manifest_or_empty()
    metrics = summary["metrics"]
    mean = with_derived({m: number(metrics[m]["mean"]) for m in METRICS})
    method = str(summary.get("method") or manifest.get("method") or run.name)
    label = str(summary.get("label") or manifest.get("label") or method)
    selection = summary.get("selection") or manifest.get("selection")
    if selection and selection not in label:
        label = f"{label} ({selection})"
    alpha_r = summary.get("alpha_r", manifest.get("alpha_r"))
    if alpha_r is not None and not selection and "α_r" not in label:
        label = f"{label} (α_r={float(alpha_r):.1f})"
    scenario = summary.get("scenario") or manifest.get("scenario")
    if not scenario:
        raise UserError(f"{run.summary_path}: no scenario")
    n = summary.get("n")
    return Row(label=label, method=method_key(method),
               group=str(summary.get("group") or manifest.get("group") or "Other"), scenario=str(scenario),
               source=OURS, mean=mean, lo={m: number(metrics[m].get("lo")) for m in METRICS},
               hi={m: number(metrics[m].get("hi")) for m in METRICS}, n=int(n) if n is not None else None,
               notice=summary.get("notice"), selection=selection,
               alpha_r=number(alpha_r), run=run)


def on_samples(row: Row, sample_ids: list[str]) -> Row:
    """``row`` recomputed on ``sample_ids`` only (means and bootstrap CIs from its per-sample scores, with the
    summary's bootstrap settings); FID, a set statistic, stays only when the row already holds exactly
    those samples."""
    import dataclasses

    from pigeon_bench import stats

    scores = read_scores(row.run).loc[sample_ids]
    boot = read_summary(row.run).get("bootstrap") or {}
    n_boot, seed = int(boot.get("n_boot", stats.DEFAULT_N_BOOT)), int(boot.get("seed", 0))
    mean, lo, hi = dict(row.mean), dict(row.lo), dict(row.hi)
    for m in PER_SAMPLE_METRICS:
        values = scores[m].to_numpy(dtype=float)
        mean[m] = float(values.mean())
        lo[m], hi[m] = stats.bootstrap_ci(values, n_boot, seed)
    for m in table.TABLE:
        if m.inputs:
            lo[m.name] = hi[m.name] = math.nan
        elif m.kind == table.SET and row.n != len(sample_ids):
            mean[m.name] = lo[m.name] = hi[m.name] = math.nan
    return dataclasses.replace(row, mean=with_derived(mean), lo=lo, hi=hi, n=len(sample_ids))

