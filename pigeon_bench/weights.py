"""The weight table: every model a profile uses, as data (in the manner of open_clip's pretrained table).

One row per model: what it is, what uses it, where its weights live (a Hugging Face repo and the files needed
from it, or a torch-hub checkpoint file and its URL), the environment variable that points it at local
weights, and the builder of its tiny seeded stand-in. Resolution (:func:`resolve`) looks, in order, at an
explicit path, ``$PIGEON_BENCH_WEIGHTS_<ID>``, the Hugging Face cache and ``TORCH_HOME``; it never
downloads. :func:`prefetch` downloads into those caches on a machine with network.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from pigeon_bench import artifacts, fileio
from pigeon_bench.errors import UserError
from pigeon_bench.paths import cache_dir
from pigeon_bench.registry import Registry

SCORING, GENERATION = "scoring", "generation"


@dataclass(frozen=True)
class WeightSpec:
    """One model of the table."""

    id: str
    role: str  # SCORING (a metric backbone) or GENERATION (a method's model)
    description: str
    used_by: str
    hub_repo: str | None = None
    # Files needed from the repo (or an explicit folder): per group, alternatives; the first present wins.
    hub_files: tuple[tuple[str, ...], ...] = ()
    torch_hub_file: str | None = None  # a checkpoint under $TORCH_HOME/hub/checkpoints/
    url: str | None = None  # where torch_hub_file is downloaded from
    package_files: str | None = None  # "module:function" -> files shipped in a package (lpips' lin layers)
    tiny: str | None = None  # "module:function(name)" -> the tiny seeded folder (generation models)
    extra: dict[str, str] = field(default_factory=dict)  # model-specific constants (architecture, tag)

    @property
    def env_var(self) -> str:
        """The environment variable that points this model at explicit local weights."""
        return "PIGEON_BENCH_WEIGHTS_" + self.id.upper().replace("-", "_").replace("*", "_STAR")

    @property
    def hub_id(self) -> str:
        if self.hub_repo is None:
            raise UserError(f"model {self.id!r} has no hub repository")
        return self.hub_repo

    def tiny_folder(self) -> Path:
        """The tiny seeded stand-in's folder (built once into the cache)."""
        if self.tiny is None:
            raise UserError(f"model {self.id!r} has no tiny stand-in")
        return Path(_call(self.tiny))


def _call(target: str):
    """Call ``module:function`` or ``module:function(arg)`` (one string argument)."""
    module, _, rest = target.partition(":")
    name, _, arg = rest.partition("(")
    fn = getattr(importlib.import_module(module), name)
    return fn(arg.rstrip(")")) if arg else fn()


table: Registry[WeightSpec] = Registry("model", entry_point_group="pigeon_bench.weights")


def register(spec: WeightSpec) -> WeightSpec:
    table.register(spec.id, spec)
    return spec


