"""Scoring end to end on a tiny dataset with the tiny profile: values against direct library computations,
the cache (warm pass, content addressing, kill-safety), summary schema, edge inputs and errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from pigeon_bench import fileio, scoring, stats
from pigeon_bench.data.model import write_dataset
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics import overall, table
from pigeon_bench.metrics.preprocess import ResizeSpec
from pigeon_bench.profiles import TINY_NOTICE as TINY_PROFILE_NOTICE
from pigeon_bench.runs import selection
from pigeon_bench.runs.folder import RunFolder
from pigeon_bench.schema import METRICS, PER_SAMPLE_METRICS
from pigeon_bench.scoring import SampleInputs, SampleScores, Scorer

SIZE = 176  # smallest resize MS-SSIM allows; the 512 default is exercised by the CLI test


def _drawing(i: int, size: int = 80) -> Image.Image:
    rng = np.random.default_rng(i)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    x, y = (int(v) for v in rng.integers(0, size // 2, 2))
    d.ellipse([x, y, x + size // 2, y + size // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    d.rectangle([y, x, y + 10, x + 20], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def make_world(root: Path, n_samples: int = 4, n_items: int = 9) -> tuple[Path, Path]:
    """A dataset folder (drawn items) and a run folder with one generated image per sample."""
    ds = root / "ds"
    (ds / "img").mkdir(parents=True)
    items = []
    for i in range(n_items):
        fileio.save_image(ds / "img" / f"{i}.png", _drawing(i))
        items.append((str(i), f"img/{i}.png", f"a sticker of shape {i}"))
    samples = [(f"s{s}", "u0", [str((s + j) % n_items) for j in range(5)], str((s + 5) % n_items),
                str((s + 6) % n_items), "test", "draw it") for s in range(n_samples)]
    columns = ["sample_id", "user_id", "history", "target_id", "reference_id", "split", "instruction"]
    write_dataset(ds, pd.DataFrame(items, columns=["item_id", "image_path", "semantics"]),
                  pd.DataFrame(samples, columns=columns), {"scenario": "sticker"})
    run = root / "run"
    for s in range(n_samples):
        fileio.save_image(run / "images" / f"s{s}.png", _drawing(100 + s, size=64))
    fileio.write_json(run / "manifest.json", {"method": "grd", "label": "Grd", "group": "Reference",
                                          "scenario": "sticker", "data": str(ds), "alpha_r": None})
    return ds, run


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def scored(world, tmp_path_factory):
    """One tiny-profile Scorer and the summary of scoring the world's run with it."""
    cache = tmp_path_factory.mktemp("featcache")
    scorer = Scorer(profile="tiny", resize=SIZE, cache_dir=cache, n_boot=200, progress=False)
    with pytest.warns(UserWarning, match="FID on 4 samples"):
        summary = scorer.score_run(world[1])
    return scorer, summary, cache


def test_outputs_follow_the_schema(world, scored):
    _, summary, _ = scored
    _, run = world
    df = pd.read_parquet(run / "scores.parquet")
    assert list(df.columns) == ["sample_id", *PER_SAMPLE_METRICS]
    assert list(df["sample_id"]) == ["s0", "s1", "s2", "s3"]
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert set(on_disk) >= {"method", "label", "group", "scenario", "profile", "notice", "n", "metrics",
                            "backbones", "bootstrap", "selection", "alpha_r"}
    assert on_disk["notice"] == f"{TINY_PROFILE_NOTICE}; {scored[0].preprocess.notice}"
    assert on_disk["notice"].startswith(f"{TINY_PROFILE_NOTICE}; preprocessing fast-176-bilinear (")
    assert on_disk["profile"] == "tiny"
    assert (on_disk["method"], on_disk["n"], on_disk["scenario"]) == ("grd", 4, "sticker")
    assert set(on_disk["metrics"]) == set(METRICS)
    for m in PER_SAMPLE_METRICS:
        v = on_disk["metrics"][m]
        assert v["mean"] == pytest.approx(df[m].mean())
        assert v["lo"] <= v["mean"] <= v["hi"]
    expected_overall = overall(df["p_cis"].mean(), df["a_cs"].mean())
    assert on_disk["metrics"]["overall"]["mean"] == pytest.approx(expected_overall)
    assert on_disk["metrics"]["fid"]["mean"] > 0
    assert set(on_disk["backbones"]) == {"clip", "dino", "lpips-vgg", "fid-inception"}
    assert on_disk["bootstrap"] == {"n_boot": 200, "seed": 0, "level": 0.95}


