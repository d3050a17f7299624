"""What the baseline adapters share: the text-to-image call with its options, the reference captioner, and
the small training helpers of their adapters (TI's token, PMG's soft tokens, LLaVA's LoRA)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from baselines import captioner
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, Generator, Option
from pigeon_bench.profiles import ByProfile

CAPTIONER = Option("captioner", str, "reference captioner: hub id or folder of a BLIP-2 or LLaVA model "
                   "(default: BLIP-2)")
REFERENCE_TEXT = Option("reference_text", str, "what the method reads of the reference: its caption or the "
                        "dataset's semantics text", "caption", ("caption", "semantics"))


def render_options(steps: ByProfile, size: ByProfile, guidance: float) -> tuple[Option, ...]:
    """The options of every baseline that captions its reference and draws with a diffusion pipeline."""
    return (
        CAPTIONER, REFERENCE_TEXT,
        Option("steps", int, "denoising steps", steps),
        Option("size", int, "image side in pixels", size),
        Option("guidance", float, "classifier-free guidance scale", guidance),
        Option("batch_size", int, "images per pipeline call", 1),
    )


class BaselineGenerator(Generator):
    """A baseline that draws with a diffusers pipeline (``self.pipe``) from its reference's caption."""

    pipe: Any = None

    def render(self, requests: list[GenerationRequest], **conditioning: Any) -> list[Image.Image]:
        """Text-to-image with one seeded generator per image (same seed -> same image, whatever the batch).

        ``conditioning`` holds per-image lists/tensors (``prompt`` or ``prompt_embeds``...), sliced into
        batches of option ``batch_size``.
        """
        seeds, size, step = [r.seed for r in requests], self.opt("size"), self.opt("batch_size")
        images: list[Image.Image] = []
        for start in range(0, len(seeds), step):
            part = slice(start, start + step)
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[part]]
            kwargs = {k: v[part] for k, v in conditioning.items() if v is not None}
            with torch.inference_mode():
                out = self.pipe(num_inference_steps=self.opt("steps"), height=size, width=size,
                                guidance_scale=self.opt("guidance"), generator=gens, output_type="pil",
                                **kwargs)
            images += [im.convert("RGB") for im in out.images]
        return images

    def captioner(self) -> captioner.Captioner:
        """This method's captioner (option ``captioner``), created on first use and kept."""
        if getattr(self, "_captioner", None) is None:
            self._captioner = captioner.make_captioner(self.opt("captioner"), self.profile, self.device,
                                                       self.dtype)
        return self._captioner

    def reference_texts(self, requests: list[GenerationRequest]) -> list[str]:
        """The reference description the method conditions on: its caption, or the dataset's semantics."""
        if self.opt("reference_text") == "semantics":
            return [r.reference_text for r in requests]
        return self.captioner().caption([r.reference_image for r in requests])

    def require_training_data(self, what: str, alternatives: str):
        """The dataset to train ``what`` on, or a one-line error naming the options that avoid training."""
        data = self.training_data()
        if data is None:
            raise UserError(f"method {self.name!r} needs {what}: {alternatives} or -o data_dir=DATASET "
                            "(trains on its train split, cached)")
        return data


def denoising_step(optim: torch.optim.Optimizer, pred: torch.Tensor, latents: torch.Tensor,
                   noise: torch.Tensor, t: torch.Tensor, scheduler: Any) -> float:
    """One optimiser step on the diffusion loss (target: the noise, or the velocity for v-prediction)."""
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, t)
    loss = torch.nn.functional.mse_loss(pred.float(), target.float())
    optim.zero_grad()
    loss.backward()
    optim.step()
    return float(loss.detach())


def step_schedule(n_samples: int, steps: int, seed: int) -> list[int]:
    """The training sample of each step: successive seeded shuffles; ``steps`` 0 means one pass."""
    rng = random.Random(seed)
    schedule: list[int] = []
    n_steps = steps or n_samples
    while len(schedule) < n_steps:
        schedule += rng.sample(range(n_samples), n_samples)
    return schedule[:n_steps]


def check_output_folder(out: Path, marker: str) -> None:
    """Refuse to overwrite a non-empty folder that is not a previous output (recognised by ``marker``)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file")
    if out.exists() and any(out.iterdir()) and not (out / marker).is_file():
        raise UserError(f"output folder exists and is not a previous output (no {marker}): {out}")
