"""Sizes of the LaVIT parts and the on-disk layout of a LaVIT-7B-v2 folder (README "## LaVIT backbone").

The released checkpoint carries no config for its visual tokenizer / tokenizer decoder: LaVIT hard-codes the
sizes (LaVIT/models/modeling_visual_encoder.py ``build_eva_clip``, modeling_visual_tokenzier.py
``DynamicVisualTokenizer``, modeling_decoder.py ``build_tokenizer_decoder``). ``LaVITConfig()`` holds those
released sizes. A folder may carry ``pigeon_lavit_config.json`` (our own file, absent from the release) to
override them: the tiny test folders use it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pigeon_bench.errors import UserError

REPO_ID = "rain1011/LaVIT-7B-v2"
CONFIG_FILE = "pigeon_lavit_config.json"

# Released file layout (relative to the checkpoint root).
EVA_FILE = "visual_tokenizer/eva_vitg_psz14.bin"  # EVA-CLIP ViT-g/14, loaded strictly into the encoder
TOKENIZER_FILE = "visual_tokenizer/tokenizer_encoder.bin"  # token selector + merger + codebook
DECODER_FILE = "visual_tokenizer/highres_tokenizer_decoder.bin"  # tokenizer decoder for the SDXL-size UNet
LM_DIR = "language_model"  # LlamaForCausalLM + LlamaTokenizer (tokenizer.model)
PIXEL_DIR = "highres_pixel_decoding"  # diffusers: unet/ (.bin), vae/ (.safetensors), scheduler/

# CLIP normalisation used by LaVIT's image processor (LaVIT/models/transform.py).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class LaVITConfig:
    """Every size the LaVIT modules are built from; the defaults are the released LaVIT-7B-v2 sizes."""

    # visual encoder (EVA-CLIP ViT-g/14 as LaVIT builds it)
    image_size: int = 224  # encoder input resolution
    patch_size: int = 14
    vit_width: int = 1408
    vit_depth: int = 40
    vit_head_width: int = 88  # heads = vit_width // vit_head_width = 16
    vit_mlp_ratio: float = 4.3637  # hidden = int(width * ratio) = 6144
    vit_embed_dim: int = 1024  # the CLIP head (unused by LaVIT, present in the weights)
    # dynamic visual tokenizer (token selector + token merger + quantizer)
    merger_depth: int = 12
    merger_heads: int = 16
    merger_mlp_ratio: float = 4.3637
    codebook_size: int = 16384  # K
    code_dim: int = 32
    # tokenizer decoder (HighresVQDecoder)
    decoder_width: int = 1408
    decoder_depth: int = 12
    decoder_heads: int = 16
    decoder_mlp_ratio: float = 4.3637
    decoder_out_dim: int = 1408
    unet_context_dims: tuple[int, int] = (768, 1280)  # unet_proj_1, unet_proj_2 -> concat = 2048
    unet_pooled_dim: int = 1280  # unet_attnpool output (SDXL "text_embeds")
    # pixel decoding (LaVIT / Pigeon defaults: 1024 px, 25 DDIM steps, guidance 7)
    output_size: int = 1024
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    # generation bounds for the LM (LaVIT: min_length 20; the decoder has num_patches positions)
    min_visual_tokens: int = 20
    # tokenizer: LaVIT samples the token selector's keep decisions (gumbel); we seed that noise per image
    selector_seed: int = 0
    show_progress: bool = True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def vit_heads(self) -> int:
        return self.vit_width // self.vit_head_width

    @property
    def feature_dim(self) -> int:
        return sum(self.unet_context_dims)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "config") -> LaVITConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"{source}: unknown LaVIT config keys {unknown}")
        if "unet_context_dims" in data:
            data = {**data, "unet_context_dims": tuple(data["unet_context_dims"])}
        return cls(**data)

    @classmethod
    def for_folder(cls, root: Path, **overrides: Any) -> LaVITConfig:
        """The folder's ``pigeon_lavit_config.json`` if present, else the released sizes, + ``overrides``."""
        path = root / CONFIG_FILE
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON ({exc.msg})") from None
        return cls.from_json({**data, **overrides}, source=str(path))


TINY = LaVITConfig(
    image_size=32, patch_size=8, vit_width=32, vit_depth=2, vit_head_width=8, vit_embed_dim=16,
    merger_depth=1, merger_heads=4, codebook_size=64, code_dim=8,
    decoder_width=32, decoder_depth=1, decoder_heads=4, decoder_out_dim=32,
    unet_context_dims=(16, 24), unet_pooled_dim=24,
    output_size=32, num_inference_steps=2, min_visual_tokens=2, show_progress=False,
)
"""A LaVIT-layout config that builds in milliseconds (16 patches, 64 codes, 32 px images)."""