def _resized(path: Path) -> Image.Image:
    return ResizeSpec(SIZE).apply(fileio.load_rgb(path))


def test_clip_and_dino_scores_match_direct_library_calls(world, scored):
    scorer, _, _ = scored
    ds, run = world
    df = pd.read_parquet(run / "scores.parquet").set_index("sample_id")
    model, preprocess, tokenizer = scorer.backbone("clip").loaded
    dino, processor = scorer.backbone("dino").loaded
    hist = [str((0 + j) % 9) for j in range(5)]
    gen = _resized(run / "images" / "s0.png")
    ref = _resized(ds / "img" / "6.png")
    hists = [_resized(ds / "img" / f"{h}.png") for h in hist]
    with torch.inference_mode():
        def clip_img(ims):
            x = torch.stack([preprocess(i) for i in ims])
            return torch.nn.functional.normalize(model.encode_image(x), dim=-1)

        def clip_txt(texts):
            return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1)

        def dino_img(ims):
            out = dino(pixel_values=processor(images=ims, return_tensors="pt")["pixel_values"]).pooler_output
            return torch.nn.functional.normalize(out, dim=-1)

        g, r, h = clip_img([gen]), clip_img([ref]), clip_img(hists)
        assert df.loc["s0", "a_cis"] == pytest.approx(100 * (g @ r.T).item(), abs=1e-4)
        assert df.loc["s0", "p_cis"] == pytest.approx(100 * (g @ h.T).mean().item(), abs=1e-4)
        t_ref = clip_txt(["a sticker of shape 6"])
        t_hist = clip_txt([f"a sticker of shape {x}" for x in hist])
        assert df.loc["s0", "a_cs"] == pytest.approx(100 * (g @ t_ref.T).item(), abs=1e-4)
        assert df.loc["s0", "p_cs"] == pytest.approx(100 * (g @ t_hist.T).mean().item(), abs=1e-4)
        dg, dr, dh = dino_img([gen]), dino_img([ref]), dino_img(hists)
        assert df.loc["s0", "a_dis"] == pytest.approx(100 * (dg @ dr.T).item(), abs=1e-4)
        assert df.loc["s0", "p_dis"] == pytest.approx(100 * (dg @ dh.T).mean().item(), abs=1e-4)


def test_msssim_matches_pytorch_msssim_on_resized_images(world, scored):
    from pytorch_msssim import ms_ssim

    ds, run = world
    df = pd.read_parquet(run / "scores.parquet").set_index("sample_id")

    def t(im):
        return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)

    gen = t(_resized(run / "images" / "s1.png"))
    hist = torch.stack([t(_resized(ds / "img" / f"{(1 + j) % 9}.png")) for j in range(5)])
    expected = ms_ssim(gen[None].expand_as(hist), hist, data_range=255, size_average=False).mean().item()
    assert df.loc["s1", "p_msssim"] == pytest.approx(expected, abs=1e-6)


