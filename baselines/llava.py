"""LLaVA baselines: LLaVA reads the 5 history images and the reference, writes a personalized prompt, SDXL
draws it.

``llava*`` is the pretrained model (``llava-hf/llava-1.5-7b-hf``); ``llava`` is the same model with a LoRA
fine-tuned on the training split (target: the caption of the user's next image), made by ``pigeon-bench
baselines finetune-llava`` or by the method's preparation step (cached, on option ``data_dir`` or, in
profiles that train what is missing, on the run's dataset). The reference enters both as an image and as
its caption. Options: see ``pigeon-bench methods llava``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from baselines import base, captioner, loading
from pigeon_bench import artifacts, fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, Option, generators
from pigeon_bench.profiles import PAPER, ByProfile, Profile

FINETUNE_META = "finetune.json"
LORA_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"  # the LLM's attention, not the vision tower
)


def instruction_text(image_token: str, caption: str, instruction: str) -> str:
    """LLaVA-1.5's chat format: 5 history images, the reference image, its caption and the task."""
    task = f"{instruction.strip()} " if instruction.strip() else ""
    return (
        f"USER: {image_token * 5}\nThese are images a user liked, oldest first.\n{image_token}\n"
        f"This is a reference image: {caption}. {task}Write one short text-to-image prompt for a new image "
        "with the content of the reference image in the style this user prefers. ASSISTANT:"
    )


