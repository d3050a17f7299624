"""Generators over the backbone interface: pigeon, lavit* (pretrained), lavit (fine-tuned, no Pigeon modules)
and recon (reference tokenized and decoded). They use the tiny backbone in the tiny profile and LaVIT in the
paper profile (option ``backbone`` overrides, ``backbone_path`` points at its weights).

In the tiny profile without a ``checkpoint``, pigeon and lavit train a short stage-1 checkpoint on the
dataset's train split once and cache it under the pigeon-bench cache (keyed by dataset and options). The
dataset is ``data_dir``, else the demo dataset that holds the requested samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, Generator, generators

log = logging.getLogger(__name__)

DEFAULT_ALPHA_R = 0.5  # used when a request carries no α_r (Fig. 4(b) fixes it at 0.5)
AUTO_SFT = {"steps": 60, "batch_size": 4, "lr": 2e-3}  # the tiny-profile auto checkpoint (see README)
LAVIT_BASELINE = {"history_mask": False, "encoding": False, "reference_mask": "random"}


class _BackboneGenerator(Generator):
    """Shared plumbing: backbone choice, dataset discovery, request tokenization."""

    group = "LMM-based"
    accepted_options: ClassVar[tuple[str, ...]] = ("backbone", "backbone_path", "data_dir")

    def __init__(self, profile: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 backbone: str | None = None, backbone_path: str | None = None, data_dir: str | None = None,
                 **options: Any):
        super().__init__(profile, device, dtype, **options)
        self.backbone_name = backbone or ("tiny" if profile == "tiny" else "lavit")
        self.backbone_path = backbone_path
        self.data_dir = Path(data_dir) if data_dir else None
        self.bb = None
        self.info: dict[str, Any] = {}

    def _backbone(self, requests: list[GenerationRequest]):
        if self.bb is None:
            from pigeon.backbone import build_backbone

            opts: dict[str, Any] = {}
            if self.backbone_path:
                opts["path"] = self.backbone_path
            elif self.backbone_name == "tiny":
                opts["data_dir"] = str(self._dataset(requests))
            self.bb = build_backbone(self.backbone_name, device=self.device, dtype=self.dtype, **opts)
        return self.bb

    def _dataset(self, requests: list[GenerationRequest]) -> Path:
        """``data_dir``, else (tiny profile) the demo dataset that contains the requested samples."""
        if self.data_dir is None and self.profile == "tiny":
            from baselines.models import demo_dataset_of

            self.data_dir = demo_dataset_of(requests)
        if self.data_dir is None:
            raise UserError(f"method {self.name!r} needs --option checkpoint=CKPT or --option "
                            "data_dir=DATASET (the dataset whose train split trains it)")
        return self.data_dir

    def threads(self):
        """Single-threaded compute for tiny models on CPU (see baselines.models.compute_threads)."""
        from baselines.models import compute_threads

        return compute_threads(self.profile, self.device)

    def _examples(self, requests: list[GenerationRequest]):
        """One tokenized Example per request; requests sharing their image objects (a sample's α_r
        candidates in a sweep) share one Example, so each image is tokenized once."""
        from pigeon.model import Example

        own = [im for r in requests for im in (*r.history_images, r.reference_image)]
        images = list({id(im): im for im in own}.values())
        codes = dict(zip(map(id, images), self.bb.tokenize_images(images), strict=True))
        examples: dict[tuple[int, ...], Example] = {}
        out = []
        for r in requests:
            key = tuple(map(id, (*r.history_images, r.reference_image)))
            if key not in examples:
                examples[key] = Example(history=[codes[id(im)] for im in r.history_images],
                                        reference=codes[id(r.reference_image)], caption=r.reference_text,
                                        meta={"sample_id": r.sample.sample_id})
            out.append(examples[key])
        return out

    def describe(self) -> dict[str, Any]:
        out = {"method": self.name, "profile": self.profile}
        if self.bb is not None:
            out["backbone"] = self.bb.describe()
        return out | self.info


class _TunedGenerator(_BackboneGenerator):
    """A PigeonModel from a checkpoint (or an auto-trained one) that answers requests at an α_r."""

    base_config: ClassVar[dict[str, Any]] = {}
    trainable: ClassVar[str] = "sft"
    accepted_options = (*_BackboneGenerator.accepted_options, "checkpoint", "temperature", "top_k",
                        "sft_steps")

    def __init__(self, profile: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 checkpoint: str | None = None, temperature: float = 1.0, top_k: int = 50,
                 sft_steps: int | None = None, **options: Any):
        super().__init__(profile, device, dtype, **options)
        self.checkpoint = checkpoint
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.sft_steps = sft_steps
        self.model = None

    def config_overrides(self) -> dict[str, Any]:
        return dict(self.base_config)

    def _model(self, requests: list[GenerationRequest]):
        if self.model is None:
            from pigeon.model import load_checkpoint

            bb = self._backbone(requests)
            ckpt = self.checkpoint or self._auto_checkpoint(requests)
            self.model = load_checkpoint(ckpt, bb, **self.config_overrides()).merge_lora()
            self.info |= {"checkpoint": str(ckpt), "pigeon_config": asdict(self.model.config)}
        return self.model

    def _auto_checkpoint(self, requests: list[GenerationRequest]) -> Path:
        if self.profile != "tiny":
            raise UserError(f"method {self.name!r} in the {self.profile} profile needs --option "
                            "checkpoint=CKPT (train one with `pigeon-bench train sft`)")
        data = self._dataset(requests)
        auto = dict(AUTO_SFT) | ({"steps": int(self.sft_steps)} if self.sft_steps else {})
        path = auto_checkpoint(data, self.backbone_name, self.backbone_path, self.config_overrides(),
                               self.trainable, **auto)
        self.info |= {"auto_trained": {"data": str(data), "split": "train", **auto,
                                       "trainable": self.trainable}}
        return path

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        with self.threads():
            return self._generate(requests)

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        model = self._model(requests)
        examples = self._examples(requests)
        alphas = [self.alpha_for(r) for r in requests]
        seeds = [r.seed for r in requests]
        codes = model.generate(examples, alphas, seeds, alpha_h=self.alpha_h(), temperature=self.temperature,
                               top_k=self.top_k)
        images = model.backbone.render(codes, seeds)
        return [GenerationResult(im, {"alpha_r": a, "n_tokens": int(c.numel())})
                for im, a, c in zip(images, alphas, codes, strict=True)]

    def alpha_for(self, request: GenerationRequest) -> float:
        return 0.0

    def alpha_h(self) -> float | None:
        return None


@generators.register("pigeon")
class PigeonGenerator(_TunedGenerator):
    """Pigeon (§2.2). Ablation options (Table 3, Fig. 4): history_mask, visual_feature, textual_tokens,
    encoding (booleans), reference_mask (dual|low|high|none), alpha_h (history mask ratio at inference)."""

    name = "pigeon"
    label = "Pigeon"
    supports_alpha_r = True

    def __init__(self, profile: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 alpha_h: float | None = None, history_mask: bool | None = None,
                 visual_feature: bool | None = None, textual_tokens: bool | None = None,
                 encoding: bool | None = None, reference_mask: str | None = None, **options: Any):
        super().__init__(profile, device, dtype, **options)
        self.ablation = {k: v for k, v in {"history_mask": history_mask, "visual_feature": visual_feature,
                                           "textual_tokens": textual_tokens, "encoding": encoding,
                                           "reference_mask": reference_mask}.items() if v is not None}
        self._alpha_h = None if alpha_h is None else float(alpha_h)

    def config_overrides(self) -> dict[str, Any]:
        return dict(self.ablation)

    def alpha_for(self, request: GenerationRequest) -> float:
        return DEFAULT_ALPHA_R if request.alpha_r is None else float(request.alpha_r)

    def alpha_h(self) -> float | None:
        return self._alpha_h


@generators.register("lavit")
class LaVITTuned(_TunedGenerator):
    """LaVIT fine-tuned on the task (LoRA only, random reference masking) without Pigeon's modules."""

    name = "lavit"
    label = "LaVIT"
    base_config = LAVIT_BASELINE
    trainable = "lora"


