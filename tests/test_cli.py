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


def test_an_option_value_that_does_not_parse_is_one_line(tmp_path):
    from typer.testing import CliRunner

    for args in (["data", "build", "movie", "--raw", str(tmp_path), "--out", str(tmp_path / "o"),
                  "--min-rating", "abc"], ["generate", "--data", str(tmp_path), "--bogus", "1"]):
        result = CliRunner().invoke(cli.app, args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and "(see --help)" in result.output