class LlavaPretrained(base.BaselineGenerator):
    name = "llava*"
    group = "LMM-based"
    label = "LLaVA*"
    options = (
        Option("llava", str, "LLaVA: hub id or folder (default: the profile's)"),
        Option("sdxl", str, "SDXL: hub id or folder (default: the profile's)"),
        *base.render_options(steps=ByProfile(paper=50, tiny=3), size=ByProfile(paper=1024, tiny=64),
                             guidance=5.0),
        Option("max_new_tokens", int, "prompt tokens LLaVA writes", ByProfile(paper=77, tiny=12)),
        Option("min_new_tokens", int, "at least this many prompt tokens", ByProfile(paper=1, tiny=4)),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = None
        self.ref = self.lora_dir = None

    def prepare(self, samples: Sequence[Sample] = ()) -> None:
        """Find (or train) the LoRA to merge: none for the pretrained model."""

    def base_ref(self) -> str:
        return self.profile.resolve_model("llava", self.opt("llava"))

    def load(self) -> None:
        """Load SDXL and LLaVA (with its LoRA, once prepared)."""
        self.prepare()
        with self.profile.compute_threads(self.device):
            if self.pipe is None:
                self.sdxl_ref = self.profile.resolve_model("sdxl", self.opt("sdxl"))
                self.pipe = loading.load_pipeline(
                    "sdxl", self.sdxl_ref, self.device, self.dtype, shared=self.profile.seeded_models
                )
            if self.model is None:
                self.ref = self.base_ref()
                self.model, self.processor = loading.load_lmm(
                    self.ref, self.device, self.dtype, self.lora_dir, shared=self.profile.seeded_models
                )

    def write_prompts(self, requests: list[GenerationRequest], captions: list[str]) -> list[str]:
        """LLaVA's generated text for each request (greedy, batched, left-padded)."""
        texts = [
            instruction_text(self.processor.image_token, c, r.instruction)
            for r, c in zip(requests, captions, strict=True)
        ]
        images = [im for r in requests for im in [*r.history_images, r.reference_image]]
        self.processor.tokenizer.padding_side = "left"
        batch = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        return loading.generate_text(
            self.model,
            self.processor.tokenizer,
            loading.to_model_inputs(batch, self.device, self.dtype),
            self.opt("max_new_tokens"),
            self.opt("min_new_tokens"),
        )

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        with self.profile.compute_threads(self.device):
            captions = self.reference_texts(requests)
            prompts = []
            for start in range(0, len(requests), self.opt("batch_size")):
                part = slice(start, start + self.opt("batch_size"))
                prompts += self.write_prompts(requests[part], captions[part])
            images = self.render(
                requests,
                prompt=prompts,
            )
        return [
            GenerationResult(im, {"prompt": p, "reference_caption": c})
            for im, p, c in zip(images, prompts, captions, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        self.load()
        return {
            **super().describe(),
            "llava": self.ref,
            "llava_fingerprint": loading.fingerprint(self.ref),
            "lora": self.lora_dir,
            "sdxl": self.sdxl_ref,
        }


generators.register("llava*", LlavaPretrained)


@generators.register("llava")
class LlavaFinetuned(LlavaPretrained):
    name = "llava"
    label = "LLaVA"
    options = (
        *LlavaPretrained.options,
        Option("lora", "path", "a LoRA folder (from `pigeon-bench baselines finetune-llava`); default: "
               "fine-tuned on the train split, cached"),
        Option("data_dir", "path", "the dataset whose train split fine-tunes the LoRA (default: the run's, "
               "in profiles that train what is missing)"),
        Option("ft_steps", int, "fine-tuning steps (0: one pass over train)", ByProfile(paper=0, tiny=4)),
        Option("ft_lr", float, "fine-tuning learning rate", ByProfile(paper=1e-5, tiny=1e-3)),
    )

    def prepare(self, samples: Sequence[Sample] = ()) -> None:
        """Option ``lora``; else a LoRA fine-tuned (once, cached) on the train split."""
        if self.lora_dir is not None:
            return
        if self.opt("lora"):
            folder = Path(self.opt("lora")).expanduser()
            if not (folder / "adapter_config.json").is_file():
                raise UserError(f"not a LoRA folder (no adapter_config.json): {folder}")
            self.lora_dir = str(folder)
            return
        data = self.require_training_data(
            "its fine-tuned LoRA", "-o lora=DIR (from `pigeon-bench baselines finetune-llava`)")
        self.lora_dir = str(cached_finetune(data, self.profile, self.opt("llava"), self.opt("captioner"),
                                            self.opt("ft_steps"), self.opt("ft_lr"), self.device, self.dtype))

    def base_ref(self) -> str:
        """The base the LoRA was trained on (its finetune.json), unless option ``llava`` names one."""
        meta = Path(self.lora_dir) / FINETUNE_META
        if not self.opt("llava") and meta.is_file():
            recorded = fileio.read_json(meta).get("base")
            if recorded and (Path(recorded).is_dir() or not Path(recorded).is_absolute()):
                return recorded
        return super().base_ref()


# ---------------------------------------------------------------- fine-tuning


def cached_finetune(data: Dataset, profile: Profile, base_model: str | None, captioner_ref: str | None,
                    steps: int, lr: float, device: torch.device, dtype: torch.dtype) -> Path:
    """Fine-tune once per (dataset content, base, hyper-parameters) into the cache; return the LoRA folder."""
    base_ref = profile.resolve_model("llava", base_model)
    key = artifacts.digest(data.digest, loading.fingerprint(base_ref), captioner_ref, steps, lr, str(dtype),
                           length=16)

    def build(folder: Path) -> None:
        finetune_llava(data.root, folder, base_model=base_model, profile=profile, steps=steps, lr=lr,
                       captioner_ref=captioner_ref, device=str(device), dtype=dtype)

    return artifacts.ensure("llava-lora", key, build,
                            what=f"llava: fine-tuning its LoRA on {data.root} (train split)")


def _training_examples(ds: Dataset, samples: list[Sample], cap: captioner.Captioner, image_token: str):
    """(images, prompt, target caption) per training sample; captions of references and targets are cached."""
    ids = [i for s in samples for i in (*s.history, s.reference_id, s.target_id)]
    load = [fileio.load_rgb(ds.image_path(i)) for i in ids]
    captions = cap.caption(load)
    out = []
    for k, s in enumerate(samples):
        images = load[7 * k : 7 * k + 6]
        out.append(
            (images, instruction_text(image_token, captions[7 * k + 5], s.instruction), captions[7 * k + 6])
        )
    return out


@loading.trains
def finetune_llava(
    data: str | Path,
    out: str | Path,
    base_model: str | None = None,
    profile: Profile | str = PAPER,
    steps: int = 0,
    lr: float = 1e-5,
    rank: int = 8,
    alpha: int = 16,
    limit: int | None = None,
    seed: int = 0,
    captioner_ref: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """LoRA-tune LLaVA's language model to answer each training sample's prompt with its target's caption.

    ``steps`` 0 means one pass over the (shuffled) training samples; batch size 1. Writes ``out`` atomically:
    the PEFT adapter (adapter_config.json, adapter_model.safetensors) and finetune.json (base, data, settings,
    losses). Returns finetune.json's content.
    """
    from peft import LoraConfig, get_peft_model

    from pigeon_bench.profiles import get_profile
    from pigeon_bench.progress import progress as progress_bar

    out = Path(out)
    profile = get_profile(profile)
    base.check_output_folder(out, "adapter_config.json")
    ds = Dataset(data)
    samples = ds.samples("train", limit)
    if not samples:
        raise UserError(f"{ds.root}: no samples in split 'train' to fine-tune on")
    dev = torch.device(device)
    base_ref = profile.resolve_model("llava", base_model)
    with profile.compute_threads(dev), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        cap = captioner.make_captioner(captioner_ref, profile, dev, dtype)
        with loading.quiet_loading():
            from transformers import AutoProcessor, LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(base_ref, dtype=dtype).to(dev)
            processor = AutoProcessor.from_pretrained(base_ref)
        schedule = base.step_schedule(len(samples), steps, seed)
        n_steps = len(schedule)
        used = sorted(set(schedule))  # only these are captioned
        examples = dict(
            zip(
                used,
                _training_examples(ds, [samples[i] for i in used], cap, processor.image_token),
                strict=True,
            )
        )
        model.requires_grad_(False)
        torch.manual_seed(seed)  # the LoRA initialisation, then training, depend on the seed only
        model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        losses: list[float] = []
        model.train()
        with progress_bar() as progress:
            task = progress.add_task("fine-tuning LLaVA (LoRA)", total=n_steps)
            for i in schedule:
                images, prompt, target = examples[i]
                loss = _example_loss(model, processor, images, prompt, target, dev, dtype)
                optim.zero_grad()
                loss.backward()
                optim.step()
                losses.append(round(float(loss.detach()), 6))
                progress.advance(task)
        meta = {
            "base": base_ref,
            "data": str(ds.root.resolve()),
            "profile": profile.name,
            "steps": n_steps,
            "lr": lr,
            "rank": rank,
            "alpha": alpha,
            "seed": seed,
            "n_train": len(examples),
            "captioner": cap.ref,
            "target_modules": LORA_TARGETS,
            "losses": losses,
        }

        with fileio.atomic_dir(out) as folder:
            model.save_pretrained(folder)
            fileio.write_json(folder / FINETUNE_META, meta)
    return meta


def _example_loss(
    model,
    processor,
    images: list[Image.Image],
    prompt: str,
    target: str,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Causal-LM loss on the target caption (and end of sequence) only, the prompt tokens masked out."""
    tok = processor.tokenizer
    prompt_len = processor(images=images, text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    batch = processor(images=images, text=[f"{prompt} {target}{tok.eos_token}"], return_tensors="pt")
    inputs = loading.to_model_inputs(batch, device, dtype)
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    return model(**inputs, labels=labels).loss
