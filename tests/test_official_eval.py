"""The official evaluation's rules (YiyanXu/Pigeon Evaluation/evaluate_pigeon.py, eval_utils.py and
cal_scores.py) pinned one by one on hand-made images, the preprocessing modes, the FID implementations, and
the import of the authors' generated results in the official inference layout (Pigeon/inference.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from pigeon_bench import fileio
from pigeon_bench.artifacts import image_digest
from pigeon_bench.cli import app
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import preprocess as pre
from pigeon_bench.metrics import tiny_training
from pigeon_bench.metrics.backbones import (
    fid_network_input,
    inception_pool3,
    tiny_inception,
    tiny_inception_state_dict,
)
from pigeon_bench.metrics.preprocess import FidInput
from pigeon_bench.profiles import TINY
from pigeon_bench.scoring import SampleInputs, Scorer

SIZE = 176  # the official rules at MS-SSIM's smallest resize keep these tests short; 512 is the CLI's


def poster(path: Path, seed: int = 0) -> Path:
    """A 2:3 poster (200x300) whose top and bottom quarters differ from its middle: CLIP's centre crop of the
    original keeps mostly the middle, the 512x512 squash keeps everything."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (200, 300), (20, 20, 160))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 199, 74], fill=(250, 220, 0))
    d.rectangle([0, 225, 199, 299], fill=(0, 200, 60))
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, 150, 2))
        d.ellipse([x, 80 + y // 2, x + 40, 120 + y // 2], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    fileio.save_image(path, im)
    return path


def drawing(path: Path, seed: int, size: int = 96) -> Path:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    x, y = (int(v) for v in rng.integers(0, size // 2, 2))
    d.ellipse([x, y, x + size // 2, y + size // 3], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    fileio.save_image(path, im)
    return path


def transparent_sticker(path: Path) -> Path:
    """A sticker whose transparent pixels (alpha 0) hide red: convert('RGB') shows the red, white
    compositing does not."""
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 30, 30)
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 128) ** 2 + (xx - 128) ** 2 < 60 ** 2
    rgba[disc] = (30, 90, 220, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _sample(gen: Path, hist: list[Path], ref: Path, sid: str = "s0") -> SampleInputs:
    return SampleInputs(sid, gen, hist, [f"history {i}" for i in range(len(hist))], ref, "a reference")


def _clip(scorer: Scorer, ims: list[Image.Image]) -> torch.Tensor:
    model, transform, _ = scorer.backbone("clip").loaded
    with torch.inference_mode():
        x = torch.stack([transform(i) for i in ims])
        return torch.nn.functional.normalize(model.encode_image(x), dim=-1)


def _dino(scorer: Scorer, ims: list[Image.Image]) -> torch.Tensor:
    model, processor = scorer.backbone("dino").loaded
    with torch.inference_mode():
        x = processor(images=ims, return_tensors="pt")["pixel_values"]
        return torch.nn.functional.normalize(model(pixel_values=x).pooler_output, dim=-1)


# ---------------------------------------------------------------- modes: one place resolves them


def test_modes_resolve_in_one_place_and_refuse_unknown_names():
    official = pre.resolve("official", TINY)
    assert (official.resize.size, official.fid, official.mode.alpha, official.dino_items) == \
        (512, FidInput("pytorch-fid", 299), "convert", "resized")
    assert official.is_official and official.id == "official-512-bilinear"
    assert pre.resolve(None, TINY).id == "fast-192-bilinear"  # the tiny profile's demo default
    from pigeon_bench.profiles import PAPER

    assert pre.resolve(None, PAPER) == official  # the paper profile's default
    clean = pre.resolve("clean", TINY, resize=256, fid="pytorch-fid")
    assert clean.id == "clean-256-bilinear+fid-pytorch-fid-299" and not clean.is_official
    assert "not the official evaluation's" in clean.notice and clean.id in clean.notice
    for p in (official, clean, pre.resolve("fast", TINY), pre.resolve("official", dino_items="original")):
        assert pre.resolve(**pre.from_record(json.loads(json.dumps(p.record())))) == p
    known = r"\(known: clean, fast, official\)"
    with pytest.raises(UserError, match=rf"^unknown preprocessing mode 'bogus' {known}$"):
        pre.resolve("bogus", TINY)
    with pytest.raises(UserError, match="unknown FID implementation 'clean-fid'"):
        pre.resolve("clean", TINY, fid="clean-fid")
    with pytest.raises(UserError, match="official mode only"):
        pre.resolve("clean", TINY, dino_items="original")
    assert pre.from_record("rgb-512-bilinear") is None  # a summary from before the modes


def test_role_paths_of_each_mode():
    official, clean = pre.resolve("official"), pre.resolve("clean")
    backbones = ("clip", "dino", "lpips-vgg", "fid-inception", None)
    paths = {(b, r): official.path(b, r) for b in backbones for r in pre.ROLES}
    assert {k for k, v in paths.items() if v == pre.ORIGINAL} == {("clip", "history")}
    assert pre.resolve("official", dino_items="original").path("dino", "reference") == pre.ORIGINAL
    assert pre.resolve("official", dino_items="original").path("dino", "generated") == pre.RESIZED
    assert {clean.path(b, r) for b in backbones for r in pre.ROLES} == {pre.RESIZED}


# ---------------------------------------------------------------- history CLIP: original images, centre crop


def test_history_clip_from_the_original_and_generated_from_the_resized(tmp_path):
    """eval_utils.extract_clip_feats (all_clip_feats.npy, original images through CLIP's own transform) feeds
    p_cis' history side; evaluate_pigeon.py resizes the generated and reference images to 512 first."""
    from pytorch_msssim import ms_ssim

    p = poster(tmp_path / "poster.png")
    others = [drawing(tmp_path / f"h{i}.png", i) for i in range(4)]
    sample = _sample(p, [p, *others], p)  # the generated image is the first history image and the reference
    cache = tmp_path / "cache"
    official = Scorer("tiny", preprocess="official", resize=SIZE, cache_dir=cache, progress=False)
    clean = Scorer("tiny", preprocess="clean", resize=SIZE, cache_dir=cache, progress=False)
    row = official.score_samples([sample]).frame.iloc[0]
    resized = [official.preprocess.resize.apply(Image.open(h).convert("RGB")) for h in [p, *others]]
    originals = [Image.open(h).convert("RGB") for h in [p, *others]]
    g = _clip(official, resized[:1])
    expected = 100 * (g @ _clip(official, originals).T).mean().item()
    assert row["p_cis"] == pytest.approx(expected, abs=1e-4)
    squashed_vs_cropped = 100 * (g @ _clip(official, originals[:1]).T).item()
    assert squashed_vs_cropped < 99.0  # the poster's crop and squash differ
    assert row["a_cis"] == pytest.approx(100.0, abs=1e-4)  # reference: resized like the generated image
    # LPIPS and MS-SSIM read the resized history images in every mode
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in resized])
    assert row["p_msssim"] == pytest.approx(ms_ssim(x[:1].expand(5, -1, -1, -1), x, data_range=255,
                                                    size_average=False).mean().item(), abs=1e-6)
    # one cache, two paths: clean's history features are its own, never official's
    clean_row = clean.score_samples([sample]).frame.iloc[0]
    g_clean = _clip(clean, resized[:1])
    expected_clean = 100 * (g_clean @ _clip(clean, resized).T).mean().item()
    assert clean_row["p_cis"] == pytest.approx(expected_clean, abs=1e-4)
    assert clean_row["p_cis"] - row["p_cis"] > 0.1
    again = Scorer("tiny", preprocess="official", resize=SIZE, cache_dir=cache, progress=False)
    assert again.score_samples([sample]).frame.iloc[0]["p_cis"] == row["p_cis"]
    assert again.forward_counts()["clip"] == 0  # every feature from the cache, each under its own path
    namespaces = {d.name for d in (cache / "features" / "clip").iterdir()}
    assert {n.rsplit("-", 1)[-1] for n in namespaces} >= {"original", "bilinear"}


# ---------------------------------------------------------------- alpha: convert('RGB') vs white


def test_transparent_sticker_under_both_modes(tmp_path):
    """evaluate_pigeon.py and eval_utils.ImagePathDataset open every image with .convert('RGB'), keeping the
    colour under transparent pixels; the clean mode composites on white, as stickers are displayed."""
    sticker = transparent_sticker(tmp_path / "sticker.png")
    official, clean = pre.resolve("official"), pre.resolve("clean")
    shown = np.asarray(official.load(sticker))
    on_white = np.asarray(clean.load(sticker))
    assert tuple(shown[0, 0]) == (200, 30, 30) and tuple(on_white[0, 0]) == (255, 255, 255)
    assert tuple(shown[128, 128]) == tuple(on_white[128, 128]) == (30, 90, 220)
    assert (shown != on_white).any(-1).mean() > 0.5
    assert image_digest(official.load(sticker)) != image_digest(clean.load(sticker))
    # the generated image is the sticker as displayed; the reference is the transparent file itself
    gen = tmp_path / "gen.png"
    fileio.save_image(gen, clean.load(sticker))
    hist = [drawing(tmp_path / f"h{i}.png", i) for i in range(5)]
    scored = {mode: Scorer("tiny", preprocess=mode, resize=SIZE, cache_dir=tmp_path / "cache", progress=False)
              .score_samples([_sample(gen, hist, sticker)]).frame.iloc[0] for mode in ("clean", "official")}
    assert scored["clean"]["a_cis"] == pytest.approx(100.0, abs=1e-4)
    assert scored["clean"]["a_dis"] == pytest.approx(100.0, abs=1e-4)
    assert scored["official"]["a_cis"] < 99.0 and scored["official"]["a_dis"] < 99.0


# ---------------------------------------------------------------- DINO items: resized (default) or original


def test_dino_item_features_resized_by_default_original_as_an_option(tmp_path):
    """all_dino_feats.npy's producing code is not published: resized (the default) gives Grd an a_dis of
    100, as the paper prints for Grd in both scenarios; 'original' is the other reading."""
    p = poster(tmp_path / "poster.png", seed=1)
    hist = [drawing(tmp_path / f"h{i}.png", i) for i in range(5)]
    grd = _sample(p, hist, p)  # Grd: the generated image is the reference
    args = {"resize": SIZE, "cache_dir": tmp_path / "cache", "progress": False}
    default = Scorer("tiny", preprocess="official", **args).score_samples([grd]).frame.iloc[0]
    scorer = Scorer("tiny", preprocess="official", dino_items="original", **args)
    original = scorer.score_samples([grd]).frame.iloc[0]
    assert default["a_dis"] == pytest.approx(100.0, abs=1e-4)
    im = Image.open(p).convert("RGB")
    expected = 100 * (_dino(scorer, [scorer.preprocess.resize.apply(im)]) @ _dino(scorer, [im]).T).item()
    assert original["a_dis"] == pytest.approx(expected, abs=1e-4) and original["a_dis"] < 99.5
    assert original["a_cis"] == default["a_cis"]  # only DINO's item features change
    assert scorer.preprocess.record()["dino_items"] == "original"


# ---------------------------------------------------------------- FID: pytorch-fid's path vs torch-fidelity's


def test_fid_resize_and_scaling_of_both_implementations_on_a_known_image():
    """pytorch-fid (eval_utils.FIDInceptionV3.forward: F.interpolate bilinear, align_corners=False, on
    ToTensor's [0, 1], then 2x - 1) and torch-fidelity (TF1 bilinear without half-pixel centres on 0-255
    floats, then (x - 128) / 128) on a 2-pixel ramp [0, 255] upscaled to 75."""
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 2, 2).contiguous()
    i = np.arange(75)
    half_pixel = 255 * np.clip((i + 0.5) * 2 / 75 - 0.5, 0, 1)  # PyTorch's source coordinate
    tf1 = 255 * np.clip(i * 2 / 75, 0, 1)  # TF1's
    ours = fid_network_input(x, FidInput("pytorch-fid", 75))[0, 0, 0].double().numpy()
    np.testing.assert_allclose(ours, 2 * half_pixel / 255 - 1, atol=2e-6)
    ours = fid_network_input(x, FidInput("torch-fidelity", 75))[0, 0, 0].double().numpy()
    np.testing.assert_allclose(ours, (tf1 - 128) / 128, atol=2e-6)
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    assert fid_network_input(white, FidInput("pytorch-fid", 75)).unique().tolist() == [1.0]
    assert fid_network_input(white, FidInput("torch-fidelity", 75)).unique().tolist() == [127 / 128]


def test_torch_fidelity_path_equals_its_own_forward():
    net = tiny_inception(0)  # its own forward reads 75 px
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 90, 70), dtype=np.uint8))
    with torch.inference_mode():
        torch.testing.assert_close(inception_pool3(net, x, FidInput("torch-fidelity", 75)), net(x)[0],
                                   rtol=0, atol=0)


