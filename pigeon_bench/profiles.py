"""Profiles: the one place where "paper" and "tiny" are interpreted.

A profile says which models every part of the toolkit uses and how: the paper's own models from local
weights (``paper``), or tiny seeded models of the very same classes built offline (``tiny``: its numbers are
not comparable with the paper and every output says so). Everything else receives a :class:`Profile` object
and asks it; no other module compares profile names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from pigeon_bench.errors import UserError
from pigeon_bench.registry import Registry

T = TypeVar("T")

TINY_NOTICE = "tiny profile: not comparable with the paper"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch (and its LAPACK) on one CPU thread inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Profile:
    """What a profile means for generation, training and scoring."""

    name: str
    description: str
    notice: str | None  # printed beside every number the profile produces (None: comparable with the paper)
    resize: int  # scoring's common resize before every backbone (the official evaluation: 512)
    seeded_models: bool  # models are tiny seeded stand-ins built offline (no weights needed)
    trains_missing: bool  # a method without its trained adapter trains one on the run's dataset (cached)
    single_thread_cpu: bool  # tiny ops gain nothing from threads and oversubscribe a busy machine

    def __str__(self) -> str:
        return self.name

    @contextlib.contextmanager
    def compute_threads(self, device: str | torch.device = "cpu") -> Iterator[None]:
        """Run the block single-threaded where the profile asks for it on CPU (else torch's setting)."""
        if not (self.single_thread_cpu and torch.device(device).type == "cpu"):
            yield
            return
        with one_thread():
            yield

    def resolve_model(self, model_id: str, ref: str | Path | None = None) -> str:
        """The model to load for weight-table entry ``model_id``: ``ref`` (hub id or folder) if given, else
        the profile's default (paper: the entry's hub id; tiny: its seeded folder, built once)."""
        from pigeon_bench import weights

        spec = weights.get(model_id)
        if ref not in (None, ""):
            return weights.check_reference(str(ref))
        return str(spec.tiny_folder()) if self.seeded_models else spec.hub_id

    def scoring_backbones(self, device: str = "cpu", weights: dict[str, str | Path] | None = None,
                          ids: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The scoring backbones of this profile (see ``pigeon_bench.metrics.backbones.build``)."""
        from pigeon_bench.metrics.backbones import build

        return build(self, device=device, weights=weights, ids=ids)


@dataclass(frozen=True)
class ByProfile(Generic[T]):
    """A value that depends on the profile (e.g. a method's default denoising steps)."""

    paper: T
    tiny: T

    def get(self, profile: Profile) -> T:
        return self.tiny if profile.seeded_models else self.paper


PAPER = Profile(
    name="paper",
    description="the paper's models (open_clip ViT-H-14, DINOv2-large, LPIPS-VGG, FID Inception, SDXL, "
                "LLaVA, BLIP-2, Llama, LaVIT-7B-v2) from local weights",
    notice=None, resize=512, seeded_models=False, trains_missing=False, single_thread_cpu=False)
TINY = Profile(
    name="tiny",
    description="tiny seeded models of the same classes, built offline in seconds",
    notice=TINY_NOTICE, resize=192, seeded_models=True, trains_missing=True, single_thread_cpu=True)

profiles: Registry[Profile] = Registry("profile", entry_point_group="pigeon_bench.profiles")
profiles.register(PAPER.name, PAPER)
profiles.register(TINY.name, TINY)
DEFAULT = PAPER  # with --data; the offline demo world defaults to TINY
DEMO_DEFAULT = TINY
HELP = "paper (the paper's models, local weights) or tiny (tiny seeded models, offline; not comparable)"


def get_profile(profile: str | Profile | None, default: Profile = DEFAULT) -> Profile:
    """A Profile from its name (unknown names: a one-line UserError); None gives ``default``."""
    if profile is None:
        return default
    if isinstance(profile, Profile):
        return profile
    return profiles.get(str(profile))


def notice_of(name: str | None) -> str | None:
    """The notice of a recorded profile name (None for unknown or missing names)."""
    return profiles.get(name).notice if name in profiles else None


def check_same(kind: str, recorded: str | None, profile: Profile, source: str) -> None:
    """Refuse a ``profile`` that contradicts what ``source`` (a checkpoint, a run) records."""
    if recorded is not None and recorded != profile.name:
        raise UserError(f"{source} is a {recorded}-profile {kind}, but --profile {profile.name} was given; "
                        f"drop --profile or use --profile {recorded}")

