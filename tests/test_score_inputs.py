"""Scoring trusts nothing it cannot check: the run's dataset, its samples; and scores any images (folders of
JPEGs, a manifest), from the command line and from Python."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_generation import make_dataset
from test_report_fixtures import make_dataset as make_report_dataset

from pigeon_bench import fileio, score_folders
from pigeon_bench.cli import main
from pigeon_bench.errors import UserError
from pigeon_bench.runs import GenerateSpec, RunFolder, generate
from pigeon_bench.scoring import Scorer

OPTS = {"resize": 176, "n_boot": 50}


@pytest.fixture
def hist_run(tmp_path: Path) -> tuple[Path, Path]:
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "hist"
    generate(GenerateSpec(data=data, method="hist", profile="tiny"), out)
    return data, out


def test_score_refuses_another_dataset_and_extra_or_missing_images(hist_run, tmp_path):
    _, run = hist_run
    scorer = Scorer("tiny", **OPTS)
    with pytest.raises(UserError, match=r"is a sticker run, but .* is a movie dataset"):
        scorer.score_run(run, make_dataset(tmp_path / "movie", scenario="movie"))
    other = make_dataset(tmp_path / "other")
    samples = pd.read_parquet(other / "samples.parquet")
    samples.loc[0, "reference_id"] = "i9"  # another build: a reference drawn otherwise
    shutil.rmtree(other / "samples.parquet", ignore_errors=True)
    (other / "stats.json").unlink()
    from pigeon_bench.data.model import write_dataset

    write_dataset(other, pd.read_parquet(other / "items.parquet"), samples, {"scenario": "sticker"})
    with pytest.raises(UserError, match="was made on another dataset"):
        scorer.score_run(run, other)
    extra = run / "images" / "v0.png"  # a valid-split sample of the same dataset, not in this run
    shutil.copy(run / "images" / "s0.png", extra)
    with pytest.raises(UserError, match=r"1 image\(s\) of samples the run does not list \(e.g. 'v0'\)"):
        scorer.score_run(run)
    extra.unlink()
    (run / "images" / "s1.png").unlink()
    with pytest.raises(UserError, match="1 of the run's 2 images are missing"):
        scorer.score_run(run)
    bigger = make_report_dataset(tmp_path / "bigger", n_samples=4)
    run = tmp_path / "bigger-hist"
    generate(GenerateSpec(data=bigger, method="hist", profile="tiny"), run)
    (run / "images" / "s02.png").unlink()
    summary = scorer.score_run(run, partial=True)
    assert summary["n"] == 3 and summary["missing"] == ["s02"]


def test_score_folders_of_jpegs_from_the_cli_and_python(hist_run, tmp_path, monkeypatch, capsys):
    data, _ = hist_run
    from pigeon_bench.data import Dataset

    ds = Dataset(data)
    gen, hist, ref = (tmp_path / d for d in ("gen", "history", "ref"))
    for d in (gen, hist, ref):
        d.mkdir()
    for s in ds.samples("test"):
        fileio.load_rgb(ds.image_path(s.target_id)).save(gen / f"{s.sample_id}.jpg", quality=95)
        fileio.load_rgb(ds.image_path(s.reference_id)).save(ref / f"{s.sample_id}.webp", lossless=True)
        for k, h in enumerate(s.history):
            fileio.load_rgb(ds.image_path(h)).save(hist / f"{s.sample_id}_{k}.jpg", quality=95)
    df = score_folders(gen, hist, ref, profile="tiny", **OPTS)
    assert list(df["sample_id"]) == ["s0", "s1"] and df[["p_cs", "a_cs"]].isna().all().all()
    assert df[["p_cis", "a_cis", "p_lpips", "p_msssim"]].notna().all().all()
    monkeypatch.setattr(sys, "argv", ["pigeon-bench", "score", "--generated", str(gen), "--history",
                                      str(hist), "--reference", str(ref), "--out", str(tmp_path / "scored"),
                                      "--profile", "tiny", "--resize", "176"])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.err
    assert "no texts: p_cs, a_cs, overall not scored" in out.err and "n=2" in out.out
    scored = RunFolder(tmp_path / "scored")
    pd.testing.assert_series_equal(scored.read_scores()["p_cis"], df["p_cis"], check_exact=False, rtol=1e-9)
    # a manifest with texts scores the text metrics too
    rows = [{"sample_id": s.sample_id, "generated": f"gen/{s.sample_id}.jpg",
             "history": [f"history/{s.sample_id}_{k}.jpg" for k in range(5)],
             "reference": f"ref/{s.sample_id}.webp",
             "history_texts": [ds.item(h).semantics for h in s.history],
             "reference_text": ds.item(s.reference_id).semantics} for s in ds.samples("test")]
    manifest = tmp_path / "samples.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from pigeon_bench.inputs import from_manifest
    from pigeon_bench.scoring import score_samples

    with_texts = score_samples(from_manifest(manifest), "tiny", **OPTS)
    assert with_texts[["p_cs", "a_cs"]].notna().all().all()
    assert Image.open(gen / "s0.jpg").format == "JPEG"


def test_score_arguments_are_checked(hist_run, tmp_path):
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    _, run = hist_run
    for args, message in [([], "nothing to score"), (["--generated", str(tmp_path)], "go together"),
                          ([str(run), "--manifest", "m.csv"], "not several"),
                          (["--manifest", str(tmp_path / "m.csv")], "needs --out")]:
        result = CliRunner().invoke(app, ["score", *args])
        assert result.exit_code == 2 and message in result.output, result.output