@generators.register("lavit*")
class LaVITPretrained(_BackboneGenerator):
    """Pretrained LaVIT prompted with the history and reference tokens (no training, no masks)."""

    name = "lavit*"
    label = "LaVIT*"

    def __init__(self, profile: str = "tiny", device: str = "cpu", dtype: torch.dtype = torch.float32,
                 temperature: float = 1.0, top_k: int = 50, **options: Any):
        super().__init__(profile, device, dtype, **options)
        self.temperature, self.top_k = float(temperature), int(top_k)
        self.model = None

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        with self.threads():
            return self._generate(requests)

    def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        from pigeon.model import PigeonConfig, PigeonModel

        if self.model is None:
            model = PigeonModel(self._backbone(requests), PigeonConfig(**LAVIT_BASELINE))
            self.model = model.eval().merge_lora()
        seeds = [r.seed for r in requests]
        codes = self.model.generate(self._examples(requests), [0.0] * len(requests), seeds,
                                    temperature=self.temperature, top_k=self.top_k)
        return [GenerationResult(im) for im in self.model.backbone.render(codes, seeds)]


@generators.register("recon")
class Reconstruction(_BackboneGenerator):
    """The reference through the visual tokenizer and back (tokenizer decoder + pixel decoder)."""

    name = "recon"
    label = "Recon"
    group = "Reference"  # Table 1 lists Recon under Reference, beside Grd

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        with self.threads():
            bb = self._backbone(requests)
            with torch.inference_mode():
                codes = bb.tokenize_images([r.reference_image for r in requests])
                images = bb.render(codes, [r.seed for r in requests])
        return [GenerationResult(im) for im in images]


