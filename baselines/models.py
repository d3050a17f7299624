"""Shared model plumbing for the baseline adapters: model references, per-process loading cache, text
generation, and the text-to-image call, so that the paper profile (hub ids) and the tiny profile (saved tiny
folders) run through the very same ``from_pretrained`` code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import random
import shutil
import tempfile
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from PIL import Image

from baselines import tiny
from pigeon_bench import fileio
from pigeon_bench.data.model import Dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, Generator

T = TypeVar("T")

# Full-size defaults (paper profile). Every one can be replaced by a local folder through a method option.
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LLAVA = "llava-hf/llava-1.5-7b-hf"
BLIP2 = "Salesforce/blip2-opt-2.7b"
PMG_LLM = "meta-llama/Llama-2-7b-hf"

_SHARED: dict[tuple, Any] = {}


def cached(key: tuple, build: Callable[[], T], shared: bool) -> T:
    """``build()``; with ``shared`` (tiny models) built once per process and shared by every method.

    Full-size models are never shared: each generator holds its own and frees them when it goes, so a run of
    every method never holds several 7B models at once.
    """
    if shared and key in _SHARED:
        return _SHARED[key]
    with torch.inference_mode(False):  # plain weights even for a caller in inference mode (TI trains through)
        value = build()
    if shared:
        _SHARED[key] = value
    return value


def trains(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with autograd on, even when its caller runs in ``torch.inference_mode``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


def resolve(ref: str | Path | None, paper_default: str, tiny_name: str, profile: str) -> str:
    """The model to load: the option if given, else the profile's default (tiny: a saved tiny folder).

    A reference that looks like a path (exists, starts with ``/ . ~``, or has several ``/``) must be a folder.
    """
    if ref is None or ref == "":
        if profile == "tiny":
            return str(tiny.materialize(tiny_name))
        if profile != "paper":
            raise UserError(f"unknown profile {profile!r} (known: tiny, paper)")
        return paper_default
    text = str(ref)
    path = Path(text).expanduser()
    looks_local = path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local and not path.is_dir():
        raise UserError(f"model folder not found: {path}")
    return str(path) if looks_local else text


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the transformers/diffusers loading bars; wraps load failures into a one-line UserError."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    was_t, was_d = tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(
            f"cannot load model: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    finally:
        if was_t:
            tlog.enable_progress_bar()
        if was_d:
            dlog.enable_progress_bar()


def fingerprint(ref: str) -> str:
    """A short id of a model: a folder's JSON files and weight file sizes (not its path), else the hub id."""
    path = Path(ref)
    return fileio.folder_fingerprint(path) if path.is_dir() else hashlib.sha256(ref.encode()).hexdigest()[:16]


def freeze(*modules: torch.nn.Module) -> None:
    for m in modules:
        if m is not None:
            m.requires_grad_(False).eval()


def load_pipeline(kind: str, ref: str, device: torch.device, dtype: torch.dtype, shared: bool = False):
    """A diffusers text-to-image pipeline (``kind`` "sdxl" or "sd"), frozen, quiet."""

    def build():
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
        extra = {} if kind == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        with quiet_loading():
            pipe = cls.from_pretrained(ref, dtype=dtype, **extra)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        freeze(pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
        return pipe

    return cached((kind, ref, str(device), dtype), build, shared)


def load_lmm(
    ref: str, device: torch.device, dtype: torch.dtype, lora: str | None = None, shared: bool = False
):
    """An image-text model (LLaVA or BLIP-2, by config) and its processor; ``lora`` merges a PEFT adapter."""

    def build():
        from transformers import (
            AutoConfig,
            AutoProcessor,
            Blip2ForConditionalGeneration,
            LlavaForConditionalGeneration,
        )

        with quiet_loading():
            model_type = AutoConfig.from_pretrained(ref).model_type
            classes = {"llava": LlavaForConditionalGeneration, "blip-2": Blip2ForConditionalGeneration}
            if model_type not in classes:
                raise UserError(f"{ref}: expected a LLaVA or BLIP-2 model, found model_type {model_type!r}")
            model = classes[model_type].from_pretrained(ref, dtype=dtype)
            processor = AutoProcessor.from_pretrained(ref)
            if lora is not None:
                from peft import PeftModel

                with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                    warnings.simplefilter("ignore", FutureWarning)
                    model = PeftModel.from_pretrained(model, lora).merge_and_unload()
        model.to(device)
        freeze(model)
        return model, processor

    return cached(("lmm", ref, lora, str(device), dtype), build, shared)


def load_causal_lm(ref: str, device: torch.device, dtype: torch.dtype, shared: bool = False):
    """A causal LM (e.g. Llama) and its tokenizer, frozen."""

    def build():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(ref)
        model.to(device)
        freeze(model)
        return model, tokenizer

    return cached(("causal-lm", ref, str(device), dtype), build, shared)


def clean_text(text: str) -> str:
    """One line of printable text (generated text may hold control characters or stray newlines)."""
    kept = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)
    return " ".join(kept.replace("\ufffd", " ").split())


