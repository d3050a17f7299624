"""The LMM backbone interface Pigeon is built on (paper §2.2: LaVIT), and the backbone registry.

A backbone bundles five frozen, pretrained parts. Shapes: B = batch, L = visual tokens of one image,
T = sequence length, D = ``hidden_size`` (the LM embedding width), K = ``visual_vocab_size``,
V = LM vocabulary (text + special + visual), F = ``feature_length``, C = ``feature_dim``.

1. Visual tokenizer (Eq. 1): ``tokenize_images(images) -> list[LongTensor (L_i,)]``, visual codes in [0, K).
   L_i may differ per image (LaVIT's dynamic token merger); the tiny backbone always gives 64.
   ``embed_visual(codes (*)) -> (*, D)`` is the visual embedding layer: E_i = embed_visual(codes_i).
2. Text tokenizer + word embeddings (Eq. 5): ``tokenize_text(texts) -> list[LongTensor (T_i,)]`` of LM ids
   (no BOS/EOS); ``embed_tokens(ids (*)) -> (*, D)`` embeds any LM id (text, special, visual).
   Visual code c is LM id ``visual_offset + c``; ``special_ids`` holds "bos", "boi" (begin of image) and
   "eoi" (end of image) LM ids.
3. Causal LM: ``language_model`` is a Hugging Face causal LM (a Llama) called with
   ``inputs_embeds (B, T, D)``, ``attention_mask (B, T)`` (1 = real token, left padding allowed), optional
   ``past_key_values``/``use_cache``; it returns ``.logits (B, T, V)``. ``add_lora`` wraps it with peft LoRA.
4. Tokenizer decoder (Eq. 6, §2.2.3): ``decode_tokens(codes: list[LongTensor (L_i,)]) -> (B, F, C)`` dense
   visual features. Pigeon average-pools them over F for r_v.
5. Pixel decoder (§2.2.3): ``decode_pixels(features (B, F, C), seeds: list[int]) -> list[PIL.Image]`` (RGB,
   ``image_size`` square): a diffusion model conditioned on the features (LaVIT) or a small deterministic
   conv decoder (tiny). ``render(codes, seeds)`` chains 4 and 5; Pigeon calls it to draw generated tokens.
   Masked tokens are dropped before ``decode_tokens`` (as LaVIT's decoder does), so L_i varies.

Tensors a backbone returns live on ``self.device``; floating ones are in ``self.dtype``. Backbones are frozen
(``requires_grad=False``) except the LoRA parameters ``add_lora`` creates. When the LM generates an image it
emits between ``min_visual_tokens`` and ``max_visual_tokens`` visual codes after "boi", then "eoi".

Backbones register a factory ``(device, dtype, **options) -> Backbone`` in ``backbones``:
"tiny" (pigeon/tiny.py) and "lavit" (pigeon/lavit/, registered on import of that package).
"""

from __future__ import annotations

import importlib.util
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from pigeon_bench.errors import UserError
from pigeon_bench.registry import Registry


class Backbone(nn.Module, ABC):
    """A frozen LMM with a discrete visual tokenizer (see the module docstring for every shape)."""

    name: ClassVar[str] = ""
    lora_target_modules: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj", "o_proj")

    # Set by subclasses in __init__.
    hidden_size: int  # D
    visual_vocab_size: int  # K
    visual_offset: int  # language-model id of visual code 0
    feature_length: int  # F
    feature_dim: int  # C
    image_size: int  # pixel size of decoded images (square)
    min_visual_tokens: int
    max_visual_tokens: int
    special_ids: dict[str, int]  # "bos", "boi", "eoi" -> language-model id
    language_model: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters() if p.is_floating_point()).dtype

    # 1. visual tokenizer --------------------------------------------------------------------------------
    @abstractmethod
    def tokenize_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """RGB images (any size) -> one LongTensor (L_i,) of visual codes in [0, K) each."""

    def embed_visual(self, codes: torch.Tensor) -> torch.Tensor:
        """Visual codes (*) -> visual token embeddings E (*, D), the LM's embeddings of those tokens."""
        return self.embed_tokens(codes + self.visual_offset)

    # 2. text tokenizer and embeddings -------------------------------------------------------------------
    @abstractmethod
    def tokenize_text(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Texts -> one LongTensor (T_i,) of language-model ids each, without BOS/EOS."""

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Language-model ids (*) -> input embeddings (*, D)."""
        return self.language_model.get_input_embeddings()(ids)

    # 3. causal LM ---------------------------------------------------------------------------------------
    def add_lora(self, r: int = 8, alpha: int = 16, dropout: float = 0.05) -> None:
        """Wrap the language model with peft LoRA on ``lora_target_modules``; only LoRA weights train."""
        from peft import LoraConfig, get_peft_model

        if hasattr(self.language_model, "peft_config"):
            return
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=list(self.lora_target_modules), bias="none")
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            self.language_model = get_peft_model(self.language_model, config)

    # 4. tokenizer decoder -------------------------------------------------------------------------------
    @abstractmethod
    def decode_tokens(self, codes: Sequence[torch.Tensor]) -> torch.Tensor:
        """Visual codes, one LongTensor (L_i,) per image -> dense visual features (B, F, C)."""

    # 5. pixel decoder -----------------------------------------------------------------------------------
    @abstractmethod
    def decode_pixels(self, features: torch.Tensor, seeds: Sequence[int]) -> list[Image.Image]:
        """Features (B, F, C) -> B RGB images of ``image_size`` px; ``seeds`` fix the diffusion noise."""

    def render(self, codes: Sequence[torch.Tensor], seeds: Sequence[int]) -> list[Image.Image]:
        """Image generation module (§2.2.3): visual codes -> tokenizer decoder -> pixel decoder -> images.

        Override where the pixel decoder needs more than ``decode_tokens`` (SDXL: a pooled embedding).
        """
        return self.decode_pixels(self.decode_tokens(codes), seeds)

    # identity -------------------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What a Pigeon checkpoint must match: the shapes its trainable parts were built for."""
        return {
            "backbone": self.name,
            "hidden_size": self.hidden_size,
            "visual_vocab_size": self.visual_vocab_size,
            "feature_dim": self.feature_dim,
            "lm_vocab_size": int(self.language_model.get_input_embeddings().num_embeddings),
            "lora_target_modules": list(self.lora_target_modules),
        }

    def describe(self) -> dict[str, Any]:
        """Model ids and weight fingerprints for run manifests."""
        return {"backbone": self.name}


BackboneFactory = Callable[..., Backbone]

LAVIT = "lavit"  # the name LaVIT-7B-v2 registers under (pigeon/lavit)
_BUILTIN = ("pigeon.tiny", "pigeon.lavit")
backbones: Registry[BackboneFactory] = Registry(
    "backbone", builtin_modules=tuple(m for m in _BUILTIN if importlib.util.find_spec(m))
)


def build_backbone(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   **options: Any) -> Backbone:
    """Build a registered backbone by name (UserError for unknown names), frozen, in eval mode."""
    backbone = backbones.get(name)(device=device, dtype=dtype, **options)
    if not isinstance(backbone, Backbone):
        raise UserError(f"backbone {name!r} factory did not return a Backbone")
    backbone.requires_grad_(False)
    return backbone.eval()
