"""The tiny profile's scoring backbones, trained briefly on the demo world so that its metrics carry signal.

The tiny profile scores with the paper's classes at toy sizes (``pigeon_bench.metrics.backbones``). With
seeded random weights they map every demo image to nearly the same direction, so a Table 1 on the demo world
says nothing. The demo world knows its own ground truth (``pigeon_bench.data.demo``): a sticker's theme
(character, palette, style), its emotion and its caption; a poster's genres. The backbones learn it:

- CLIP (open_clip): contrastive image-text on the items' semantics texts (the very texts the CS metrics
  embed) and on captions naming their factors, plus the image tower's pairwise cosines regressed onto the
  factor agreement of the two images (:func:`agreement`);
- DINOv2 (transformers, ``pooler_output``): the same cosine regression;
- the FID InceptionV3 (torch-fidelity): its top blocks (Mixed_7a-7c; the lower ones keep their seeded He init)
  classify the factors through ``fc`` from pool3, as the real one is an image classifier's pool3;
- LPIPS-VGG keeps its seeded random trunk: LPIPS compares feature maps position by position, which a random
  He-initialised VGG already does sensibly.

Training is seeded, single-threaded and takes seconds. The backbones are trained on the default demo world
whatever dataset is then scored (a dataset of unknown factors has nothing to train them on, and a fixed
training set keeps one cached artifact per seed and the scores of different datasets comparable). The result
is an artifact (``pigeon_bench.artifacts``) under the demo world's cache folder, saved in each class's real
on-disk format and loaded back through the loaders of the paper's weights (an open_clip state-dict file, an HF
``save_pretrained`` folder, a torch-fidelity weights file); the weights fingerprints therefore differ from
the random ones and no feature cached with those is ever reused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pigeon_bench import artifacts, fileio
from pigeon_bench.data.model import Dataset
from pigeon_bench.metrics import backbones as B
from pigeon_bench.metrics.preprocess import ResizeSpec, resolve
from pigeon_bench.profiles import TINY

RECIPE_VERSION = 1  # bump when the training below changes: the artifact key includes it
KIND = "demo/tiny-backbones"  # beside the demo world in the cache
TRAINED = ("clip", "dino", "fid-inception")
CLIP_FILE = "clip/open_clip_pytorch_model.bin"
DINO_FOLDER = "dino"
INCEPTION_FILE = "fid-inception/weights-pt_inception.pth"


@dataclass(frozen=True)
class Factor:
    """One ground-truth factor of a scenario's items and its share of two images' :func:`agreement`."""

    scenario: str
    name: str
    weight: float
    value: Callable[[Any], str]  # an items row -> the factor's value


def _genre(position: int) -> Callable[[Any], str]:
    return lambda row: [*row.genres.split("|"), ""][position]


FACTORS: tuple[Factor, ...] = (
    Factor("sticker", "character", 0.15, lambda row: row.character),
    Factor("sticker", "palette", 0.15, lambda row: row.palette),
    Factor("sticker", "style", 0.15, lambda row: row.style),
    Factor("sticker", "emotion", 0.4, lambda row: row.emotion),
    Factor("sticker", "caption", 0.15, lambda row: row.text),
    Factor("movie", "first genre", 0.6, _genre(0)),
    Factor("movie", "second genre", 0.4, _genre(1)),
)


@dataclass(frozen=True)
class Recipe:
    """Steps, batch size and learning rate of one backbone's training."""

    steps: int
    batch: int
    lr: float


RECIPES = {"clip": Recipe(300, 64, 1e-3), "dino": Recipe(300, 64, 4e-3),
           "fid-inception": Recipe(40, 64, 1e-3)}


@dataclass
class WorldImages:
    """The demo world's images as the tiny scorer sees them (after the profile's common resize), their
    factor labels (-1: the factor is not the image's scenario's) and the texts describing each."""

    images: list[Image.Image]
    labels: torch.Tensor  # (n, len(FACTORS)) int64
    texts: list[tuple[str, ...]]  # per image: its semantics text first, then captions naming its factors


def factor_captions(scenario: str, row: Any) -> tuple[str, ...]:
    """Texts naming an item's factors: the theme alone and with the semantics (sticker), the genres alone
    (movie)."""
    if scenario == "sticker":
        theme = f"a sticker of a {row.palette} {row.character} in {row.style} style"
        return theme, f"{theme}, {row.semantics.removeprefix('a sticker ')}"
    return (f"A poster; genres: {', '.join(g.lower() for g in row.genres.split('|'))}.",)


