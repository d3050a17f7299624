"""LaVITBackbone end to end on a tiny random folder written in the released LaVIT-7B-v2 layout."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from pigeon.backbone import backbones
from pigeon.lavit import LaVITBackbone, build_lavit, ensure_tiny_lavit_folder, write_tiny_lavit_folder
from pigeon.lavit.config import CONFIG_FILE, DECODER_FILE, EVA_FILE, LM_DIR, PIXEL_DIR, TINY, TOKENIZER_FILE
from pigeon_bench.data import Dataset
from pigeon_bench.data.model import write_dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import build_request, create_generator


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops gain nothing from threads, and on a shared 2-core box two threads run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_lavit_folder(tmp_path_factory.mktemp("lavit") / "LaVIT-7B-v2-tiny", seed=3)


@pytest.fixture(scope="module")
def lavit(folder) -> LaVITBackbone:
    return LaVITBackbone.from_pretrained(folder, dtype=torch.float32, device="cpu")


def _images() -> list[Image.Image]:
    rng = np.random.RandomState(0)
    return [
        Image.fromarray((rng.rand(40, 56, 3) * 255).astype("uint8")),
        Image.fromarray((rng.rand(32, 32) * 255).astype("uint8"), "L"),  # grayscale: converted to RGB
        Image.fromarray(np.full((20, 30, 3), (200, 30, 60), dtype="uint8")),
    ]


def test_loading_reads_the_files_not_a_fresh_init(lavit, folder):
    tok = torch.load(folder / TOKENIZER_FILE, weights_only=True)
    eva = torch.load(folder / EVA_FILE, weights_only=True)
    dec = torch.load(folder / DECODER_FILE, weights_only=True)
    vt = lavit.visual_tokenizer
    assert torch.equal(vt.quantize.embedding.weight, tok["quantize.embedding.weight"].float())
    fc1 = "causal_encoder.blocks.0.mlp.fc1.weight"
    assert torch.equal(vt.causal_encoder.blocks[0].mlp.fc1.weight, tok[fc1].float())
    assert torch.equal(vt.encoder.blocks[1].attn.q_bias, eva["blocks.1.attn.q_bias"].float())
    pool = lavit.tokenizer_decoder.unet_attnpool
    assert torch.equal(pool.c_proj.weight, dec["unet_attnpool.c_proj.weight"].float())
    unet = torch.load(folder / PIXEL_DIR / "unet" / "diffusion_pytorch_model.bin", weights_only=True)
    assert torch.equal(lavit.pixel_decoder.unet.conv_in.weight, unet["conv_in.weight"])
    assert not any(p.requires_grad for p in lavit.parameters())
    assert lavit.describe()["fingerprint"] == LaVITBackbone.describe(lavit)["fingerprint"]


def test_vocabulary_layout_follows_lavit(lavit):
    text_vocab = len(lavit.text_tokenizer)
    assert lavit.special_ids == {"bos": 1, "boi": text_vocab, "eoi": text_vocab + 1}
    assert lavit.visual_offset == text_vocab + 2  # 32002 for LaVIT-7B-v2
    assert lavit.spec()["lm_vocab_size"] == lavit.visual_offset + TINY.codebook_size
    codes = torch.tensor([0, 5, TINY.codebook_size - 1])
    assert torch.equal(lavit.embed_visual(codes), lavit.embed_tokens(codes + lavit.visual_offset))
    ids = lavit.tokenize_text(["a happy cat", "Response:"])
    assert all(t.dtype == torch.long and len(t) > 0 and int(t.max()) < text_vocab for t in ids)
    assert lavit.special_ids["bos"] not in ids[0].tolist()
    assert lavit.text_tokenizer.decode(ids[0]) == "a happy cat"


def test_image_to_tokens_to_features_to_image(lavit):
    images = _images()
    codes = lavit.tokenize_images(images, batch_size=3)
    assert len(codes) == 3
    for c in codes:
        assert c.dtype == torch.long and 1 <= len(c) <= TINY.num_patches
        assert int(c.min()) >= 0 and int(c.max()) < TINY.codebook_size
    assert len({tuple(c.tolist()) for c in codes}) == 3  # image-dependent codes
    alone = lavit.tokenize_images(images[1:2])[0]
    assert torch.equal(alone, codes[1])  # the selector's noise is the image's own, not its batch slot

    features = lavit.decode_tokens(codes)
    assert features.shape == (3, lavit.feature_length, lavit.feature_dim) == (3, 16, 40)
    assert torch.isfinite(features).all()

    out = lavit.render(codes, seeds=[0, 1, 2])
    assert [(im.mode, im.size) for im in out] == [("RGB", (32, 32))] * 3
    again = lavit.render(codes[:1], seeds=[0])
    assert np.array_equal(np.asarray(again[0]), np.asarray(out[0]))
    other = lavit.render(codes[:1], seeds=[7])
    assert not np.array_equal(np.asarray(other[0]), np.asarray(out[0]))


def test_decode_pixels_recovers_the_pooled_embedding_from_the_context(lavit):
    codes = lavit.tokenize_images(_images()[:2])
    context, pooled = lavit.decode_tokens_pooled(codes)
    recovered = lavit.tokenizer_decoder.pooled_from_context(context)
    torch.testing.assert_close(recovered, pooled, atol=1e-4, rtol=1e-4)
    direct = lavit.render(codes, seeds=[4, 5])
    via_features = lavit.decode_pixels(lavit.decode_tokens(codes), seeds=[4, 5])
    for a, b in zip(direct, via_features, strict=True):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_language_model_reads_a_hybrid_sequence_and_takes_lora(lavit):
    text = lavit.tokenize_text(["a sticker"])[0]
    codes = lavit.tokenize_images(_images()[:1])[0]
    sp = lavit.special_ids
    embeds = torch.cat([
        lavit.embed_tokens(torch.tensor([sp["bos"]])), lavit.embed_tokens(text),
        lavit.embed_tokens(torch.tensor([sp["boi"]])), lavit.embed_visual(codes),
        lavit.embed_tokens(torch.tensor([sp["eoi"]])),
    ])[None]
    out = lavit.language_model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2]))
    assert out.logits.shape == (1, embeds.shape[1], lavit.spec()["lm_vocab_size"])

    lavit.add_lora(r=2, alpha=4)
    trainable = [n for n, p in lavit.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("o_proj" in n for n in trainable)


def test_lavit_factory_builds_the_cached_tiny_folder_once_and_takes_overrides():
    assert backbones.get("lavit") is build_lavit
    rng = torch.random.get_rng_state()
    bb = build_lavit(path="tiny", dtype=torch.float32, output_size=16)
    assert torch.equal(torch.random.get_rng_state(), rng)  # writing + loading leave the caller's RNG alone
    root = ensure_tiny_lavit_folder()
    assert bb.root == root and bb.image_size == 16
    stamp = (root / CONFIG_FILE).stat().st_mtime_ns
    assert ensure_tiny_lavit_folder() == root and (root / CONFIG_FILE).stat().st_mtime_ns == stamp
    out = bb.render(bb.tokenize_images(_images()[:1]), seeds=[0])
    assert out[0].size == (16, 16)


def test_incomplete_folder_is_a_one_line_user_error(folder, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(folder / "visual_tokenizer", partial / "visual_tokenizer")
    shutil.copytree(folder / LM_DIR, partial / LM_DIR)
    (partial / LM_DIR / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(UserError) as err:
        LaVITBackbone.from_pretrained(partial)
    msg = str(err.value)
    assert "\n" not in msg and "incomplete" in msg
    assert "language_model/<weights>" in msg and "highres_pixel_decoding/unet/<weights>" in msg
    assert EVA_FILE not in msg


def test_absent_or_unreadable_weights_are_user_errors(folder, tmp_path):
    with pytest.raises(UserError, match="LaVIT folder not found"):
        LaVITBackbone.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not available here"):  # tests run with HF_HUB_OFFLINE=1
        LaVITBackbone.from_pretrained("rain1011/LaVIT-7B-v2-not-cached")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / TOKENIZER_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"tokenizer_encoder\.bin: cannot read weights"):
        LaVITBackbone.from_pretrained(broken)


def _tiny_dataset(out) -> Dataset:
    """8 drawn items, 4 train and 2 test samples (history of 5, a reference, a target)."""
    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30), (160, 40, 200), (30, 200, 200),
              (240, 130, 30), (90, 90, 90)]
    (out / "images").mkdir(parents=True)
    items = []
    for i, color in enumerate(colors):
        im = Image.new("RGB", (48, 48), (250, 250, 250))
        ImageDraw.Draw(im).ellipse((6 + i, 6, 40, 42 - i), fill=color)
        im.save(out / "images" / f"{i}.png")
        items.append({"item_id": str(i), "image_path": f"images/{i}.png", "semantics": f"round sticker {i}"})
    samples = [{"sample_id": f"s{k}", "user_id": f"u{k % 2}", "history": [str((k + j) % 8) for j in range(5)],
                "target_id": str((k + 5) % 8), "reference_id": str((k + 6) % 8),
                "split": "train" if k < 4 else "test", "instruction": "a sticker"} for k in range(6)]
    write_dataset(out, pd.DataFrame(items), pd.DataFrame(samples),
                  {"users": 2, "items": 8, "samples": 6, "scenario": "sticker"})
    return Dataset(out)


def test_pigeon_generator_trains_and_generates_on_lavit(folder, tmp_path):
    ds = _tiny_dataset(tmp_path / "data")
    requests = [build_request(ds, s, run_seed=0, alpha_r=a)
                for s, a in zip(ds.samples("test"), (0.0, 1.0), strict=True)]
    gen = create_generator("pigeon", "tiny", options={"backbone": "lavit", "backbone_path": str(folder),
                                                      "data_dir": str(ds.root), "sft_steps": 2})
    results = gen.generate(requests)
    assert [(r.image.mode, r.image.size) for r in results] == [("RGB", (32, 32))] * 2
    assert all(1 <= r.metadata["n_tokens"] <= TINY.num_patches for r in results)
    assert gen.describe()["backbone"]["source"] == str(folder)
    again = gen.generate(requests[:1])
    assert np.array_equal(np.asarray(again[0].image), np.asarray(results[0].image))  # seeded end to end
