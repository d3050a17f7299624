"""Loading paths: tiny random weights saved in the real on-disk formats (open_clip state-dict file and HF
cache layout, HF save_pretrained folder, the TORCH_HOME checkpoint names lpips and torch-fidelity use) are
found and loaded by the exact code the paper profile uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pigeon_bench import weights as W
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import backbones as B

REV = "0123456789abcdef0123456789abcdef01234567"


def _hf_snapshot(hf: Path, repo: str) -> Path:
    """An HF hub cache entry (models--org--name/snapshots/<rev>/, refs/main) for ``repo``."""
    entry = hf / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REV)
    snap = entry / "snapshots" / REV
    snap.mkdir(parents=True)
    return snap


@pytest.fixture(scope="module")
def fake_caches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    hf, torch_home = root / "hf", root / "torch"
    clip_model, _, _ = B.tiny_clip(seed=3)
    torch.save(clip_model.state_dict(), _hf_snapshot(hf, W.CLIP.hub_id) / "open_clip_pytorch_model.bin")
    dino_model, processor = B.tiny_dinov2(seed=3)
    snap = _hf_snapshot(hf, W.DINO.hub_id)
    dino_model.save_pretrained(snap)
    processor.save_pretrained(snap)
    ckpts = torch_home / "hub" / "checkpoints"
    ckpts.mkdir(parents=True)
    with B.seeded(3):
        features = B.vgg_features()  # the real VGG16 layout (torchvision's features.* keys), random weights
    vgg_state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(vgg_state, ckpts / W.LPIPS_VGG.torch_hub_file)
    torch.save(B.tiny_inception_state_dict(seed=3), ckpts / W.FID_INCEPTION.torch_hub_file)
    return {"hf": hf, "torch_home": torch_home, "clip": clip_model, "dino": dino_model, "vgg": features}


@pytest.fixture
def paper_env(fake_caches, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_caches["hf"]))
    monkeypatch.setenv("TORCH_HOME", str(fake_caches["torch_home"]))
    # ViT-H-14 itself is ~1B parameters: the same loader runs on the tiny open_clip architecture instead
    monkeypatch.setitem(W.CLIP.extra, "architecture", B.register_tiny_clip_config())
    for bid in B.BACKBONE_IDS:
        monkeypatch.delenv(W.get(bid).env_var, raising=False)
    return fake_caches


def _images(n: int = 2, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_paper_profile_resolves_and_loads_real_formats(paper_env):
    built = B.build("paper")
    assert set(built) == set(B.BACKBONE_IDS)
    for bid, b in built.items():
        assert b._loaded is None, bid  # lazy: resolving and fingerprinting loads no model
        assert len(b.fingerprint) == 64 and not b.fingerprint.startswith("tiny")
    ims = _images()
    with torch.inference_mode():
        clip_ref, _, _ = B.tiny_clip(seed=3)
        _, preprocess, tokenizer = built["clip"].loaded
        x = torch.stack([preprocess(i) for i in ims])
        expected = torch.nn.functional.normalize(clip_ref.encode_image(x), dim=-1)
        torch.testing.assert_close(built["clip"].encode(ims)["emb"], expected)
        text = torch.nn.functional.normalize(clip_ref.encode_text(tokenizer(["a cat"])), dim=-1)
        torch.testing.assert_close(built["clip"].encode_texts(["a cat"]), text)

        dino_ref = paper_env["dino"]
        _, processor = built["dino"].loaded
        pix = processor(images=ims, return_tensors="pt")["pixel_values"]
        expected = torch.nn.functional.normalize(dino_ref(pixel_values=pix).pooler_output, dim=-1)
        torch.testing.assert_close(built["dino"].encode(ims)["emb"], expected)

        lins = torch.load(W.lpips_lin_files()[0], map_location="cpu", weights_only=True)
        lp_ref = B.LpipsVgg(paper_env["vgg"], [lins[f"lin{i}.model.1.weight"] for i in range(5)]).eval()
        x = B.pixels(ims).float() / 127.5 - 1
        got = built["lpips-vgg"].encode(ims)
        for i, m in enumerate(lp_ref(x)):
            torch.testing.assert_close(got[f"l{i}"], m.half())

        pool3 = built["fid-inception"].encode(ims)["pool3"]
    assert pool3.shape == (2, 2048) and pool3.std() > 1e-3
    assert {b.forwards for b in built.values()} == {2}


def test_models_cli_lists_and_checks_found_weights(paper_env):
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    res = CliRunner().invoke(app, ["models", "list", "--role", "scoring"])
    assert res.exit_code == 0, res.output
    assert "MISSING" not in res.output and W.LPIPS_VGG.torch_hub_file in res.output and REV in res.output
    res = CliRunner().invoke(app, ["models", "check", "--role", "scoring"])
    assert res.exit_code == 0, res.output
    fp = W.files_fingerprint(W.resolve("fid-inception").paths)
    assert f"fid-inception: {fp}" in res.output


def test_missing_weights_give_one_error_listing_all(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for bid in B.BACKBONE_IDS:
        monkeypatch.delenv(W.get(bid).env_var, raising=False)
    with pytest.raises(UserError) as err:
        B.build("paper")
    msg = str(err.value)
    assert "\n" not in msg and "pigeon-bench models prefetch" in msg
    for bid in B.BACKBONE_IDS:
        assert f"{bid} (looked in" in msg
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    res = CliRunner().invoke(app, ["models", "check", "--role", "scoring"])
    assert res.exit_code == 2 and "missing weights" in res.output
    assert CliRunner().invoke(app, ["models", "list", "--role", "scoring"]).output.count("MISSING") == 4
    monkeypatch.setenv(W.get("lpips-vgg").env_var, str(tmp_path / "nowhere.pth"))
    with pytest.raises(UserError, match="nowhere"):
        B.build("paper")


def test_explicit_paths_override_caches(paper_env, tmp_path, monkeypatch):
    other = tmp_path / "inception.pth"
    torch.save(B.tiny_inception_state_dict(seed=4), other)
    monkeypatch.setenv(W.get("fid-inception").env_var, str(other))
    assert W.resolve("fid-inception").paths == [other]
    vgg = paper_env["torch_home"] / "hub" / "checkpoints" / W.LPIPS_VGG.torch_hub_file
    built = B.build("paper", weights={"lpips-vgg": vgg})
    assert built["fid-inception"].fingerprint == W.files_fingerprint([other])


def test_tiny_profile_is_seeded_and_not_degenerate():
    a, b = B.build("tiny"), B.build("tiny")
    assert {k: v.fingerprint for k, v in a.items()} == {k: v.fingerprint for k, v in b.items()}
    assert "tiny-" + B.state_dict_fingerprint(B.tiny_clip(seed=1)[0]) != a["clip"].fingerprint
    feats = a["fid-inception"].encode(_images(4, 96))["pool3"]
    assert feats.abs().mean() > 1e-2  # a default-initialised Inception gives ~1e-7 here
    with pytest.raises(UserError, match="unknown profile"):
        B.build("huge")


def test_prefetch_without_network_fails_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.get("clip").env_var, raising=False)
    res = CliRunner().invoke(app, ["models", "prefetch"])
    assert res.exit_code == 2 and "prefetch of clip failed" in res.output
    assert len(res.output.strip().splitlines()) == 1