def world_images(datasets: dict[str, Dataset]) -> WorldImages:
    """Every item of the demo datasets (``{"sticker": ..., "movie": ...}``) with its labels and texts."""
    resize = ResizeSpec(size=TINY.resize)
    images, labels, texts = [], [], []
    for scenario, data in datasets.items():
        vocab = {f.name: {} for f in FACTORS}
        for row in data.items_df.itertuples(index=False):
            images.append(resize.apply(fileio.load_rgb(data.image_path(str(row.item_id)))))
            labels.append([vocab[f.name].setdefault(f.value(row), len(vocab[f.name]))
                           if f.scenario == scenario else -1 for f in FACTORS])
            texts.append((str(row.semantics), *factor_captions(scenario, row)))
    return WorldImages(images, torch.tensor(labels, dtype=torch.int64), texts)


def agreement(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) weighted share of the factors two images have in common, in [0, 1] (1: the same
    factors; 0: nothing in common, e.g. a sticker and a poster)."""
    weights = torch.tensor([f.weight for f in FACTORS], dtype=torch.float32)
    same = (a[:, None] == b[None]) & (a[:, None] >= 0)
    return (same.float() * weights).sum(-1)


# ---------------------------------------------------------------- training


def _batches(n: int, recipe: Recipe, seed: int) -> list[torch.Tensor]:
    """Row indices of each step: successive seeded shuffles."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(recipe.steps * recipe.batch // n + 1)])
    return [order[i * recipe.batch:(i + 1) * recipe.batch] for i in range(recipe.steps)]


def _fit(params: list[nn.Parameter], n: int, recipe: Recipe, seed: int,
         loss_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """AdamW over ``recipe.steps`` seeded batches of row indices (``loss_of(idx)``), the learning rate
    warming up over the first tenth of the steps and then decaying along a cosine."""
    optim = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    warmup = max(1, recipe.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * k / recipe.steps)))
    for idx in _batches(n, recipe, seed):
        loss = loss_of(idx)
        optim.zero_grad()
        loss.backward()
        optim.step()
        schedule.step()


def _shift(x: torch.Tensor, gen: torch.Generator, fraction: float = 1 / 16) -> torch.Tensor:
    """Each image translated by a seeded random offset of up to ``fraction`` of its side (edges repeated)."""
    side = x.shape[-1]
    pad = max(1, round(side * fraction))
    padded = nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="replicate").to(x.dtype)
    offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + x.shape[-2], dx:dx + side]
                        for i, (dy, dx) in enumerate(offsets)])


