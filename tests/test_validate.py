"""`pigeon-bench validate`: on the demo world the metrics order the known answers as their ground truth
implies, and a scorer that pairs the wrong images fails the check."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pigeon_bench import scoring
from pigeon_bench import validate as V
from pigeon_bench.cli import App
from pigeon_bench.cli import validate as validate_cli
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.metrics.table import HISTORY, REFERENCE
from pigeon_bench.profiles import TINY_NOTICE
from pigeon_bench.scoring import Scorer


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, _session_demo_dir: Path) -> dict[str, Path]:
    """The four known-answer methods generated and scored on the demo world, per scenario (in a cache of
    their own that shares the session's demo world, as every test's does)."""
    out, cache = tmp_path_factory.mktemp("validate"), tmp_path_factory.mktemp("cache")
    (cache / "demo").symlink_to(_session_demo_dir, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIGEON_BENCH_CACHE", str(cache))
        for scenario in ("sticker", "movie"):
            V.validate(scenario=scenario, out=out)
    return {scenario: out / scenario for scenario in ("sticker", "movie")}


@pytest.mark.parametrize("scenario", ["sticker", "movie"])
def test_the_demo_world_passes_every_expected_ordering(runs, scenario):
    result = V.check(runs[scenario])
    assert result.passed, result.to_markdown()
    assert result.scenario == scenario and result.n >= 16
    assert len(result.notices) == 1 and result.notices[0].startswith(TINY_NOTICE)
    expected = V.expected_orderings(grd_is_personal=scenario == "movie")  # movie: the reference is the target
    assert [o.expected for o in result.outcomes] == list(expected)
    assert all(o.p < V.ALPHA for o in result.outcomes)
    text = result.to_markdown()
    assert text.startswith("## pigeon-bench validate: PASS") and f"**{result.notices[0]}**" in text
    assert "| Sem. CIS ↑ | oracle > hist |" in text and "| Pers. LPIPS ↓ | hist < other-user |" in text


def test_the_orderings_of_each_scenario():
    sticker, movie = V.expected_orderings(), V.expected_orderings(grd_is_personal=True)
    as_text = {(e.metric, e.better, e.worse) for e in sticker}
    for metric in ("p_cis", "p_dis"):
        assert {(metric, b, w) for b in ("hist", "oracle") for w in ("other-user", "grd")} <= as_text
    for metric in ("a_cis", "a_dis"):
        assert {(metric, "grd", w) for w in ("hist", "oracle", "other-user")} | {(metric, "oracle", "hist")} \
            <= as_text
    assert {("a_cs", "oracle", "hist"), ("p_lpips", "hist", "other-user")} <= as_text
    assert ("p_msssim", "hist", "other-user") in as_text
    assert {("overall", "oracle", w) for w in ("hist", "grd", "other-user")} <= as_text
    # the movie reference is the target poster, a movie the user liked: Grd is personalized there
    assert set(movie) == {e for e in sticker
                          if not (e.worse == "grd" and e.metric in ("p_cis", "p_dis", "overall"))}


def _rescore(folder: Path, tmp: Path) -> Path:
    """A copy of the scored runs of ``folder``, scored again (with whatever the test patched)."""
    copy = tmp / "rescored"
    shutil.copytree(folder, copy)
    scorer = Scorer("tiny", n_boot=200, progress=False)
    for method in V.METHODS:
        scorer.score_run(copy / method)
    return copy


def swap_history_and_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every per-sample metric pairs the generated image with the other side: personalization with the
    reference, alignment with the history."""
    other = {HISTORY: REFERENCE, REFERENCE: HISTORY}

    def swapped(metrics):
        return tuple(dataclasses.replace(m, pairing=other[m.pairing]) if m.per_sample else m for m in metrics)

    monkeypatch.setattr(table, "TABLE", swapped(table.TABLE))
    monkeypatch.setattr(table, "PER_SAMPLE", swapped(table.PER_SAMPLE))


def test_history_and_reference_swapped_inside_the_scorer_fail(runs, tmp_path, monkeypatch):
    swap_history_and_reference(monkeypatch)
    result = V.check(_rescore(runs["sticker"], tmp_path))
    failed = {(o.expected.metric, o.expected.better, o.expected.worse) for o in result.failed}
    assert not result.passed
    assert {("p_cis", "hist", "grd"), ("p_dis", "oracle", "grd"), ("a_cis", "grd", "hist"),
            ("a_dis", "grd", "oracle")} <= failed, result.to_markdown()


def test_generated_images_replaced_by_the_history_fail(runs, tmp_path, monkeypatch):
    def latest_history(dataset, sample, generated):
        return scoring_inputs(dataset, sample, dataset.image_path(sample.history[-1]))

    scoring_inputs = scoring.sample_inputs
    monkeypatch.setattr(scoring, "sample_inputs", latest_history)
    result = V.check(_rescore(runs["sticker"], tmp_path))
    assert not result.passed
    failed = {(o.expected.metric, o.expected.better, o.expected.worse) for o in result.failed}
    assert ("a_cis", "grd", "hist") in failed and ("p_cis", "oracle", "other-user") in failed


def test_check_needs_every_method(runs):
    with pytest.raises(UserError, match="missing: oracle"):
        V.check({m: runs["sticker"] / m for m in ("hist", "grd", "other-user")})


def test_available_needs_a_scored_run_of_every_known_answer_method(runs, tmp_path):
    assert V.available(runs["sticker"])  # what reproduce checks before writing its validity table
    shutil.copytree(runs["sticker"], tmp_path / "runs", ignore=shutil.ignore_patterns("oracle"))
    assert not V.available(tmp_path / "runs")


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(cls=App, rich_markup_mode=None, add_completion=False)
    app.command("other")(lambda: None)  # a group of several commands, as the real one
    validate_cli.register(app)
    return app


def test_cli_checks_runs_prints_the_table_and_exits_1_on_a_failure(cli, runs, tmp_path, monkeypatch):
    ok = CliRunner().invoke(cli, ["validate", "--runs", str(runs["sticker"])])
    assert ok.exit_code == 0, ok.output
    assert "validate: PASS" in ok.output and "| Overall ↑ | oracle > grd |" in ok.output
    as_json = CliRunner().invoke(cli, ["validate", "--runs", str(runs["movie"]), "--format", "json"])
    assert json.loads(as_json.output)["passed"] is True
    swap_history_and_reference(monkeypatch)
    swapped = _rescore(runs["sticker"], tmp_path)
    bad = CliRunner().invoke(cli, ["validate", "--runs", str(swapped)])
    assert bad.exit_code == 1
    assert "**FAIL**" in bad.stdout and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("validate: ") and "expected ordering(s) failed" in bad.stderr


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "unknown format"),
    (["--alpha", "0"], "alpha must be between 0 and 1"),
    (["--runs", "x", "--limit", "3"], "--runs checks existing runs"),
])
def test_cli_bad_input_is_one_line(cli, args, message):
    result = CliRunner().invoke(cli, ["validate", *args])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
