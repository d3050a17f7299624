"""The console-script entry point's warning format."""

from __future__ import annotations

import warnings

from pigeon_bench import cli


def test_main_prints_each_warning_once_on_one_line(monkeypatch, capsys):
    def app() -> None:
        for n in (18, 18, 20):
            with warnings.catch_warnings():  # as libraries do: resets the once-registry's effect
                warnings.simplefilter("always")
                warnings.warn(f"FID on {n} samples (< 2048)", UserWarning, stacklevel=1)

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    cli.main()
    assert capsys.readouterr().err.splitlines() == ["warning: FID on 18 samples (< 2048)",
                                                    "warning: FID on 20 samples (< 2048)"]