def test_every_sample_msssim_matches_pytorch_msssim_in_any_block_size(world, scored, monkeypatch, tmp_path):
    from pytorch_msssim import ms_ssim

    ds, run = world
    df = pd.read_parquet(run / "scores.parquet").set_index("sample_id")

    def t(im):
        return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)

    for s in range(4):  # all pairs of all samples were scored in one block
        gen = t(_resized(run / "images" / f"s{s}.png"))
        hist = torch.stack([t(_resized(ds / "img" / f"{(s + j) % 9}.png")) for j in range(5)])
        expected = ms_ssim(gen[None].expand_as(hist), hist, data_range=255, size_average=False).mean().item()
        assert df.loc[f"s{s}", "p_msssim"] == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(scoring, "_BLOCK_IMAGES", 1)  # one sample per block
    monkeypatch.setattr(scoring, "_PAIR_CHUNK_BYTES", 1)  # one pair per vectorised chunk
    scorer = Scorer(profile="tiny", resize=SIZE, cache_dir=tmp_path / "cold", n_boot=200, progress=False)
    assert [len(b) for b in scorer._blocks(["g0", "g1"], [scoring._Paired(["a", "b"], {}, [], 1)])] == [1, 1]
    with pytest.warns(UserWarning):
        again = scorer.score_run(run)
    assert again["metrics"]["p_msssim"]["mean"] == pytest.approx(df["p_msssim"].mean(), abs=1e-12)
    assert again["metrics"]["p_lpips"]["mean"] == pytest.approx(df["p_lpips"].mean(), abs=1e-9)
    # the next block reuses the maps of the history images it shares with the previous one
    assert scorer.forward_counts()["lpips-vgg"] == 4 + 8


def test_warm_pair_values_are_read_back_identical_and_no_lpips_maps_are_stored(world, scored, monkeypatch):
    from pigeon_bench.metrics import cache as C

    _, _, cache = scored
    cold = pd.read_parquet(world[1] / "scores.parquet")
    info = C.store_info(cache)
    assert not [ns for ns in info.namespaces if ns.namespace.startswith("lpips-vgg/")]
    assert {ns.area for ns in info.namespaces if ns.namespace.startswith("clip/")} == {C.FEATURES}
    pairs = {ns.namespace.split("/")[0]: ns.entries for ns in info.namespaces if ns.area == C.PAIRS}
    assert pairs == {"p_lpips": 4 * 5, "p_msssim": 4 * 5}  # each sample's 5 distinct history images
    warm = Scorer(profile="tiny", resize=SIZE, cache_dir=cache, n_boot=200, progress=False)
    monkeypatch.setattr(Fn, "msssim_stats", lambda x: pytest.fail("MS-SSIM terms of a known pair"))
    with pytest.warns(UserWarning):
        warm.score_run(world[1])
    pd.testing.assert_frame_equal(pd.read_parquet(world[1] / "scores.parquet"), cold, check_exact=True)
    assert warm.forward_counts()["lpips-vgg"] == 0
    assert warm.pairs.counters[warm._pair_kind(table.get("p_lpips")).namespace].hits == 4 * 5


def test_only_the_missing_pairs_are_computed_and_equal_a_cold_scoring(world, scored, tmp_path):
    _, _, cache = scored
    _, run = world
    changed = tmp_path / "run"
    shutil.copytree(run, changed)
    for s in (2, 3):  # a method whose images differ from the scored run's for s2 and s3 only
        fileio.save_image(changed / "images" / f"s{s}.png", _drawing(200 + s, size=64))
    partly = Scorer(profile="tiny", resize=SIZE, cache_dir=cache, n_boot=200, progress=False)
    with pytest.warns(UserWarning):
        partly.score_run(changed)
    # VGG for the 2 new images and the history images of their pairs (items 2..7), not for s0 and s1
    assert partly.forward_counts()["lpips-vgg"] == 2 + 6
    got = pd.read_parquet(changed / "scores.parquet")
    fresh = Scorer(profile="tiny", resize=SIZE, cache_dir=tmp_path / "fresh", n_boot=200, progress=False)
    with pytest.warns(UserWarning):
        fresh.score_run(changed)
    # s2 and s3 went through the backbones in a batch of 2 here and beside s0, s1 cold: on CPUs whose float32
    # kernels depend on the batch's composition (seen on an AVX-512 EPYC: 5e-8 apart) equal to float32 noise
    cold = pd.read_parquet(changed / "scores.parquet")
    pd.testing.assert_frame_equal(got, cold, check_exact=False, rtol=1e-6, atol=1e-6)
    pd.testing.assert_frame_equal(got.iloc[:2], cold.iloc[:2], check_exact=True)  # s0, s1 read from the cache
    known = pd.read_parquet(run / "scores.parquet")
    pd.testing.assert_frame_equal(got.iloc[:2], known.iloc[:2], check_exact=True)


