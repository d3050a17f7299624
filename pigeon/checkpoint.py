"""Pigeon checkpoints in the authors' released layout, read and written strictly.

A checkpoint folder (the authors' ``checkpoint-N``)::

    mask_generator/model.safetensors | pytorch_model.bin     the mask generator's state dict
    adapter/model.safetensors | pytorch_model.bin            the adapter's state dict
    llama/adapter_config.json                                peft LoRA config (r, lora_alpha, target_modules)
    llama/adapter_model.safetensors | adapter_model.bin      LoRA weights under peft's saved names
    pigeon.json                                              ours only: config, backbone spec, training meta

Released checkpoints carry no pigeon.json: their options are read off the weights and adapter_config.json
and they are taken for LaVIT checkpoints. Every key is checked both ways; an error names the first missing
or unexpected key. Where both a .safetensors and a .bin file exist, the .safetensors one is read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pigeon.backbone import LAVIT, Backbone
from pigeon.mask import MaskGenerator
from pigeon.model import PigeonConfig, PigeonModel
from pigeon.personalization import Adapter
from pigeon_bench import fileio
from pigeon_bench.errors import UserError

MASK_GENERATOR, ADAPTER, LLAMA = "mask_generator", "adapter", "llama"
FILES = {MASK_GENERATOR: ("model.safetensors", "pytorch_model.bin"),
         ADAPTER: ("model.safetensors", "pytorch_model.bin"),
         LLAMA: ("adapter_model.safetensors", "adapter_model.bin")}
LORA_CONFIG = "adapter_config.json"
META = "pigeon.json"
LEGACY = "pigeon.safetensors"
LAVIT_DIMS = (4096, 2048)  # LaVIT-7B: LM width, tokenizer-decoder feature width
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


# files --------------------------------------------------------------------------------------------------
def checkpoint_dir(path: str | Path) -> Path:
    """``path`` if it is a checkpoint folder (any component present), else a one-line UserError."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint not found: {path}")
    if (path / LEGACY).is_file():
        raise UserError(f"{path}: {LEGACY} is an older pigeon-bench checkpoint format whose mask generator "
                        "does not match the official one; train it again")
    if any(weights_file(path, c) for c in FILES) or (path / LLAMA / LORA_CONFIG).is_file():
        return path
    runs = sorted((p.name for p in path.glob("checkpoint-*") if p.is_dir()),
                  key=lambda n: int(n.rsplit("-", 1)[1]) if n.rsplit("-", 1)[1].isdigit() else -1)
    if runs:
        raise UserError(f"{path} holds training checkpoints ({', '.join(runs)}); pass one of them")
    raise UserError(f"not a Pigeon checkpoint: {path} (needs {MASK_GENERATOR}/, {ADAPTER}/ and {LLAMA}/)")


def weights_file(ckpt: Path, component: str) -> Path | None:
    return next((ckpt / component / f for f in FILES[component] if (ckpt / component / f).is_file()), None)


def missing_pieces(ckpt: Path) -> list[str]:
    """The files a complete checkpoint needs that ``ckpt`` lacks, as "folder/a|b"."""
    out = [f"{c}/{'|'.join(FILES[c])}" for c in FILES if weights_file(ckpt, c) is None]
    if not (ckpt / LLAMA / LORA_CONFIG).is_file():
        out.append(f"{LLAMA}/{LORA_CONFIG}")
    return out


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch.save'd .bin (tensors only), on the CPU."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files: one line naming the file
        raise UserError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return state


def tensor_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) of a weights file (a .safetensors file is read without loading tensors)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype()))
                        for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
        except Exception as exc:
            raise UserError(f"cannot read {path}: {type(exc).__name__}") from None
    return shapes_of(read_tensors(path))


def read_meta(ckpt: Path) -> dict[str, Any]:
    """Our pigeon.json, or {} for a released checkpoint."""
    return fileio.read_json(ckpt / META) if (ckpt / META).is_file() else {}


