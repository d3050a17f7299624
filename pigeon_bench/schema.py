"""The results schema: the columns of a run's per-sample scores and the metrics of its summary, both derived
from the metric table (``pigeon_bench.metrics.table``), and reading them back from a scored run, checked.

Per-sample scores: ``sample_id`` and one float column per per-sample metric (NaN where scoring skipped it).
Summary: ``metrics`` maps every metric to ``{"mean", "lo", "hi"}`` (null where skipped), with the
run's provenance (method, label, group, scenario, profile, notice, n, backbones, bootstrap, preprocess,
selection, alpha_r) and, when some weights were missing, ``skipped``: metric -> the missing backbone.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.runs.folder import RunFolder, Sweep, open_run

PER_SAMPLE_METRICS: tuple[str, ...] = tuple(m.name for m in table.PER_SAMPLE)
METRICS: tuple[str, ...] = table.NAMES


def scored_run(path: str | Path | RunFolder) -> RunFolder:
    """The one scored run ``path`` stands for: the run itself, or a sweep's ``selected/`` run."""
    run = open_run(path.path if isinstance(path, RunFolder) else path)
    if isinstance(run, Sweep):
        if run.selected.has_summary():
            return run.selected
        raise UserError(f"{run.path} is a sweep without a scored {run.selected.name}/ run (select and score "
                        f"it, or pass one sub-run such as {run.point(0.5).path})")
    if not run.path.is_dir():
        raise UserError(f"run folder not found: {run.path}")
    if not run.has_summary():
        raise UserError(f"missing file: {run.summary_path} (score the run first: "
                        f"pigeon-bench score {run.path})")
    return run


def read_summary(run: RunFolder) -> dict:
    """The run's summary, checked for a ``{"mean", ...}`` entry per metric of the table."""
    summary = run.read_summary()
    metrics = summary.get("metrics") if isinstance(summary, dict) else None
    if not isinstance(metrics, dict):
        raise UserError(f"{run.summary_path}: no \"metrics\" object")
    missing = [m for m in METRICS if not isinstance(metrics.get(m), dict) or "mean" not in metrics[m]]
    if missing:
        raise UserError(f"{run.summary_path}: missing metric(s) {', '.join(missing)}")
    return summary


def read_scores(run: RunFolder) -> pd.DataFrame:
    """The run's per-sample metrics indexed by sample id (unique ids required), sorted by id."""
    df = run.read_scores(PER_SAMPLE_METRICS)
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise UserError(f"{run.scores_path}: duplicate sample id {dup.iloc[0]!r}")
    return df.set_index("sample_id").sort_index()
