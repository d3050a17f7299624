"""Reference captions: BLIP-2 (paper default, ``Salesforce/blip2-opt-2.7b``) or a LLaVA model, cached on
disk.

The paper's baselines caption the reference image (Pigeon §2.2 uses BLIP-2 or LLaVA as the caption model),
so the adapters use the caption, not the dataset's ``semantics`` text, unless a method is given
``reference_text=semantics``. Captions are cached under ``cache_dir()/captions/<captioner fingerprint>/`` by
the image's content hash; the fingerprint covers the model reference, its config and weight file sizes, the
prompt and the decoding length.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image

from baselines import loading
from pigeon_bench import fileio
from pigeon_bench.artifacts import image_digest
from pigeon_bench.paths import cache_dir
from pigeon_bench.profiles import ByProfile, Profile

MAX_NEW_TOKENS = ByProfile(paper=30, tiny=8)
MIN_NEW_TOKENS = ByProfile(paper=1, tiny=3)
LLAVA_CAPTION_PROMPT = "USER: <image>\nDescribe this image in one sentence. ASSISTANT:"


class Captioner:
    """Captions images with a BLIP-2 or LLaVA checkpoint (from its config); greedy, batched, cached."""

    def __init__(
        self,
        ref: str,
        device: torch.device,
        dtype: torch.dtype,
        max_new_tokens: int = 30,
        min_new_tokens: int = 1,
        batch_size: int = 1,
        cache_root: str | Path | None = None,
        shared: bool = False,
    ):
        self.ref = ref
        self.shared = shared
        self.loaded = None
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.batch_size = batch_size
        self.fingerprint = hashlib.sha256(
            f"{loading.fingerprint(ref)}|{LLAVA_CAPTION_PROMPT}|{max_new_tokens}|{min_new_tokens}".encode()
        ).hexdigest()[:16]
        self.folder = Path(cache_root or cache_dir()) / "captions" / self.fingerprint

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / f"{digest}.txt"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image; each distinct image goes through the model once, ever (disk cache)."""
        digests = [image_digest(im) for im in images]
        todo = {d: im for d, im in zip(digests, images, strict=True) if not self._path(d).is_file()}
        if todo:
            keys = list(todo)
            for start in range(0, len(keys), self.batch_size):
                part = keys[start : start + self.batch_size]
                for d, text in zip(part, self._run([todo[d] for d in part]), strict=True):
                    fileio.write_text(self._path(d), text)
        return [self._path(d).read_text(encoding="utf-8") for d in digests]

    def _run(self, images: list[Image.Image]) -> list[str]:
        if self.loaded is None:
            self.loaded = loading.load_lmm(self.ref, self.device, self.dtype, shared=self.shared)
        model, processor = self.loaded
        is_llava = model.config.model_type == "llava"
        text = [LLAVA_CAPTION_PROMPT if is_llava else ""] * len(images)
        batch = processor(images=images, text=text, return_tensors="pt", padding=True)
        inputs = loading.to_model_inputs(batch, self.device, self.dtype)
        return loading.generate_text(
            model, processor.tokenizer, inputs, self.max_new_tokens, self.min_new_tokens
        )


def make_captioner(ref: str | None, profile: Profile, device: torch.device, dtype: torch.dtype) -> Captioner:
    """A profile's captioner: ``ref`` (hub id or folder), else BLIP-2 (tiny profile: the tiny BLIP-2)."""
    return Captioner(
        profile.resolve_model("blip2", ref),
        device,
        dtype,
        max_new_tokens=MAX_NEW_TOKENS.get(profile),
        min_new_tokens=MIN_NEW_TOKENS.get(profile),
        shared=profile.seeded_models,
    )
