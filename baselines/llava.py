"""LLaVA baselines: LLaVA reads the 5 history images and the reference, writes a personalized prompt, SDXL
draws it.

``llava*`` is the pretrained model (``llava-hf/llava-1.5-7b-hf``); ``llava`` is the same model with a LoRA
fine-tuned on the training split (target: the caption of the user's next image), made by ``pigeon-bench
baselines finetune-llava`` (or on the fly, cached, from option ``data_dir=DATASET``; in the tiny profile
from the demo dataset). The reference enters both as an image and as its caption. Options: ``llava`` (hub id
or folder), ``sdxl``, ``captioner``, ``reference_text``, ``steps``, ``size``, ``guidance``, ``batch_size``,
``max_new_tokens``; ``llava`` also ``lora`` (folder) or ``data_dir`` (dataset folder).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from baselines import captioner, models
from pigeon_bench import fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, generators
from pigeon_bench.paths import cache_dir

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


class LlavaPretrained(models.BaselineGenerator):
    name = "llava*"
    group = "LMM-based"
    label = "LLaVA*"
    accepted_options = (
        "llava",
        "sdxl",
        *models.RENDER_OPTIONS,
        "max_new_tokens",
    )
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(steps=3, size=64, guidance=5.0, batch_size=1, max_new_tokens=12, min_new_tokens=4),
        "paper": dict(steps=50, size=1024, guidance=5.0, batch_size=1, max_new_tokens=77, min_new_tokens=1),
    }

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model = None
        self.pipe = None
        self.ref = self.lora_dir = None

    def lora(self, requests: list[GenerationRequest]) -> str | None:
        """The LoRA folder to merge (none for the pretrained model)."""
        return None

    def base_ref(self) -> str:
        return models.resolve(self.options.get("llava"), models.LLAVA, "llava", self.profile)

    def load(self) -> None:
        """Load SDXL; LLaVA loads on the first batch (``llava`` may need the batch to find its data)."""
        if self.pipe is None:
            self.sdxl_ref = models.resolve(self.options.get("sdxl"), models.SDXL, "sdxl", self.profile)
            with models.compute_threads(self.profile, self.device):
                self.pipe = models.load_pipeline(
                    "sdxl", self.sdxl_ref, self.device, self.dtype, shared=self.profile == "tiny"
                )

    def load_llava(self, requests: list[GenerationRequest]) -> None:
        if self.model is None:
            self.lora_dir = self.lora(requests)
            self.ref = self.base_ref()
            with models.compute_threads(self.profile, self.device):
                self.model, self.processor = models.load_lmm(
                    self.ref, self.device, self.dtype, self.lora_dir, shared=self.profile == "tiny"
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
        return models.generate_text(
            self.model,
            self.processor.tokenizer,
            models.to_model_inputs(batch, self.device, self.dtype),
            self.opt("max_new_tokens"),
            self.opt("min_new_tokens"),
        )

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load_llava(requests)
        self.load()
        with models.compute_threads(self.profile, self.device):
            captions = captioner.reference_texts(self, requests)
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
        """Models used so far (LLaVA is known once a batch has been generated)."""
        self.load()
        return {
            **super().describe(),
            "llava": self.ref,
            "llava_fingerprint": models.fingerprint(self.ref) if self.ref else None,
            "lora": self.lora_dir,
            "sdxl": self.sdxl_ref,
        }


generators.register("llava*", LlavaPretrained)


@generators.register("llava")
class LlavaFinetuned(LlavaPretrained):
    name = "llava"
    label = "LLaVA"
    accepted_options = (*LlavaPretrained.accepted_options, "lora", "data_dir", "ft_steps", "ft_lr")
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**LlavaPretrained.defaults["tiny"], "ft_steps": 4, "ft_lr": 1e-3},
        "paper": {**LlavaPretrained.defaults["paper"], "ft_steps": 0, "ft_lr": 1e-5},  # 0: one epoch
    }

    def lora(self, requests: list[GenerationRequest]) -> str:
        """Option ``lora``; else a LoRA fine-tuned (once, cached) on the train split of option ``data_dir``
        or, in the tiny profile, of the demo dataset that holds the requested samples."""
        if self.options.get("lora"):
            folder = Path(str(self.options["lora"])).expanduser()
            if not (folder / "adapter_config.json").is_file():
                raise UserError(f"not a LoRA folder (no adapter_config.json): {folder}")
            return str(folder)
        data = self.training_data(requests)
        if data is None:
            raise UserError(
                "method 'llava' needs its fine-tuned LoRA: --option lora=DIR (from `pigeon-bench baselines "
                "finetune-llava`) or --option data_dir=DATASET (fine-tunes on its train split, cached)"
            )
        return str(
            cached_finetune(
                data,
                self.profile,
                self.options.get("llava"),
                self.options.get("captioner"),
                self.opt("ft_steps"),
                self.opt("ft_lr"),
                self.device,
                self.dtype,
            )
        )

    def base_ref(self) -> str:
        """The base the LoRA was trained on (its finetune.json), unless option ``llava`` names one."""
        meta = Path(self.lora_dir) / FINETUNE_META
        if not self.options.get("llava") and meta.is_file():
            recorded = fileio.read_json(meta).get("base")
            if recorded and (Path(recorded).is_dir() or not Path(recorded).is_absolute()):
                return recorded
        return super().base_ref()


# ---------------------------------------------------------------- fine-tuning


def cached_finetune(
    data: str | Path,
    profile: str,
    base: str | None,
    captioner_ref: str | None,
    steps: int,
    lr: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Path:
    """Fine-tune once per (dataset content, base, hyper-parameters) into the cache; return the LoRA folder."""
    ds = Dataset(data)
    base_ref = models.resolve(base, models.LLAVA, "llava", profile)
    key = f"{models.dataset_digest(ds)}|{models.fingerprint(base_ref)}|{captioner_ref}|{steps}|{lr}|{dtype}"
    out = cache_dir() / "llava-lora" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not (out / "adapter_config.json").is_file():
        finetune_llava(
            ds.root,
            out,
            base=base,
            profile=profile,
            steps=steps,
            lr=lr,
            captioner_ref=captioner_ref,
            device=str(device),
            dtype=dtype,
        )
    return out


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


@models.trains
def finetune_llava(
    data: str | Path,
    out: str | Path,
    base: str | None = None,
    profile: str = "paper",
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

    from pigeon_bench.progress import progress as progress_bar

    out = Path(out)
    models.check_output_folder(out, "adapter_config.json")
    ds = Dataset(data)
    samples = ds.samples("train", limit)
    if not samples:
        raise UserError(f"{ds.root}: no samples in split 'train' to fine-tune on")
    dev = torch.device(device)
    base_ref = models.resolve(base, models.LLAVA, "llava", profile)
    with models.compute_threads(profile, dev), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a transformers API deprecated in v5
        cap = captioner.make_captioner(captioner_ref, profile, dev, dtype)
        with models.quiet_loading():
            from transformers import AutoProcessor, LlavaForConditionalGeneration

            model = LlavaForConditionalGeneration.from_pretrained(base_ref, dtype=dtype).to(dev)
            processor = AutoProcessor.from_pretrained(base_ref)
        schedule = models.step_schedule(len(samples), steps, seed)
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
            "profile": profile,
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

        def write(folder: Path) -> None:
            model.save_pretrained(folder)
            fileio.write_json(folder / FINETUNE_META, meta)

        models.write_folder(out, "adapter_config.json", write)
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
    inputs = models.to_model_inputs(batch, device, dtype)
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    return model(**inputs, labels=labels).loss
