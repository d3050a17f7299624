"""Write a tiny, randomly initialised LaVIT folder in the released rain1011/LaVIT-7B-v2 on-disk layout.

Same sub-folders, file names, file formats (torch .bin state dicts in bf16, a 3-shard language model with
pytorch_model.bin.index.json, a sentencepiece tokenizer.model, diffusers unet .bin / vae .safetensors /
scheduler config) and key names as the release, only small; plus ``pigeon_lavit_config.json`` with the sizes.
Tests and the offline tiny profile load it through ``LaVITBackbone.from_pretrained``, the real loading code.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from pigeon.lavit.config import (
    CONFIG_FILE,
    DECODER_FILE,
    EVA_FILE,
    LM_DIR,
    PIXEL_DIR,
    TINY,
    TOKENIZER_FILE,
    LaVITConfig,
)
from pigeon.lavit.tokenizer_decoder import HighresTokenizerDecoder
from pigeon.lavit.visual_tokenizer import DynamicVisualTokenizer
from pigeon_bench import artifacts, fileio
from pigeon_bench.errors import UserError

LM_SHARDS = 3  # the release splits the language model into pytorch_model-0000{1,2,3}-of-00003.bin
_CORPUS = (
    "Instruction: You are a helpful personalized assistant. You will receive a list of user-liked images "
    "that reflect the user's visual preferences. By analyzing user preferences, please generate a "
    "personalized image that aligns with the user's aesthetic taste and the semantics in a specified "
    "reference image. "
    "Input: The user likes the following images: The reference image: Response: a sticker of a happy cat, "
    "a movie poster with a red car, a dog, a girl, comedy drama action thriller animation romance"
)


def _randomise_zero_params(module: nn.Module, gen: torch.Generator) -> None:
    """Give zero-initialised embeddings/biases small random values so the tiny model is not degenerate."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 0 and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _save_bf16(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}, path)


def _write_text_tokenizer(folder: Path) -> int:
    """A sentencepiece BPE tokenizer.model (ids 0/1/2 = <unk>/<s>/</s> like Llama) + its configs."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.split(". ") * 4), model_writer=model, vocab_size=120, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    added = {k: {"__type": "AddedToken", "content": v, "lstrip": False, "normalized": True, "rstrip": False,
                 "single_word": False} for k, v in specials.items()}  # the release's (legacy) format
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
         "pad_token": None, "clean_up_tokenization_spaces": False, "sp_model_kwargs": {},
         "model_max_length": 1000000000000000019884624838656, **added}, indent=2))
    from transformers import LlamaTokenizer

    return len(LlamaTokenizer.from_pretrained(folder))


def _write_language_model(folder: Path, vocab_size: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    config.save_pretrained(folder)
    state = model.state_dict()
    keys = list(state)
    weight_map: dict[str, str] = {}
    total = 0
    for shard in range(LM_SHARDS):
        name = f"pytorch_model-{shard + 1:05d}-of-{LM_SHARDS:05d}.bin"
        part = {k: state[k] for k in keys[shard::LM_SHARDS]}
        _save_bf16(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
        total += sum(v.numel() * 2 for v in part.values())
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_pixel_decoder(folder: Path, config: LaVITConfig) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=config.output_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=8,
        cross_attention_dim=config.feature_dim, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=config.unet_pooled_dim + 6 * time_dim,
    )
    unet.save_pretrained(folder / "unet", safe_serialization=False)  # the release ships the UNet as a .bin
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=config.output_size)
    vae.save_pretrained(folder / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")


def _write_parts(tmp: Path, config: LaVITConfig, gen: torch.Generator) -> None:
    tokenizer = DynamicVisualTokenizer(config)
    decoder = HighresTokenizerDecoder(config)
    _randomise_zero_params(tokenizer, gen)
    _randomise_zero_params(decoder, gen)
    _save_bf16(tokenizer.encoder.state_dict(), tmp / EVA_FILE)
    _save_bf16({k: v for k, v in tokenizer.state_dict().items() if not k.startswith("encoder.")},
               tmp / TOKENIZER_FILE)
    _save_bf16(decoder.state_dict(), tmp / DECODER_FILE)
    lm = tmp / LM_DIR
    lm.mkdir(parents=True)
    text_vocab = _write_text_tokenizer(lm)
    _write_language_model(lm, text_vocab + 2 + config.codebook_size)
    _write_pixel_decoder(tmp / PIXEL_DIR, config)


def _write_folder(out: Path, config: LaVITConfig, seed: int) -> None:
    """Write the folder's parts into the (new, empty) folder ``out``."""
    with torch.random.fork_rng(devices=[]):  # seeded module inits without touching the caller's RNG
        torch.manual_seed(seed)
        _write_parts(out, config, torch.Generator().manual_seed(seed))
    (out / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")


def write_tiny_lavit_folder(root: str | Path, config: LaVITConfig = TINY, seed: int = 0) -> Path:
    """Write the folder whole (built beside ``root``, then renamed into place); returns ``root``."""
    root = Path(root)
    if root.exists():
        raise UserError(f"{root} already exists; the tiny LaVIT folder is written only into a new path")
    with fileio.atomic_dir(root) as tmp:
        _write_folder(tmp, config, seed)
    return root


def ensure_tiny_lavit_folder(cache_root: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny LaVIT folder in the artifact cache, written once (safe when called concurrently)."""
    return artifacts.ensure("models", f"lavit-tiny-seed{seed}", lambda out: _write_folder(out, TINY, seed),
                            root=cache_root)
