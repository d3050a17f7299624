"""Backbones: the paper's models loaded through their own libraries' code, and tiny seeded stand-ins.

Each backbone has an id, a weights fingerprint and a preprocessing id (together the cache namespace, with the
variant a preprocessing mode sets through ``configure``), loads its model lazily (a warm cache never loads a
model) and counts the images (or texts) it forwards.

- ``clip``: open_clip image + text towers (paper: ViT-H-14 / laion2b_s32b_b79k), open_clip's own transform.
- ``dino``: transformers Dinov2Model ``pooler_output`` with its (PIL-backend) image processor.
- ``lpips-vgg``: lpips v0.1 VGG16 features: per layer, channel-normalized maps scaled by sqrt(lin weight),
  kept as float32 or float16 as the mode says (see ``functional.lpips_from_maps``). The maps are not stored:
  the scorer keeps the LPIPS values of the pairs (``pigeon_bench.metrics.pairs``), so a warm pass reads the
  values a cold one computed.
- ``fid-inception``: torch-fidelity's FeatureExtractorInceptionV3 layers, pool3 (2048-d), fed by the FID
  implementation's own preprocessing (``fid_input``): pytorch-fid's (the official evaluation's) or
  torch-fidelity's. The two networks are the same function of their input (the TF graph's patched blocks).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io as _io
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from pigeon_bench import weights as weight_table
from pigeon_bench.errors import UserError
from pigeon_bench.metrics.preprocess import PYTORCH_FID, TORCH_FIDELITY, FidInput, Preprocess
from pigeon_bench.profiles import Profile, get_profile
from pigeon_bench.registry import Registry

TINY_CLIP_NAME = "pigeon-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_VGG_CFG = [4, 4, "M", 8, 8, "M", 16, 16, 16, "M", 32, 32, 32, "M", 32, 32, 32, "M"]
# lpips.pretrained_networks.vgg16's slices, ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic torch RNG inside the block, without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def state_dict_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pixels(images: list[Image.Image]) -> torch.Tensor:
    """(n, 3, H, W) uint8 tensor of same-size RGB images, in contiguous (NCHW) memory: kernels round the
    same way on freshly made and on cached tensors."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class Backbone:
    """A lazily loaded model with a fingerprint; subclasses implement ``_encode``."""

    outputs: tuple[str, ...] = ()

    def __init__(self, backbone_id: str, fingerprint: str, preprocess_id: str, loader: Callable[[], Any],
                 device: str = "cpu"):
        self.id = backbone_id
        self.fingerprint = fingerprint
        self.preprocess_id = preprocess_id
        self._loader = loader
        self._loaded: Any = None
        self.device = torch.device(device)
        self.forwards = 0  # images sent through the model

    @property
    def namespace(self) -> str:
        return f"{self.id}/{self.fingerprint[:16]}-{_short(self.preprocess_id + self.variant)}"

    @property
    def variant(self) -> str:
        """What ``configure`` chose that changes the features ("" for none)."""
        return ""

    def configure(self, preprocess: Preprocess) -> None:
        """Take the preprocessing mode's settings for this backbone (most backbones have none)."""

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._loaded = self._loader()
        return self._loaded

    @torch.inference_mode()
    def encode(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Features of a batch of RGB images, as {output name: (n, ...) CPU tensor}."""
        out = self._encode(images)
        self.forwards += len(images)
        return {k: v.detach().cpu() for k, v in out.items()}

    def _encode(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ClipBackbone(Backbone):
    outputs = ("emb",)
    text_forwards = 0  # texts sent through the text tower

    def _encode(self, images):
        model, preprocess, _ = self.loaded
        x = torch.stack([preprocess(im) for im in images]).to(self.device)
        return {"emb": nn.functional.normalize(model.encode_image(x).float(), dim=-1)}

    @property
    def text_namespace(self) -> str:
        return f"{self.id}-text/{self.fingerprint[:16]}-{_short(self.preprocess_id + '|tokenizer')}"

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        model, _, tokenizer = self.loaded
        emb = model.encode_text(tokenizer(texts).to(self.device)).float()
        self.text_forwards += len(texts)
        return nn.functional.normalize(emb, dim=-1).cpu()


class DinoBackbone(Backbone):
    outputs = ("emb",)

    def _encode(self, images):
        model, processor = self.loaded
        x = processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return {"emb": nn.functional.normalize(model(pixel_values=x).pooler_output.float(), dim=-1)}


class LpipsVgg(nn.Module):
    """lpips v0.1 (VGG): ScalingLayer, the five VGG slices, and sqrt of the non-negative linear weights."""

    def __init__(self, features: nn.Sequential, lin_weights: list[torch.Tensor]):
        super().__init__()
        import lpips

        self.scaling_layer = lpips.ScalingLayer()
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in LPIPS_SLICES)
        if any((w < 0).any() for w in lin_weights):
            raise UserError("LPIPS linear weights must be non-negative (as lpips v0.1's are)")
        for i, w in enumerate(lin_weights):
            self.register_buffer(f"sqrt_w{i}", w.reshape(1, -1, 1, 1).float().sqrt())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x in [-1, 1] -> per-layer normalized, sqrt(w)-scaled maps."""
        import lpips

        h = self.scaling_layer(x)
        out = []
        for i, block in enumerate(self.slices):
            h = block(h)
            out.append(lpips.normalize_tensor(h) * getattr(self, f"sqrt_w{i}"))
        return out


class LpipsBackbone(Backbone):
    outputs = ("l0", "l1", "l2", "l3", "l4")
    maps_dtype = torch.float16

    @property
    def variant(self) -> str:
        return "" if self.maps_dtype == torch.float16 else f"|{self.maps_dtype}"

    def configure(self, preprocess: Preprocess) -> None:
        self.maps_dtype = getattr(torch, preprocess.mode.lpips_maps)

    def _encode(self, images):
        x = (pixels(images).float() / 127.5 - 1.0).to(self.device)  # lpips.im2tensor scaling
        return {f"l{i}": m.to(self.maps_dtype) for i, m in enumerate(self.loaded(x))}


# torch-fidelity's FeatureExtractorInceptionV3 modules from its input to pool3, in forward order
# (pytorch-fid's InceptionV3 blocks 0-3 hold the same modules with the same weights)
INCEPTION_TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1",
                   "Conv2d_4a_3x3", "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                   "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool")


def fid_network_input(x: torch.Tensor, fid_input: FidInput) -> torch.Tensor:
    """(n, 3, H, W) uint8 images as the FID implementation feeds them to Inception: (n, 3, s, s) in [-1, 1].

    pytorch-fid (the official evaluation: ``ToTensor`` then its InceptionV3 with ``resize_input`` and
    ``normalize_input``): x / 255, ``F.interpolate`` bilinear (align_corners=False) to s, 2x - 1.
    torch-fidelity: float uint8 values, its TF1-compatible bilinear resize to s, (x - 128) / 128.
    """
    if fid_input.implementation == PYTORCH_FID:
        x = nn.functional.interpolate(x.float() / 255, size=(fid_input.size,) * 2, mode="bilinear",
                                      align_corners=False)
        return 2 * x - 1
    if fid_input.implementation == TORCH_FIDELITY:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(fid_input.size,) * 2,
                                                      align_corners=False)
        return (x - 128) / 128
    raise ValueError(f"unknown FID implementation {fid_input.implementation!r}")