CLIP = register(WeightSpec(
    "clip", SCORING, "open_clip ViT-H-14 / laion2b_s32b_b79k image and text towers",
    "p_cs, p_cis, a_cs, a_cis (and Pigeon's DPO reward)", hub_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    hub_files=(("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),),
    extra={"architecture": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"}))
DINO = register(WeightSpec(
    "dino", SCORING, "transformers Dinov2Model facebook/dinov2-large (pooler_output)", "p_dis, a_dis",
    hub_repo="facebook/dinov2-large",
    hub_files=(("model.safetensors", "pytorch_model.bin"), ("config.json",), ("preprocessor_config.json",))))
LPIPS_VGG = register(WeightSpec(
    "lpips-vgg", SCORING, "lpips v0.1 VGG16 (torchvision features + lpips linear weights)", "p_lpips",
    torch_hub_file="vgg16-397923af.pth", url="https://download.pytorch.org/models/vgg16-397923af.pth",
    package_files="pigeon_bench.weights:lpips_lin_files"))
FID_INCEPTION = register(WeightSpec(
    "fid-inception", SCORING, "the FID InceptionV3 (pool3, 2048-d; TF graph weights as torch-fidelity ships "
    "them)", "fid", torch_hub_file="weights-inception-2015-12-05-6726825d.pth",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth"))

SDXL = register(WeightSpec(
    "sdxl", GENERATION, "Stable Diffusion XL base 1.0 (diffusers)", "ti, llava*, llava (image generator)",
    hub_repo="stabilityai/stable-diffusion-xl-base-1.0", hub_files=(("model_index.json",),),
    tiny="baselines.tiny:materialize(sdxl)"))
SD15 = register(WeightSpec(
    "sd15", GENERATION, "Stable Diffusion 1.5 (diffusers)", "pmg (image generator)",
    hub_repo="stable-diffusion-v1-5/stable-diffusion-v1-5", hub_files=(("model_index.json",),),
    tiny="baselines.tiny:materialize(sd)"))
LLAVA = register(WeightSpec(
    "llava", GENERATION, "LLaVA-1.5-7B (transformers)", "llava*, llava (prompt writer; captioner option)",
    hub_repo="llava-hf/llava-1.5-7b-hf",
    hub_files=(("config.json",),), tiny="baselines.tiny:materialize(llava)"))
BLIP2 = register(WeightSpec(
    "blip2", GENERATION, "BLIP-2 OPT-2.7B (transformers)", "reference captions of ti, pmg, llava*, llava",
    hub_repo="Salesforce/blip2-opt-2.7b",
    hub_files=(("config.json",),), tiny="baselines.tiny:materialize(blip2)"))
LLAMA = register(WeightSpec(
    "llama", GENERATION, "Llama-2-7B (transformers)", "pmg (keyword and soft-token LLM)",
    hub_repo="meta-llama/Llama-2-7b-hf",
    hub_files=(("config.json",),), tiny="baselines.tiny:materialize(llama)"))
LAVIT = register(WeightSpec(
    "lavit", GENERATION, "LaVIT-7B-v2 (visual tokenizer, LLaMA, tokenizer decoder, SDXL pixel decoder)",
    "pigeon, lavit*, lavit, recon (backbone)", hub_repo="rain1011/LaVIT-7B-v2",
    hub_files=(("language_model/config.json",),),
    tiny="pigeon.lavit.tiny_folder:ensure_tiny_lavit_folder"))


def get(model_id: str) -> WeightSpec:
    return table.get(model_id)


def ids(role: str | None = None) -> list[str]:
    return [i for i in table.names() if role is None or table.get(i).role == role]


def lpips_lin_files() -> list[Path]:
    """LPIPS v0.1 VGG linear-layer weights, shipped inside the lpips package."""
    import lpips

    return [Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"]


@dataclass
class Resolved:
    """The weight files of one model: ``paths`` when found, else where it looked."""

    id: str
    paths: list[Path] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.paths)


def check_reference(ref: str) -> str:
    """A model reference given by a user: a hub id as is; something that looks like a path must be a folder
    (exists, starts with ``/ . ~``, or has several ``/``)."""
    path = Path(ref).expanduser()
    looks_local = path.exists() or ref.startswith(("/", ".", "~")) or ref.count("/") > 1
    if looks_local and not path.is_dir():
        raise UserError(f"model folder not found: {path}")
    return str(path) if looks_local else ref


def _explicit(spec: WeightSpec, weights: dict[str, str | Path] | None) -> Path | None:
    value = (weights or {}).get(spec.id) or os.environ.get(spec.env_var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"weights for {spec.id} not found at {path}")
    return path


def _hf_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename)
    return Path(hit) if isinstance(hit, str) else None


def _torch_hub_file(name: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _groups(spec: WeightSpec, find) -> list[Path] | None:
    """One path per file group (the first alternative found), or None when a group has none."""
    out = []
    for group in spec.hub_files:
        hit = next((p for p in map(find, group) if p is not None), None)
        if hit is None:
            return None
        out.append(hit)
    return out


def resolve(model_id: str, weights: dict[str, str | Path] | None = None) -> Resolved:
    """Find one model's weight files without loading them (the first file is the weights themselves)."""
    spec = get(model_id)
    res = Resolved(spec.id, looked=[f"${spec.env_var}"])
    explicit = _explicit(spec, weights)
    paths: list[Path] | None = None
    if explicit is not None:
        res.looked.append(str(explicit))
        if explicit.is_dir() and spec.hub_files:
            paths = _groups(spec, lambda n: explicit / n if (explicit / n).is_file() else None)
        else:
            paths = [explicit]
    elif spec.hub_repo:
        names = " + ".join(" or ".join(g) for g in spec.hub_files)
        res.looked.append(f"HF cache {spec.hub_repo}/{names}")
        paths = _groups(spec, lambda n: _hf_cached(spec.hub_repo, n))
    elif spec.torch_hub_file:
        path = _torch_hub_file(spec.torch_hub_file)
        res.looked.append(str(path))
        paths = [path] if path.is_file() else None
    if paths:
        res.paths = paths + (list(_call(spec.package_files)) if spec.package_files else [])
    return res


def missing_message(missing: list[Resolved], profile_name: str) -> str:
    parts = "; ".join(f"{r.id} (looked in {', '.join(r.looked)})" for r in missing)
    return (f"{profile_name} profile: missing weights for {parts}. On a machine with network run "
            f"`pigeon-bench models prefetch` (or set PIGEON_BENCH_WEIGHTS_<ID> to local weights), "
            "or use --profile tiny (not comparable with the paper)")


class MissingWeights(UserError):
    """Models whose weights are not on this machine; the message says where it looked and what to do."""

    def __init__(self, missing: list[Resolved], profile_name: str):
        super().__init__(missing_message(missing, profile_name))
        self.missing = missing


def require(model_ids: list[str] | tuple[str, ...], weights: dict[str, str | Path] | None,
            profile_name: str) -> dict[str, Resolved]:
    """Resolve the models; one MissingWeights naming every one that is missing."""
    out = {i: resolve(i, weights) for i in model_ids}
    missing = [r for r in out.values() if not r.found]
    if missing:
        raise MissingWeights(missing, profile_name)
    return out


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised in the cache by (path, size, mtime) so multi-GB weights hash once."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = cache_dir() / "fingerprints.json"
    memo = artifacts.update_json(memo_path, lambda m: m)
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    value = h.hexdigest()
    artifacts.update_json(memo_path, lambda m: {**m, key: value})
    return value


def files_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(p).encode())
    return h.hexdigest()


def prefetch(model_ids: list[str]) -> dict[str, Resolved]:
    """Download models into the usual caches (needs network and HF_HUB_OFFLINE unset)."""
    import torch

    for model_id in model_ids:
        spec = get(model_id)
        if resolve(model_id).found:
            continue
        try:
            if spec.hub_repo and spec.role == SCORING:
                from huggingface_hub import hf_hub_download

                for group in spec.hub_files:
                    hf_hub_download(spec.hub_repo, group[0])
            elif spec.hub_repo:
                from huggingface_hub import snapshot_download

                snapshot_download(spec.hub_repo)
            elif spec.url and spec.torch_hub_file:
                dest = _torch_hub_file(spec.torch_hub_file)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with fileio.atomic_path(dest) as tmp:
                    torch.hub.download_url_to_file(spec.url, str(tmp), progress=True)
        except Exception as exc:  # network, offline mode, HTTP errors: one line naming the model
            first = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise UserError(f"prefetch of {model_id} failed: {first}") from None
    return {i: resolve(i) for i in model_ids}
