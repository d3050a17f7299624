"""`compare`: paired per-metric tests between two runs and CI gates (exit 0 / 1 / 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_report_fixtures import (  # noqa: F401 - cli_fixture provides the cli fixture
    assert_one_line_error,
    base_scores,
    cli_fixture,
    write_run,
)

from pigeon_bench.compare import compare_runs, parse_gate
from pigeon_bench.errors import UserError

N = 40


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmp")
    scores = base_scores(n=N, seed=1)
    base = write_run(root / "base", scores)
    dropped = scores.copy()
    dropped["p_cis"] -= 3.0  # a planted drop in personalization CIS on every sample
    drop = write_run(root / "drop", dropped)
    better = scores.copy()
    better["p_cis"] += 3.0
    up = write_run(root / "up", better)
    fid_worse = write_run(root / "fidworse", scores, fid=95.0, fid_halfwidth=2.0)
    other = write_run(root / "other", base_scores(n=N - 1, seed=1))
    movie = write_run(root / "movie", scores, scenario="movie")
    paper = write_run(root / "paper", scores, profile="paper")
    return {"base": base, "drop": drop, "up": up, "fidworse": fid_worse, "other": other, "movie": movie,
            "paper": paper, "root": root}


def test_run_against_itself_passes(cli, runs):
    r = cli("compare", runs["base"], runs["base"], "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 0, r.stderr
    assert "compare: PASS" in r.stdout and r.stderr == ""
    res = compare_runs(runs["base"], runs["base"], n_boot=200, n_perm=200)
    assert all(m.delta == 0 and m.p == 1.0 for m in res.results)


def test_planted_drop_fails_naming_the_metric(cli, runs):
    r = cli("compare", runs["base"], runs["drop"], "--n-boot", 300, "--n-perm", 300)
    assert r.exit_code == 1
    assert "regression: overall, p_cis" in r.stderr  # Overall = (p_cis + a_cs) / 2 drops too
    assert "compare: FAIL (overall, p_cis)" in r.stdout
    res = compare_runs(runs["base"], runs["drop"], n_boot=300, n_perm=300)
    pcis = next(m for m in res.results if m.metric == "p_cis")
    assert pcis.delta == pytest.approx(-3.0) and pcis.p < 0.01 and pcis.verdict == "FAIL"
    ov = next(m for m in res.results if m.metric == "overall")
    assert ov.delta == pytest.approx(-1.5)
    assert {m.metric: m.verdict for m in res.results}["a_cs"] == "pass"


def test_improvement_never_fails(cli, runs):
    r = cli("compare", runs["base"], runs["up"], "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 0 and "PASS" in r.stdout


def test_gates_and_tolerances(cli, runs):
    base, drop = runs["base"], runs["drop"]
    # Only overall gated, allowed to drop by 2: the -1.5 drop is within tolerance.
    r = cli("compare", base, drop, "--gate", "overall:-2", "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 0
    r = cli("compare", base, drop, "--gate", "overall:-1", "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 1 and "regression: overall" in r.stderr
    # Ungated metrics are reported as worse, but do not fail the gate.
    r = cli("compare", base, drop, "--gate", "a_cs", "--format", "json", "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    verdicts = {m["metric"]: m["verdict"] for m in doc["results"]}
    assert doc["passed"] and verdicts["p_cis"] == "worse" and verdicts["a_cs"] == "pass"


def test_fid_gate_uses_the_summary_cis(cli, runs):
    r = cli("compare", runs["base"], runs["fidworse"], "--gate", "fid:+2", "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 1 and "regression: fid" in r.stderr
    r = cli("compare", runs["base"], runs["fidworse"], "--gate", "fid:+20", "--n-boot", 200, "--n-perm", 200)
    assert r.exit_code == 0
    fid = next(m for m in compare_runs(runs["base"], runs["fidworse"], n_boot=200, n_perm=200).results
               if m.metric == "fid")
    assert fid.delta == pytest.approx(15.0) and fid.lo > 0 and "unpaired" in fid.method


def test_results_are_seeded(runs):
    a = compare_runs(runs["base"], runs["drop"], n_boot=200, n_perm=200, seed=3).to_dict()
    b = compare_runs(runs["base"], runs["drop"], n_boot=200, n_perm=200, seed=3).to_dict()
    assert a == b


def test_samples_are_paired_by_id_not_by_row(runs, tmp_path):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(runs["base"], shuffled)
    df = pd.read_parquet(shuffled / "scores.parquet").sample(frac=1.0, random_state=0)
    df.to_parquet(shuffled / "scores.parquet", index=False)
    res = compare_runs(runs["base"], shuffled, n_boot=200, n_perm=200)
    assert all(m.delta == 0 for m in res.results) and not res.failed


def test_parse_gate():
    assert parse_gate("overall:-0.5") == ("overall", -0.5)
    assert parse_gate("fid:+2.0") == ("fid", 2.0)
    assert parse_gate("p_lpips") == ("p_lpips", 0.0)
    with pytest.raises(UserError, match="allowed drop, written p_cis:-1"):
        parse_gate("p_cis:+1")


@pytest.mark.parametrize("args, message", [
    (["{base}", "{base}", "--gate", "psnr:-1"], "unknown metric 'psnr'"),
    (["{base}", "{base}", "--gate", "fid:-1"], "allowed rise, written fid:+1"),
    (["{base}", "{base}", "--gate", "overall:lots"], "is not a number"),
    (["{base}", "{other}"], "runs are on different samples: 1 only in base, 0 only in candidate"),
    (["{base}", "{movie}"], "runs are on different scenarios"),
    (["{base}", "{paper}"], 'different profile ("tiny" vs "paper")'),
    (["{base}", "{base}", "--alpha", "1.5"], "alpha must be between 0 and 1"),
    (["{base}", "{base}", "--format", "xml"], "unknown format 'xml'"),
    (["{base}", "{noscores}"], "missing file"),
    (["{base}", "{root}/nowhere"], "run folder not found"),
    (["{base}", "{dup}"], "duplicate sample id 's00'"),
    (["{base}", "{base}", "--n-boot", "10"], "at least 100"),
])
def test_usage_errors_exit_2_in_one_line(cli, runs, tmp_path, args, message):
    noscores = tmp_path / "noscores"
    shutil.copytree(runs["base"], noscores)
    (noscores / "scores.parquet").unlink()
    dup = tmp_path / "dup"
    shutil.copytree(runs["base"], dup)
    df = pd.read_parquet(dup / "scores.parquet")
    pd.concat([df, df.head(1)]).to_parquet(dup / "scores.parquet", index=False)
    fill = {k: v for k, v in runs.items()} | {"noscores": noscores, "dup": dup}
    assert_one_line_error(cli("compare", *[a.format(**fill) for a in args]), message)
