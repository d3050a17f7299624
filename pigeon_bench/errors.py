"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations

import click

try:  # typer >= 0.24 vendors click and only handles its own ClickException (a plain click one -> traceback)
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # older typer runs on the click package
    _ClickException = click.ClickException


class UserError(_ClickException):
    """Bad input (missing file, corrupt image, wrong column, unknown name): one line, exit 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # one line on stderr
        click.echo(f"error: {self.format_message()}", err=True, file=file)
