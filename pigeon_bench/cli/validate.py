"""`pigeon-bench validate`: the known-answer check of the metrics (``pigeon_bench.validate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pigeon_bench.errors import UserError
from pigeon_bench.profiles import HELP as PROFILE_HELP

FORMATS = ("md", "json")


def validate(
    scenario: Annotated[str, typer.Option(help="sticker or movie.")] = "sticker",
    data: Annotated[Path | None, typer.Option(
        help="A demo dataset folder; default: the offline demo world, built into the cache (tiny profile).")
    ] = None,
    runs: Annotated[Path | None, typer.Option(
        help="Check these scored runs instead of generating: a folder with one run per method (hist, grd, "
             "oracle, other-user), e.g. a `pigeon-bench run` output's OUT/<scenario>.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Keep the generated runs here (default: a temporary folder).")] = None,
    profile: Annotated[str | None, typer.Option(help=PROFILE_HELP + ". Default: the data's.")] = None,
    device: Annotated[str, typer.Option(help="torch device for scoring.")] = "cpu",
    limit: Annotated[int | None, typer.Option(help="At most this many test samples.")] = None,
    alpha: Annotated[float, typer.Option(help="Significance level of each paired test.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of the generation, the bootstrap and the permutations.")
                    ] = 0,
    fmt: Annotated[str, typer.Option("--format", help="md or json.")] = "md",
) -> None:
    """Check that the metrics order known answers (Hist, Grd, Oracle, Other user) as their ground truth
    implies; exit 1 when an expected ordering fails."""
    from pigeon_bench import validate as check_metrics

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    if runs is not None:
        if data is not None or out is not None or limit is not None:
            raise UserError("--runs checks existing runs: drop --data, --out and --limit")
        result = check_metrics.check(runs, alpha=alpha, seed=seed)
    else:
        result = check_metrics.validate(data, scenario, out, profile=profile, device=device, limit=limit,
                                        seed=seed, alpha=alpha)
    typer.echo(result.to_json() if fmt == "json" else result.to_markdown(), nl=False)
    if not result.passed:
        failed = ", ".join(f"{o.expected.metric} {o.expected.better} vs {o.expected.worse}"
                           for o in result.failed)
        typer.echo(f"validate: {len(result.failed)} expected ordering(s) failed: {failed}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
