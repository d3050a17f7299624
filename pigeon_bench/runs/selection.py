"""Choosing α_r for a sweep: the paper's test-time rule (per sample, §3.1.4) and one fixed α_r picked on the
valid split; each selection is written as a run folder of its own (``Sweep.selected``, ``Sweep.valid_chosen``)
and scored like any run."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pandas as pd

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import overall
from pigeon_bench.runs.folder import RunFolder, Sweep, newer

SELECTION_RULE = "per sample, the α_r maximizing (p_cis + a_cs) / 2, measured on the test images themselves"
VALID_RULE = "one fixed α_r maximizing the mean of (p_cis + a_cs) / 2 over the valid split"
CRITERION = ("p_cis", "a_cs")


def choose_per_sample(scores: dict[float, pd.DataFrame]) -> pd.DataFrame:
    """Per sample, the α_r maximizing (p_cis + a_cs) / 2 (ties: the smaller α_r).

    Returns columns sample_id, alpha_r, criterion, in the sample order of the first frame.
    """
    frames = [pd.DataFrame({"sample_id": df["sample_id"].astype(str).to_numpy(), "alpha_r": a,
                            "criterion": overall(df["p_cis"].to_numpy(), df["a_cs"].to_numpy())})
              for a, df in sorted(scores.items())]
    ids = [set(f["sample_id"]) for f in frames]
    if any(s != ids[0] for s in ids):
        raise UserError("the sweep's α_r runs do not hold the same samples; finish generating them first")
    table = pd.concat(frames, ignore_index=True)
    if table["criterion"].isna().any():
        raise UserError("missing p_cis or a_cs scores in the sweep; score it again")
    best = table.sort_values(["criterion", "alpha_r"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates("sample_id").set_index("sample_id")
    return best.loc[frames[0]["sample_id"]].reset_index()


def choose_fixed(scores: dict[float, pd.DataFrame]) -> tuple[float, dict[float, float]]:
    """The one α_r with the largest mean (p_cis + a_cs) / 2 (ties: the smaller α_r), and every α_r's mean."""
    means = {a: float(overall(df["p_cis"].to_numpy(), df["a_cs"].to_numpy()).mean())
             for a, df in sorted(scores.items())}
    best = max(means, key=lambda a: (means[a], -a))
    return best, means


def _check_criterion(sweep: Sweep) -> None:
    """The rule needs p_cis and a_cs: refuse a sweep scored without them (CLIP weights absent)."""
    for run in sweep.runs():
        skipped = set((run.read_summary().get("skipped") or {}) if run.has_summary() else ())
        if skipped & set(CRITERION):
            raise UserError(f"{run.path} was scored without {', '.join(sorted(skipped & set(CRITERION)))} "
                            "(its backbone's weights are missing): α_r cannot be selected")


def select_test_time(sweep: Sweep) -> RunFolder:
    """Write ``Sweep.selected``: per sample, the best α_r by the paper's rule on the test metrics."""
    _check_criterion(sweep)
    dest = sweep.selected
    if newer(dest.manifest_path, [r.scores_path for r in sweep.runs()]):
        return dest  # selected since the sweep was last scored
    scores = sweep.read_scores_by_alpha(CRITERION)
    picks = choose_per_sample(scores)
    top = sweep.manifest()
    dest.clear()
    dest.copy_items_from([(sid, sweep.point(a)) for sid, a in picks[["sample_id", "alpha_r"]].to_numpy()])
    dest.write_manifest({
        **{k: v for k, v in top.items() if k not in ("sweep", "runs", "complete")},
        "alpha_r": None, "selection": f"test-time best of {len(scores)}",
        "selection_rule": SELECTION_RULE, "sample_ids": list(picks["sample_id"]), "counts": {"n": len(picks)},
        "complete": True,
    })
    dest.write_selection(picks)
    return dest


