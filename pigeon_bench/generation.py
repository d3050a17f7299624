"""The shared generation interface: every method (Pigeon, baselines, references) answers the same request.

A generator class is registered under a method name, either with ``@generators.register("name")`` in a
module listed in ``builtin_modules`` below, or by a third-party package through the entry-point group
``pigeon_bench.generators`` (the entry point names the method and points at the class).
Adapter modules import heavy libraries (diffusers, transformers models) lazily, inside ``load``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from pigeon_bench.data.model import Sample
from pigeon_bench.registry import Registry

ALPHA_R_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class GenerationRequest:
    """One personalized-generation request (paper §2.1): history H, reference x_0, instruction txt."""

    sample: Sample
    history_images: list[Image.Image]  # 5, oldest first, RGB
    history_texts: list[str]
    reference_image: Image.Image
    reference_text: str
    instruction: str
    seed: int = 0
    alpha_r: float | None = None  # reference mask ratio, for methods that have one


@dataclass
class GenerationResult:
    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"prompt": "..."}


class Generator(ABC):
    """Base class of every method. Subclasses set ``name``/``group`` and implement ``generate``."""

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""  # Table 1 group: DM-based, LLM-based, LMM-based, Reference, Sanity
    label: ClassVar[str] = ""  # display name in reports, e.g. "LLaVA*"; defaults to name
    supports_alpha_r: ClassVar[bool] = False

    def __init__(self, profile: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 **options: Any):
        self.profile = profile
        self.device = torch.device(device)
        self.dtype = dtype
        self.options = options

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load models (lazily, once). Called before the first ``generate``."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests, one result each, in order."""

    def describe(self) -> dict[str, Any]:
        """Model ids and weight fingerprints for the run manifest."""
        return {"method": self.name, "profile": self.profile}


generators: Registry[type[Generator]] = Registry(
    "method", entry_point_group="pigeon_bench.generators", builtin_modules=("baselines", "pigeon.generators")
)