def inception_pool3(net: nn.Module, x: torch.Tensor, fid_input: FidInput) -> torch.Tensor:
    """(n, 2048) pool3 features of (n, 3, H, W) uint8 images through torch-fidelity's Inception ``net``."""
    h = fid_network_input(x, fid_input)
    for name in INCEPTION_TRUNK:
        h = getattr(net, name)(h)
    return torch.flatten(h, 1).float()


class InceptionBackbone(Backbone):
    outputs = ("pool3",)
    fid_input = FidInput()

    @property
    def variant(self) -> str:
        return f"|{self.fid_input.id}"

    def configure(self, preprocess: Preprocess) -> None:
        self.fid_input = preprocess.fid

    def _encode(self, images):
        return {"pool3": inception_pool3(self.loaded, pixels(images).to(self.device), self.fid_input)}


# ---------------------------------------------------------------- loading code (real on-disk formats)

def load_open_clip(model_name: str, weights_file: str | Path, pretrained_tag: str | None = None):
    """(model, preprocess, tokenizer) from an open_clip state-dict file, as open_clip loads it."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag) if pretrained_tag else {}
    model, _, preprocess = open_clip.create_model_and_transforms(  # the tag's preprocessing, file's weights
        model_name, pretrained=str(weights_file), image_mean=cfg.get("mean"), image_std=cfg.get("std"),
        image_interpolation=cfg.get("interpolation"), image_resize_mode=cfg.get("resize_mode"))
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def load_dinov2(folder: str | Path):
    """(model, processor) from an HF ``save_pretrained`` folder; the processor uses the PIL backend."""
    from transformers import AutoImageProcessor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(folder))
    processor = AutoImageProcessor.from_pretrained(str(folder), backend="pil")
    return model.eval(), processor


def vgg_features(cfg: list | None = None) -> nn.Sequential:
    """torchvision's VGG feature stack (cfg 'D' = VGG16 unless given)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfg or cfgs["D"])