def test_pytorch_fid_path_equals_the_package_and_the_official_fid_input(tmp_path, monkeypatch):
    """The official FID features: pytorch-fid's InceptionV3 on ToTensor of the 512-resized image (eval_utils
    calculate_fid_given_data), with the same weights; the networks differ in nothing but preprocessing."""
    pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")
    from torchvision.transforms.functional import to_tensor

    state = tiny_inception_state_dict(0)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
    reference = pytorch_fid_inception.InceptionV3([3]).eval()
    net = tiny_inception(0)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 64, 48), dtype=np.uint8))
    with torch.inference_mode():
        expected = reference(x.float() / 255)[0].flatten(1)
        ours = inception_pool3(net, x, FidInput("pytorch-fid"))
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
        other = inception_pool3(net, x, FidInput("torch-fidelity"))
    assert (other - expected).abs().max() > 1e-3  # the two pipelines differ on the same network
    # end to end: the official mode's FID features of a generated and a reference image
    p, q = poster(tmp_path / "p.png"), drawing(tmp_path / "q.png", 3)
    hist = [drawing(tmp_path / f"h{i}.png", i) for i in range(5)]
    scorer = Scorer("tiny", preprocess="official", cache_dir=tmp_path / "cache", progress=False)
    scores = scorer.score_samples([_sample(p, hist, q)])
    gen, ref = scores.sets["fid"]
    # the tiny profile's FID weights: trained on the demo world
    trained = torch.load(tiny_training.ensure_trained(0) / tiny_training.INCEPTION_FILE, weights_only=True)
    monkeypatch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: trained)
    reference = pytorch_fid_inception.InceptionV3([3]).eval()
    with torch.inference_mode():
        official = [reference(to_tensor(Image.open(f).convert("RGB").resize((512, 512), Image.BILINEAR))[None]
                              )[0].flatten() for f in (p, q)]
    np.testing.assert_allclose(gen[0], official[0].double().numpy(), atol=1e-5)
    np.testing.assert_allclose(ref[0], official[1].double().numpy(), atol=1e-5)


