"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """Bad input (missing file, corrupt image, wrong column, unknown name): one line, exit 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - one line on stderr
        click.echo(f"error: {self.format_message()}", err=True, file=file)
