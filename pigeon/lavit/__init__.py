"""LaVIT-7B-v2 as a Pigeon backbone (registered as "lavit"); see README "## LaVIT backbone".

Options of the "lavit" backbone: ``path`` (a LaVIT-7B-v2 folder or hub id, default rain1011/LaVIT-7B-v2;
"tiny" builds/loads the tiny random LaVIT-layout folder in the pigeon-bench cache) and any ``LaVITConfig``
field as an override (e.g. ``output_size=512``, ``num_inference_steps=25``); ``load_in_8bit`` loads the LLM in
8-bit (bitsandbytes on a CUDA device only; pigeon.inference.InferenceSettings.backbone_options sets it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pigeon.backbone import LAVIT, backbones
from pigeon.lavit.backbone import LaVITBackbone
from pigeon.lavit.config import REPO_ID, TINY, LaVITConfig
from pigeon.lavit.tiny_folder import ensure_tiny_lavit_folder, write_tiny_lavit_folder

__all__ = ["REPO_ID", "TINY", "LaVITBackbone", "LaVITConfig", "ensure_tiny_lavit_folder",
           "write_tiny_lavit_folder"]


TINY_PATH = "tiny"  # ``path`` value that means the tiny random LaVIT-layout folder


@backbones.register(LAVIT)
def build_lavit(device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                path: str | Path = REPO_ID, load_in_8bit: bool = False, data: object = None,
                **overrides: Any) -> LaVITBackbone:
    """The "lavit" backbone factory (``load_in_8bit``: the LLM in 8-bit, CUDA + bitsandbytes only; ``data``,
    the dataset a tiny backbone pretrains on, is not used)."""
    folder = ensure_tiny_lavit_folder() if str(path) == TINY_PATH else path
    return LaVITBackbone.from_pretrained(folder, dtype=dtype, device=device, load_in_8bit=load_in_8bit,
                                         **overrides)
