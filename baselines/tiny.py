"""Tiny random models of the paper's classes, built offline with seeded weights (the "tiny" profile).

Every builder returns a model of the *same class* as the full-size one (StableDiffusionXLPipeline,
LlavaForConditionalGeneration, Blip2ForConditionalGeneration, LlamaForCausalLM, ...), only with tiny
configs, so the code that loads and runs the paper's models runs unchanged on CPU in seconds. Nothing is
downloaded:

- ``clip_tokenizer()``: a real CLIP BPE tokenizer (49,408 tokens) written from open_clip's bundled vocabulary.
- ``llama_tokenizer()``: a small byte-level BPE tokenizer trained on a built-in corpus, wrapped in
  ``PreTrainedTokenizerFast`` with Llama-style special tokens (``<s>``, ``</s>``, ``<unk>``, ``<pad>``) and
  ``<image>``; any text can be encoded (byte fallback): usable wherever a Llama tokenizer is expected.
- ``llama(tokenizer)``, ``sdxl_pipeline()``, ``sd_pipeline()``, ``llava()``, ``blip2()``: tiny models.
- ``materialize(name)``: saves one of them with ``save_pretrained`` into the artifact cache
  (``pigeon_bench.artifacts``: once, whole, safe across processes) and returns the folder, so the tiny
  profile loads through ``from_pretrained`` exactly like the paper profile.

Built objects are cached per process; callers must not mutate them in place (copy first).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from pigeon_bench import artifacts
from pigeon_bench.errors import UserError

SEED = 0
TINY_VERSION = "v2"  # bump when a tiny config changes, so cached folders are rebuilt
CLIP_VOCAB_SIZE = 49408
IMAGE_TOKEN = "<image>"

_CORPUS = (
    "a cute cartoon sticker of a cat holding a cup of coffee with a happy face",
    "a movie poster with a dark dramatic color palette and a hero in the center",
    "a funny dog sticker waving hello on a white background, flat colors, thick outline",
    "an action movie poster of a city at night with explosions and bold red title text",
    "a user liked these images: bright pastel stickers, cats, bears and rabbits with big eyes",
    "describe the image. write a prompt for a personalized image that keeps the reference content",
    "keywords: cute, pastel, cartoon, dark, dramatic, vintage, minimal, colorful, anime, realistic",
    "USER: ASSISTANT: the style of the user, in the style of, a photo of, a painting of",
    "romance comedy horror thriller science fiction animation drama adventure fantasy",
    "0123456789 , . ! ? : ; - ( ) ' \" red green blue yellow black white pink purple orange",
)


@contextlib.contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore it afterwards (deterministic weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------- tokenizers


def write_clip_tokenizer_files(out: str | Path) -> Path:
    """Write CLIP's BPE (``vocab.json`` + ``merges.txt``) from open_clip's bundled vocabulary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@functools.cache
def clip_tokenizer():
    """The CLIP tokenizer (max length 77) used by SD/SDXL text encoders, built offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_clip_tokenizer_files(tmp)
        return CLIPTokenizer(
            vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
        )


@functools.cache
def llama_tokenizer(vocab_size: int = 512, image_token_attribute: bool = True):
    """A small Llama-style byte-level BPE tokenizer: adds ``<s>``; has ``</s> <unk> <pad> <image>``.

    ``image_token_attribute`` sets ``tokenizer.image_token`` (LLaVA's processor reads it; BLIP-2's: none).
    Its alphabet is printable ASCII (other characters encode as ``<unk>``), so whatever a random tiny model
    generates decodes to readable text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    alphabet = [_bytes_to_unicode()[b] for b in range(32, 127)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN} if image_token_attribute else {},
        padding_side="left",
    )


# ---------------------------------------------------------------- language models


def llama_config(vocab_size: int, **overrides: Any):
    """A tiny ``LlamaConfig`` (hidden 32, 2 layers); ``overrides`` replace any field."""
    from transformers import LlamaConfig

    tok = llama_tokenizer()
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def llama(tokenizer=None, seed: int = SEED, **overrides: Any):
    """A tiny ``LlamaForCausalLM`` matching ``tokenizer`` (default: ``llama_tokenizer()``)."""
    from transformers import LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else llama_tokenizer()
    with seeded(seed):
        return LlamaForCausalLM(llama_config(len(tokenizer), **overrides)).eval()


def _clip_vision_config(**overrides: Any):
    from transformers import CLIPVisionConfig

    fields = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    fields.update(overrides)
    return CLIPVisionConfig(**fields)