def _cosine_loss(emb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the pairwise cosines of ``emb`` and ``target``, off the diagonal."""
    emb = nn.functional.normalize(emb, dim=-1)
    off = ~torch.eye(len(emb), dtype=torch.bool)
    return ((emb @ emb.T - target)[off] ** 2).mean()


def encode_text_prefix(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` on the tokens up to the longest end-of-text token only: the text tower's
    causal mask makes the pooled end-of-text features exactly those of the full context, at a fraction of the
    cost."""
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return x @ model.text_projection


def train_clip(world: WorldImages, seed: int) -> nn.Module:
    """The tiny open_clip model after contrastive image-text training plus the cosine regression."""
    model, preprocess, tokenizer = B.tiny_clip(seed)
    model.token_embedding.requires_grad_(False)  # seeded random token vectors; the layers above them learn
    recipe = RECIPES["clip"]
    pixels = torch.stack([preprocess(im) for im in world.images])
    gen = torch.Generator().manual_seed(seed + 1)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        # half the images are described by their semantics text, the others by a text naming their factors
        chosen = [world.texts[i][0] if int(torch.randint(0, 2, (1,), generator=gen)) == 0 else
                  world.texts[i][1 + int(torch.randint(0, len(world.texts[i]) - 1, (1,), generator=gen))]
                  for i in idx.tolist()]
        unique = list(dict.fromkeys(chosen))
        column = torch.tensor([unique.index(t) for t in chosen])
        image = nn.functional.normalize(model.encode_image(_shift(pixels[idx], gen)), dim=-1)
        text = nn.functional.normalize(encode_text_prefix(model, tokenizer(unique)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image @ text.T  # (images, unique texts)
        positives = (column[None] == torch.arange(len(unique))[:, None]).float()  # (texts, images)
        to_images = positives / positives.sum(1, keepdim=True)
        contrastive = (nn.functional.cross_entropy(logits, column)
                       + nn.functional.cross_entropy(logits.T, to_images)) / 2
        return contrastive + _cosine_loss(image, agreement(world.labels[idx], world.labels[idx]))

    model.train()
    _fit([p for p in model.parameters() if p.requires_grad], len(pixels), recipe, seed, loss_of)
    return model.eval()


def train_dinov2(world: WorldImages, seed: int):
    """The tiny Dinov2Model after regressing its pooler cosines onto the factor agreement; its processor."""
    model, processor = B.tiny_dinov2(seed)
    recipe = RECIPES["dino"]
    pixels = processor(images=world.images, return_tensors="pt")["pixel_values"]
    gen = torch.Generator().manual_seed(seed + 2)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        emb = model(pixel_values=_shift(pixels[idx], gen)).pooler_output
        return _cosine_loss(emb, agreement(world.labels[idx], world.labels[idx]))

    model.train()
    _fit(list(model.parameters()), len(pixels), recipe, seed, loss_of)
    return model.eval(), processor


def train_inception(world: WorldImages, seed: int) -> dict[str, torch.Tensor]:
    """The tiny FID Inception's state dict after training its last block (Mixed_7c) to classify the factors
    from pool3 through the first rows of ``fc``; batch norms keep their running statistics, the lower blocks
    their seeded He init."""
    net = B.tiny_inception(seed).eval()
    top = nn.Sequential(net.Mixed_7c, net.AvgPool, nn.Flatten(), net.fc)
    recipe = RECIPES["fid-inception"]
    with torch.no_grad():  # the frozen blocks' output (Mixed_7c's input), once per image
        fid_input = resolve(profile=TINY).fid  # what the tiny profile scores FID with
        below = _input_of(net.Mixed_7c, lambda x: B.inception_pool3(net, x, fid_input),
                          B.pixels(world.images))
    sizes = [int(world.labels[:, j].max()) + 1 for j in range(len(FACTORS))]
    starts = np.cumsum([0, *sizes]).tolist()
    top.requires_grad_(True)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        logits = top(below[idx])
        return sum(nn.functional.cross_entropy(logits[:, starts[j]:starts[j + 1]], world.labels[idx, j],
                                               ignore_index=-1) for j in range(len(FACTORS)))

    _fit(list(top.parameters()), len(below), recipe, seed, loss_of)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _input_of(block: nn.Module, forward: Callable[[torch.Tensor], Any], pixels: torch.Tensor,
              batch: int = 64) -> torch.Tensor:
    """What ``block`` receives when ``forward`` (the scorer's path through the network) runs on ``pixels``."""
    captured: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].clone()))
    try:
        for start in range(0, len(pixels), batch):
            forward(pixels[start:start + batch])
    finally:
        handle.remove()
    return torch.cat(captured)


# ---------------------------------------------------------------- artifact


def build_trained(folder: Path, world: WorldImages, seed: int) -> None:
    """Train the backbones on ``world`` and save them into ``folder`` in their real on-disk formats."""
    from transformers.utils import logging as hf_logging

    with TINY.compute_threads("cpu"), B.seeded(seed):
        clip = train_clip(world, seed)
        (folder / CLIP_FILE).parent.mkdir(parents=True)
        torch.save(clip.state_dict(), folder / CLIP_FILE)
        model, processor = train_dinov2(world, seed)
        hf_logging.disable_progress_bar()
        model.save_pretrained(folder / DINO_FOLDER)
        processor.save_pretrained(folder / DINO_FOLDER)
        (folder / INCEPTION_FILE).parent.mkdir(parents=True)
        torch.save(train_inception(world, seed), folder / INCEPTION_FILE)


def ensure_trained(seed: int = 0) -> Path:
    """The trained backbones' folder for ``seed``, trained once on the default demo world (an artifact)."""
    from pigeon_bench.data.demo import ensure_demo_datasets

    datasets = {name: Dataset(folder) for name, folder in ensure_demo_datasets().items()}
    key = artifacts.digest(RECIPE_VERSION, seed, {k: d.digest for k, d in datasets.items()},
                           [(f.scenario, f.name, f.weight) for f in FACTORS], RECIPES, B.TINY_CLIP_CFG,
                           length=16)
    return artifacts.ensure(KIND, f"{key}-s{seed}",
                            lambda tmp: build_trained(tmp, world_images(datasets), seed),
                            what="training the tiny profile's scoring backbones on the demo world (once)")


def load(backbone_id: str, seed: int = 0) -> Any:
    """The trained tiny backbone ``backbone_id`` (clip, dino or fid-inception), through the real loaders."""
    folder = ensure_trained(seed)
    if backbone_id == "clip":
        return B.load_open_clip(B.register_tiny_clip_config(), folder / CLIP_FILE)
    if backbone_id == "dino":
        return B.load_dinov2(folder / DINO_FOLDER)
    if backbone_id == "fid-inception":
        return B.tiny_inception(seed, folder / INCEPTION_FILE)
    raise ValueError(f"no trained tiny backbone {backbone_id!r} (trained: {', '.join(TRAINED)})")
