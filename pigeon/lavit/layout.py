"""The released LaVIT-7B-v2 folder: which files must exist, and every key pattern of the weight files with
its shape formula (the README "## LaVIT backbone" table is this one, written out at full size).

Patterns use ``{i}`` for a block index. Shapes are functions of ``LaVITConfig`` so the same table checks the
released sizes and the tiny test folders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from pigeon.lavit.config import DECODER_FILE, EVA_FILE, LM_DIR, PIXEL_DIR, TOKENIZER_FILE, LaVITConfig
from pigeon_bench.errors import UserError

Shape = Callable[[LaVITConfig], tuple[int, ...]]


def _vit_hidden(c: LaVITConfig) -> int:
    return int(c.vit_width * c.vit_mlp_ratio)


def _merger_hidden(c: LaVITConfig) -> int:
    return int(c.vit_width * c.merger_mlp_ratio)


def _decoder_hidden(c: LaVITConfig) -> int:
    return int(c.decoder_width * c.decoder_mlp_ratio)


def _vec(attr: str) -> Shape:
    return lambda c: (getattr(c, attr),)


def _linear(out: Shape, inp: Shape) -> dict[str, Shape]:
    return {"weight": lambda c: out(c) + inp(c), "bias": out}


_W = _vec("vit_width")
_D = _vec("decoder_width")


def _block_linear(prefix: str, out: Shape, inp: Shape) -> dict[str, Shape]:
    return {f"{prefix}.{k}": v for k, v in _linear(out, inp).items()}


def _norm(prefix: str, dim: Shape) -> dict[str, Shape]:
    return {f"{prefix}.weight": dim, f"{prefix}.bias": dim}


EVA_KEYS: dict[str, Shape] = {
    "cls_token": lambda c: (1, 1, c.vit_width),
    "pos_embed": lambda c: (1, c.num_patches + 1, c.vit_width),
    "patch_embed.proj.weight": lambda c: (c.vit_width, 3, c.patch_size, c.patch_size),
    "patch_embed.proj.bias": _W,
    **_norm("blocks.{i}.norm1", _W),
    "blocks.{i}.attn.q_bias": _W,
    "blocks.{i}.attn.v_bias": _W,
    "blocks.{i}.attn.qkv.weight": lambda c: (3 * c.vit_width, c.vit_width),
    **_block_linear("blocks.{i}.attn.proj", _W, _W),
    **_norm("blocks.{i}.norm2", _W),
    **_block_linear("blocks.{i}.mlp.fc1", lambda c: (_vit_hidden(c),), _W),
    **_block_linear("blocks.{i}.mlp.fc2", _W, lambda c: (_vit_hidden(c),)),
    **_norm("norm", _W),
    **_block_linear("head", _vec("vit_embed_dim"), _W),
}

TOKENIZER_KEYS: dict[str, Shape] = {
    **_norm("token_predictor.in_conv.0", _W),
    **_block_linear("token_predictor.in_conv.1", _W, _W),
    **_block_linear("token_predictor.out_conv.0", lambda c: (c.vit_width // 2,), _W),
    **_block_linear("token_predictor.out_conv.2", lambda c: (c.vit_width // 4,),
                    lambda c: (c.vit_width // 2,)),
    **_block_linear("token_predictor.out_conv.4", lambda c: (2,), lambda c: (c.vit_width // 4,)),
    **_norm("causal_encoder.blocks.{i}.norm0", _W),
    **_block_linear("causal_encoder.blocks.{i}.token_causal_attn.qkv", lambda c: (3 * c.vit_width,), _W),
    **_block_linear("causal_encoder.blocks.{i}.token_causal_attn.proj", _W, _W),
    **_norm("causal_encoder.blocks.{i}.norm1", _W),
    **{k: v for name in ("query", "key", "value", "proj")
       for k, v in _block_linear(f"causal_encoder.blocks.{{i}}.token_cross_attn.{name}", _W, _W).items()},
    **_norm("causal_encoder.blocks.{i}.norm2", _W),
    **_block_linear("causal_encoder.blocks.{i}.mlp.fc1", lambda c: (_merger_hidden(c),), _W),
    **_block_linear("causal_encoder.blocks.{i}.mlp.fc2", _W, lambda c: (_merger_hidden(c),)),
    **_norm("causal_encoder.ln_vision", _W),
    **_norm("causal_encoder.norm", _W),
    "quantize.embedding.weight": lambda c: (c.codebook_size, c.code_dim),
    **_block_linear("encode_task_layer.0", _W, _W),
    **_block_linear("encode_task_layer.2", _vec("code_dim"), _W),
}

_OUT = _vec("decoder_out_dim")
DECODER_KEYS: dict[str, Shape] = {
    **_block_linear("in_proj", _D, _vec("code_dim")),
    "pos_embed": lambda c: (1, c.num_patches, c.decoder_width),
    "query_embed": lambda c: (1, c.num_patches, c.decoder_width),
    **_norm("blocks.{i}.norm0", _D),
    **_block_linear("blocks.{i}.self_attn.qkv", lambda c: (3 * c.decoder_width,), _D),
    **_block_linear("blocks.{i}.self_attn.proj", _D, _D),
    **_norm("blocks.{i}.norm1", _D),
    **{k: v for name in ("query", "key", "value", "proj")
       for k, v in _block_linear(f"blocks.{{i}}.cross_attn.{name}", _D, _D).items()},
    **_norm("blocks.{i}.norm2", _D),
    **_block_linear("blocks.{i}.mlp.fc1", lambda c: (_decoder_hidden(c),), _D),
    **_block_linear("blocks.{i}.mlp.fc2", _D, lambda c: (_decoder_hidden(c),)),
    **_norm("norm", _D),
    **_block_linear("decode_task_layer.0", _D, _D),
    **_block_linear("decode_task_layer.2", _OUT, _D),
    **_block_linear("unet_proj_1", lambda c: (c.unet_context_dims[0],), _OUT),
    **_block_linear("unet_proj_2", lambda c: (c.unet_context_dims[1],), _OUT),
    "unet_attnpool.positional_embedding": lambda c: (c.num_patches + 1, c.decoder_out_dim),
    **{k: v for name in ("q_proj", "k_proj", "v_proj")
       for k, v in _block_linear(f"unet_attnpool.{name}", _OUT, _OUT).items()},
    **_block_linear("unet_attnpool.c_proj", _vec("unet_pooled_dim"), _OUT),
}

WEIGHT_FILES: dict[str, dict[str, Shape]] = {EVA_FILE: EVA_KEYS, TOKENIZER_FILE: TOKENIZER_KEYS,
                                              DECODER_FILE: DECODER_KEYS}
DEPTHS: dict[str, Callable[[LaVITConfig], dict[str, int]]] = {
    EVA_FILE: lambda c: {"blocks": c.vit_depth},
    TOKENIZER_FILE: lambda c: {"causal_encoder.blocks": c.merger_depth},
    DECODER_FILE: lambda c: {"blocks": c.decoder_depth},
}


def expected_shapes(file: str, config: LaVITConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a released weight file with its shape for ``config`` (block patterns expanded)."""
    depths = DEPTHS[file](config)
    out: dict[str, tuple[int, ...]] = {}
    for pattern, shape in WEIGHT_FILES[file].items():
        prefix = pattern.split(".{i}.")[0] if ".{i}." in pattern else None
        indices = range(depths[prefix]) if prefix is not None else [None]
        for i in indices:
            out[pattern.format(i=i) if i is not None else pattern] = tuple(shape(config))
    return out


