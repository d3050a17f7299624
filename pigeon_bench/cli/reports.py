"""`pigeon-bench report`, `plot-sweep`, `compare` and `human-eval make|score`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pigeon_bench.cli import group
from pigeon_bench.errors import UserError
from pigeon_bench.stats import DEFAULT_N_BOOT

human_eval_app = group("Human-evaluation kit (Table 2).")


def _emit(text: str, out: Path | None) -> None:
    """Write ``text`` to ``out`` atomically, or print it."""
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    from pigeon_bench import fileio

    fileio.write_text(out, text)
    typer.echo(f"wrote {out}", err=True)


def report(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="Scored run folders (a sweep folder stands for its selected/ run).")] = None,
    scenario: Annotated[str | None, typer.Option(
        help="Only this scenario (required to match every run).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, latex, csv or html.")] = "md",
    paper: Annotated[bool, typer.Option(
        "--paper", help="Put the paper's numbers beside ours (alone when no run is given).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    ci: Annotated[bool, typer.Option(help="Show each value's bootstrap 95% CI.")] = True,
    ablation: Annotated[list[str] | None, typer.Option(
        help="NAME=RUN (repeatable): a Table 3-style ablation table instead of Table 1.")] = None,
    metric: Annotated[list[str] | None, typer.Option(
        help="Ablation columns (repeatable); default Table 3's p_cis, p_lpips, a_cs.")] = None,
    cases: Annotated[int, typer.Option(help="HTML: how many cases to show with their images.")] = 8,
    common_samples: Annotated[bool, typer.Option(
        help="Rank runs of different sample counts on the samples they share (default: refuse).")] = False,
) -> None:
    """Table 1 (or an ablation table) from scored runs, optionally beside the paper's numbers."""
    from pigeon_bench import reports as rep

    if ablation:
        if runs:
            raise UserError("give either RUN folders (Table 1) or --ablation NAME=RUN, not both")
        named = [rep.parse_named_run(a) for a in ablation]
        columns = tuple(metric or rep.TABLE3_COLUMNS)
        text = rep.build_ablation(named, fmt=fmt, paper=paper, columns=columns, ci=ci)
    else:
        if metric:
            raise UserError("--metric applies to --ablation tables only")
        text = rep.build_report(runs or [], scenario=scenario, fmt=fmt, paper=paper, ci=ci, n_cases=cases,
                                common_samples=common_samples)
    _emit(text, out)


def plot_sweep(
    sweeps: Annotated[list[str], typer.Argument(
        help="Sweep folders with alpha_r=... (or alpha_h=...) sub-runs, each DIR or NAME=DIR (NAME labels "
             "its line).")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    metric: Annotated[list[str] | None, typer.Option(
        help="Metrics to plot (repeatable); default p_cis, a_cs.")] = None,
) -> None:
    """Line plots of metrics against a swept mask ratio (the paper's Fig. 4 layout), one line per sweep."""
    from pigeon_bench.reports import plot_sweeps

    typer.echo(f"wrote {plot_sweeps(sweeps, out, tuple(metric or ('p_cis', 'a_cs')))}", err=True)


def compare(
    base: Annotated[Path, typer.Argument(help="Baseline run folder (scored).")],
    candidate: Annotated[Path, typer.Argument(help="Candidate run folder, scored on the same samples.")],
    gate: Annotated[list[str] | None, typer.Option(
        help="METRIC:TOLERANCE, signed in the worse direction, e.g. overall:-0.5 or fid:+2 (repeatable); "
             "default: every metric at 0.")] = None,
    alpha: Annotated[float, typer.Option(
        help="Family-wise significance level (Holm over gated metrics).")] = 0.05,
    fmt: Annotated[str, typer.Option("--format", help="md or json.")] = "md",
    n_boot: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = DEFAULT_N_BOOT,
    n_perm: Annotated[int, typer.Option(help="Permutations (exact enumeration when 2^n is smaller).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the permutations.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the report to this file.")] = None,
) -> None:
    """Paired per-metric comparison of two runs; exit 1 when a gated metric regresses significantly."""
    from pigeon_bench.compare import COMPARE_FORMATS, compare_runs, parse_gate

    if fmt not in COMPARE_FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(COMPARE_FORMATS)})")
    gates = dict(parse_gate(g) for g in gate or [])
    result = compare_runs(base, candidate, gates or None, alpha=alpha, n_boot=n_boot, n_perm=n_perm,
                          seed=seed)
    text = result.to_json() if fmt == "json" else result.to_markdown()
    if out is not None:
        _emit(text, out)
    typer.echo(text, nl=False)
    if result.failed:
        typer.echo(f"regression: {', '.join(result.failed)}", err=True)
        raise typer.Exit(1)


@human_eval_app.command("make")
def human_eval_make(
    run_a: Annotated[Path, typer.Argument(help="Run A (e.g. Pigeon): its preference rate is reported.")],
    run_b: Annotated[Path, typer.Argument(help="Run B (the method compared against).")],
    aspect: Annotated[str, typer.Option(help="personalization or semantic_alignment.")],
    out: Annotated[Path, typer.Option(help="Kit folder to create (must be new or empty).")],
    n: Annotated[int, typer.Option("--n", help="Cases (binary-choice tasks).")] = 50,
    checks: Annotated[int | None, typer.Option(
        help="Attention-check tasks; default n // 10, at least 1.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the case sample and the left/right order.")] = 0,
    base_url: Annotated[str, typer.Option(
        help="Prefix of image URLs in batch.csv (where DIR/ is hosted, ending in /).")] = "",
) -> None:
    """Write a binary-choice kit (MTurk batch CSV, HIT template, static pages, private answer key)."""
    from pigeon_bench.human_eval import make_kit

    info = make_kit(run_a, run_b, aspect, out, n=n, checks=checks, seed=seed, base_url=base_url)
    typer.echo(f"{out}: {info['cases']} cases + {info['checks']} attention checks ({info['labels']['a']} "
               f"vs {info['labels']['b']}, {info['aspect']}, {info['scenario']}); upload batch.csv, "
               "keep key.csv private", err=True)


@human_eval_app.command("score")
def human_eval_score(
    responses: Annotated[list[Path], typer.Argument(
        help="Results CSVs (MTurk batch results, or columns task_id, worker_id, choice).")],
    key: Annotated[list[Path] | None, typer.Option(
        help="Answer keys (repeatable); default: key.csv beside each responses file.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md (Table 2 layout) or csv.")] = "md",
    paper: Annotated[bool, typer.Option(
        "--paper", help="Show the paper's Table 2 value in each cell.")] = False,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Preference rates with 95% CIs in Table 2's layout; failed attention checks excluded and counted."""
    from pigeon_bench.human_eval import check_format, render_table2, score_responses

    check_format(fmt)
    _emit(render_table2(score_responses(responses, key or [], seed=seed), fmt=fmt, paper=paper), out)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command("plot-sweep")(plot_sweep)
    app.command()(compare)
    app.add_typer(human_eval_app, name="human-eval")