@torch.inference_mode()
def generate_text(
    model, tokenizer, inputs: dict[str, torch.Tensor], max_new_tokens: int, min_new_tokens: int = 1
) -> list[str]:
    """Greedy decoding (deterministic); special tokens other than end-of-sequence are never generated."""
    eos = tokenizer.eos_token_id
    banned = [[i] for i in tokenizer.all_special_ids if i != eos]
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        do_sample=False,
        num_beams=1,
        bad_words_ids=banned or None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    )
    new = out[:, inputs["input_ids"].shape[1] :]
    return [clean_text(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def to_model_inputs(batch: Any, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move a processor's output to the model: floating tensors (pixels) take the model dtype."""
    return {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()
    }


def render(
    pipe, seeds: list[int], steps: int, size: int, guidance: float, batch_size: int, **conditioning: Any
) -> list[Image.Image]:
    """Text-to-image with one seeded generator per image (same seed -> same image, whatever the batch).

    ``conditioning`` holds per-image lists/tensors (``prompt`` or ``prompt_embeds``...), sliced into batches.
    """
    images: list[Image.Image] = []
    for start in range(0, len(seeds), batch_size):
        part = slice(start, start + batch_size)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[part]]
        kwargs = {k: v[part] for k, v in conditioning.items() if v is not None}
        with torch.inference_mode():
            out = pipe(
                num_inference_steps=steps,
                height=size,
                width=size,
                guidance_scale=guidance,
                generator=gens,
                output_type="pil",
                **kwargs,
            )
        images += [im.convert("RGB") for im in out.images]
    return images


def image_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """Center-cropped, resized images as a (n, 3, size, size) tensor in [-1, 1] (the VAE's input)."""
    out = []
    for im in images:
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)


# ---------------------------------------------------------------- training on a dataset's train split


def demo_dataset_of(requests: list[GenerationRequest]) -> Path | None:
    """The offline demo dataset (tiny profile) whose samples include the first request's, if any."""
    if not requests:
        return None
    from pigeon_bench.data.demo import ensure_demo_datasets

    s = requests[0].sample
    for folder in ensure_demo_datasets().values():
        df = Dataset(folder).samples_df
        hit = df[df["sample_id"].astype(str) == s.sample_id]
        if len(hit) and str(hit.iloc[0]["target_id"]) == s.target_id:
            return Path(folder)
    return None


def dataset_digest(ds: Dataset) -> str:
    """A hash of a dataset's tables (cache key of what is trained on it)."""
    h = hashlib.sha256()
    for name in ("items.parquet", "samples.parquet"):
        path = ds.root / name
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()


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
    if out.exists() and any(out.iterdir()) and not (out / marker).is_file():
        raise UserError(f"output folder exists and is not a previous output (no {marker}): {out}")


def write_folder(out: Path, marker: str, write: Callable[[Path], None]) -> None:
    """Write a whole output folder atomically: ``write`` fills a temporary sibling, renamed over ``out``."""
    check_output_folder(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 is for the temporary name only
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def compute_threads(profile: str, device: torch.device) -> Iterator[None]:
    """Tiny models on CPU run single-threaded (other profiles keep torch's setting).

    Their ops are too small to gain from threads, and on a busy machine threaded tiny ops run many times
    slower (oversubscription).
    """
    if profile != "tiny" or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# Options of every baseline that captions its reference and draws with a diffusion pipeline (``render``).
RENDER_OPTIONS = ("captioner", "reference_text", "steps", "size", "guidance", "batch_size")


class BaselineGenerator(Generator):
    """Options with per-profile defaults (strings from the command line are cast to the default's type)."""

    defaults: ClassVar[dict[str, dict[str, Any]]] = {}  # {"tiny": {...}, "paper": {...}}

    def render(self, requests: list[GenerationRequest], **conditioning: Any) -> list[Image.Image]:
        """``render`` through this method's pipeline with its steps/size/guidance/batch_size options."""
        return render(self.pipe, [r.seed for r in requests], self.opt("steps"), self.opt("size"),
                      self.opt("guidance"), self.opt("batch_size"), **conditioning)

    def captioner(self):
        """This method's captioner (option ``captioner``), created on first use and kept."""
        if getattr(self, "_captioner", None) is None:
            from baselines.captioner import make_captioner

            self._captioner = make_captioner(
                self.options.get("captioner"), self.profile, self.device, self.dtype
            )
        return self._captioner

    def training_data(self, requests: list[GenerationRequest]) -> Path | None:
        """The dataset a method trains on: option ``data_dir``, else (tiny profile) the demo dataset."""
        if self.options.get("data_dir"):
            return Path(str(self.options["data_dir"]))
        return demo_dataset_of(requests) if self.profile == "tiny" else None

    def opt(self, key: str) -> Any:
        if self.profile not in self.defaults:
            raise UserError(f"unknown profile {self.profile!r} (known: {', '.join(self.defaults)})")
        default = self.defaults[self.profile].get(key)
        value = self.options.get(key)
        if value is None or value == "":
            return default
        if default is None or (isinstance(value, type(default)) and not isinstance(value, bool)):
            return value
        try:
            return (
                json.loads(value)
                if isinstance(default, bool) and isinstance(value, str)
                else type(default)(value)
            )
        except (TypeError, ValueError):
            raise UserError(f"option {key}={value!r}: expected {type(default).__name__}") from None
