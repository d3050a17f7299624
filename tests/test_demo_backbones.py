"""The tiny profile's scoring backbones, trained on the demo world: real on-disk formats and loaders, new
fingerprints, deterministic training, and embeddings that see the world's factors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from pigeon_bench.data import Dataset
from pigeon_bench.data.demo import EMOTIONS, DemoSizes, demo_dataset, draw_sticker, ensure_demo_datasets
from pigeon_bench.metrics import backbones as B
from pigeon_bench.metrics import tiny_training as T
from pigeon_bench.metrics.preprocess import ResizeSpec, resolve
from pigeon_bench.profiles import TINY


def test_trained_backbones_are_saved_in_real_formats_and_loaded_by_the_real_loaders():
    folder = T.ensure_trained()
    assert T.ensure_trained() == folder  # an artifact, built once
    built = B.build("tiny")
    clip = B.load_open_clip(B.register_tiny_clip_config(), folder / T.CLIP_FILE)[0]
    dino = B.load_dinov2(folder / T.DINO_FOLDER)[0]
    inception = B.tiny_inception(0, folder / T.INCEPTION_FILE)
    for bid, module in (("clip", clip), ("dino", dino), ("fid-inception", inception)):
        assert built[bid].fingerprint == "tiny-" + B.state_dict_fingerprint(module)
    random = {"clip": B.tiny_clip(0)[0], "dino": B.tiny_dinov2(0)[0], "fid-inception": B.tiny_inception(0),
              "lpips-vgg": B.tiny_lpips_vgg(0)}
    for bid, module in random.items():  # trained ones have new fingerprints: no old feature is reused
        assert (built[bid].fingerprint == "tiny-" + B.state_dict_fingerprint(module)) == (bid == "lpips-vgg")
    assert {p.name for p in (folder / T.DINO_FOLDER).iterdir()} >= {"config.json", "model.safetensors",
                                                                   "preprocessor_config.json"}
    trained = torch.load(folder / T.INCEPTION_FILE, weights_only=True)
    untouched = B.tiny_inception_state_dict(0)
    below, top = "Mixed_7b.branch1x1.conv.weight", "Mixed_7c.branch1x1.conv.weight"
    assert torch.equal(trained[below], untouched[below]) and not torch.equal(trained[top], untouched[top])


def test_the_prefix_text_encoder_matches_open_clip():
    model, _, tokenizer = B.tiny_clip(0)
    tokens = tokenizer(["a sticker with the emotion of anger",
                        'a sticker of a mint frog in pixel style, with the emotion of fear, "Hi"'])
    with torch.no_grad():
        torch.testing.assert_close(T.encode_text_prefix(model, tokens), model.encode_text(tokens), atol=1e-5,
                                   rtol=1e-4)


def test_agreement_is_the_weighted_share_of_factors():
    labels = torch.tensor([[0, 1, 2, 3, 0, -1, -1], [0, 1, 2, 4, 1, -1, -1], [-1] * 5 + [2, 0]])
    a = T.agreement(labels, labels)
    assert torch.allclose(a.diagonal()[:2], torch.ones(2)) and a[2, 2] == pytest.approx(1.0)
    assert a[0, 1] == pytest.approx(0.45)  # same character, palette, style; other emotion and caption
    assert a[0, 2] == 0 and a[2, 0] == 0  # a sticker and a poster share nothing
    assert sum(f.weight for f in T.FACTORS if f.scenario == "sticker") == pytest.approx(1.0)
    assert sum(f.weight for f in T.FACTORS if f.scenario == "movie") == pytest.approx(1.0)


def test_training_is_deterministic(tmp_path, monkeypatch):
    small = DemoSizes(themes=4, users=4, movies_per_genre=2, image_size=64, posters_missing=0)
    datasets = {k: Dataset(v) for k, v in ensure_demo_datasets(tmp_path, sizes=small).items()}
    for bid, recipe in T.RECIPES.items():
        monkeypatch.setitem(T.RECIPES, bid, dataclasses.replace(recipe, steps=3, batch=8))
    world = T.world_images(datasets)
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        T.build_trained(folder, world, seed=0)
    for name in (T.CLIP_FILE, T.INCEPTION_FILE, f"{T.DINO_FOLDER}/model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@pytest.fixture
def fresh_stickers() -> tuple[list, np.ndarray, np.ndarray]:
    """New drawings (poses the training never saw) of 6 demo themes x 7 emotions, as the scorer sees them."""
    items = demo_dataset("sticker").items_df.drop_duplicates("theme").head(6)
    resize = ResizeSpec(size=TINY.resize)
    images, themes, emotions = [], [], []
    for t, row in enumerate(items.itertuples()):
        for e, emotion in enumerate(EMOTIONS):
            rng = np.random.default_rng([99, t, e])
            drawn = draw_sticker(row.character, row.palette, row.style, emotion, "", 256, rng)
            images.append(resize.apply(drawn))
            themes.append(t)
            emotions.append(e)
    return images, np.array(themes), np.array(emotions)


@pytest.mark.parametrize("bid", ["clip", "dino"])
def test_embeddings_see_the_theme_and_the_emotion_of_new_drawings(fresh_stickers, bid):
    images, themes, emotions = fresh_stickers
    emb = nn.functional.normalize(B.build("tiny", ids=(bid,))[bid].encode(images)["emb"], dim=-1)
    cos = (emb @ emb.T).numpy()
    same_theme, same_emotion = themes[:, None] == themes[None], emotions[:, None] == emotions[None]
    off = ~np.eye(len(themes), dtype=bool)
    theme_only, emotion_only = cos[same_theme & ~same_emotion].mean(), cos[~same_theme & same_emotion].mean()
    neither = cos[~same_theme & ~same_emotion & off].mean()
    assert theme_only > neither + 0.2 and emotion_only > neither + 0.1, (theme_only, emotion_only, neither)


def test_clip_reads_the_emotion_of_a_new_drawing_from_its_semantics_text(fresh_stickers):
    images, _, emotions = fresh_stickers
    clip = B.build("tiny", ids=("clip",))["clip"]
    texts = clip.encode_texts([f"a sticker with the emotion of {e}" for e in EMOTIONS])
    scores = clip.encode(images)["emb"] @ texts.T
    assert (scores.argmax(1).numpy() == emotions).mean() >= 0.6  # chance: 1/7


def test_the_trained_inception_separates_themes_better_than_the_random_one(fresh_stickers):
    images, themes, _ = fresh_stickers
    trained_backbone = B.build("tiny", ids=("fid-inception",))["fid-inception"]
    random_backbone = B.InceptionBackbone("x", "x", "x", lambda: B.tiny_inception(0))
    for backbone in (trained_backbone, random_backbone):  # at the FID input the tiny profile scores with
        backbone.configure(resolve(profile=TINY))
    trained, random = (b.encode(images)["pool3"] for b in (trained_backbone, random_backbone))

    def separation(feats: torch.Tensor) -> float:
        """Between-theme over within-theme spread of the features."""
        f = feats.double().numpy()
        groups = [f[themes == t] for t in np.unique(themes)]
        means = np.stack([g.mean(0) for g in groups])
        within = np.mean([((g - m) ** 2).sum(1).mean() for g, m in zip(groups, means, strict=True)])
        return float(((means - means.mean(0)) ** 2).sum(1).mean() / within)

    assert separation(trained) > 1.15 * separation(random)