def test_a_rewritten_image_is_hashed_again_and_an_unchanged_one_is_not_decoded(tmp_path, monkeypatch):
    from pigeon_bench.metrics import preprocess

    scorer = Scorer(profile="tiny", resize=SIZE, cache_dir=tmp_path / "cache", progress=False)
    path = tmp_path / "g.png"
    fileio.save_image(path, _drawing(1))
    first = scorer.clip_image_embeddings([path])
    decoded = []
    opened = preprocess.open_image
    monkeypatch.setattr(preprocess, "open_image", lambda src: decoded.append(src) or opened(src))
    torch.testing.assert_close(scorer.clip_image_embeddings([path]), first)
    assert decoded == []  # same path, size and mtime: the memoised digest, features from the cache
    before = scorer.forward_counts()["clip"]
    fileio.save_image(path, _drawing(2))  # rewritten in place; make sure the clock moved
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    changed = scorer.clip_image_embeddings([path])
    assert decoded == [path] and scorer.forward_counts()["clip"] == before + 1
    assert not torch.allclose(changed, first)


def test_fid_ci_uses_fewer_resamples_when_n_exceeds_the_feature_dimension(scored):
    import warnings as w

    scorer = scored[0]
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)],
                       **{m: rng.normal(size=12) for m in PER_SAMPLE_METRICS}})
    gen, ref = rng.normal(size=(12, 4)), rng.normal(1.0, 1.0, size=(12, 4))
    with w.catch_warnings(record=True) as caught:
        w.simplefilter("always")
        big = scorer.summarize(SampleScores(df, {"fid": (gen, ref)}, {}))  # n = 12 > d = 4
        small = scorer.summarize(SampleScores(df.iloc[:3], {"fid": (gen[:3], ref[:3])}, {}))  # n = 3 <= d
    assert big["bootstrap"]["fid_n_boot"] == min(scorer.n_boot, scoring.FID_MAX_BOOT_LARGE_N) == 100
    assert any("FID's CI from 100 resamples" in str(c.message) for c in caught)
    idx = stats.bootstrap_indices(12, 100, scorer.seed)
    want = np.percentile([Fn.frechet_distance(gen[i], ref[i]) for i in idx], [2.5, 97.5])
    assert (big["metrics"]["fid"]["lo"], big["metrics"]["fid"]["hi"]) == pytest.approx(tuple(want), rel=1e-9)
    assert "fid_n_boot" not in small["bootstrap"]


def test_means_only_runs_get_fids_mean_without_its_interval(world, scored, tmp_path):
    scorer, full, _ = scored
    copies = []
    for name in ("a", "b"):
        shutil.copytree(world[1], tmp_path / name)
        copies.append(RunFolder(tmp_path / name))
    with pytest.warns(UserWarning, match="FID on 4 samples"):
        interval, means = scorer.score_runs(copies, means_only={copies[1]})
    assert interval["metrics"]["fid"] == full["metrics"]["fid"] and full["metrics"]["fid"]["lo"] is not None
    assert means["metrics"]["fid"] == {"mean": full["metrics"]["fid"]["mean"], "lo": None, "hi": None}
    assert means["bootstrap"]["fid_n_boot"] == 0 and means["metrics"]["p_cis"] == full["metrics"]["p_cis"]
    assert Scorer.has_intervals(interval) and not Scorer.has_intervals(means)

    # a means-only summary is scored once as such; where its interval is wanted later, it is summarized again
    assert selection.unscored(copies, scorer, means_only={copies[1]}) == []
    assert selection.unscored(copies, scorer) == [copies[1]]
    with pytest.warns(UserWarning, match="FID on 4 samples"):
        selection.score(copies, scorer)
    assert copies[1].read_summary()["metrics"]["fid"] == full["metrics"]["fid"]
    assert selection.unscored(copies, scorer) == []


