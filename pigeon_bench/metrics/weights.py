"""Where the paper profile's weights live: resolution (explicit path, env var, HF cache, TORCH_HOME),
fingerprints, and prefetching on a machine with network."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.paths import cache_dir

CLIP_MODEL = "ViT-H-14"
CLIP_PRETRAINED = "laion2b_s32b_b79k"
CLIP_HF_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DINO_HF_REPO = "facebook/dinov2-large"
DINO_FILES = ("config.json", "preprocessor_config.json")
DINO_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VGG16_FILE = "vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1, what lpips loads
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity / torchmetrics FID weights
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE


def env_var(backbone_id: str) -> str:
    """The environment variable that points a backbone at explicit local weights."""
    return "PIGEON_BENCH_WEIGHTS_" + backbone_id.upper().replace("-", "_")


@dataclass
class Resolved:
    """The weight files of one backbone: ``paths`` when found, else where we looked."""

    backbone_id: str
    paths: list[Path] = field(default_factory=list)
    looked: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.paths)


def _explicit(backbone_id: str, weights: dict[str, str | Path] | None) -> Path | None:
    value = (weights or {}).get(backbone_id) or os.environ.get(env_var(backbone_id))
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"weights for {backbone_id} not found at {path}")
    return path


def _hf_cached(repo: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename)
    return Path(hit) if isinstance(hit, str) else None


def _torch_hub_file(name: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / name


def lpips_lin_file() -> Path:
    """LPIPS v0.1 VGG linear-layer weights, shipped inside the lpips package."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def resolve(backbone_id: str, weights: dict[str, str | Path] | None = None) -> Resolved:
    """Find one paper backbone's weight files without loading them."""
    res = Resolved(backbone_id)
    explicit = _explicit(backbone_id, weights)
    res.looked.append(f"${env_var(backbone_id)}")
    if backbone_id == "clip":
        if explicit is not None:
            res.paths = [explicit]
            return res
        for name in CLIP_FILES:
            hit = _hf_cached(CLIP_HF_REPO, name)
            if hit is not None:
                res.paths = [hit]
                return res
        res.looked.append(f"HF cache {CLIP_HF_REPO}/{' or '.join(CLIP_FILES)}")
    elif backbone_id == "dino":
        folder = explicit
        if folder is None:
            hit = _hf_cached(DINO_HF_REPO, "config.json")
            folder = hit.parent if hit is not None else None
            res.looked.append(f"HF cache {DINO_HF_REPO}")
        else:
            res.looked.append(str(folder))
        if folder is not None:
            files = [folder / n for n in DINO_FILES]
            weights_file = next((folder / n for n in DINO_WEIGHT_FILES if (folder / n).is_file()), None)
            if weights_file is not None and all(f.is_file() for f in files):
                res.paths = [weights_file, *files]
    elif backbone_id in ("lpips-vgg", "fid-inception"):
        name = VGG16_FILE if backbone_id == "lpips-vgg" else INCEPTION_FILE
        path = explicit or _torch_hub_file(name)
        res.looked.append(str(path))
        if path.is_file():
            res.paths = [path] + ([lpips_lin_file()] if backbone_id == "lpips-vgg" else [])
    else:
        raise UserError(f"unknown backbone {backbone_id!r}")
    return res


def require(ids: list[str], weights: dict[str, str | Path] | None = None) -> dict[str, Resolved]:
    """Resolve every backbone; one UserError listing all that are missing and how to fetch them."""
    out = {i: resolve(i, weights) for i in ids}
    missing = [r for r in out.values() if not r.found]
    if missing:
        parts = "; ".join(f"{r.backbone_id} (looked in {', '.join(r.looked)})" for r in missing)
        raise UserError(
            f"paper profile: missing weights for {parts}. On a machine with network run "
            f"`pigeon-bench models prefetch` (or set {env_var('<id>')} to local weights), "
            f"or use --profile tiny (not comparable with the paper)"
        )
    return out


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised in the cache by (path, size, mtime) so multi-GB weights hash once."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = cache_dir() / "fingerprints.json"
    try:
        memo = fileio.read_json(memo_path) if memo_path.is_file() else {}
    except UserError:
        memo = {}
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        memo[key] = h.hexdigest()
        fileio.write_json(memo_path, memo)
    return memo[key]


def files_fingerprint(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(p).encode())
    return h.hexdigest()


def prefetch(ids: list[str]) -> dict[str, Resolved]:
    """Download the paper weights into the usual caches (needs network and HF_HUB_OFFLINE unset)."""
    import torch

    for backbone_id in ids:
        if resolve(backbone_id).found:
            continue
        try:
            if backbone_id == "clip":
                from huggingface_hub import hf_hub_download

                hf_hub_download(CLIP_HF_REPO, CLIP_FILES[1])
            elif backbone_id == "dino":
                from huggingface_hub import snapshot_download

                snapshot_download(DINO_HF_REPO, allow_patterns=[*DINO_FILES, DINO_WEIGHT_FILES[0]])
            else:
                url = VGG16_URL if backbone_id == "lpips-vgg" else INCEPTION_URL
                dest = _torch_hub_file(Path(url).name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with fileio.atomic_path(dest) as tmp:
                    torch.hub.download_url_to_file(url, str(tmp), progress=True)
        except Exception as exc:  # network, offline mode, HTTP errors: one line naming the backbone
            first = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise UserError(f"prefetch of {backbone_id} failed: {first}") from None
    return {i: resolve(i) for i in ids}
