"""Run folders: generate, resume, determinism, the α_r sweep, selection rules, the CLI's bad input."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_generation import NoiseGenerator, make_dataset, registered

from pigeon_bench import fileio, runs
from pigeon_bench.cli import main
from pigeon_bench.errors import UserError
from pigeon_bench.generation import ALPHA_R_GRID, option_pairs
from pigeon_bench.profiles import TINY
from pigeon_bench.profiles import TINY_NOTICE as TINY_PROFILE_NOTICE
from pigeon_bench.runs import RunFolder, Sweep
from pigeon_bench.runs import selection as sel
from pigeon_bench.runs.pipeline import resolve_data
from pigeon_bench.schema import PER_SAMPLE_METRICS


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


@pytest.fixture
def noise_method() -> Iterator[str]:
    with registered("noise", NoiseGenerator) as name:
        yield name


def spec(data: Path, method: str, **kw) -> runs.GenerateSpec:
    return runs.GenerateSpec(data=data, method=method, **{"profile": "tiny", **kw})


def image_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "images").glob("*.png"))}


def test_generate_writes_a_run_folder(dataset_dir, tmp_path):
    out = tmp_path / "grd"
    m = runs.generate(spec(dataset_dir, "grd"), out)
    assert sorted(image_bytes(out)) == ["s0.png", "s1.png"]
    ref = np.asarray(Image.open(dataset_dir / "images" / "i7.png").convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "images" / "s0.png")), ref)
    assert json.loads((out / "meta" / "s0.json").read_text()) == {"source": "i7"}
    disk = RunFolder(out).manifest()
    assert disk == json.loads(json.dumps(m))
    assert (disk["method"], disk["label"], disk["group"], disk["scenario"], disk["split"]) == \
        ("grd", "Grd", "Reference", "sticker", "test")
    assert disk["data"] == str(dataset_dir.resolve()) and disk["alpha_r"] is None
    assert disk["profile"] == "tiny" and disk["notice"] == TINY_PROFILE_NOTICE
    assert disk["counts"] == {"n": 2, "generated": 2, "skipped": 0} and disk["complete"] is True
    assert disk["sample_ids"] == ["s0", "s1"] and disk["versions"]["torch"]
    assert disk["models"] == {"method": "grd", "profile": "tiny"}
    assert not list(out.rglob("*.tmp*"))


def test_same_seed_same_images_whatever_the_batching(dataset_dir, tmp_path, noise_method):
    a = runs.generate(spec(dataset_dir, noise_method, alpha_r=0.5, batch_size=1), tmp_path / "a")
    runs.generate(spec(dataset_dir, noise_method, alpha_r=0.5, batch_size=3, limit=2), tmp_path / "b")
    runs.generate(spec(dataset_dir, noise_method, alpha_r=0.5, seed=1), tmp_path / "c")
    assert a["counts"]["generated"] == 2
    assert image_bytes(tmp_path / "a") == image_bytes(tmp_path / "b")
    assert image_bytes(tmp_path / "a")["s0.png"] != image_bytes(tmp_path / "c")["s0.png"]


class CountingNoise(NoiseGenerator):
    calls: list[str] = []  # noqa: RUF012 - test probe

    def generate(self, requests):
        CountingNoise.calls += [r.sample.sample_id for r in requests]
        return super().generate(requests)


@pytest.fixture
def counting_method() -> Iterator[str]:
    CountingNoise.calls = []
    with registered("counting", CountingNoise) as name:
        yield name


def test_resume_generates_only_missing_images(dataset_dir, tmp_path, counting_method):
    full = tmp_path / "full"
    runs.generate(spec(dataset_dir, counting_method, split="valid"), full)
    # A run killed after its first image: manifest marked incomplete, one image, a stray temp file.
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    (partial / "images" / "v1.png").unlink()
    manifest = RunFolder(partial).manifest()
    fileio.write_json(partial / "manifest.json", {**manifest, "complete": False})
    (partial / "images" / ".v1.png.abc.tmp.png").write_bytes(b"half")
    CountingNoise.calls = []
    m = runs.generate(spec(dataset_dir, counting_method, split="valid"), partial)
    assert CountingNoise.calls == ["v1"]
    assert m["counts"] == {"n": 2, "generated": 1, "skipped": 1} and m["complete"]
    assert image_bytes(partial) == image_bytes(full)
    # A complete run is not touched again and its generator is never loaded.
    CountingNoise.calls = []
    again = runs.generate(spec(dataset_dir, counting_method, split="valid"), partial)
    assert CountingNoise.calls == [] and again["counts"] == {"n": 2, "generated": 0, "skipped": 2}
    assert RunFolder(partial).manifest()["counts"]["generated"] == 1  # the manifest of the finished run


def test_resume_refuses_other_arguments_and_foreign_folders(dataset_dir, tmp_path, noise_method):
    out = tmp_path / "run"
    runs.generate(spec(dataset_dir, noise_method, alpha_r=0.2), out)
    with pytest.raises(UserError, match="was made with seed=0, not 1"):
        runs.generate(spec(dataset_dir, noise_method, alpha_r=0.2, seed=1), out)
    with pytest.raises(UserError, match=r"was made with alpha_r=0\.2, not 0\.3"):
        runs.generate(spec(dataset_dir, noise_method, alpha_r=0.3), out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a run folder"):
        runs.generate(spec(dataset_dir, "grd"), tmp_path / "other")


def test_bad_generate_arguments(dataset_dir, tmp_path, noise_method):
    out = tmp_path / "x"
    for kw, msg in [({"method": "grd", "sweep": True}, "has no reference mask ratio"),
                    ({"method": "grd", "alpha_r": 0.5}, "has no reference mask ratio"),
                    ({"method": noise_method, "alpha_r": -0.1}, r"must lie in \[0, 1\]"),
                    ({"method": noise_method, "alpha_r": 0.1, "sweep": True}, "not both"),
                    ({"method": "grd", "split": "dev"}, "unknown split"),
                    ({"method": "grd", "batch_size": 0}, "batch-size"),
                    ({"method": "grd", "profile": "huge"}, "unknown profile")]:
        with pytest.raises(UserError, match=msg):
            runs.generate(spec(dataset_dir, **kw), out)
    with pytest.raises(UserError, match="dataset folder not found"):
        runs.generate(spec(tmp_path / "nowhere", "grd"), out)
    assert not out.exists()


def test_parse_options():
    assert option_pairs(["checkpoint=/a=b", "steps=4", "fast=true", "name=x"]) == \
        {"checkpoint": "/a=b", "steps": 4, "fast": True, "name": "x"}
    with pytest.raises(UserError, match="key=value"):
        option_pairs(["oops"])


def test_sweep_layout(dataset_dir, tmp_path, noise_method):
    out = tmp_path / "sweep"
    top = runs.generate(spec(dataset_dir, noise_method, sweep=True), out)
    assert top["sweep"] == list(ALPHA_R_GRID) and top["counts"] == {"n": 22, "generated": 22, "skipped": 0}
    assert [r.path for r in runs.scoreable(out)] == [out / f"alpha_r={a:.1f}" for a in ALPHA_R_GRID]
    for a, d in zip(ALPHA_R_GRID, [r.path for r in runs.scoreable(out)], strict=True):
        m = RunFolder(d).manifest()
        assert m["alpha_r"] == a and m["label"] == f"noise (α_r={a:.1f})" and m["complete"]
        assert np.asarray(Image.open(d / "images" / "s1.png"))[0, 0, 0] == int(255 * a)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = runs.generate(spec(dataset_dir, noise_method, sweep=True), out)
    assert again["counts"] == {"n": 22, "generated": 0, "skipped": 22}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # a finished sweep is left untouched
    # Same noise across α_r for one sample (the seed does not depend on α_r): only the tint changes.
    s0 = [np.asarray(Image.open(r.image_path("s0")))[..., 1] for r in runs.scoreable(out)]
    assert all(np.array_equal(s0[0], x) for x in s0)


# ---------------------------------------------------------------- selection


def frame(ids: list[str], p_cis: list[float], a_cs: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": ids, "p_cis": p_cis, "a_cs": a_cs})


def test_choose_per_sample_maximizes_the_mean_of_p_cis_and_a_cs():
    ids = ["s0", "s1", "s2"]
    scores = {
        0.0: frame(ids, [10, 50, 30], [90, 40, 30]),  # means 50, 45, 30
        0.5: frame(ids, [40, 60, 20], [80, 40, 40]),  # means 60, 50, 30
        1.0: frame(ids, [90, 80, 10], [10, 0, 50]),   # means 50, 40, 30
    }
    picks = sel.choose_per_sample(scores)
    assert list(picks["sample_id"]) == ids
    assert list(picks["alpha_r"]) == [0.5, 0.5, 0.0]  # s2: a three-way tie goes to the smallest α_r
    assert list(picks["criterion"]) == [60, 50, 30]
    # p_cis alone would pick α_r=1.0 for s0: the rule really averages both.
    scores[0.5] = frame(ids, [40, 60, 20], [50, 40, 40])
    assert sel.choose_per_sample(scores)["alpha_r"].iloc[0] == 0.0


def test_choose_per_sample_needs_the_same_samples_everywhere():
    with pytest.raises(UserError, match="same samples"):
        sel.choose_per_sample({0.0: frame(["a"], [1], [1]), 0.1: frame(["b"], [1], [1])})


def test_choose_fixed_picks_the_best_mean():
    ids = ["a", "b"]
    best, means = sel.choose_fixed({0.0: frame(ids, [0, 0], [50, 50]), 0.3: frame(ids, [40, 40], [40, 80]),
                                     0.6: frame(ids, [100, 0], [60, 60])})
    assert best == 0.6 and means == {0.0: 25.0, 0.3: 50.0, 0.6: 55.0}


class RedScorer:
    """Scorer double: reads α_r back from an image's red channel; a_cs peaks at a per-sample α_r."""

    peaks = {"s0": 0.3, "s1": 0.8, "v0": 0.6, "v1": 0.6}  # noqa: RUF012

    def __init__(self):
        self.scored: list[Path] = []
        self.means_only: set[RunFolder] = set()  # the runs summarized for a selection only

    def score_run(self, run_dir: Path) -> dict:
        self.scored.append(run_dir)
        rows = []
        for p in sorted((run_dir / "images").glob("*.png")):
            alpha = np.asarray(Image.open(p))[0, 0, 0] / 255
            peak = self.peaks[p.stem]
            rows.append({"sample_id": p.stem, "p_cis": 50.0, "a_cs": 100 - 100 * abs(alpha - peak)})
        df = pd.DataFrame(rows)
        for m in PER_SAMPLE_METRICS:
            df[m] = df.get(m, 0.0)
        fileio.write_parquet(run_dir / "scores.parquet", df)
        return {}

    def score_runs(self, runs_: list, means_only=()) -> list[dict]:
        self.means_only |= set(means_only)
        return [self.score_run(r.path) for r in runs_]