def load_lpips_vgg(vgg_checkpoint: str | Path, lin_file: str | Path | None = None) -> LpipsVgg:
    """LPIPS-VGG from torchvision's VGG16 checkpoint (``features.*`` keys) and lpips' v0.1 linear weights."""
    sd = torch.load(str(vgg_checkpoint), map_location="cpu", weights_only=True)
    features = vgg_features()
    feat_sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    try:
        features.load_state_dict(feat_sd)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{vgg_checkpoint}: not a torchvision VGG16 checkpoint ({first})") from None
    lin_file = lin_file or weight_table.lpips_lin_files()[0]
    lins = torch.load(str(lin_file), map_location="cpu", weights_only=True)
    return LpipsVgg(features, [lins[f"lin{i}.model.1.weight"] for i in range(5)]).eval()


def load_fid_inception(weights_file: str | Path | _io.BytesIO):
    """torch-fidelity's FID InceptionV3 returning pool3 (2048-d) features."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                       feature_extractor_weights_path=weights_file)


# ---------------------------------------------------------------- tiny profile (seeded weights; the
# profile's CLIP, DINO and FID Inception are then trained on the demo world: metrics/tiny_training.py)

@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def register_tiny_clip_config() -> str:
    """Make open_clip know the tiny CLIP architecture; returns its model name."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{TINY_CLIP_NAME}.json"
            path.write_text(json.dumps(TINY_CLIP_CFG))
            open_clip.add_model_config(path)
    return TINY_CLIP_NAME


def tiny_clip(seed: int = 0):
    import open_clip

    name = register_tiny_clip_config()
    with seeded(seed), _quiet_root_logger():  # open_clip warns that no pretrained weights were loaded
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def tiny_dinov2(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit import BitImageProcessorPil

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=8, image_size=64)
    with seeded(seed):
        model = Dinov2Model(cfg)
    processor = BitImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                                     image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    return model.eval(), processor


def _kaiming_(module: nn.Module) -> None:
    """He init for convs and batch-norm as identity, so deep random nets keep O(1) activations."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.running_mean.zero_()
            m.running_var.fill_(1.0)


def tiny_lpips_vgg(seed: int = 0, cfg: list | None = None) -> LpipsVgg:
    with seeded(seed):
        features = vgg_features(cfg or TINY_VGG_CFG)
        _kaiming_(features)
        chns = [block[-2].out_channels for block in (features[a:b] for a, b in LPIPS_SLICES)]
        lins = [torch.rand(1, c, 1, 1) * 0.5 + 0.05 for c in chns]
    return LpipsVgg(features, lins).eval()


def tiny_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torch-fidelity-compatible InceptionV3 state dict with He-initialised convs.

    A plainly random Inception (PyTorch's default init) shrinks activations layer by layer to pool3 features
    near 1e-7 and FID ~ 0; He init with identity batch-norm keeps features O(1), so FID separates image sets.
    """
    from torchvision.models import inception_v3

    with seeded(seed):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        _kaiming_(net)
        sd = net.state_dict()
        sd["fc.weight"] = torch.randn(1008, 2048) * 0.01
        sd["fc.bias"] = torch.zeros(1008)
    return sd