def read_lora_config(ckpt: Path) -> dict[str, Any]:
    """r, alpha, dropout and target modules of llama/adapter_config.json; UserError for LoRA variants this
    code does not build (rank/alpha patterns, DoRA, rsLoRA, layer subsets)."""
    path = ckpt / LLAMA / LORA_CONFIG
    cfg = fileio.read_json(path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key in ("rank_pattern", "alpha_pattern", "use_dora", "use_rslora", "layers_to_transform"):
        if cfg.get(key):
            raise UserError(f"{path}: {key}={cfg[key]!r} is not supported")
    try:
        targets = cfg["target_modules"]
        return {"r": int(cfg["r"]), "alpha": int(cfg["lora_alpha"]),
                "dropout": float(cfg.get("lora_dropout", 0.0)),
                "target_modules": sorted(targets) if isinstance(targets, list) else [targets]}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: bad LoRA config ({type(exc).__name__}: {exc})") from None


# strict loading -----------------------------------------------------------------------------------------
def check_keys(expected: dict[str, torch.Tensor], found: dict[str, Any], where: str) -> None:
    """UserError naming the first missing or unexpected key, or the first shape that differs."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    for what, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise UserError(f"{where}: {what} key {keys[0]!r}{more}")
    for k, v in expected.items():
        shape = tuple(found[k].shape) if isinstance(found[k], torch.Tensor) else tuple(found[k][0])
        if shape != tuple(v.shape):
            raise UserError(f"{where}: {k} has shape {shape}, the model expects {tuple(v.shape)}")


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def _released_config(ckpt: Path, states: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """PigeonConfig fields a released checkpoint fixes: sizes read off its weights, its LoRA config."""
    mg, ad = shapes_of(states[MASK_GENERATOR]), shapes_of(states[ADAPTER])
    out: dict[str, Any] = {}
    layers = {int(m.group(1)) for k in mg if (m := _LAYER.match(k))}
    if layers:
        out["mask_layers"] = max(layers) + 1
    for field, shapes, key in (("mask_feedforward", mg, "encoder.layers.0.linear1.weight"),
                               ("mask_positions", mg, "position_embedding.pe"),
                               ("adapter_hidden", ad, "encoder.weight")):
        if key in shapes:
            out[field] = shapes[key][0][0]
    lora = read_lora_config(ckpt)
    return out | {"lora_r": lora["r"], "lora_alpha": lora["alpha"], "lora_dropout": lora["dropout"],
                  "lora_target_modules": tuple(lora["target_modules"])}


def check_compatible(meta: dict[str, Any], backbone: Backbone, ckpt: str | Path) -> None:
    """UserError naming the first backbone property our checkpoint was not built for (the LoRA targets
    are part of the checkpoint's config, not of the backbone)."""
    want = {k: v for k, v in meta.get("backbone", {}).items() if k != "lora_target_modules"}
    have = {k: v for k, v in backbone.spec().items() if k != "lora_target_modules"}
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise UserError(f"checkpoint {ckpt} does not fit backbone {have.get('backbone')!r}: {key} is "
                            f"{want.get(key)!r} in the checkpoint but {have.get(key)!r} in the backbone")


def read_states(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The three components' state dicts; UserError naming the first missing file."""
    missing = missing_pieces(ckpt)
    if missing:
        raise UserError(f"checkpoint {ckpt} is incomplete: missing {missing[0]}")
    return {comp: read_tensors(file) for comp in FILES if (file := weights_file(ckpt, comp)) is not None}


def read_checkpoint(path: str | Path, backbone: Backbone, **overrides: Any) -> PigeonModel:
    """A PigeonModel (eval mode) on ``backbone`` with a checkpoint's weights, every key checked."""
    ckpt = checkpoint_dir(path)
    states = read_states(ckpt)
    meta = read_meta(ckpt)
    if meta:
        check_compatible(meta, backbone, ckpt)
        base = dict(meta["config"])
    else:
        base = _released_config(ckpt, states)
        width = states[MASK_GENERATOR].get("type_embedding.weight", torch.empty(0, 0)).shape[1]
        if width != backbone.hidden_size:
            raise UserError(f"checkpoint {ckpt} was trained on a {width}-wide language model; backbone "
                            f"{backbone.name!r} is {backbone.hidden_size} wide")
    model = PigeonModel(backbone, PigeonConfig.from_dict({**base, **overrides}))
    load_states(model, ckpt, states)
    return model.eval()


def load_states(model: PigeonModel, ckpt: Path, states: dict[str, dict[str, torch.Tensor]] | None = None
                ) -> None:
    """Load the three components of ``ckpt`` (or their already read ``states``) into ``model``, strictly."""
    from peft import set_peft_model_state_dict

    states = states or read_states(ckpt)
    own = model.component_states()
    for comp in FILES:
        check_keys(own[comp], states[comp], str(weights_file(ckpt, comp)))
    lora = read_lora_config(ckpt)
    cfg = model.config
    if (lora["r"], lora["alpha"], lora["target_modules"]) != (cfg.lora_r, cfg.lora_alpha,
                                                              sorted(cfg.lora_target_modules)):
        raise UserError(f"{ckpt / LLAMA / LORA_CONFIG}: LoRA r={lora['r']}, alpha={lora['alpha']}, targets "
                        f"{lora['target_modules']} differ from the model's r={cfg.lora_r}, "
                        f"alpha={cfg.lora_alpha}, targets {sorted(cfg.lora_target_modules)}")
    with torch.no_grad():
        model.mask_generator.load_state_dict(states[MASK_GENERATOR], strict=True)
        model.adapter.load_state_dict(states[ADAPTER], strict=True)
        set_peft_model_state_dict(model.backbone.language_model, states[LLAMA])


# writing ------------------------------------------------------------------------------------------------
def _write_tensors(state: dict[str, torch.Tensor], dest: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with fileio.atomic_path(dest) as tmp:
        if dest.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)


def lora_config_dict(model: PigeonModel) -> dict[str, Any]:
    """The LoRA config as adapter_config.json holds it (sets as sorted lists, inference mode on)."""
    config = model.backbone.language_model.peft_config["default"].to_dict()
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()} | {"inference_mode": True}


def write_checkpoint(model: PigeonModel, out: str | Path, meta: dict[str, Any] | None = None,
                     safetensors: bool = True) -> None:
    """Write ``model`` in the released layout (.safetensors, or torch.save'd .bin files) + pigeon.json
    (config, backbone spec, ``meta``), which is written last."""
    out = Path(out)
    index = 0 if safetensors else 1
    for comp, state in model.component_states().items():
        _write_tensors(state, out / comp / FILES[comp][index])
        (out / comp / FILES[comp][1 - index]).unlink(missing_ok=True)
    fileio.write_json(out / LLAMA / LORA_CONFIG, lora_config_dict(model))
    fileio.write_json(out / META, {"config": model.config.to_dict(), "backbone": model.backbone.spec(),
                                   **(meta or {})})


# inspection ---------------------------------------------------------------------------------------------
def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """{"path", "layout" ("pigeon-bench" | "released"), "backbone" (name or None), "profile_hint"
    ("tiny" | "paper" | None)}: a released checkpoint with LaVIT's sizes is a LaVIT (paper-profile) one."""
    ckpt = checkpoint_dir(path)
    meta = read_meta(ckpt)
    if meta:
        name = meta.get("backbone", {}).get("backbone")
    else:
        name = LAVIT if _released_dims(ckpt) == LAVIT_DIMS else None
    from pigeon.tiny import TinyBackbone
    from pigeon_bench.profiles import PAPER, TINY

    hint = {TinyBackbone.name: TINY.name, LAVIT: PAPER.name}.get(name or "")
    return {"path": str(ckpt), "layout": "pigeon-bench" if meta else "released", "backbone": name,
            "profile_hint": hint}


def _released_dims(ckpt: Path) -> tuple[int, int] | None:
    """(LM width, feature width) read off the adapter's shapes, if present."""
    file = weights_file(ckpt, ADAPTER)
    if file is None:
        return None
    shapes = tensor_shapes(file)
    if "encoder.weight" not in shapes or "decoder.weight" not in shapes:
        return None
    return shapes["decoder.weight"][0][0], shapes["encoder.weight"][0][1]


def _expected_keys(component: str, shapes: dict[str, tuple[tuple[int, ...], str]]
                   ) -> dict[str, torch.Tensor] | None:
    """The state dict (on the meta device) the official module of ``component`` would have at the sizes
    ``shapes`` suggest, or None when they suggest none."""
    try:
        with torch.device("meta"):
            if component == MASK_GENERATOR:
                dim = shapes["type_embedding.weight"][0][1]
                layers = max(int(m.group(1)) for k in shapes if (m := _LAYER.match(k))) + 1
                ff = shapes["encoder.layers.0.linear1.weight"][0][0]
                rows = shapes["position_embedding.pe"][0][0]
                return MaskGenerator(dim, 1, layers, ff, positions=rows).state_dict()
            enc, dec = shapes["encoder.weight"][0], shapes["decoder.weight"][0]
            return Adapter(enc[1], enc[0], dec[0]).state_dict()
    except (KeyError, ValueError, IndexError):
        return None


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint folder holds: per component its file, tensor count, value count, dtypes and shapes
    (mask generator and adapter sizes, the LoRA config), the files it lacks ("missing") and key problems
    against the official modules ("problems"), plus checkpoint_info and our training meta when present."""
    ckpt = checkpoint_dir(path)
    meta = read_meta(ckpt)
    report: dict[str, Any] = {**checkpoint_info(ckpt), "components": {}, "missing": missing_pieces(ckpt),
                              "problems": [], "config": meta.get("config"),
                              "training": {k: meta[k] for k in ("stage", "step", "steps") if k in meta}}
    for comp in FILES:
        file = weights_file(ckpt, comp)
        if file is None:
            continue
        shapes = tensor_shapes(file)
        entry: dict[str, Any] = {
            "file": str(file.relative_to(ckpt)), "tensors": len(shapes),
            "values": sum(int(torch.Size(s).numel()) for s, _ in shapes.values()),
            "dtypes": sorted({d for _, d in shapes.values()}),
            "shapes": {k: list(s) for k, (s, _) in sorted(shapes.items())}}
        if comp == LLAMA:
            adapted = {k.split(".lora_")[0] for k in shapes if ".lora_" in k}
            entry["adapted_modules"] = len(adapted)
            bad = sorted(k for k in shapes if not re.search(r"\.lora_[AB]\.weight$", k))
            if bad:
                report["problems"].append(f"{file.relative_to(ckpt)}: unexpected key {bad[0]!r}")
            if (ckpt / LLAMA / LORA_CONFIG).is_file():
                try:
                    entry["lora"] = read_lora_config(ckpt)
                except UserError as exc:
                    report["problems"].append(str(exc))
        else:
            expected = _expected_keys(comp, shapes)
            try:
                if expected is None:
                    raise UserError(f"{file.relative_to(ckpt)}: not the official {comp} (its sizes cannot be "
                                    "read off its keys)")
                check_keys(expected, shapes, str(file.relative_to(ckpt)))
            except UserError as exc:
                report["problems"].append(str(exc))
            else:
                entry |= _sizes(comp, shapes)
        report["components"][comp] = entry
    return report


def _sizes(component: str, shapes: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, int]:
    if component == MASK_GENERATOR:
        return {"dim": shapes["type_embedding.weight"][0][1],
                "layers": len({int(m.group(1)) for k in shapes if (m := _LAYER.match(k))}),
                "feedforward": shapes["encoder.layers.0.linear1.weight"][0][0],
                "positions": shapes["position_embedding.pe"][0][0]}
    return {"in": shapes["encoder.weight"][0][1], "hidden": shapes["encoder.weight"][0][0],
            "out": shapes["decoder.weight"][0][0]}