def test_warm_cache_needs_no_forward_and_gives_identical_scores(world, scored):
    _, summary, cache = scored
    warm = Scorer(profile="tiny", resize=SIZE, cache_dir=cache, n_boot=200, progress=False)
    with pytest.warns(UserWarning):
        again = warm.score_run(world[1])
    assert all(v == 0 for v in warm.forward_counts().values())
    assert again["metrics"] == summary["metrics"]
    # nothing was loaded either: a warm pass never builds a paper model
    assert warm.backbone("lpips-vgg").forwards == 0


def test_each_unique_image_goes_through_each_backbone_once(world, scored):
    scorer, _, _ = scored
    counts = scorer.forward_counts()
    # 4 generated + 9 dataset items (every item is a history or reference image here)
    assert counts["clip"] == counts["dino"] == 4 + 9
    # LPIPS: generated + history items (items 0..7); FID: generated + reference items (6, 7, 8, 0)
    assert counts["lpips-vgg"] == 4 + 8
    assert counts["fid-inception"] == 4 + 4
    assert counts["clip-text"] == 9


def test_content_addressing_across_files_and_shared_features(world, scored, tmp_path):
    scorer, _, _ = scored
    ds, _ = world
    before = scorer.forward_counts()
    # the same picture under another name and format is the same features
    copy = tmp_path / "copy.bmp"
    fileio.load_rgb(ds / "img" / "3.png").save(copy)
    emb = scorer.clip_image_embeddings([copy, Image.open(ds / "img" / "3.png")])
    assert scorer.forward_counts() == before
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(emb[0], emb[1])
    new = scorer.clip_image_embeddings([_drawing(999)])
    assert scorer.forward_counts()["clip"] == before["clip"] + 1 and new.shape == emb[:1].shape


def test_identical_images_score_100(world, scored):
    scorer, _, _ = scored
    ds, _ = world
    same = SampleInputs("x", ds / "img" / "2.png", [ds / "img" / "2.png"] * 5, ["t"] * 5,
                        ds / "img" / "2.png", "t")
    other = SampleInputs("y", ds / "img" / "3.png", [ds / "img" / "1.png"] * 5, ["u"] * 5,
                         ds / "img" / "4.png", "u")
    df = scorer.score_samples([same, other]).frame
    row = df.iloc[0]
    for m in ("a_cis", "a_dis", "p_cis", "p_dis"):
        assert row[m] == pytest.approx(100.0, abs=1e-4)
    assert row["p_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert row["p_msssim"] == pytest.approx(1.0, abs=1e-5)
    assert df.iloc[1]["a_cis"] < 99.9


def test_edge_image_modes_score_like_their_rgb_version(world, scored, tmp_path):
    scorer, _, _ = scored
    rgb = _drawing(7)
    modes = {"L": rgb.convert("L"), "P": rgb.convert("P"), "RGBA": rgb.convert("RGBA")}
    arr16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    modes["I;16"] = Image.fromarray(arr16)
    assert modes["I;16"].mode.startswith("I;16")
    for name, im in modes.items():
        path = tmp_path / f"{name.replace(';', '')}.png"
        im.save(path)
        got = fileio.load_rgb(path)
        assert got.mode == "RGB" and got.size == rgb.size, name
    np.testing.assert_array_equal(np.asarray(fileio.load_rgb(tmp_path / "I16.png")),
                                  np.asarray(rgb.convert("L").convert("RGB")))
    transparent = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert fileio.to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)
    embs = scorer.clip_image_embeddings([tmp_path / "L.png", rgb.convert("L").convert("RGB")])
    torch.testing.assert_close(embs[0], embs[1])