def test_select_writes_and_scores_both_selections(dataset_dir, tmp_path, noise_method):
    test_sweep, valid_sweep = tmp_path / "test", tmp_path / "valid"
    runs.generate(spec(dataset_dir, noise_method, sweep=True), test_sweep)
    runs.generate(spec(dataset_dir, noise_method, sweep=True, split="valid"), valid_sweep)
    shutil.copytree(test_sweep, tmp_path / "test-all")
    scorer = RedScorer()
    selected, chosen = (r.path for r in runs.select(Sweep(test_sweep), scorer, Sweep(valid_sweep)))
    assert len(scorer.scored) == 24 and scorer.scored[-2] == selected  # valid-chosen copies its α_r's scores,
    assert scorer.scored[-1] == test_sweep / "alpha_r=0.6"  # summarized again with FID's interval
    # FID intervals only where a report ranks: the valid candidates feed the selection, the test ones are
    # diagnostics beside it, unless asked for
    assert scorer.means_only == set(Sweep(valid_sweep).runs()) | set(Sweep(test_sweep).runs())
    asked = RedScorer()
    runs.select(Sweep(tmp_path / "test-all"), asked, Sweep(valid_sweep), candidate_intervals=True)
    assert asked.means_only == set(Sweep(valid_sweep).runs())

    picks = pd.read_parquet(selected / "selection.parquet")
    assert dict(zip(picks["sample_id"], picks["alpha_r"], strict=True)) == {"s0": 0.3, "s1": 0.8}
    assert image_bytes(selected)["s0.png"] == image_bytes(test_sweep / "alpha_r=0.3")["s0.png"]
    assert image_bytes(selected)["s1.png"] == image_bytes(test_sweep / "alpha_r=0.8")["s1.png"]
    m = RunFolder(selected).manifest()
    assert m["selection"] == "test-time best of 11" and m["label"] == "noise"
    assert m["alpha_r"] is None and "sweep" not in m and m["sample_ids"] == ["s0", "s1"]

    # On the valid split both samples peak at 0.6: one α_r for every test sample, chosen without test metrics.
    c = RunFolder(chosen).manifest()
    assert c["selection"] == "fixed α_r=0.6 chosen on valid" and c["alpha_r"] == 0.6 and c["split"] == "test"
    assert image_bytes(chosen) == image_bytes(test_sweep / "alpha_r=0.6")
    pd.testing.assert_frame_equal(pd.read_parquet(chosen / "scores.parquet"),
                                  pd.read_parquet(test_sweep / "alpha_r=0.6" / "scores.parquet"))

    with pytest.raises(UserError, match="not 'valid'"):
        runs.select(Sweep(test_sweep), scorer, Sweep(test_sweep))
    with pytest.raises(UserError, match="not a sweep"):
        runs.select(Sweep(selected), scorer)


