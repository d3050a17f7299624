"""Hand-written run folders in the scoring team's exact schema, for the report/compare/human-eval tests.

(No tests here; the helpers are imported by tests/test_report*.py, test_compare*.py and test_human_eval*.py.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from pigeon_bench import fileio
from pigeon_bench.cli import main
from pigeon_bench.data.model import write_dataset
from pigeon_bench.metrics import overall
from pigeon_bench.profiles import TINY_NOTICE as TINY_PROFILE_NOTICE
from pigeon_bench.schema import METRICS, PER_SAMPLE_METRICS
from pigeon_bench.stats import bootstrap_ci

N_SAMPLES = 12
SIZE = 32


def _draw(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    x0, y0 = (int(v) for v in rng.integers(0, SIZE // 2, 2))
    d.ellipse([x0, y0, x0 + SIZE // 2, y0 + SIZE // 2], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def make_dataset(root: Path, scenario: str = "sticker", n_samples: int = N_SAMPLES) -> Path:
    """A Dataset folder: 20 items with drawn images, ``n_samples`` test samples with 5 history items each."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(20):
        fileio.save_image(root / "images" / f"i{i}.png", _draw(1000 + i))
        items.append({"item_id": f"i{i}", "image_path": f"images/i{i}.png",
                      "semantics": f"item {i} looks happy"})
    samples = []
    for s in range(n_samples):
        hist = [f"i{(s + k) % 20}" for k in range(5)]
        samples.append({"sample_id": f"s{s:02d}", "user_id": f"u{s % 3}", "history": hist,
                        "target_id": f"i{(s + 5) % 20}", "reference_id": f"i{(s + 7) % 20}", "split": "test",
                        "instruction": "generate a sticker"})
    write_dataset(root, pd.DataFrame(items), pd.DataFrame(samples),
                  {"users": 3, "items": 20, "samples": n_samples, "scenario": scenario})
    return root


def base_scores(n: int = N_SAMPLES, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    """Plausible per-sample scores (CS/CIS/DIS in 100 x cosine, LPIPS and MS-SSIM in [0, 1])."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"sample_id": [f"s{i:02d}" for i in range(n)]})
    centers = {"p_cs": 18, "p_cis": 45, "p_dis": 40, "p_lpips": 0.7, "p_msssim": 0.1, "a_cs": 25, "a_cis": 55,
               "a_dis": 50}
    for m, c in centers.items():
        scale = 0.02 if m in ("p_lpips", "p_msssim") else 3.0
        df[m] = c + shift * (scale if m in ("p_lpips", "p_msssim") else 1.0) + rng.normal(0, scale, n)
    return df


def write_run(run: Path, scores: pd.DataFrame, method: str = "ti", label: str = "TI", group: str = "DM-based",
              scenario: str = "sticker", data: Path | None = None, profile: str = "tiny", fid: float = 80.0,
              fid_halfwidth: float = 3.0, selection: str | None = None, alpha_r: float | None = None,
              image_seed: int = 0) -> Path:
    """A scored run folder: manifest.json, images/, scores.parquet, summary.json (scoring's schema)."""
    run.mkdir(parents=True, exist_ok=True)
    for k, sid in enumerate(scores["sample_id"]):
        fileio.save_image(run / "images" / f"{sid}.png", _draw(image_seed * 1000 + k))
    fileio.write_parquet(run / "scores.parquet", scores[["sample_id", *PER_SAMPLE_METRICS]])
    metrics = {}
    for m in PER_SAMPLE_METRICS:
        lo, hi = bootstrap_ci(scores[m].to_numpy(), n_boot=200, seed=0)
        metrics[m] = {"mean": float(scores[m].mean()), "lo": lo, "hi": hi}
    per_sample_overall = overall(scores["p_cis"].to_numpy(), scores["a_cs"].to_numpy())
    lo, hi = bootstrap_ci(per_sample_overall, n_boot=200, seed=0)
    metrics["overall"] = {"mean": float(per_sample_overall.mean()), "lo": lo, "hi": hi}
    metrics["fid"] = ({"mean": None, "lo": None, "hi": None} if fid is None
                      else {"mean": fid, "lo": fid - fid_halfwidth, "hi": fid + fid_halfwidth})
    assert set(metrics) == set(METRICS)
    manifest = {"method": method, "label": label, "group": group, "scenario": scenario,
                "data": str(data) if data else None, "split": "test", "profile": profile, "alpha_r": alpha_r,
                "seed": 0, "counts": {"n": len(scores)}}
    summary = {"method": method, "label": label, "group": group, "scenario": scenario, "profile": profile,
               "notice": TINY_PROFILE_NOTICE if profile == "tiny" else None, "n": len(scores),
               "metrics": metrics, "backbones": {"clip": "tiny-0"},
               "bootstrap": {"n_boot": 200, "seed": 0, "level": 0.95}, "alpha_r": alpha_r}
    if selection:
        manifest["selection"] = summary["selection"] = selection
    fileio.write_json(run / "manifest.json", manifest)
    fileio.write_json(run / "summary.json", summary)
    return run


def write_sweep(root: Path, data: Path, method: str = "pigeon", label: str = "Pigeon",
                param: str = "alpha_r", values: tuple[float, ...] = (0.0, 0.5, 1.0),
                scenario: str = "sticker") -> Path:
    """A sweep folder: top manifest with "sweep" and one scored sub-run per value (p_cis falls with alpha)."""
    root.mkdir(parents=True, exist_ok=True)
    fileio.write_json(root / "manifest.json", {"method": method, "label": label, "group": "LMM-based",
                                           "scenario": scenario, "data": str(data), "profile": "tiny",
                                           "sweep": list(values)})
    for k, a in enumerate(values):
        scores = base_scores(seed=k)
        scores["p_cis"] -= 10 * a
        scores["a_cs"] += 10 * a
        write_run(root / f"{param}={a:.1f}", scores, method=method, label=label, group="LMM-based", data=data,
                  alpha_r=a if param == "alpha_r" else None, scenario=scenario)
    return root


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture(name="cli")
def cli_fixture(capsys, monkeypatch):
    """Run the console-script entry point in-process, as the shell would."""

    def invoke(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["pigeon-bench", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def assert_one_line_error(r: CliResult, message: str) -> None:
    """A usage error: exit 2 and exactly one line on stderr naming the problem."""
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert message in r.stderr, r.stderr