def test_frechet_distance_against_scipy_sqrtm_on_identical_and_singular_sets():
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm) and the exact eigenvalue formula agree on
    well-conditioned sets; on identical rank-deficient sets (Grd: n < d) the exact formula gives 0 and sqrtm
    a small non-zero value."""
    from scipy import linalg

    from pigeon_bench.metrics import functional as Fn

    def sqrtm_fid(a, b):
        mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        covmean = linalg.sqrtm(s1 @ s2).real
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(300, 16)) * 1.3 + 0.2
    assert Fn.frechet_distance(a, b) == pytest.approx(sqrtm_fid(a, b), rel=1e-9)
    same = rng.normal(size=(18, 64))
    assert abs(Fn.frechet_distance(same, same)) < 1e-9
    assert abs(sqrtm_fid(same, same)) > 1e-9


# ---------------------------------------------------------------- LPIPS: float32 maps in the official mode


def test_official_lpips_keeps_float32_maps_within_1e_6_of_lpips(tmp_path):
    import lpips

    from pigeon_bench.metrics.backbones import LPIPS_SLICES

    scorer = Scorer("tiny", preprocess="official", resize=SIZE, cache_dir=tmp_path / "cache", progress=False)
    files = [drawing(tmp_path / f"i{i}.png", i, size=200) for i in range(6)]
    row = scorer.score_samples([_sample(files[0], files[1:], files[1])]).frame.iloc[0]
    net = scorer.backbone("lpips-vgg").loaded
    assert scorer.backbone("lpips-vgg").maps_dtype == torch.float32
    ref = lpips.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True, verbose=False).eval()
    slices = [torch.nn.Sequential(*b) for b in net.slices]
    ref.net.slice1, ref.net.slice2, ref.net.slice3, ref.net.slice4, ref.net.slice5 = slices
    for k in range(len(LPIPS_SLICES)):
        w = getattr(net, f"sqrt_w{k}").square()
        getattr(ref, f"lin{k}").model[1] = torch.nn.Conv2d(w.shape[1], 1, 1, bias=False)
        getattr(ref, f"lin{k}").model[1].weight.data = w.reshape(1, -1, 1, 1).clone()
    ims = [scorer.preprocess.resize.apply(Image.open(f).convert("RGB")) for f in files]
    x = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) for im in ims])
    x = x / 127.5 - 1
    with torch.inference_mode():
        expected = ref(x[:1].expand(5, -1, -1, -1), x[1:]).mean().item()
    assert row["p_lpips"] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- the CLI and the summary


def _run_folder(root: Path) -> tuple[Path, Path]:
    """A dataset of 2:3 posters and a run folder of 3 samples whose generated image is a history poster."""
    from pigeon_bench.data.model import write_dataset

    ds = root / "ds"
    items = [(str(i), str(poster(ds / "img" / f"{i}.png", seed=i).relative_to(ds)), f"a poster {i}")
             for i in range(8)]
    samples = [(f"s{s}", "u0", [str((s + j) % 8) for j in range(5)], str((s + 5) % 8), str((s + 5) % 8),
                "test", "draw it") for s in range(3)]
    columns = ["sample_id", "user_id", "history", "target_id", "reference_id", "split", "instruction"]
    write_dataset(ds, pd.DataFrame(items, columns=["item_id", "image_path", "semantics"]),
                  pd.DataFrame(samples, columns=columns), {"scenario": "movie"})
    run = root / "run"
    for s in range(3):
        fileio.write_bytes(run / "images" / f"s{s}.png", (ds / "img" / f"{s}.png").read_bytes())
    fileio.write_json(run / "manifest.json", {"method": "hist", "label": "Hist", "group": "Sanity",
                                              "scenario": "movie", "data": str(ds), "profile": "tiny"})
    return ds, run


def test_cli_score_preprocess_and_resize(tmp_path):
    _, run = _run_folder(tmp_path)
    runner = CliRunner()
    seen = {}
    for mode in ("clean", "official"):
        res = runner.invoke(app, ["score", str(run), "--preprocess", mode, "--resize", str(SIZE),
                                  "--cache-dir", str(tmp_path / "cache")])
        assert res.exit_code == 0, res.output
        summary = json.loads((run / "summary.json").read_text())
        assert summary["preprocess"]["mode"] == mode and summary["preprocess"]["resize"] == SIZE
        assert f"preprocessing {mode}-{SIZE}-bilinear" in summary["notice"]
        assert summary["notice"] in res.output
        seen[mode] = summary["metrics"]
    assert seen["clean"]["p_cis"]["mean"] - seen["official"]["p_cis"]["mean"] > 0.1  # the posters' crop
    assert seen["clean"]["a_cis"]["mean"] == pytest.approx(seen["official"]["a_cis"]["mean"], abs=1e-9)
    assert seen["clean"]["fid"]["mean"] != seen["official"]["fid"]["mean"]  # torch-fidelity vs pytorch-fid
    report = runner.invoke(app, ["report", str(run)])
    assert report.exit_code == 0 and f"preprocessing official-{SIZE}-bilinear" in report.output
    bad = runner.invoke(app, ["score", str(run), "--preprocess", "bogus"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [
        "error: unknown preprocessing mode 'bogus' (known: clean, fast, official)"]


def test_wrote_tells_modes_apart(tmp_path):
    _, run = _run_folder(tmp_path)
    scorer = Scorer("tiny", preprocess="clean", resize=SIZE, cache_dir=tmp_path / "cache", n_boot=50,
                    progress=False)
    with pytest.warns(UserWarning):
        summary = scorer.score_run(run)
    assert scorer.wrote(summary)
    assert not Scorer("tiny", preprocess="official", resize=SIZE, n_boot=50, progress=False).wrote(summary)
    assert not Scorer("tiny", preprocess="clean", n_boot=50, progress=False).wrote(summary)  # 512 px
    assert not Scorer("tiny", preprocess="clean", resize=SIZE, fid="pytorch-fid", n_boot=50,
                      progress=False).wrote(summary)


# ---------------------------------------------------------------- the authors' results, official layout


SCENARIO_PATHS = [f"t{1 + i // 7}/sticker_{1 + i % 7}.png" for i in range(14)]
WINDOWS = {"train": {0: {0: [[0, 1, 2, 3, 4, 5]]}},
           "valid": {1: {1: [[8, 9, 10, 11, 12, 13]]}},
           "test": {0: {0: [[2, 3, 4, 5, 6, 9]], 3: [[1, 2, 3, 4, 5, 10]]}, 1: {1: [[7, 8, 10, 11, 12, 0]]}}}


def _save(path: Path, obj) -> None:
    """As the official code saves: np.save(path, np.array(obj))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(obj, dtype=object) if isinstance(obj, dict) else np.array(obj))


