"""Preprocessing: what pixels each backbone reads, per image role, as a named mode (one place resolves it, in
the manner of clean-fid's ``mode``; ``resolve`` refuses an unknown name in one line).

An image has a role: the ``generated`` image, one of the 5 ``history`` images, or the ``reference`` image. A
role reaches a backbone through one of two input paths: ``resized`` (the common resize: ``ResizeSpec``, by
default 512x512 PIL bilinear) or ``original`` (the image as stored; the backbone's own transform sizes it).
Before either, the file is decoded to 8-bit RGB by the mode's alpha rule.

Modes (the evidence and the official code's lines: docs/official-eval.md):

- ``official`` (the paper profile's default): the official evaluation's own path, per metric and role.
  Decoding is PIL ``convert('RGB')``, which keeps whatever colour lies under transparent pixels. Every role is
  resized to 512 except the history images' CLIP features, which the official code precomputed from the
  original images through CLIP's own transform (centre crop). History and reference DINO features come from
  the official ``all_dino_feats.npy``, whose producing code is not published: ``dino_items="resized"`` (the
  default; it reproduces the paper's Grd a_dis of 100.00 in both scenarios) or ``"original"``. FID is
  pytorch-fid's path (ToTensor, ``F.interpolate`` bilinear to 299, 2x - 1). LPIPS maps are kept in float32.
- ``clean``: one path for every role: alpha composited on white (how stickers are displayed), 512x512 for
  every backbone, torch-fidelity's FID path (uint8, TF1-style bilinear to 299, (x - 128) / 128), float32 LPIPS
  maps.
- ``fast`` (the tiny profile's default, for the offline demo): ``clean``'s rules at the profile's resize
  (tiny: 192) with the FID Inception reading 75 px (its minimum) and float16 LPIPS maps; a shortcut that is
  comparable with nothing but itself.

``fid`` overrides a mode's FID implementation (``pytorch-fid`` or ``torch-fidelity``) and ``resize`` its
common resize. The resolved ``Preprocess`` is recorded in every summary (``record``) and named in its notice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.metrics.table import HISTORY, REFERENCE
from pigeon_bench.profiles import ByProfile, Profile
from pigeon_bench.registry import Registry

# pytorch_msssim.ms_ssim with its default 11-pixel window and 5 scales needs a smaller side > (11 - 1) * 2**4.
MSSSIM_MIN_SIDE = 161
_INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

GENERATED = "generated"  # the third image role, beside the metric table's HISTORY and REFERENCE pairings
ROLES = (GENERATED, HISTORY, REFERENCE)
RESIZED, ORIGINAL = "resized", "original"  # input paths
ALPHA_CONVERT, ALPHA_WHITE = "convert", "white"  # PIL convert('RGB') / composited on white
PYTORCH_FID, TORCH_FIDELITY = "pytorch-fid", "torch-fidelity"
FID_IMPLEMENTATIONS = (PYTORCH_FID, TORCH_FIDELITY)
OFFICIAL_SIZE = 512  # the official scripts' --height/--width defaults
FID_INPUT_SIZE = 299  # Inception-v3's input side in both FID libraries
FID_MIN_SIZE = 75  # the smallest input Inception-v3's stride pattern accepts


@dataclass(frozen=True)
class ResizeSpec:
    """The common resize: ``size`` x ``size`` (None keeps the original size)."""

    size: int | None = OFFICIAL_SIZE
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            known = ", ".join(_INTERPOLATIONS)
            raise UserError(f"unknown interpolation {self.interpolation!r} (known: {known})")
        if self.size is not None and self.size < MSSSIM_MIN_SIDE:
            raise UserError(f"resize {self.size} is below MS-SSIM's minimum side of {MSSSIM_MIN_SIDE} pixels")

    @property
    def id(self) -> str:
        """Short stable id used in cache keys."""
        return f"rgb-{self.size or 'orig'}-{self.interpolation}"

    def apply(self, im: Image.Image) -> Image.Image:
        """The resized image (an image not yet RGB is first converted with alpha on white)."""
        if im.mode != "RGB":
            im = fileio.to_rgb(im)
        if self.size is None:
            if min(im.size) < MSSSIM_MIN_SIDE:
                raise UserError(f"image of size {im.size} is below MS-SSIM's minimum side {MSSSIM_MIN_SIDE}")
            return im
        if im.size == (self.size, self.size):
            return im
        return im.resize((self.size, self.size), _INTERPOLATIONS[self.interpolation])


@dataclass(frozen=True)
class FidInput:
    """How the FID Inception reads an image: the library whose preprocessing is followed, at ``size`` px."""

    implementation: str = TORCH_FIDELITY
    size: int = FID_INPUT_SIZE

    def __post_init__(self) -> None:
        if self.implementation not in FID_IMPLEMENTATIONS:
            raise UserError(f"unknown FID implementation {self.implementation!r} "
                            f"(known: {', '.join(FID_IMPLEMENTATIONS)})")
        if self.size < FID_MIN_SIZE:
            raise UserError(f"FID input {self.size} px is below Inception-v3's minimum of {FID_MIN_SIZE}")

    @property
    def id(self) -> str:
        return f"{self.implementation}-{self.size}"


@dataclass(frozen=True)
class Mode:
    """A named set of preprocessing rules (see the module docstring)."""

    name: str
    summary: str  # one line for help texts and notices
    alpha: str  # ALPHA_CONVERT or ALPHA_WHITE
    history_clip: str  # the input path of the history images' CLIP features
    fid: FidInput
    lpips_maps: str  # dtype the LPIPS maps are kept in: "float32" or "float16"
    resize: int | None  # the default common resize; None: the profile's (``Profile.resize``)
    options: tuple[str, ...] = ()  # Preprocess fields beyond resize and fid that this mode lets one choose


OFFICIAL = Mode("official", "the official evaluation's inputs per metric and role", ALPHA_CONVERT, ORIGINAL,
                FidInput(PYTORCH_FID), "float32", OFFICIAL_SIZE, options=("dino_items",))
CLEAN = Mode("clean", "one path for every role: alpha on white, one resize, torch-fidelity FID", ALPHA_WHITE,
             RESIZED, FidInput(TORCH_FIDELITY), "float32", OFFICIAL_SIZE)
FAST = Mode("fast", "demo shortcut: one small resize for every role, FID Inception at 75 px", ALPHA_WHITE,
            RESIZED, FidInput(TORCH_FIDELITY, FID_MIN_SIZE), "float16", None)
modes: Registry[Mode] = Registry("preprocessing mode")
for _mode in (OFFICIAL, CLEAN, FAST):
    modes.register(_mode.name, _mode)
DEFAULT_MODE = ByProfile(paper=OFFICIAL.name, tiny=FAST.name)
HELP = ("official (the official evaluation's per-role inputs; the paper profile's default), clean (one path "
        "for every role) or fast (the tiny demo's shortcut, its default)")
DINO_ITEMS = (RESIZED, ORIGINAL)


@dataclass(frozen=True)
class Preprocess:
    """A resolved mode: its rules, the common resize, the FID input and the DINO item option."""

    mode: Mode
    resize: ResizeSpec
    fid: FidInput
    dino_items: str = RESIZED  # the input path of the history and reference DINO features

    def path(self, backbone: str | None, role: str) -> str:
        """The input path (RESIZED or ORIGINAL) by which ``role``'s images reach ``backbone`` (None: the
        pixel metric, MS-SSIM)."""
        if role not in ROLES:
            raise ValueError(f"unknown image role {role!r}")
        if role == GENERATED:
            return RESIZED
        if backbone == "clip" and role == HISTORY:
            return self.mode.history_clip
        if backbone == "dino":
            return self.dino_items
        return RESIZED

    def load(self, src: str | Path | Image.Image) -> Image.Image:
        """A path (errors name the file) or a PIL image, decoded to 8-bit RGB by the mode's alpha rule."""
        im = src if isinstance(src, Image.Image) else open_image(src)
        if self.mode.alpha == ALPHA_WHITE:
            return fileio.to_rgb(im)
        return im if im.mode == "RGB" else im.convert("RGB")

    def prepare(self, im: Image.Image, path: str) -> Image.Image:
        """A decoded image as the input path gives it to a backbone."""
        return self.resize.apply(im) if path == RESIZED else im

    def input_id(self, path: str) -> str:
        """The part of a cache key that the input path adds (the decoding is in the image's digest)."""
        return self.resize.id if path == RESIZED else ORIGINAL

    @property
    def id(self) -> str:
        """The mode, the resize and each option that differs from the mode's (``official-512-bilinear``)."""
        parts = [f"{self.mode.name}-{self.resize.size or 'orig'}-{self.resize.interpolation}"]
        if self.fid != self.mode.fid:
            parts.append(f"fid-{self.fid.id}")
        if self.dino_items != RESIZED:
            parts.append(f"dino-{self.dino_items}")
        return "+".join(parts)

    def record(self) -> dict[str, Any]:
        """What a summary records (``resolve(**from_record(record))`` gives this object back)."""
        return {"mode": self.mode.name, "id": self.id, "resize": self.resize.size,
                "interpolation": self.resize.interpolation, "alpha": self.mode.alpha,
                "history_clip": self.mode.history_clip, "dino_items": self.dino_items,
                "fid": self.fid.implementation, "fid_size": self.fid.size, "lpips_maps": self.mode.lpips_maps}

    @property
    def is_official(self) -> bool:
        """The official evaluation's inputs exactly (mode official with its defaults)."""
        return self == resolve(OFFICIAL.name)

    @property
    def notice(self) -> str:
        """One line for every number scored this way: the preprocessing, and whether it is the official."""
        if self.is_official:
            return f"preprocessing {self.id}: {OFFICIAL.summary}"
        return f"preprocessing {self.id} ({self.mode.summary}), not the official evaluation's"