def valid_choice(valid: Sweep) -> tuple[float, dict[float, float]]:
    """(the α_r that scores best on the valid split, each α_r's mean criterion there)."""
    valid_manifest = valid.manifest()
    if valid_manifest.get("split") != "valid":
        raise UserError(f"{valid.path} is a sweep on split {valid_manifest.get('split')!r}, not 'valid'")
    _check_criterion(valid)
    return choose_fixed(valid.read_scores_by_alpha(CRITERION))


def select_on_valid(sweep: Sweep, valid: Sweep) -> RunFolder:
    """Write ``Sweep.valid_chosen``: the test run of the one α_r that scores best on the valid split."""
    best, means = valid_choice(valid)
    dest = sweep.valid_chosen
    deps = [r.scores_path for r in sweep.runs() + valid.runs()]
    valid_run = str(valid.path.resolve())
    if newer(dest.manifest_path, deps) and dest.manifest()["valid_run"] == valid_run:
        return dest  # chosen since both sweeps were last scored
    src = sweep.point(best)
    manifest = src.manifest()
    dest.clear()
    relabel = {"label": sweep.manifest()["label"], "selection": f"fixed α_r={best:.1f} chosen on valid"}
    dest.copy_scores_from(src, relabel)
    dest.copy_items_from([(sid, src) for sid in manifest["sample_ids"]])
    dest.write_manifest({
        **{k: v for k, v in manifest.items() if k != "timings"}, **relabel,
        "selection_rule": VALID_RULE, "valid_run": valid_run,
        "valid_means": {f"{a:.1f}": round(m, 4) for a, m in means.items()},
    })
    return dest


def score(runs: Sequence[RunFolder], scorer, means_only: Sequence[RunFolder] = ()) -> None:
    """Score the run folders not already scored by this scorer since their last change (``means_only``:
    those summarized without FID's interval: a selection reads their means, no report ranks them). A
    summary without the interval is summarized again where one is now wanted.

    One pass of one scorer over all of them: history and reference images through each backbone once.
    """
    means_only = set(means_only)
    todo = unscored(runs, scorer, means_only)
    if todo:
        scorer.score_runs(todo, means_only=means_only)


def unscored(runs: Sequence[RunFolder], scorer, means_only: Collection[RunFolder] = ()) -> list[RunFolder]:
    """The runs that ``score`` would score (not scored by this scorer since their last change, or scored
    without the FID interval they now need)."""
    return [run for run in runs if not is_scored(run, scorer, intervals=run not in means_only)]


def is_scored(run: RunFolder, scorer, intervals: bool = False) -> bool:
    """Whether the run's summary is newer than its manifest and came from the same scorer setup (with its
    set-level intervals, if ``intervals``)."""
    return run.scored_since_change() and scorer.wrote(run.read_summary(), intervals)


def sweep_means_only(sweep: Sweep, valid: Sweep | None, candidate_intervals: bool) -> list[RunFolder]:
    """The folders of a sweep (and its valid sweep) summarized without FID's interval: the valid candidates,
    and the test candidates unless ``candidate_intervals``."""
    return (valid.runs() if valid else []) + ([] if candidate_intervals else sweep.runs())


def select(sweep: Sweep, scorer, valid: Sweep | None = None,
           candidate_intervals: bool = False) -> list[RunFolder]:
    """Score a sweep where needed, write its selections and score them; returns the selection folders."""
    means_only = sweep_means_only(sweep, valid, candidate_intervals)
    todo = [r for s in [sweep] + ([valid] if valid else []) for r in s.runs()
            if not r.has_scores() or (r not in means_only and not scorer.has_intervals(r.read_summary()))]
    score(todo, scorer, means_only)
    selected = select_test_time(sweep)
    score([selected], scorer)
    if valid is None:
        return [selected]
    score([sweep.point(valid_choice(valid)[0])], scorer)  # its copy is a ranked row: FID's interval too
    return [selected, select_on_valid(sweep, valid)]
