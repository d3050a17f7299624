"""Generators over the backbone interface: pigeon, lavit* (pretrained), lavit (fine-tuned, no Pigeon modules)
and recon (reference tokenized and decoded). Their backbone is the profile's (LaVIT; the tiny backbone in the
tiny profile); option ``backbone`` overrides it and ``backbone_path`` points at its weights.

Preparation (``prepare``) builds what is missing, once, into the artifact cache: the tiny backbone is
pretrained on the training dataset's train split, and in profiles that train what is missing, pigeon and
lavit without a ``checkpoint`` train a short stage-1 checkpoint there (keyed by dataset and options). The
training dataset is option ``data_dir``, else the run's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch

from pigeon.backbone import LAVIT
from pigeon.inference import PAPER as PAPER_SETTINGS
from pigeon.inference import TINY as TINY_SETTINGS
from pigeon.inference import InferenceSettings, resolve
from pigeon.tiny import TinyBackbone
from pigeon_bench import artifacts
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, Generator, Option, generators
from pigeon_bench.profiles import ByProfile

DEFAULT_ALPHA_R = 0.5  # used when a request carries no α_r (Fig. 4(b) fixes it at 0.5)
AUTO_SFT = {"steps": 60, "batch_size": 4, "lr": 2e-3}  # the auto-trained stage-1 checkpoint (see README)
LAVIT_BASELINE = {"history_mask": False, "encoding": False, "reference_mask": "random"}

_SETTINGS_HELP = {
    "do_sample": "sample the visual tokens (false: greedy, or plain beam search)",
    "temperature": "sampling temperature of the visual tokens",
    "top_k": "top-k of the visual-token sampling",
    "top_p": "nucleus (top-p) of the visual-token sampling",
    "num_beams": "beams of the visual-token search (with do_sample: beam sampling)",
    "min_new_tokens": "visual tokens before the end of the image may be generated",
    "max_new_tokens": "most visual tokens per image (also capped by the backbone)",
    "length_penalty": "finished beams rank by score / length ** length_penalty",
    "llm_8bit": "the LLM in 8-bit (bitsandbytes on a GPU; otherwise noted and run in the model dtype)",
    "guidance_scale": "guidance scale of the diffusion pixel decoder (LaVIT)",
    "num_inference_steps": "denoising steps of the diffusion pixel decoder (LaVIT)",
    "ratio": "output aspect ratio of the pixel decoder (LaVIT renders 1:1 only)",
}
# The official inference script's settings (pigeon.inference): the paper profile's defaults.
SAMPLING = tuple(
    Option(name, type(getattr(PAPER_SETTINGS, name)), text,
           ByProfile(paper=getattr(PAPER_SETTINGS, name), tiny=getattr(TINY_SETTINGS, name)))
    for name, text in _SETTINGS_HELP.items())


class _BackboneGenerator(Generator):
    """Shared plumbing: the backbone, request tokenization."""

    group = "LMM-based"
    default_dtype = ByProfile(paper=torch.bfloat16, tiny=torch.float32)  # the official script: LaVIT in bf16
    options = (
        Option("backbone", str, "the LMM backbone (lavit, or the tiny backbone)",
               ByProfile(paper=LAVIT, tiny=TinyBackbone.name)),
        Option("backbone_path", "path", "backbone weights: a LaVIT folder or hub id, or a saved tiny "
               "backbone"),
        Option("data_dir", "path", "the dataset whose train split trains what is missing (default: the "
               "run's)"),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.bb = None
        self.info: dict[str, Any] = {}
        self._texts: dict[str, dict[str, str]] | None = None

    def training_data(self) -> Dataset | None:
        """Option ``data_dir``, else the run's dataset (a tiny backbone pretrains there in any profile)."""
        return Dataset(self.opt("data_dir")) if self.opt("data_dir") else self.ctx.dataset

    def prepare(self, samples: Sequence[Sample] = ()) -> None:
        self.backbone()

    def backbone(self):
        """The backbone, built on first use (the tiny one pretrained on the training data, cached)."""
        if self.bb is None:
            from pigeon.backbone import build_backbone

            opts: dict[str, Any] = {"data": self.training_data()}
            if self.opt("backbone_path"):
                opts["path"] = self.opt("backbone_path")
            if not self.profile.seeded_models:  # the tiny models have no diffusion decoder or 8-bit LLM
                opts |= self.inference_settings().backbone_options(self.opt("backbone"))
            with self.threads():
                self.bb = build_backbone(self.opt("backbone"), device=self.device, dtype=self.dtype, **opts)
        return self.bb

    def threads(self):
        return self.profile.compute_threads(self.device)

    def inference_settings(self) -> InferenceSettings:
        """The official inference settings with this method's options, as this machine can run them (what
        it cannot, e.g. an 8-bit LLM without a GPU, is noted in the manifest)."""
        base = PAPER_SETTINGS if not self.profile.seeded_models else TINY_SETTINGS
        given = {o.name: self.opt(o.name) for o in self.options if o.name in _SETTINGS_HELP}
        settings, notes = resolve(InferenceSettings.from_dict(given, base), self.device)
        if notes:
            self.info["notes"] = notes
        return settings

    def scenario(self) -> dict[str, Any]:
        """The prompt template of the run's scenario (the official prompts differ per scenario)."""
        from pigeon.prompt import TEMPLATES

        name = self.ctx.dataset.scenario if self.ctx.dataset is not None else None
        return {"scenario": name} if name in TEMPLATES else {}

    def template_fields(self, request: GenerationRequest) -> dict[str, Any]:
        """The official prompt's per-sample texts (the reference's emotion or title, the history titles)."""
        if self.ctx.dataset is None:
            return {}
        from pigeon.train import item_texts, template_fields

        if self._texts is None:
            self._texts = item_texts(self.ctx.dataset)
        return template_fields(self._texts, request.sample.history, request.sample.reference_id)

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
                                        meta={"sample_id": r.sample.sample_id}, **self.template_fields(r))
            out.append(examples[key])
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.bb is not None:
            out["backbone"] = self.bb.describe()
        return out | self.info