def check_state_dict(state: Mapping[str, torch.Tensor], file: str, config: LaVITConfig) -> None:
    """UserError (one line) if ``state`` lacks a key of ``file`` or has a shape the config rules out."""
    expected = expected_shapes(file, config)
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise UserError(f"{file}: missing weights {', '.join(missing[:3])}{more}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise UserError(f"{file}: {key} has shape {tuple(state[key].shape)}, expected {shape} for this "
                            f"LaVIT config (a different checkpoint, or a wrong pigeon_lavit_config.json?)")


_LM_WEIGHTS = ("pytorch_model.bin.index.json", "pytorch_model.bin", "model.safetensors.index.json",
               "model.safetensors")
_REQUIRED: dict[str, tuple[str, ...]] = {
    EVA_FILE: (EVA_FILE,),
    TOKENIZER_FILE: (TOKENIZER_FILE,),
    DECODER_FILE: (DECODER_FILE,),
    f"{LM_DIR}/config.json": (f"{LM_DIR}/config.json",),
    f"{LM_DIR}/<weights>": tuple(f"{LM_DIR}/{name}" for name in _LM_WEIGHTS),
    f"{LM_DIR}/tokenizer.model": (f"{LM_DIR}/tokenizer.model", f"{LM_DIR}/tokenizer.json"),
    f"{PIXEL_DIR}/unet/config.json": (f"{PIXEL_DIR}/unet/config.json",),
    f"{PIXEL_DIR}/unet/<weights>": (f"{PIXEL_DIR}/unet/diffusion_pytorch_model.bin",
                                    f"{PIXEL_DIR}/unet/diffusion_pytorch_model.safetensors"),
    f"{PIXEL_DIR}/vae/config.json": (f"{PIXEL_DIR}/vae/config.json",),
    f"{PIXEL_DIR}/vae/<weights>": (f"{PIXEL_DIR}/vae/diffusion_pytorch_model.safetensors",
                                   f"{PIXEL_DIR}/vae/diffusion_pytorch_model.bin"),
    f"{PIXEL_DIR}/scheduler/scheduler_config.json": (f"{PIXEL_DIR}/scheduler/scheduler_config.json",),
}


def missing_files(root: Path) -> list[str]:
    """Released-layout entries absent from ``root`` (each satisfied by any of its alternatives)."""
    return [name for name, options in _REQUIRED.items() if not any((root / o).is_file() for o in options)]


def require_complete(root: Path) -> None:
    missing = missing_files(root)
    if missing:
        raise UserError(f"LaVIT folder {root} is incomplete (expected the {len(_REQUIRED)}-part "
                        f"rain1011/LaVIT-7B-v2 layout); missing: {', '.join(missing)}")


def _torch_load(path: Path) -> object:
    try:  # memory-map zip-format checkpoints (the 2 GB EVA file); legacy pickles load normally
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(root: Path, file: str) -> dict[str, torch.Tensor]:
    """torch.load a released .bin state dict (plain tensors, so weights_only loading works)."""
    path = root / file
    try:
        state = _torch_load(path)
    except Exception as exc:  # corrupt / truncated / not a torch file
        raise UserError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: expected a state dict, found {type(state).__name__}")
    return dict(state)
