"""The ``pigeon-bench`` command line. Its modules only parse arguments and call into the library.

Command groups: data (cli/data.py), models and methods (cli/models.py), generate/run/select/score
(cli/runs.py), report/compare/plot-sweep/human-eval (cli/reports.py); the method packages add their own
groups (``pigeon``, ``train``, ``baselines``) through the command registry below, and third-party packages
through the entry-point group ``pigeon_bench.commands`` (an entry point names the group and points at a
``typer.Typer``).
"""

from __future__ import annotations

import errno
import importlib
from importlib.metadata import entry_points

import typer

from pigeon_bench.errors import UserError

# Click's usage errors (an option value that does not parse, an unknown option), reached through typer's
# public BadParameter: printed as one line like every other bad input.
_USAGE_ERROR = typer.BadParameter.__base__
# Modules of the method packages whose ``COMMANDS`` ({name: typer.Typer}) become command groups.
METHOD_COMMANDS = ("pigeon.cli", "baselines.cli")


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError a user can act on (full disk, permissions, a file where a folder goes)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and run the same command again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}: choose a folder you can write to"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        return f"{exc.strerror}{where}: a file stands where a folder is needed, or the reverse"
    return ""


class App(typer.core.TyperGroup):
    """The root command: a UserError anywhere below is one line on stderr and exit code 2 (and so is an
    OSError a user can act on: a full disk, a missing permission)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(UserError.exit_code) from None
        except _USAGE_ERROR as exc:
            typer.echo(f"error: {exc.format_message()} (see --help)", err=True)
            raise typer.Exit(UserError.exit_code) from None
        except OSError as exc:
            line = _os_error_line(exc)
            if not line:
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(UserError.exit_code) from None


def group(help_text: str) -> typer.Typer:
    """A command group with plain one-line errors (no rich markup)."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)


app = typer.Typer(
    cls=App,
    name="pigeon-bench",
    help="Evaluate and benchmark personalized image generation (Pigeon, WWW 2025) and its baselines.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain one-line errors
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount() -> None:
    from pigeon_bench.cli import cache, data, models, reports, runs, validate

    for module in (data, models, runs, reports, validate, cache):
        module.register(app)
    groups: dict[str, typer.Typer] = {}
    for name in METHOD_COMMANDS:
        groups.update(importlib.import_module(name).COMMANDS)
    for ep in entry_points(group="pigeon_bench.commands"):
        groups.setdefault(ep.name, ep.load())
    for name, sub in groups.items():
        app.add_typer(sub, name=name)


_mount()


def main() -> None:
    """Console-script entry point: warnings print as one line each, each text once per process (libraries
    that reset the warning filters cannot make a repeated warning, e.g. FID's n < 2048, print again)."""
    import sys
    import warnings

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("once", UserWarning)
    app()


if __name__ == "__main__":
    main()
