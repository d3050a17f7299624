"""Model loading for the baseline adapters: a per-process cache for tiny models, quiet ``from_pretrained``
calls with one-line errors, text generation and the text-to-image call, so that the paper profile (hub ids)
and the tiny profile (saved tiny folders) run through the very same code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.errors import UserError

T = TypeVar("T")

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


def image_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """Center-cropped, resized images as a (n, 3, size, size) tensor in [-1, 1] (the VAE's input)."""
    out = []
    for im in images:
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(out)