def auto_checkpoint(data: Path, backbone: str, backbone_path: str | None, overrides: dict[str, Any],
                    trainable: str, steps: int = 200, batch_size: int = 4, lr: float = 2e-3,
                    seed: int = 0) -> Path:
    """A stage-1 checkpoint trained once on ``data``'s train split and cached (file-locked, resumable)."""
    from filelock import FileLock

    from pigeon.model import PigeonConfig
    from pigeon.tiny import dataset_key
    from pigeon.train import TrainSpec, train_sft
    from pigeon_bench.paths import cache_dir

    config = PigeonConfig.from_dict(overrides)
    ident = json.dumps({"data": dataset_key(data), "backbone": backbone, "backbone_path": backbone_path,
                        "config": asdict(config), "trainable": trainable, "steps": steps,
                        "batch_size": batch_size, "lr": lr, "seed": seed}, sort_keys=True)
    out = cache_dir() / "pigeon" / "checkpoints" / hashlib.sha256(ident.encode()).hexdigest()[:16]
    done = out / "done.json"
    if done.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not done.is_file():
            log.warning("no checkpoint given: training a %d-step stage-1 checkpoint on %s (train split)"
                        " -> %s", steps, data, out)
            options = {"path": backbone_path} if backbone_path else {}
            spec = TrainSpec(data=data, out=out, backbone=backbone, backbone_options=options, steps=steps,
                             batch_size=batch_size, lr=lr, seed=seed, config=config, trainable=trainable,
                             save_every=max(1, steps // 4))
            meta = train_sft(spec)
            from pigeon_bench import fileio

            fileio.write_json(done, {"ident": json.loads(ident), "seconds": meta["seconds"],
                                 "loss_first": meta["log"][0]["loss"], "loss_last": meta["log"][-1]["loss"]})
    return out
