"""Image preprocessing shared by every backbone (the profile chooses the common resize: ``Profile.resize``).

Paper-compatible default: every image (generated, history, reference) is first converted to 8-bit RGB
(``pigeon_bench.fileio.to_rgb``: alpha over white, 16-bit scaled, palette expanded) and resized to 512x512
with PIL bilinear interpolation, as the official evaluation does. Each backbone then applies its own
preprocessing on top (CLIP: open_clip's transform; DINO: the HF image processor; LPIPS: [-1, 1] scaling; FID:
torch-fidelity's TF1-style bilinear resize to 299 on uint8; MS-SSIM: 0-255 floats of the 512x512 image).
The tiny profile resizes to 192, the smallest convenient side above MS-SSIM's minimum, so that the pairwise
MS-SSIM and LPIPS terms (which dominate when the backbones are tiny) cost ~7x less than at 512.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.errors import UserError

# pytorch_msssim.ms_ssim with its default 11-pixel window and 5 scales needs a smaller side > (11 - 1) * 2**4.
MSSSIM_MIN_SIDE = 161
_INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class ResizeSpec:
    """The common resize applied before any backbone: ``size`` x ``size`` (None keeps the original size)."""

    size: int | None = 512
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
        im = fileio.to_rgb(im)
        if self.size is None:
            if min(im.size) < MSSSIM_MIN_SIDE:
                raise UserError(f"image of size {im.size} is below MS-SSIM's minimum side {MSSSIM_MIN_SIDE}")
            return im
        if im.size == (self.size, self.size):
            return im
        return im.resize((self.size, self.size), _INTERPOLATIONS[self.interpolation])


def load_image(src: str | Path | Image.Image) -> Image.Image:
    """A path (errors name the file) or a PIL image, as 8-bit RGB."""
    if isinstance(src, Image.Image):
        return fileio.to_rgb(src)
    return fileio.load_rgb(src)