# ---------------------------------------------------------------- CLI


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the console-script entry point in-process, as the shell would."""

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["pigeon-bench", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def test_cli_generate_and_resume(cli, dataset_dir, tmp_path):
    out = tmp_path / "hist"
    args = ["generate", "--data", str(dataset_dir), "--method", "hist", "--out", str(out), "--profile=tiny"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    assert "2 generated, 0 skipped" in r.stdout
    (out / "images" / "s1.png").unlink()
    r = cli(*args)
    assert r.exit_code == 0 and "1 generated, 1 skipped" in r.stdout


@pytest.mark.parametrize("method, extra, message", [
    ("nope", [], "unknown method 'nope'"),
    ("grd", ["--alpha-r", "0.5"], "has no reference mask ratio"),
    ("grd", ["-o", "size=3"], "has no option 'size'"),
    ("grd", ["--split", "dev"], "unknown split 'dev'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli, dataset_dir, tmp_path, method, extra, message):
    r = cli("generate", "--data", str(dataset_dir), "--out", str(tmp_path / "o"), "--method", method, *extra)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr


def test_cli_missing_data_dir(cli, tmp_path):
    r = cli("generate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--method", "grd")
    assert r.exit_code == 2 and r.stderr == f"error: dataset folder not found: {tmp_path / 'nowhere'}\n"


def test_cli_alpha_out_of_range_for_an_alpha_method(cli, dataset_dir, tmp_path, noise_method):
    r = cli("generate", "--data", str(dataset_dir), "--method", noise_method, "--out", str(tmp_path / "o"),
            "--alpha-r", "1.5")
    assert r.exit_code == 2 and r.stderr == "error: alpha_r must lie in [0, 1], got 1.5\n"


def test_cli_run_unknown_scenario(cli, tmp_path):
    r = cli("run", "--scenario", "comics", "--out", str(tmp_path))
    assert r.exit_code == 2 and r.stderr.startswith("error: unknown scenario 'comics'")


def test_cli_run_refuses_limit_1_before_any_work(cli, tmp_path):
    r = cli("run", "--scenario", "sticker", "--limit", "1", "--out", str(tmp_path / "out"))
    assert r.exit_code == 2 and r.stderr.strip() == ("error: run scores FID, which needs at least 2 samples: "
                                                     "--limit must be 2 or more, got 1")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- pigeon-bench run


def test_run_without_data_uses_the_demo_world_and_the_tiny_profile(dataset_dir, monkeypatch, capsys):
    import pigeon_bench.data.demo as demo

    monkeypatch.setattr(demo, "ensure_demo_datasets", lambda: {"sticker": dataset_dir, "movie": dataset_dir})
    assert resolve_data(runs.Experiment("sticker")) == (dataset_dir, TINY)
    assert "offline demo world" in capsys.readouterr().err
    assert resolve_data(runs.Experiment("sticker", data=dataset_dir)) == (dataset_dir, None)
    assert resolve_data(runs.Experiment("movie", data=dataset_dir, profile="tiny")) == (dataset_dir, None)
    assert capsys.readouterr().err == ""


def test_run_end_to_end_then_resume_changes_nothing(dataset_dir, tmp_path, noise_method):
    spec = runs.Experiment(scenario="sticker", data=dataset_dir, methods=["grd", "hist", noise_method],
                           profile="tiny", out=tmp_path / "runs", valid=False)  # valid: see test_select_...
    from pigeon_bench.scoring import Scorer

    scorer = Scorer(profile="tiny", resize=176, n_boot=50, progress=False)  # 176 px: MS-SSIM's smallest
    log: list[str] = []
    text, path = runs.run(spec, log=log.append, scorer=scorer)
    root = tmp_path / "runs" / "sticker"
    assert path == root / "report.md" and path.read_text() == text
    assert TINY_PROFILE_NOTICE in text
    assert [line.split(":")[0] for line in log] == ["grd", "hist", "noise"]
    assert "2 images generated" in log[0] and "22 images generated" in log[2]  # 11 α_r x 2 test samples
    for label in ("Grd", "Hist", "test-time best of 11", "α_r=0.0", "α_r=1.0"):
        assert label in text
    summaries = {p: json.loads(p.read_text()) for p in root.rglob("summary.json")}
    assert len(summaries) == 2 + 11 + 1 and "chosen on valid" not in text
    scores = {p: pd.read_parquet(p) for p in root.rglob("scores.parquet")}

    log.clear()
    text2, _ = runs.run(spec, log=log.append, scorer=scorer)
    assert all(" 0 images generated" in line for line in log), log
    assert "22 skipped" in log[2]
    for p, df in scores.items():
        pd.testing.assert_frame_equal(pd.read_parquet(p), df)
    assert text2 == text


def test_run_refuses_a_dataset_of_another_scenario(dataset_dir, tmp_path):
    with pytest.raises(UserError, match="is a 'sticker' dataset, not 'movie'"):
        runs.run(runs.Experiment(scenario="movie", data=dataset_dir, methods=["grd"], out=tmp_path))


def test_cli_score_refuses_a_batch_size_below_one(cli, dataset_dir, tmp_path):
    out = tmp_path / "hist"
    assert cli("generate", "--data", str(dataset_dir), "--method", "hist", "--out", str(out),
               "--profile", "tiny").exit_code == 0
    for bad in ("0", "-3"):
        r = cli("score", str(out), "--batch-size", bad)
        assert r.exit_code == 2 and r.stderr == f"error: --batch-size must be at least 1, got {bad}\n"
