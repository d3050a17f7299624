"""User-facing errors: the command line prints them as one line and exits with code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (missing file, corrupt image, wrong column, unknown name, contradicting options)."""

    exit_code = 2
