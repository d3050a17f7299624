"""Sharded generation and `run` under torchrun (2 CPU ranks, gloo): the same images, scores and report as one
process; a rerun after a rank died generates only what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_pigeon_train import backbone_dir, dataset, spec  # noqa: F401 - fixtures

from pigeon.train import train_sft
from pigeon_bench import fileio
from pigeon_bench.distributed import Ranks, first_claims
from pigeon_bench.metrics.cache import AREAS, last_runs
from pigeon_bench.paths import cache_dir
from pigeon_bench.runs import Experiment, RunFolder, Sweep, run


def test_shards_cover_every_item_once():
    items = list(range(11))
    shards = [Ranks(r, 3).shard(items) for r in range(3)]
    assert sorted(i for s in shards for i in s) == items and shards[1] == [1, 4, 7, 10]
    assert Ranks().shard(items) == items and Ranks().main and not Ranks(1, 2).main
    assert Ranks(1, 2, local_rank=1).device("cuda") == "cuda:1" and Ranks().device("cuda") == "cuda"


def test_a_name_claimed_by_several_ranks_falls_to_the_lowest_only():
    claims = [np.array([1, 2, 3], np.uint64), np.array([2, 4], np.uint64), np.array([3, 4, 5, 6], np.uint64)]
    owned = [first_claims(claims, r).tolist() for r in range(3)]
    assert owned == [[1, 2, 3], [4], [5, 6]]
    assert Ranks().owned([7, 3, 7]) == {3, 7}  # one process does all it claims


def pigeon_bench(*args: str, ranks: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(ranks)] if ranks > 1 else [sys.executable]
    return subprocess.run([*launcher, "-m", "pigeon_bench", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def images(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def empty_feature_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "cache-two") -> Path:
    """An empty feature cache for the processes started next (the trained tiny backbones shared)."""
    cache = tmp_path / name
    cache.mkdir()
    (cache / "demo").symlink_to(Path(os.environ["PIGEON_BENCH_CACHE"]) / "demo", target_is_directory=True)
    monkeypatch.setenv("PIGEON_BENCH_CACHE", str(cache))
    return cache


def feature_writers(cache: Path) -> int:
    """How many processes wrote features into ``cache``'s store."""
    return sum(any(c["bytes_written"] for c in r.get("features", {}).values()) for r in last_runs(cache))


def bytes_written(cache: Path) -> dict[tuple[str, str], int]:
    """(area, namespace) -> the bytes every process wrote into ``cache``, summed."""
    out: dict[tuple[str, str], int] = {}
    for r in last_runs(cache):
        for area in AREAS:
            for ns, c in r.get(area, {}).items():
                out[area, ns] = out.get((area, ns), 0) + c["bytes_written"]
    return out


@pytest.mark.slow
def test_two_ranks_give_the_images_scores_and_report_of_one(dataset, backbone_dir, tmp_path):  # noqa: F811
    ckpt = tmp_path / "sft"
    train_sft(spec(dataset, backbone_dir, ckpt))
    opts = ["-o", f"pigeon.checkpoint={ckpt}", "-o", f"pigeon.backbone_path={backbone_dir}"]
    common = ["run", "--scenario", "sticker", "--data", str(dataset), "--methods", "grd,pigeon", "--no-valid",
              *opts]
    two = pigeon_bench(*common, "--out", "two", ranks=2, cwd=tmp_path)  # on this test's empty cache
    assert two.returncode == 0, two.stderr[-2000:]
    assert feature_writers(cache_dir()) == 2  # both ranks scored a share, not rank 0 alone
    options = {"pigeon": {"checkpoint": str(ckpt), "backbone_path": str(backbone_dir)}}
    text, _ = run(Experiment("sticker", data=dataset, methods=["grd", "pigeon"], valid=False, options=options,
                             out=tmp_path / "one"), log=lambda line: None)
    assert two.stdout == text + "\n" and "Pigeon" in text  # the report, printed once by rank 0
    a, b = tmp_path / "one" / "sticker", tmp_path / "two" / "sticker"
    assert images(a) == images(b) and len(images(a)) == 3 + 3 * 11 + 3  # grd, the sweep, its selection
    for scores in a.rglob("scores.parquet"):
        assert scores.read_bytes() == (b / scores.relative_to(a)).read_bytes()

    # A rank killed mid-sweep leaves some images and incomplete manifests; the same command generates only
    # the missing images and gives the same folder.
    sweep = Sweep(b / "pigeon")
    lost = [sweep.point(a).image_path(sid) for a in (0.2, 0.7) for sid in ("u0-1", "u2-1")]
    for path in lost:
        path.unlink()
    for folder in [sweep, *sweep.runs()]:
        fileio.write_json(folder.manifest_path, {**folder.manifest(), "complete": False})
    again = pigeon_bench("generate", "--data", str(dataset), "--method", "pigeon", "--sweep", "--out",
                         str(sweep.path), "--profile", "tiny", *[o.removeprefix("pigeon.") for o in opts],
                         ranks=2, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(lost)} generated, {33 - len(lost)} skipped" in again.stdout
    assert images(b) == images(a) and all(RunFolder(r.path).manifest()["complete"] for r in sweep.runs())


@pytest.mark.slow
def test_score_on_two_ranks_writes_what_one_process_writes(dataset, tmp_path, monkeypatch):  # noqa: F811
    for method in ("grd", "hist"):
        done = pigeon_bench("generate", "--data", str(dataset), "--method", method, "--profile", "tiny",
                            "--out", f"one/{method}",
                            cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    cache_one = empty_feature_cache(tmp_path, monkeypatch, "cache-one")
    one = pigeon_bench("score", "one/grd", "one/hist", cwd=tmp_path)
    cache_two = empty_feature_cache(tmp_path, monkeypatch)
    two = pigeon_bench("score", "two/grd", "two/hist", ranks=2, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert feature_writers(cache_two) == 2
    # every feature, text embedding and pair value computed once in all: none by both ranks
    assert bytes_written(cache_two) == bytes_written(cache_one) and sum(bytes_written(cache_one).values()) > 0
    assert two.stdout == one.stdout.replace("one/", "two/")  # printed once, by rank 0
    for method in ("grd", "hist"):
        a, b = RunFolder(tmp_path / "one" / method), RunFolder(tmp_path / "two" / method)
        # the same computations in other batches: equal to float32 noise (batch composition moves the last
        # bits of a CPU forward)
        pd.testing.assert_frame_equal(pd.read_parquet(a.scores_path), pd.read_parquet(b.scores_path),
                                      check_exact=False, rtol=1e-6)
        sa, sb = a.read_summary(), b.read_summary()
        assert {**sa, "metrics": None} == {**sb, "metrics": None}
        for m, got in sa["metrics"].items():
            assert got.keys() == sb["metrics"][m].keys()
            for key, value in got.items():
                assert (value is None) == (sb["metrics"][m][key] is None), (m, key)
                if value is not None:
                    assert sb["metrics"][m][key] == pytest.approx(value, rel=1e-6), (m, key)