def tiny_inception(seed: int = 0, weights_file: str | Path | None = None):
    """torch-fidelity's extractor class with tiny-profile weights (``weights_file``, else seeded He init). Its
    own ``forward`` reads 75 px, the fast mode's FID input; the scorer feeds its layers at the size the
    preprocessing mode says (``fid_input``)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class SmallInputInceptionV3(FeatureExtractorInceptionV3):
        INPUT_IMAGE_SIZE = 75

    if weights_file is None:
        weights_file = _io.BytesIO()
        torch.save(tiny_inception_state_dict(seed), weights_file)
        weights_file.seek(0)
    return SmallInputInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_file)


def trained_tiny(backbone_id: str) -> Callable[[int], Any]:
    """The tiny builder of a backbone trained on the demo world (``pigeon_bench.metrics.tiny_training``)."""
    def build(seed: int):
        from pigeon_bench.metrics import tiny_training

        return tiny_training.load(backbone_id, seed)

    return build


# ---------------------------------------------------------------- registry and profiles

@dataclass(frozen=True)
class BackboneDef:
    """How to build one backbone (a scoring entry of the weight table) with real weights and as a tiny
    seeded stand-in."""

    id: str
    cls: type[Backbone]
    preprocess: str
    paper: Callable[[list[Path]], Any]  # resolved paths -> loaded model tuple/module
    tiny: Callable[[int], Any]


def _load_clip(paths: list[Path]):
    extra = weight_table.CLIP.extra
    return load_open_clip(extra["architecture"], paths[0], extra["pretrained"])


backbones: Registry[BackboneDef] = Registry("backbone")
backbones.register("clip", BackboneDef(
    "clip", ClipBackbone,
    "open_clip transform (resize 224 shortest side, bicubic, centre crop, OpenAI mean/std)",
    _load_clip, trained_tiny("clip")))
backbones.register("dino", BackboneDef(
    "dino", DinoBackbone, "HF BitImageProcessor (PIL backend) from preprocessor_config.json",
    lambda p: load_dinov2(p[0].parent), trained_tiny("dino")))
backbones.register("lpips-vgg", BackboneDef(
    "lpips-vgg", LpipsBackbone, "[-1, 1] scaling, lpips ScalingLayer; float16 normalized maps",
    lambda p: load_lpips_vgg(p[0], p[1]), tiny_lpips_vgg))
backbones.register("fid-inception", BackboneDef(
    "fid-inception", InceptionBackbone,
    "the FID implementation's resize and scaling (fid_input), then torch-fidelity's InceptionV3 layers",
    lambda p: load_fid_inception(p[0]), trained_tiny("fid-inception")))
BACKBONE_IDS: tuple[str, ...] = tuple(backbones.names())


def build(profile: Profile | str, device: str = "cpu", weights: dict[str, str | Path] | None = None,
          ids: tuple[str, ...] | None = None, seed: int = 0) -> dict[str, Backbone]:
    """The backbones ``ids`` (default: all) of a profile. Real weights: resolved now (one MissingWeights
    names every one missing) and fingerprinted, loaded lazily; seeded stand-ins: built now (seconds,
    offline)."""
    profile = get_profile(profile)
    chosen = ids or BACKBONE_IDS
    defs = {bid: backbones.get(bid) for bid in chosen}
    out: dict[str, Backbone] = {}
    if profile.seeded_models:
        for bid, d in defs.items():
            loaded, fingerprint = _tiny(bid, seed, device)
            out[bid] = d.cls(bid, fingerprint, "tiny|" + d.preprocess, lambda loaded=loaded: loaded, device)
        return out
    resolved = weight_table.require(chosen, weights, profile.name)
    for bid, d in defs.items():
        paths = resolved[bid].paths
        out[bid] = d.cls(bid, weight_table.files_fingerprint(paths), d.preprocess,
                         _to_device(lambda d=d, paths=paths: d.paper(paths), device), device)
    return out


@functools.cache
def _tiny(backbone_id: str, seed: int, device: str) -> tuple[Any, str]:
    """A tiny model and its fingerprint, built once per process (inference never changes it)."""
    d = backbones.get(backbone_id)
    loaded = _to_device(lambda: d.tiny(seed), device)()
    module = loaded if isinstance(loaded, nn.Module) else loaded[0]
    return loaded, "tiny-" + state_dict_fingerprint(module)


def _to_device(load: Callable[[], Any], device: str) -> Callable[[], Any]:
    def wrapped():
        loaded = load()
        module = loaded if isinstance(loaded, nn.Module) else loaded[0]
        module.to(device).eval().requires_grad_(False)
        return loaded

    return wrapped