def test_small_images_follow_the_resize_and_too_small_specs_are_refused(world, scored):
    scorer, _, _ = scored
    tiny = _drawing(3, size=24)  # far below MS-SSIM's 161-pixel minimum: the common resize brings it to 176
    s = SampleInputs("t", tiny, [tiny] * 5, ["a"] * 5, tiny, "a")
    df = scorer.score_samples([s, s]).frame
    assert df["p_msssim"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="MS-SSIM"):
        ResizeSpec(100)
    with pytest.raises(UserError, match="MS-SSIM"):
        ResizeSpec(None).apply(tiny)


def test_missing_and_corrupt_images_are_named(world, scored, tmp_path):
    scorer, _, _ = scored
    ds, _ = world
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    ok = ds / "img" / "1.png"
    with pytest.raises(UserError, match=r"bad\.png"):
        scorer.score_samples([SampleInputs("a", bad, [ok] * 5, ["t"] * 5, ok, "t")] * 2)
    with pytest.raises(UserError, match=r"nope\.png"):
        scorer.score_samples([SampleInputs("a", ok, [tmp_path / "nope.png"] * 5, ["t"] * 5, ok, "t")] * 2)


def test_run_folder_errors(world, scored, tmp_path):
    scorer, _, _ = scored
    ds, _ = world
    with pytest.raises(UserError, match="--data"):
        (tmp_path / "r" / "images").mkdir(parents=True)
        scorer.score_run(tmp_path / "r")
    with pytest.raises(UserError, match=r"no <sample_id>\.png"):
        scorer.score_run(tmp_path / "r", ds)
    fileio.save_image(tmp_path / "r" / "images" / "zzz.png", _drawing(1))
    with pytest.raises(UserError, match="zzz"):
        scorer.score_run(tmp_path / "r", ds)
    one = tmp_path / "one"
    fileio.save_image(one / "images" / "s0.png", _drawing(1))
    with pytest.raises(UserError, match="at least 2"):
        scorer.score_run(one, ds)