class _TunedGenerator(_BackboneGenerator):
    """A PigeonModel from a checkpoint (or an auto-trained one) that answers requests at an α_r."""

    base_config: ClassVar[dict[str, Any]] = {}
    trainable = "sft"
    options = (
        *_BackboneGenerator.options,
        Option("checkpoint", "path", "a Pigeon checkpoint folder (default: in profiles that train what is "
               "missing, a short stage-1 checkpoint trained on the train split, cached)"),
        *SAMPLING,
        Option("sft_steps", int, "steps of the auto-trained stage-1 checkpoint", AUTO_SFT["steps"]),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = None
        self.checkpoint: Path | None = None

    @classmethod
    def implied_profile(cls, options: dict[str, Any]) -> str | None:
        """A checkpoint records its backbone: the tiny backbone implies the tiny profile, LaVIT the paper."""
        if not options.get("checkpoint") or options.get("backbone"):
            return None
        from pigeon.checkpoint import checkpoint_info

        return checkpoint_info(options["checkpoint"])["profile_hint"]

    def config_overrides(self) -> dict[str, Any]:
        return dict(self.base_config) | self.scenario()

    def prepare(self, samples: Sequence[Sample] = ()) -> None:
        """The backbone, then the checkpoint: option ``checkpoint``, else one trained once on train."""
        super().prepare(samples)
        if self.checkpoint is not None:
            return
        if self.opt("checkpoint"):
            self.checkpoint = Path(self.opt("checkpoint"))
            return
        data = self.training_data() if self.profile.trains_missing else None
        if data is None:
            raise UserError(f"method {self.name!r} in the {self.profile.name} profile needs -o "
                            "checkpoint=CKPT (train one with `pigeon-bench train sft`)")
        auto = AUTO_SFT | {"steps": self.opt("sft_steps")}
        self.checkpoint = auto_checkpoint(data, self.opt("backbone"), self.opt("backbone_path"),
                                          self.config_overrides(), self.trainable, **auto)
        self.info |= {"auto_trained": {"data": str(data.root), "split": "train", **auto,
                                       "trainable": self.trainable}}

    def load(self) -> None:
        if self.model is None:
            from pigeon.model import load_checkpoint

            self.prepare()
            self.model = load_checkpoint(self.checkpoint, self.bb, **self.config_overrides()).merge_lora()
            self.info |= {"checkpoint": str(self.checkpoint), "pigeon_config": asdict(self.model.config)}

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        with self.threads():
            examples = self._examples(requests)
            alphas = [self.alpha_for(r) for r in requests]
            seeds = [r.seed for r in requests]
            codes = self.model.generate(examples, alphas, seeds, alpha_h=self.alpha_h(),
                                        settings=self.inference_settings())
            images = self.model.backbone.render(codes, seeds)
        return [GenerationResult(im, {"alpha_r": a, "n_tokens": int(c.numel())})
                for im, a, c in zip(images, alphas, codes, strict=True)]

    def alpha_for(self, request: GenerationRequest) -> float:
        return 0.0

    def alpha_h(self) -> float | None:
        return None


ABLATIONS = ("history_mask", "visual_feature", "textual_tokens", "encoding", "reference_mask")


@generators.register("pigeon")
class PigeonGenerator(_TunedGenerator):
    """Pigeon (§2.2). Ablation options (Table 3, Fig. 4): history_mask, visual_feature, textual_tokens,
    encoding (booleans), reference_mask (dual|low|high|none), alpha_h (history mask ratio at inference)."""

    name = "pigeon"
    label = "Pigeon"
    supports_alpha_r = True
    options = (
        *_TunedGenerator.options,
        Option("alpha_h", float, "history mask ratio α_h at inference (default: the checkpoint's)"),
        Option("history_mask", bool, "ablation: the history mask (Fig. 4(a))"),
        Option("visual_feature", bool, "ablation: the visual feature r_v (Table 3)"),
        Option("textual_tokens", bool, "ablation: the textual tokens r_t (Table 3)"),
        Option("encoding", bool, "ablation: the instruction encoding (Table 3)"),
        Option("reference_mask", str, "the reference mask scheme (Fig. 4(c), (d))",
               choices=("dual", "low", "high", "none", "random")),
    )

    def config_overrides(self) -> dict[str, Any]:
        return {k: self.opt(k) for k in ABLATIONS if self.opt(k) is not None} | self.scenario()

    def alpha_for(self, request: GenerationRequest) -> float:
        return DEFAULT_ALPHA_R if request.alpha_r is None else float(request.alpha_r)

    def alpha_h(self) -> float | None:
        return self.opt("alpha_h")


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
    options = (*_BackboneGenerator.options, *SAMPLING)

    def __init__(self, ctx):
        super().__init__(ctx)
        self.model = None

    def load(self) -> None:
        if self.model is None:
            from pigeon.model import PigeonConfig, PigeonModel

            config = PigeonConfig(**LAVIT_BASELINE, **self.scenario())
            self.model = PigeonModel(self.backbone(), config).eval().merge_lora()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        with self.threads():
            seeds = [r.seed for r in requests]
            codes = self.model.generate(self._examples(requests), [0.0] * len(requests), seeds,
                                        settings=self.inference_settings())
            return [GenerationResult(im) for im in self.model.backbone.render(codes, seeds)]


@generators.register("recon")
class Reconstruction(_BackboneGenerator):
    """The reference through the visual tokenizer and back (tokenizer decoder + pixel decoder)."""

    name = "recon"
    label = "Recon"
    group = "Reference"  # Table 1 lists Recon under Reference, beside Grd

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        bb = self.backbone()
        with self.threads(), torch.inference_mode():
            codes = bb.tokenize_images([r.reference_image for r in requests])
            images = bb.render(codes, [r.seed for r in requests])
        return [GenerationResult(im) for im in images]


def auto_checkpoint(data: Dataset, backbone: str, backbone_path: str | None, overrides: dict[str, Any],
                    trainable: str, steps: int = 200, batch_size: int = 4, lr: float = 2e-3,
                    seed: int = 0) -> Path:
    """A stage-1 checkpoint trained once on ``data``'s train split into the artifact cache (resumable)."""
    from pigeon.model import PigeonConfig
    from pigeon.train import TrainSpec, train_sft

    config = PigeonConfig.from_dict(overrides)
    ident = {"data": data.digest[:16], "backbone": backbone, "backbone_path": backbone_path,
             "config": asdict(config), "trainable": trainable, "steps": steps, "batch_size": batch_size,
             "lr": lr, "seed": seed}

    def build(out: Path) -> None:
        options = {"path": backbone_path} if backbone_path else {}
        train_sft(TrainSpec(data=data.root, out=out, backbone=backbone, backbone_options=options, steps=steps,
                            batch_size=batch_size, lr=lr, seed=seed, config=config, trainable=trainable,
                            save_every=max(1, steps // 4)))

    return artifacts.ensure("pigeon/checkpoints", artifacts.digest(ident, length=16), build, resumable=True,
                            what=f"no checkpoint given: training a {steps}-step stage-1 checkpoint on "
                                 f"{data.root} (train split)")
