"""The `pigeon-bench` command line. This module only parses arguments and calls into the library.

Each command group lives in its own marked section below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional  # noqa: F401 - used by command sections

import typer

from pigeon_bench.errors import UserError  # noqa: F401 - used by command sections

app = typer.Typer(
    name="pigeon-bench",
    help="Evaluate and benchmark personalized image generation (Pigeon, WWW 2025) and its baselines.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain one-line errors
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build, import and inspect scenario datasets.", no_args_is_help=True,
                       rich_markup_mode=None)
models_app = typer.Typer(help="List, check and prefetch backbone weights.", no_args_is_help=True,
                         rich_markup_mode=None)
train_app = typer.Typer(help="Train Pigeon: stage 1 (SFT) and stage 2 (DPO).", no_args_is_help=True,
                        rich_markup_mode=None)
human_eval_app = typer.Typer(help="Human-evaluation kit (Table 2).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(human_eval_app, name="human-eval")


# ---------------------------------------------------------------- data (issue 2)

# ---------------------------------------------------------------- models, score (issue 3)

# ---------------------------------------------------------------- generate, run, select (issue 4)

# ---------------------------------------------------------------- baselines: adapter fine-tuning (issue 4)

# ---------------------------------------------------------------- train (issue 5)

# ---------------------------------------------------------------- report, compare, human-eval (issue 6)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
