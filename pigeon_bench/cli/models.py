"""`pigeon-bench models list|check|prefetch` (the weight table) and `pigeon-bench methods`."""

from __future__ import annotations

from typing import Annotated

import typer

from pigeon_bench.cli import group
from pigeon_bench.errors import UserError
from pigeon_bench.profiles import DEFAULT as DEFAULT_PROFILE
from pigeon_bench.profiles import HELP as PROFILE_HELP

models_app = group("List, check and prefetch every model a profile uses (scoring backbones and methods' "
                   "models).")

_IDS = Annotated[list[str] | None, typer.Argument(help="Model ids (default: all, or those of --role).")]
_ROLE = Annotated[str | None, typer.Option(help="Only scoring backbones or generation models.")]


def _select(ids: list[str] | None, role: str | None) -> list[str]:
    from pigeon_bench import weights

    if role is not None and role not in (weights.SCORING, weights.GENERATION):
        raise UserError(f"unknown role {role!r} (known: {weights.SCORING}, {weights.GENERATION})")
    chosen = ids or weights.ids(role)
    for i in chosen:
        weights.get(i)
    return chosen


@models_app.command("list")
def models_list(ids: _IDS = None, role: _ROLE = None,
                profile: Annotated[str, typer.Option(help=PROFILE_HELP)] = DEFAULT_PROFILE.name) -> None:
    """Show each model, what uses it and where its weights are (no hashing, no loading)."""
    from pigeon_bench import weights
    from pigeon_bench.profiles import get_profile

    prof = get_profile(profile)
    for i in _select(ids, role):
        spec = weights.get(i)
        if prof.seeded_models:
            typer.echo(f"{i}: {spec.description} [{spec.role}; used by {spec.used_by}]\n"
                       "  weights: a tiny seeded stand-in of the same class, built offline")
            continue
        r = weights.resolve(i)
        where = ", ".join(map(str, r.paths)) if r.found else "MISSING (looked in " + ", ".join(r.looked) + ")"
        typer.echo(f"{i}: {spec.description} [{spec.role}; used by {spec.used_by}]\n  weights: {where}\n"
                   f"  override: ${spec.env_var}")
    if prof.notice:
        typer.echo(prof.notice)


@models_app.command("check")
def models_check(ids: _IDS = None, role: _ROLE = None,
                 profile: Annotated[str, typer.Option(help=PROFILE_HELP)] = DEFAULT_PROFILE.name) -> None:
    """Resolve every selected model and print its fingerprint; exit 2 naming all that are missing."""
    from pigeon_bench import weights
    from pigeon_bench.profiles import get_profile

    prof = get_profile(profile)
    chosen = _select(ids, role)
    scoring = [i for i in chosen if weights.get(i).role == weights.SCORING]
    generation = [i for i in chosen if i not in scoring]
    if not prof.seeded_models:
        missing = [r for r in map(weights.resolve, chosen) if not r.found]
        if missing:
            raise UserError(weights.missing_message(missing, prof.name))
    if scoring:
        for bid, b in prof.scoring_backbones(ids=tuple(scoring)).items():
            typer.echo(f"{bid}: {b.fingerprint}")
    for i in generation:
        if prof.seeded_models:
            from pigeon_bench import fileio

            folder = prof.resolve_model(i)
            typer.echo(f"{i}: {fileio.folder_fingerprint(folder)} (tiny folder {folder})")
        else:
            typer.echo(f"{i}: found ({weights.resolve(i).paths[0]})")
    if prof.notice:
        typer.echo(prof.notice)


@models_app.command("prefetch")
def models_prefetch(ids: _IDS = None, role: _ROLE = None) -> None:
    """Download the paper profile's models into the usual caches (needs network; unset HF_HUB_OFFLINE)."""
    from pigeon_bench import weights

    for i, r in weights.prefetch(_select(ids, role)).items():
        typer.echo(f"{i}: {', '.join(map(str, r.paths))}")


def methods(
    names: Annotated[list[str] | None, typer.Argument(help="Methods to describe (default: all).")] = None,
    profile: Annotated[str, typer.Option(help="The defaults of this profile: " + PROFILE_HELP)
                       ] = DEFAULT_PROFILE.name,
) -> None:
    """List the registered methods, their Table 1 groups and their options with defaults."""
    from pigeon_bench.generation import display_label, generators
    from pigeon_bench.profiles import get_profile

    prof = get_profile(profile)
    for name in names or generators.names():
        cls = generators.get(name)
        extra = ", reference mask ratio α_r" if cls.supports_alpha_r else ""
        typer.echo(f"{name}  ({display_label(cls)}; {cls.group}{extra})")
        for o in cls.options:
            kind = o.kind if isinstance(o.kind, str) else o.kind.__name__
            default = o.default_for(prof)
            shown = "" if default is None else f" [default: {default}]"
            choices = f" ({'|'.join(o.choices)})" if o.choices else ""
            typer.echo(f"  -o {o.name}=<{kind}>{choices}: {o.help}{shown}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.command("methods")(methods)