def _clip_image_processor(size: int = 32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def llava(seed: int = SEED):
    """A tiny ``LlavaForConditionalGeneration`` and its ``LlavaProcessor`` (32 px images, 16 image tokens)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = llama_tokenizer()
    vision = _clip_vision_config()
    n_patches = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=llama_config(len(tok)),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=n_patches,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(vision.image_size),
        tokenizer=tok,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    with seeded(seed):
        model = LlavaForConditionalGeneration(config).eval()
    return model, processor


def blip2(seed: int = SEED):
    """A tiny ``Blip2ForConditionalGeneration`` (OPT decoder) and its ``Blip2Processor``."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    tok = llama_tokenizer(image_token_attribute=False)
    n_query = 4
    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        encoder_hidden_size=32,
        vocab_size=len(tok),
    )
    text = OPTConfig(
        vocab_size=len(tok),
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=n_query,
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=n_query)
    with seeded(seed):
        model = Blip2ForConditionalGeneration(config).eval()
    return model, processor


# ---------------------------------------------------------------- diffusion pipelines


def _vae(seed: int):
    from diffusers import AutoencoderKL

    with seeded(seed):  # 4 blocks: the 8x downsampling of SD/SDXL's VAE, at 8 channels
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=64,
        )


def _clip_text_config(**overrides: Any):
    from transformers import CLIPTextConfig

    fields = dict(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="gelu",
        bos_token_id=CLIP_VOCAB_SIZE - 2,
        eos_token_id=CLIP_VOCAB_SIZE - 1,
        pad_token_id=CLIP_VOCAB_SIZE - 1,
    )
    fields.update(overrides)
    return CLIPTextConfig(**fields)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _unet(seed: int, **config):
    """A tiny seeded ``UNet2DConditionModel`` (two blocks, 8x8 latents); ``config`` adds SD/SDXL specifics."""
    from diffusers import UNet2DConditionModel

    with seeded(seed):
        return UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            norm_num_groups=8,
            **config,
        )


def sdxl_pipeline(seed: int = SEED):
    """A tiny ``StableDiffusionXLPipeline`` (two CLIP text encoders, text-time UNet; 64 px -> 8x8 latents)."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    text_cfg = _clip_text_config()
    unet = _unet(
        seed,
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + text_cfg.projection_dim,
        cross_attention_dim=2 * text_cfg.hidden_size,
    )
    with seeded(seed + 1):
        text_encoder = CLIPTextModel(text_cfg).eval()
    with seeded(seed + 2):
        text_encoder_2 = CLIPTextModelWithProjection(text_cfg).eval()
    return StableDiffusionXLPipeline(
        vae=_vae(seed + 3),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
        add_watermarker=False,
    )


def sd_pipeline(seed: int = SEED):
    """A tiny ``StableDiffusionPipeline`` (SD 1.5 layout: one CLIP text encoder; 64 px -> 8x8 latents)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    text_cfg = _clip_text_config()
    unet = _unet(seed, cross_attention_dim=text_cfg.hidden_size)
    with seeded(seed + 1):
        text_encoder = CLIPTextModel(text_cfg).eval()
    return StableDiffusionPipeline(
        vae=_vae(seed + 3),
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------- saved folders


def _save_llama(out: Path) -> None:
    tok = llama_tokenizer()
    llama(tok).save_pretrained(out)
    tok.save_pretrained(out)


def _save_pair(build: Callable[[], tuple[Any, Any]]) -> Callable[[Path], None]:
    def save(out: Path) -> None:
        model, processor = build()
        model.save_pretrained(out)
        processor.save_pretrained(out)

    return save


SAVERS: dict[str, Callable[[Path], None]] = {
    "sdxl": lambda out: sdxl_pipeline().save_pretrained(out),
    "sd": lambda out: sd_pipeline().save_pretrained(out),
    "llava": _save_pair(llava),
    "blip2": _save_pair(blip2),
    "llama": _save_llama,
}


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    import transformers.utils.logging as tlog

    was = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


def materialize(name: str, root: str | Path | None = None) -> Path:
    """Save tiny model ``name`` (see ``SAVERS``) into the artifact cache (or under ``root``) once; return its
    folder."""
    if name not in SAVERS:
        raise UserError(f"unknown tiny model {name!r} (known: {', '.join(SAVERS)})")

    def build(out: Path) -> None:
        with _no_progress_bars():
            SAVERS[name](out)

    return artifacts.ensure("tiny-models", f"{name}-{TINY_VERSION}", build, root=root)