def test_cli_score_with_data_flag_and_the_profile_default_resize(world, tmp_path):
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    ds, run = world
    sweep = tmp_path / "sweep"  # a sweep of two α_r folders without manifests: --data names the dataset
    fileio.write_json(sweep / "manifest.json", {"sweep": [0.0, 1.0], "profile": "tiny"})
    for alpha in ("alpha_r=0.0", "alpha_r=1.0"):
        for p in sorted((run / "images").glob("*.png"))[:2]:  # 2 samples keep the pass short
            fileio.write_bytes(sweep / alpha / "images" / p.name, p.read_bytes())
    res = CliRunner().invoke(app, ["score", str(sweep), "--data", str(ds), "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output.count(TINY_PROFILE_NOTICE) == 2
    alphas = ("alpha_r=0.0", "alpha_r=1.0")
    first, second = (json.loads((sweep / a / "summary.json").read_text()) for a in alphas)
    assert first["preprocess"]["id"] == "fast-192-bilinear" and first["profile"] == "tiny"  # the tiny default
    assert first["method"] is None
    assert first["metrics"] == second["metrics"]
    res = CliRunner().invoke(app, ["score", str(tmp_path / "missing"), "--profile", "tiny"])
    assert res.exit_code == 2 and "run folder not found" in res.output


# ---------------------------------------------------------------- weights resolved per backbone, on first use


@pytest.fixture
def no_weights(monkeypatch, tmp_path) -> None:
    """An empty HF cache and TORCH_HOME and no PIGEON_BENCH_WEIGHTS_*: the paper profile finds no weights."""
    import huggingface_hub.constants

    from pigeon_bench import weights
    from pigeon_bench.metrics import backbones as B

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for bid in B.BACKBONE_IDS:
        monkeypatch.delenv(weights.get(bid).env_var, raising=False)
    # ViT-H-14 itself is ~1B parameters: the paper's loader runs on the tiny open_clip architecture instead
    monkeypatch.setitem(weights.CLIP.extra, "architecture", B.register_tiny_clip_config())


@pytest.fixture
def clip_weights(no_weights, tmp_path) -> Path:
    """Explicit CLIP weights (open_clip state-dict file): the tiny profile's own CLIP, seed 0."""
    from pigeon_bench.metrics import tiny_training

    return tiny_training.ensure_trained() / tiny_training.CLIP_FILE


def test_clip_only_scoring_skips_and_names_the_columns_of_missing_weights(world, scored, clip_weights,
                                                                          tmp_path):
    from pigeon_bench.compare import compare_runs
    from pigeon_bench.reports import build_report

    run = tmp_path / "run"
    shutil.copytree(world[1], run)
    scorer = Scorer("paper", resize=SIZE, cache_dir=tmp_path / "cache", weights={"clip": clip_weights},
                    n_boot=200, progress=False, preprocess="fast")  # the tiny run's preprocessing
    with pytest.warns(UserWarning) as caught:
        summary = scorer.score_run(run)
    lines = [str(w.message) for w in caught if "not scored" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert all(f"{bid} (looked in" in lines[0] for bid in ("dino", "lpips-vgg", "fid-inception"))
    assert "p_dis, p_lpips, a_dis, fid not scored" in lines[0] and "clip" not in lines[0].split(":")[0]
    assert summary["skipped"] == {"p_dis": "dino", "p_lpips": "lpips-vgg", "a_dis": "dino",
                                  "fid": "fid-inception"}
    assert set(summary["backbones"]) == {"clip"}
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["skipped"] == summary["skipped"]
    for m in summary["skipped"]:
        assert on_disk["metrics"][m] == {"mean": None, "lo": None, "hi": None}
    df = pd.read_parquet(run / "scores.parquet")
    assert list(df.columns) == ["sample_id", *PER_SAMPLE_METRICS]
    assert df[["p_dis", "p_lpips", "a_dis"]].isna().all().all()
    # what was scored is unchanged: the tiny profile's CLIP has these very weights; MS-SSIM needs none
    tiny = pd.read_parquet(world[1] / "scores.parquet")
    for m in ("p_cs", "p_cis", "a_cs", "a_cis", "p_msssim"):
        np.testing.assert_allclose(df[m], tiny[m], rtol=0, atol=1e-9, err_msg=m)
    expected_overall = overall(df["p_cis"].mean(), df["a_cs"].mean())
    assert on_disk["metrics"]["overall"]["mean"] == pytest.approx(expected_overall)
    # reports print "-" for the skipped columns; compare calls them n/a
    row = next(line for line in build_report([run], ci=False).splitlines() if line.startswith("| Reference"))
    cells = [c.strip() for c in row.strip("|").split("|")][3:]  # after group, method and n
    shown = dict(zip(table.NAMES, cells, strict=True))
    assert {m for m, text in shown.items() if text == "-"} == set(summary["skipped"])
    verdicts = {r.metric: r.verdict for r in compare_runs(run, run, n_boot=100, n_perm=100).results}
    assert {m for m, v in verdicts.items() if v == "n/a"} == set(summary["skipped"])


def test_wrote_knows_its_own_summaries_and_sees_new_weights(world, scored, clip_weights, tmp_path):
    from pigeon_bench.metrics import backbones as B

    tiny_scorer, tiny_summary, _ = scored
    assert tiny_scorer.wrote(tiny_summary)
    assert not Scorer("tiny", resize=SIZE, n_boot=100, progress=False).wrote(tiny_summary)
    assert not Scorer("tiny", n_boot=200, progress=False).wrote(tiny_summary)  # the profile's 192 px resize
    run = tmp_path / "run"
    shutil.copytree(world[1], run)
    args = {"resize": SIZE, "cache_dir": tmp_path / "cache", "n_boot": 200, "progress": False}
    clip_only = Scorer("paper", weights={"clip": clip_weights}, **args)
    with pytest.warns(UserWarning):
        summary = clip_only.score_run(run)
    assert clip_only.wrote(summary) and not tiny_scorer.wrote(summary)
    dino = tmp_path / "dinov2"  # DINO's weights arrive (a save_pretrained folder): the summary is stale
    model, processor = B.tiny_dinov2(seed=0)
    model.save_pretrained(dino)
    processor.save_pretrained(dino)
    with_dino = Scorer("paper", weights={"clip": clip_weights, "dino": dino}, **args)
    assert not with_dino.wrote(summary)
    with pytest.warns(UserWarning, match="lpips-vgg .*: p_lpips, fid not scored"):
        again = with_dino.score_run(run)
    assert with_dino.wrote(again) and set(again["backbones"]) == {"clip", "dino"}
    assert again["skipped"] == {"p_lpips": "lpips-vgg", "fid": "fid-inception"}
    assert again["metrics"]["p_dis"]["mean"] is not None


def test_no_weights_at_all_is_one_error_naming_every_backbone(world, no_weights, tmp_path):
    from pigeon_bench.metrics import backbones as B
    from pigeon_bench.weights import MissingWeights

    scorer = Scorer("paper", resize=SIZE, cache_dir=tmp_path, progress=False)  # resolves nothing yet
    with pytest.raises(MissingWeights) as err:
        scorer.score_run(world[1])
    message = str(err.value)
    assert "\n" not in message and "pigeon-bench models prefetch" in message
    assert all(f"{bid} (looked in" in message for bid in B.BACKBONE_IDS)
    with pytest.raises(UserError, match=r"missing weights for clip \(looked in"):
        scorer.clip_image_embeddings([world[0] / "img" / "0.png"])


def test_pair_namespaces_follow_the_maps_dtype_and_the_resize(tmp_path):
    def namespaces(**options) -> tuple[str, str]:
        scorer = Scorer(profile="tiny", cache_dir=tmp_path / "cache", progress=False, **options)
        return tuple(scorer._pair_kind(table.get(m)).namespace for m in ("p_lpips", "p_msssim"))

    fast = namespaces(resize=SIZE)
    assert fast == namespaces(resize=SIZE)
    official = namespaces(resize=SIZE, preprocess="official")  # float32 maps, the same resize
    assert official[0] != fast[0] and official[1] == fast[1]
    other = namespaces(resize=SIZE + 16)
    assert other[0] != fast[0] and other[1] != fast[1]


def test_score_many_forwards_each_history_image_once_per_job(world, tmp_path):
    from pigeon_bench.data.model import Dataset
    from pigeon_bench.scoring import sample_inputs

    ds, run = world
    other = tmp_path / "other"
    for s in range(4):
        fileio.save_image(other / f"s{s}.png", _drawing(300 + s, size=64))
    dataset = Dataset(ds)
    folders = [[sample_inputs(dataset, s, folder / f"{s.sample_id}.png") for s in dataset.samples()]
               for folder in (run / "images", other)]
    job = Scorer(profile="tiny", resize=SIZE, cache_dir=tmp_path / "job", progress=False)
    together = job.score_many(folders)
    assert job.forward_counts()["lpips-vgg"] == 2 * 4 + 8  # one pass: history items 0..7 once
    apart = Scorer(profile="tiny", resize=SIZE, cache_dir=tmp_path / "apart", progress=False)
    separate = [apart.score_samples(folder) for folder in folders]
    assert apart.forward_counts()["lpips-vgg"] == 2 * (4 + 8)
    for got, want in zip(together, separate, strict=True):
        pd.testing.assert_frame_equal(got.frame, want.frame, rtol=1e-6)
        for m, (gen, ref) in want.sets.items():
            np.testing.assert_allclose(got.sets[m][0], gen, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got.sets[m][1], ref)
