"""The tiny backbone: a LaVIT-shaped LMM small enough to pretrain on CPU in seconds (tests, tiny profile).

- Visual tokenizer: an MLP over the 8x8 grid of 8 px patches at 64 px, vector-quantised against a
  learned codebook (K = 256): 64 visual tokens per image (a VQ-VAE, trained on the dataset's train images).
- Text tokenizer: a word-level ``tokenizers`` tokenizer built offline from the dataset texts and the prompt.
- Causal LM: a ``transformers`` LlamaForCausalLM (2 layers, width 64) pretrained on "[bos] caption [boi] codes
  [eoi]" sequences (text-to-image, like LaVIT's pretraining), saved and loaded with save/from_pretrained.
- Tokenizer decoder: codebook vector + position -> MLP -> (64, 64) dense features.
- Pixel decoder: a small deterministic per-patch MLP decoder (no diffusion), features -> 64 px RGB.

Folder layout: tiny.json, tokenizer.json, visual.safetensors, language_model/ (config.json,
model.safetensors).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pigeon.backbone import Backbone, backbones
from pigeon_bench import artifacts, fileio
from pigeon_bench.data import Dataset
from pigeon_bench.errors import UserError
from pigeon_bench.progress import progress as progress_bar

SPECIALS = ("bos", "boi", "eoi")
PAD, UNK = "[PAD]", "[UNK]"


@dataclass(frozen=True)
class TinyConfig:
    image_size: int = 64
    grid: int = 8
    codebook_size: int = 256
    code_dim: int = 32
    feature_dim: int = 64
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 128
    max_positions: int = 1024


class TinyVisual(nn.Module):
    """VQ tokenizer (encoder + codebook), tokenizer decoder and pixel decoder, trained as one VQ-VAE."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.cfg = cfg
        c, n = cfg.code_dim, cfg.grid * cfg.grid
        p = 3 * (cfg.image_size // cfg.grid) ** 2  # pixels per patch
        self.encoder = nn.Sequential(nn.Linear(p, 128), nn.GELU(), nn.Linear(128, c))
        self.codebook = nn.Embedding(cfg.codebook_size, c)
        self.position = nn.Parameter(torch.randn(n, c) * 0.02)
        self.absent = nn.Parameter(torch.zeros(c))
        self.token_decoder = nn.Sequential(nn.Linear(c, cfg.feature_dim), nn.GELU(),
                                           nn.Linear(cfg.feature_dim, cfg.feature_dim))
        self.pixel_decoder = nn.Sequential(nn.Linear(cfg.feature_dim, 128), nn.GELU(), nn.Linear(128, p))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> patch features (B, grid*grid, code_dim)."""
        patch = self.cfg.image_size // self.cfg.grid
        return self.encoder(F.unfold(x * 2 - 1, patch, stride=patch).transpose(1, 2))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Patch features (B, n, c) -> nearest codebook ids (B, n)."""
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ self.codebook.weight.T
             + self.codebook.weight.pow(2).sum(-1))
        return d.argmin(-1)

    def features(self, vectors: torch.Tensor) -> torch.Tensor:
        """Token vectors (B, n, c), n = grid*grid -> dense features (B, n, feature_dim)."""
        return self.token_decoder(vectors + self.position)

    def pixels(self, features: torch.Tensor) -> torch.Tensor:
        """Dense features (B, n, C) -> pixels (B, 3, image_size, image_size) in [0, 1]."""
        size, patch = self.cfg.image_size, self.cfg.image_size // self.cfg.grid
        patches = self.pixel_decoder(features).transpose(1, 2)  # (B, 3 * patch^2, n)
        return torch.sigmoid(F.fold(patches, (size, size), patch, stride=patch))

    def code_vectors(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Variable-length code lists -> (B, n, c): codebook vectors in order, then ``absent`` up to n."""
        n = self.cfg.grid * self.cfg.grid
        out = self.absent.expand(len(codes), n, -1).clone()
        for b, c in enumerate(codes):
            c = c[:n]
            out[b, : c.numel()] = self.codebook(c)
        return out


def images_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB PIL images -> (B, 3, size, size) float in [0, 1]."""
    arrs = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
            for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    arr = (x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


def build_text_tokenizer(texts: Sequence[str]):
    """A word-level ``tokenizers.Tokenizer`` (lower-cased, punctuation split) over the words of ``texts``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    pre = pre_tokenizers.Whitespace()
    norm = normalizers.Lowercase()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t))})
    vocab = {PAD: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    return tok


class TinyBackbone(Backbone):
    """See the module docstring. Built from a folder (``load``) or pretrained on images (``pretrain``)."""

    name = "tiny"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __init__(self, cfg: TinyConfig, text_tokenizer: Any, language_model: nn.Module, visual: TinyVisual,
                 fingerprint: str = ""):
        super().__init__()
        self.cfg = cfg
        self.text_tokenizer = text_tokenizer
        self.language_model = language_model
        self.visual = visual
        self.fingerprint = fingerprint
        n_text = text_tokenizer.get_vocab_size()
        self.special_ids = {name: n_text + i for i, name in enumerate(SPECIALS)}
        self.visual_offset = n_text + len(SPECIALS)
        self.hidden_size = cfg.hidden_size
        self.visual_vocab_size = cfg.codebook_size
        self.feature_length = cfg.grid * cfg.grid
        self.feature_dim = cfg.feature_dim
        self.image_size = cfg.image_size
        self.min_visual_tokens = self.max_visual_tokens = cfg.grid * cfg.grid

    @staticmethod
    def new(cfg: TinyConfig, texts: Sequence[str], seed: int = 0) -> TinyBackbone:
        """A randomly initialised tiny backbone whose text vocabulary covers ``texts``."""
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        tok = build_text_tokenizer(texts)
        vocab = tok.get_vocab_size() + len(SPECIALS) + cfg.codebook_size
        lm_cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.max_positions, pad_token_id=0,
            bos_token_id=vocab - cfg.codebook_size - 3, eos_token_id=vocab - cfg.codebook_size - 1,
            tie_word_embeddings=False)
        return TinyBackbone(cfg, tok, LlamaForCausalLM(lm_cfg), TinyVisual(cfg))

    # interface ------------------------------------------------------------------------------------------
    def tokenize_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        x = images_to_tensor(images, self.image_size).to(self.device, self.dtype)
        with torch.no_grad():
            return list(self.visual.quantize(self.visual.encode(x)))

    def tokenize_text(self, texts: Sequence[str]) -> list[torch.Tensor]:
        return [torch.tensor(e.ids, dtype=torch.long, device=self.device)
                for e in self.text_tokenizer.encode_batch(list(texts))]

    def decode_tokens(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.visual.features(self.visual.code_vectors([c.to(self.device) for c in codes]))

    def decode_pixels(self, features: torch.Tensor, seeds: Sequence[int]) -> list[Image.Image]:
        with torch.no_grad():
            return tensor_to_images(self.visual.pixels(features))

    def describe(self) -> dict[str, Any]:
        return {"backbone": self.name, "fingerprint": self.fingerprint, "config": asdict(self.cfg),
                "pixel_decoder": "deterministic per-patch MLP decoder (no diffusion)"}

    # persistence ----------------------------------------------------------------------------------------
    def save(self, out: str | Path) -> None:
        """Write the folder (see module docstring); every file goes through a temporary path."""
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_text(out / "tokenizer.json", self.text_tokenizer.to_str())
        with fileio.atomic_path(out / "visual.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.visual.state_dict().items()}, str(tmp))
        if hasattr(self.language_model, "peft_config"):
            raise ValueError("save the tiny backbone before adding LoRA")
        _quiet_transformers()
        self.language_model.save_pretrained(out / "language_model")
        fingerprint = fileio.folder_fingerprint(out, content=True, exclude=("tiny.json",))
        fileio.write_json(out / "tiny.json", {"config": asdict(self.cfg), "fingerprint": fingerprint})

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
             ) -> TinyBackbone:
        """Load a folder written by ``save``; UserError naming what is missing or broken."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer
        from transformers import LlamaForCausalLM

        path = Path(path)
        for name in ("tiny.json", "tokenizer.json", "visual.safetensors", "language_model/config.json"):
            if not (path / name).is_file():
                raise UserError(f"not a tiny backbone folder: {path} (missing {name})")
        meta = fileio.read_json(path / "tiny.json")
        try:
            cfg = TinyConfig(**meta["config"])
        except TypeError as exc:
            raise UserError(f"{path / 'tiny.json'}: bad config ({exc})") from None
        visual = TinyVisual(cfg)
        visual.load_state_dict(load_file(str(path / "visual.safetensors")))
        _quiet_transformers()
        lm = LlamaForCausalLM.from_pretrained(path / "language_model", dtype=dtype)
        bb = TinyBackbone(cfg, Tokenizer.from_file(str(path / "tokenizer.json")), lm, visual,
                          meta.get("fingerprint", ""))
        return bb.to(device=device, dtype=dtype)


def _quiet_transformers() -> None:
    """No per-shard progress bars for a 1-shard tiny model."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def pretrain(images: Sequence[Image.Image], captions: Sequence[str], extra_texts: Sequence[str] = (),
             cfg: TinyConfig | None = None, vq_steps: int = 400, lm_steps: int = 300, batch_size: int = 32,
             seed: int = 0, progress: bool = True) -> TinyBackbone:
    """Pretrain a tiny backbone: the VQ-VAE on ``images``, then the LM on caption -> image-token sequences.

    ``captions[i]`` describes ``images[i]``; ``extra_texts`` only widen the text vocabulary.
    """
    from pigeon.prompt import INPUT_HISTORY, INPUT_REFERENCE, INSTRUCTION, RESPONSE

    if not images or len(images) != len(captions):
        raise UserError("tiny backbone pretraining needs images with one caption each")
    cfg = cfg or TinyConfig()
    texts = [INSTRUCTION, INPUT_HISTORY, INPUT_REFERENCE, RESPONSE, *captions, *extra_texts]
    bb = TinyBackbone.new(cfg, texts, seed)
    gen = torch.Generator().manual_seed(seed)
    x = images_to_tensor(images, cfg.image_size)
    with progress_bar(info=True, enabled=progress) as bar:
        _train_vq(bb.visual, x, vq_steps, batch_size, gen, bar)
        codes = torch.stack(bb.tokenize_images(images))
        _train_lm(bb, codes, captions, lm_steps, batch_size, seed, bar)
    bb.requires_grad_(False)
    return bb.eval()


def _train_vq(vis: TinyVisual, x: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator,
              bar) -> None:
    """VQ-VAE training: reconstruction + codebook + 0.25 commitment loss; dead codes restart from data."""
    with torch.no_grad():  # codebook initialised from encoder outputs
        z = vis.encode(x[: min(len(x), 64)]).reshape(-1, vis.cfg.code_dim)
        vis.codebook.weight.copy_(z[torch.randint(len(z), (vis.cfg.codebook_size,), generator=gen)])
    opt = torch.optim.Adam(vis.parameters(), lr=2e-3)
    usage = torch.zeros(vis.cfg.codebook_size)
    task = bar.add_task("tiny backbone: VQ tokenizer", total=steps, info="")
    for step in range(steps):
        xb = x[torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)]
        z = vis.encode(xb)
        codes = vis.quantize(z.detach())
        q = vis.codebook(codes)
        rec = vis.pixels(vis.features(z + (q - z).detach()))
        loss = F.mse_loss(rec, xb) + F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage += torch.bincount(codes.flatten(), minlength=vis.cfg.codebook_size)
        if step % 50 == 49 and step < steps - 50:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    flat = z.detach().reshape(-1, vis.cfg.code_dim)
                    vis.codebook.weight[dead] = flat[torch.randint(len(flat), (len(dead),), generator=gen)]
            usage.zero_()
        bar.update(task, advance=1, info=f"loss {loss.item():.4f}")


def _train_lm(bb: TinyBackbone, codes: torch.Tensor, captions: Sequence[str], steps: int, batch_size: int,
              seed: int, bar) -> None:
    """Full LM training on [bos] caption [boi] codes [eoi] (next-token loss on every token)."""
    text = bb.tokenize_text(captions)
    bos, boi, eoi = (torch.tensor([bb.special_ids[k]]) for k in SPECIALS)
    seqs = [torch.cat([bos, t, boi, c + bb.visual_offset, eoi]) for t, c in zip(text, codes, strict=True)]
    lm = bb.language_model.train()
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(seed)
    task = bar.add_task("tiny backbone: language model", total=steps, info="")
    for _ in range(steps):
        batch = [seqs[rng.randrange(len(seqs))] for _ in range(min(batch_size, len(seqs)))]
        ids = nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=0)
        mask = nn.utils.rnn.pad_sequence([torch.ones_like(s) for s in batch], batch_first=True)
        labels = ids.masked_fill(mask == 0, -100)
        loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    lm.eval()


def _factory(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | None = None,
             data: Dataset | None = None, **_: Any) -> TinyBackbone:
    """Registry factory: ``path`` = a saved tiny backbone, else one pretrained on ``data``'s train split
    (cached)."""
    if path is None:
        if data is None:
            raise UserError("the tiny backbone needs `path` (a saved tiny backbone) or a dataset to "
                            "pretrain on")
        path = str(tiny_backbone_for_dataset(data.root))
    return TinyBackbone.load(path, device=device, dtype=dtype)


backbones.register(TinyBackbone.name, _factory)


def dataset_key(data_dir: str | Path) -> str:
    """A cache key of what is trained on a dataset: the digest of its tables (16 hex digits)."""
    return Dataset(data_dir).digest[:16]


def train_corpus(data_dir: str | Path) -> tuple[list[Path], list[str], list[str]]:
    """Images and captions of the items the train split touches, plus every instruction text."""
    ds = Dataset(data_dir)
    samples = ds.samples("train")
    if not samples:
        raise UserError(f"{ds.root}: no train samples to pretrain the tiny backbone on")
    ids = sorted({i for s in samples for i in (*s.history, s.target_id, s.reference_id)})
    return ([ds.image_path(i) for i in ids], [ds.item(i).semantics for i in ids],
            sorted({s.instruction for s in ds.samples()} | {it.semantics for it in ds.items.values()}))


def tiny_backbone_for_dataset(data_dir: str | Path, seed: int = 0) -> Path:
    """The tiny backbone pretrained on a dataset's train images, built once into the artifact cache."""

    def build(out: Path) -> None:
        paths, captions, texts = train_corpus(data_dir)
        from pigeon.prompt import template_texts

        images = [fileio.load_rgb(p) for p in paths]
        pretrain(images, captions, [*texts, *template_texts()], seed=seed).save(out)

    return artifacts.ensure("pigeon/tiny-backbone", f"{dataset_key(data_dir)}-s{seed}", build,
                            what=f"pretraining the tiny backbone on the train images of {data_dir}")