def resolve(preprocess: str | Preprocess | None = None, profile: Profile | None = None,
            resize: ResizeSpec | int | str | None = "mode", fid: str | None = None,
            dino_items: str | None = None) -> Preprocess:
    """The one place a preprocessing mode is resolved: ``preprocess`` (a mode name; None: the profile's
    default), ``resize`` ("mode": the mode's default; None keeps the original sizes), ``fid`` (an
    implementation) and ``dino_items`` (official mode: ``resized`` or ``original``)."""
    if isinstance(preprocess, Preprocess):
        return preprocess
    if preprocess is None:
        if profile is None:
            raise ValueError("resolve() needs a mode or a profile")
        preprocess = DEFAULT_MODE.get(profile)
    rules = modes.get(preprocess)
    if isinstance(resize, str):
        if resize != "mode":
            raise UserError(f"resize must be a number of pixels, got {resize!r}")
        resize = rules.resize or (profile.resize if profile is not None else OFFICIAL_SIZE)
    spec = resize if isinstance(resize, ResizeSpec) else ResizeSpec(size=resize)
    fid_input = rules.fid if fid is None else replace(rules.fid, implementation=fid)
    if dino_items is not None and "dino_items" not in rules.options:
        raise UserError(f"dino_items is an option of the official mode only, not of {rules.name!r}")
    if dino_items is not None and dino_items not in DINO_ITEMS:
        raise UserError(f"unknown dino_items {dino_items!r} (known: {', '.join(DINO_ITEMS)})")
    return Preprocess(rules, spec, fid_input, dino_items or RESIZED)


def from_record(record: Any) -> dict[str, Any] | None:
    """``resolve``'s (and ``Scorer``'s) arguments for a summary's recorded preprocessing (None: not a
    recorded mode)."""
    if not isinstance(record, dict) or record.get("mode") not in modes:
        return None
    rules = modes.get(record["mode"])
    resize = ResizeSpec(record.get("resize"), record.get("interpolation", "bilinear"))
    return {"preprocess": rules.name, "resize": resize, "fid": record.get("fid"),
            "dino_items": record.get("dino_items") if "dino_items" in rules.options else None}


def open_image(path: str | Path) -> Image.Image:
    """The first frame of an image file, decoded but in its own mode (errors name the file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing image: {path}")
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"corrupt or unreadable image: {path} ({exc})") from None
