"""The shared generation interface: every method (Pigeon, baselines, references) answers the same request.

A generator class is registered under a method name, either with ``@generators.register("name")`` in a
module listed in ``builtin_modules`` below, or by a third-party package through the entry-point group
``pigeon_bench.generators`` (the entry point names the method and points at the class).
Adapter modules import heavy libraries (diffusers, transformers models) lazily, inside ``load``.
"""

from __future__ import annotations

import hashlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.registry import Registry

ALPHA_R_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}


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
    """Base class of every method. Subclasses set ``name``/``group`` and implement ``generate``.

    Method options (``pigeon-bench generate --option key=value``) are keyword parameters of the subclass's
    ``__init__`` or names listed in ``accepted_options`` (then read from ``self.options``).
    """

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""  # Table 1 group: DM-based, LLM-based, LMM-based, Reference, Sanity
    label: ClassVar[str] = ""  # display name in reports, e.g. "LLaVA*"; defaults to name
    supports_alpha_r: ClassVar[bool] = False
    accepted_options: ClassVar[tuple[str, ...]] = ()

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

    @classmethod
    def option_names(cls) -> set[str]:
        """Options this method accepts: its ``__init__`` keyword parameters plus ``accepted_options``."""
        params = inspect.signature(cls.__init__).parameters.values()
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        return (named - {"self", "profile", "device", "dtype"}) | set(cls.accepted_options)


generators: Registry[type[Generator]] = Registry(
    "method", entry_point_group="pigeon_bench.generators", builtin_modules=("baselines", "pigeon.generators")
)


def display_label(cls: type[Generator]) -> str:
    return cls.label or cls.name


def method_dirname(name: str) -> str:
    """Folder name of a method's run: ``llava*`` -> ``llava-star``."""
    return name.replace("*", "-star")


def check_alpha_r(alpha_r: float | None) -> None:
    if alpha_r is not None and not 0.0 <= alpha_r <= 1.0:
        raise UserError(f"alpha_r must lie in [0, 1], got {alpha_r}")


def create_generator(name: str, profile: str = "tiny", device: str = "cpu", dtype: str = "float32",
                     options: dict[str, Any] | None = None) -> Generator:
    """Instantiate a registered method; unknown names, dtypes and options are one-line UserErrors."""
    cls = generators.get(name)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    options = dict(options or {})
    unknown = sorted(set(options) - cls.option_names())
    if unknown:
        known = ", ".join(sorted(cls.option_names())) or "none"
        raise UserError(f"method {name!r} has no option {unknown[0]!r} (its options: {known})")
    return cls(profile=profile, device=device, dtype=DTYPES[dtype], **options)


def request_seed(run_seed: int, sample_id: str) -> int:
    """Per-request seed from the run seed and the sample id: batching and resuming never change an image."""
    digest = hashlib.sha256(f"{run_seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_request(dataset: Dataset, sample: Sample, run_seed: int = 0,
                  alpha_r: float | None = None) -> GenerationRequest:
    """Load one sample's images and texts into a request."""
    check_alpha_r(alpha_r)
    history = [dataset.item(i) for i in sample.history]
    reference = dataset.item(sample.reference_id)
    return GenerationRequest(
        sample=sample,
        history_images=[fileio.load_rgb(dataset.image_path(i.item_id)) for i in history],
        history_texts=[i.semantics for i in history],
        reference_image=fileio.load_rgb(dataset.image_path(reference.item_id)),
        reference_text=reference.semantics,
        instruction=sample.instruction,
        seed=request_seed(run_seed, sample.sample_id),
        alpha_r=alpha_r,
    )
