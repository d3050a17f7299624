"""Inference settings of the authors' script (Pigeon/run_inf.sh + Pigeon/inference.py), as one dataclass.

``PAPER`` holds the official values (LaVIT in bf16, the LLM in 8-bit, beam sampling with 4 beams, SDXL-size
pixel decoding); ``TINY`` the tiny-profile variant. Every field can be overridden with
``dataclasses.replace`` or ``InferenceSettings.from_dict``. ``resolve`` turns requests the machine cannot
meet (8-bit without bitsandbytes or a GPU) into explicit notes instead of silent changes.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from pigeon_bench.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RATIOS = {"1:1": (1024, 1024), "4:3": (896, 1152), "3:2": (832, 1216), "16:9": (768, 1344),
          "2:3": (1216, 832), "3:4": (1152, 896)}
"""Aspect ratio -> (height, width) of the SDXL-size pixel decoder."""


@dataclass(frozen=True)
class InferenceSettings:
    """How Pigeon turns a prompt into an image; the defaults are the official run_inf.sh values."""

    dtype: str = "bf16"  # LaVIT weights
    llm_8bit: bool = True  # the LLM loaded in 8-bit (bitsandbytes, GPU only)
    do_sample: bool = True  # nucleus sampling (False: greedy / plain beam search)
    top_k: int = 50
    top_p: float = 1.0
    temperature: float = 1.0
    num_beams: int = 4  # with do_sample: beam sampling
    min_new_tokens: int = 20  # visual tokens before "eoi" may end the image
    max_new_tokens: int = 300  # also capped by the backbone's max_visual_tokens
    length_penalty: float = 1.0  # finished beams rank by score / length ** length_penalty
    llm_guidance_scale: float = 1.0  # classifier-free guidance of the LLM (1.0: none)
    guidance_scale: float = 7.0  # of the diffusion pixel decoder
    num_inference_steps: int = 25
    ratio: str = "1:1"  # output aspect ratio, see RATIOS
    alpha_h: float | None = None  # history mask ratio; None: the model's PigeonConfig.alpha_h (0.2)
    seed: int = 123  # the script's run seed

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        if self.ratio not in RATIOS:
            raise UserError(f"unknown ratio {self.ratio!r} (known: {', '.join(RATIOS)})")
        if self.llm_guidance_scale != 1.0:
            raise UserError("llm_guidance_scale other than 1.0 (classifier-free guidance of the LLM) is not "
                            "implemented; the official script runs with 1.0")
        if min(self.num_beams, self.max_new_tokens) < 1 or self.min_new_tokens < 0 or not 0 < self.top_p <= 1:
            raise UserError("num_beams and max_new_tokens must be >= 1, min_new_tokens >= 0, top_p in (0, 1]")

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: InferenceSettings | None = None) -> InferenceSettings:
        """``base`` (default PAPER) with the fields of ``d``; UserError naming unknown fields."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown inference setting(s): {', '.join(unknown)}")
        return replace(base or PAPER, **d)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of generated images."""
        return RATIOS[self.ratio]

    def backbone_options(self, backbone: str) -> dict[str, Any]:
        """Options of the named backbone's factory that carry these settings (pixel decoding, 8-bit LLM)."""
        from pigeon.backbone import LAVIT

        if backbone != LAVIT:
            return {}
        height, width = self.size
        if height != width:
            raise UserError(f"ratio {self.ratio}: the LaVIT pixel decoder here renders square images only")
        return {"output_size": height, "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "load_in_8bit": self.llm_8bit}


PAPER = InferenceSettings()
TINY = InferenceSettings(dtype="fp32", llm_8bit=False, num_beams=1)
"""The tiny profile: float32, no quantization, plain sampling (the tiny backbone always emits 64 tokens and
renders with a deterministic decoder, so the diffusion fields do not apply)."""


def default_settings(backbone_name: str) -> InferenceSettings:
    """TINY for the tiny backbone, PAPER otherwise."""
    from pigeon.tiny import TinyBackbone

    return TINY if backbone_name == TinyBackbone.name else PAPER


def resolve(settings: InferenceSettings, device: str | torch.device) -> tuple[InferenceSettings, list[str]]:
    """The settings this machine can run, and a note (also logged) for every request it cannot meet."""
    notes = []
    if settings.llm_8bit:
        missing = []
        if importlib.util.find_spec("bitsandbytes") is None:
            missing.append("bitsandbytes is not installed")
        if torch.device(device).type != "cuda":
            missing.append(f"the device is {torch.device(device).type}, not a GPU")
        if missing:
            notes.append(f"8-bit LLM requested but {' and '.join(missing)}: the LLM runs in {settings.dtype}")
            settings = replace(settings, llm_8bit=False)
    for note in notes:
        log.warning(note)
    return settings, notes