def official_layout(root: Path, masks: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
                    ) -> tuple[Path, Path]:
    """processed_seq + Images (as `data import-official` reads them) and OUTPUT_DIR/eval-test as
    Pigeon/inference.py writes it: checkpoint-375-scale1.0-mask{R}/all_res_dm_scale7.0.npy listing
    dm_scale7.0/<uid>/<tgt>/<genre>/0/0.jpg, each image a blend of the target and a history item by R."""
    seq = root / "processed_seq"
    seq.mkdir(parents=True)
    for split, windows in WINDOWS.items():
        _save(seq / f"{split}.npy", windows)
    _save(seq / "all_image_paths.npy", SCENARIO_PATHS)
    _save(seq / "sticker_semantics.npy", [f"semantics of {i}" for i in range(len(SCENARIO_PATHS))])
    items = [Image.open(drawing(root / "Images" / p, i, size=128)) for i, p in enumerate(SCENARIO_PATHS)]
    eval_dir = root / "output" / "eval-test"
    for r in masks:
        folder = f"checkpoint-375-scale1.0-mask{r}"
        all_res: dict = {}
        for uid, groups in WINDOWS["test"].items():
            for genre, windows in groups.items():
                for window in windows:
                    history, tgt = window[:5], window[5]
                    rel = f"{folder}/dm_scale7.0/{uid}/{tgt}/{genre}/0/0.jpg"
                    (eval_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.blend(items[history[0]], items[tgt], r).save(eval_dir / rel)
                    all_res.setdefault(uid, {}).setdefault(tgt, {})[genre] = {
                        "history": torch.tensor(history), "labels": torch.tensor([1, 2, 3]),
                        "seqs": {0: {"tokens": torch.tensor([5, 6]), "images": [rel]}}}
        _save(eval_dir / folder / "all_res_dm_scale7.0.npy", all_res)
    return seq, eval_dir


def test_import_results_then_score_select_and_report(tmp_path):
    seq, eval_dir = official_layout(tmp_path)
    runner = CliRunner()
    data = tmp_path / "data"
    res = runner.invoke(app, ["data", "import-official", str(seq), "--scenario", "sticker", "--out",
                              str(data)])
    assert res.exit_code == 0, res.output
    sweep = tmp_path / "sweep"
    res = runner.invoke(app, ["import-results", str(tmp_path / "output"), "--data", str(data),
                              "--out", str(sweep), "--profile", "tiny"])
    assert res.exit_code == 0, res.output
    assert "3 test samples x 11 α_r imported" in res.output
    assert "checkpoint-375, scale1.0, dm_scale7.0" in res.output
    top = json.loads((sweep / "manifest.json").read_text())
    assert top["sweep"] == [round(0.1 * i, 1) for i in range(11)] and top["complete"] is True
    assert (top["method"], top["label"], top["split"], top["profile"]) == ("pigeon", "Pigeon", "test", "tiny")
    assert top["imported"]["source"] == str(eval_dir.resolve()) and top["imported"]["scale_for_dm"] == "7.0"
    point = json.loads((sweep / "alpha_r=0.3" / "manifest.json").read_text())
    assert point["alpha_r"] == 0.3 and point["label"] == "Pigeon (α_r=0.3)" and point["complete"] is True
    ids = point["sample_ids"]
    assert len(ids) == 3 and {i.split("-g")[0] for i in ids} == {"test-u0", "test-u1"}
    # each image is the listed JPEG's decoded pixels, under the dataset sample with that user/history/target
    from pigeon_bench.data import Dataset

    by_id = {s.sample_id: s for s in Dataset(data).samples("test")}
    for sid in ids:
        s = by_id[sid]
        genre = sid.split("-g")[1].split("-")[0]
        jpg = (eval_dir / "checkpoint-375-scale1.0-mask0.3" / "dm_scale7.0" / s.user_id / s.target_id / genre
               / "0" / "0.jpg")
        png = sweep / "alpha_r=0.3" / "images" / f"{sid}.png"
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(jpg).convert("RGB")))
    mtime = (sweep / "manifest.json").stat().st_mtime_ns
    again = runner.invoke(app, ["import-results", str(eval_dir), "--data", str(data), "--out", str(sweep),
                                "--profile", "tiny"])
    assert again.exit_code == 0 and (sweep / "manifest.json").stat().st_mtime_ns == mtime  # nothing to redo
    res = runner.invoke(app, ["score", str(sweep), "--preprocess", "fast", "--resize", str(SIZE),
                              "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["select", str(sweep)])
    assert res.exit_code == 0, res.output
    selected = json.loads((sweep / "selected" / "summary.json").read_text())
    assert selected["preprocess"]["id"] == f"fast-{SIZE}-bilinear"  # the sweep's, not the profile default
    picks = pd.read_parquet(sweep / "selected" / "selection.parquet")
    assert len(picks) == 3 and picks["alpha_r"].between(0, 1).all()
    res = runner.invoke(app, ["report", str(sweep)])
    assert res.exit_code == 0, res.output
    assert "Pigeon (test-time best of 11)" in res.output


def test_import_results_errors(tmp_path):
    import shutil

    from pigeon_bench.data.official import import_official
    from pigeon_bench.runs.official_results import import_results

    seq, partial = official_layout(tmp_path / "a", masks=(0.0, 0.1, 0.2))
    data = tmp_path / "data"
    import_official(seq, "sticker", data)
    with pytest.raises(UserError, match=r"lacks mask ratio\(s\) 0\.3, 0\.4, .*1\.0 \(a sweep needs all 11\)"):
        import_results(partial, data, tmp_path / "s1")
    _, full = official_layout(tmp_path / "b")
    none_there = "no checkpoint-N-scaleS-maskR folders; eval folders holding them: none"
    with pytest.raises(UserError, match=none_there):
        import_results(tmp_path, data, tmp_path / "s2")
    with pytest.raises(UserError, match=r"no checkpoint 376 \(found: 375\)"):
        import_results(full, data, tmp_path / "s3", checkpoint=376)
    with pytest.raises(UserError, match="user 0 target 9 history 2 3 4 5 6 matches no valid sample"):
        import_results(full, data, tmp_path / "s3", split="valid")
    assert not (tmp_path / "s3").exists()  # nothing half-written
    import_results(full, data, tmp_path / "s4", profile="tiny")
    copy = shutil.copytree(full, tmp_path / "b" / "output" / "copy")
    with pytest.raises(UserError, match="cannot tell the split"):
        import_results(copy, data, tmp_path / "s4", profile="tiny")
    with pytest.raises(UserError, match="holds another run"):
        import_results(copy, data, tmp_path / "s4", profile="tiny", split="test")
