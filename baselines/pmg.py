"""PMG (Shen et al., WWW 2024): personalized generation through an LLM's reading of captions.

The 5 history images and the reference are captioned (BLIP-2); an LLM (Llama-2-7B, as in PMG) reads the
history captions and writes preference keywords; Stable Diffusion draws "<reference caption>, <keywords>".
PMG uses its own Stable Diffusion 1.5 pipeline (the Pigeon paper: "We implement PMG following its default
model designs"), so this adapter loads ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (512 px, 50 steps,
guidance 7.5), not SDXL.

Soft preference embeddings (PMG's implicit preference): ``n_soft`` trainable soft tokens follow the preference
prompt into the frozen LLM; their last hidden states, through a linear map into the text encoder's space, are
appended to the prompt's embeddings (and zeros to the unconditional ones). They are trained, with LLM and SD
frozen, on SD's denoising loss for each training sample's target image (``pigeon-bench baselines
finetune-pmg``, or on the fly from option ``data_dir``; tiny profile: from the demo dataset). Not implemented:
PMG's P-Tuning V2 of the LLM's layers and its α-weighted accuracy/preference objective.

Training the adapter is the method's preparation step (``prepare``, cached by dataset, models and settings).
Options: see ``pigeon-bench methods pmg`` (``reference_text=semantics`` also replaces the history captions;
``soft=false``: keywords only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from baselines import base, loading
from pigeon_bench import artifacts, fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, Option, build_request, generators
from pigeon_bench.profiles import ByProfile

ADAPTER_WEIGHTS = "pmg_adapter.safetensors"
ADAPTER_META = "pmg_adapter.json"


def preference_prompt(history_captions: list[str]) -> str:
    """The LLM's task: preference keywords from the descriptions of the user's history images."""
    lines = "\n".join(f"{i}. {c}" for i, c in enumerate(history_captions, 1))
    return (
        f"A user liked images described as follows, oldest first.\n{lines}\n"
        "List a few keywords that describe this user's visual preferences (style, colours, subjects).\n"
        "Keywords:"
    )


class SoftPreference(torch.nn.Module):
    """PMG's implicit preference: soft tokens read by the frozen LLM after the preference prompt, their last
    hidden states mapped into the text encoder's space (``n_soft`` extra conditioning tokens)."""

    def __init__(self, n_soft: int, llm_hidden: int, text_dim: int):
        super().__init__()
        self.soft = torch.nn.Parameter(torch.randn(n_soft, llm_hidden) * 0.02)
        self.proj = torch.nn.Linear(llm_hidden, text_dim)

    def forward(self, llm, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = llm.get_input_embeddings()(input_ids)
        soft = self.soft.to(emb.dtype).expand(emb.shape[0], -1, -1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(soft.shape[:2])], dim=1)
        hidden = llm(
            inputs_embeds=torch.cat([emb, soft], dim=1), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-1]
        return self.proj(hidden[:, -soft.shape[1] :].float())

    def save(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
            str(folder / ADAPTER_WEIGHTS),
        )
        fileio.write_json(folder / ADAPTER_META, meta)

    @classmethod
    def load(cls, folder: str | Path) -> tuple[SoftPreference, dict[str, Any]]:
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise UserError(f"not a PMG adapter folder (no {ADAPTER_WEIGHTS}): {folder}")
        meta = fileio.read_json(folder / ADAPTER_META)
        module = cls(meta["n_soft"], meta["llm_hidden"], meta["text_dim"])
        module.load_state_dict(load_file(str(folder / ADAPTER_WEIGHTS)))
        return module.eval(), meta


@generators.register("pmg")
class PMG(base.BaselineGenerator):
    name = "pmg"
    group = "LLM-based"
    label = "PMG"
    options = (
        Option("sd", str, "Stable Diffusion 1.5: hub id or folder (default: the profile's)"),
        Option("llm", str, "the LLM (Llama-2-7B): hub id or folder (default: the profile's)"),
        *base.render_options(steps=ByProfile(paper=50, tiny=3), size=ByProfile(paper=512, tiny=64),
                             guidance=7.5),
        Option("max_new_tokens", int, "keyword tokens the LLM writes", ByProfile(paper=24, tiny=8)),
        Option("min_new_tokens", int, "at least this many keyword tokens", ByProfile(paper=1, tiny=3)),
        Option("adapter", "path", "a soft-preference adapter folder (from `pigeon-bench baselines "
               "finetune-pmg`); default: trained on the train split, cached"),
        Option("data_dir", "path", "the dataset whose train split trains the adapter (default: the run's, "
               "in profiles that train what is missing)"),
        Option("ft_steps", int, "adapter training steps (0: one pass over train)",
               ByProfile(paper=0, tiny=4)),
        Option("ft_lr", float, "adapter learning rate", ByProfile(paper=1e-5, tiny=1e-2)),
        Option("soft", bool, "use the soft preference tokens (false: keywords only)", True),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.llm = None
        self.adapter = None
        self.adapter_dir: str | None = None

    def load(self) -> None:
        if self.llm is not None:
            return
        shared = self.profile.seeded_models
        with self.profile.compute_threads(self.device):
            self.llm_ref = self.profile.resolve_model("llama", self.opt("llm"))
            self.llm, self.tokenizer = loading.load_causal_lm(
                self.llm_ref, self.device, self.dtype, shared=shared
            )
            self.sd_ref = self.profile.resolve_model("sd15", self.opt("sd"))
            self.pipe = loading.load_pipeline("sd", self.sd_ref, self.device, self.dtype, shared=shared)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"

    def prepare(self, samples: Sequence[Sample] = ()) -> None:
        """The soft-preference adapter: option ``adapter``, else trained (once, cached) on the train split."""
        if self.adapter is not None or not self.opt("soft"):
            return
        folder = self.opt("adapter")
        if not folder:
            data = self.require_training_data(
                "its soft-preference adapter", "-o adapter=DIR (from `pigeon-bench baselines finetune-pmg`), "
                "-o soft=false (keywords only)")
            folder = cached_finetune(self, data)
        self.adapter, _ = SoftPreference.load(folder)
        self.adapter.to(self.device)
        self.adapter_dir = str(folder)

    def keywords(self, history_captions: list[list[str]]) -> list[str]:
        """The LLM's preference keywords per request (greedy, batched, left-padded)."""
        out = []
        size = self.opt("batch_size")
        for start in range(0, len(history_captions), size):
            texts = [preference_prompt(c) for c in history_captions[start : start + size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True)
            out += loading.generate_text(
                self.llm,
                self.tokenizer,
                loading.to_model_inputs(batch, self.device, self.dtype),
                self.opt("max_new_tokens"),
                self.opt("min_new_tokens"),
            )
        return out

    def texts(self, requests: list[GenerationRequest]) -> tuple[list[str], list[list[str]]]:
        """Reference descriptions and history descriptions (captions, or the dataset's semantics)."""
        references = self.reference_texts(requests)
        if self.opt("reference_text") == "semantics":
            return references, [list(r.history_texts) for r in requests]
        flat = iter(self.captioner().caption([im for r in requests for im in r.history_images]))
        return references, [[next(flat) for _ in r.history_images] for r in requests]

    def soft_embeddings(self, adapter: SoftPreference, history: list[str]) -> torch.Tensor:
        """An adapter's (1, n_soft, text_dim) conditioning tokens for one history's descriptions."""
        batch = self.tokenizer([preference_prompt(history)], return_tensors="pt")
        return adapter(self.llm, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))

    def conditioning(self, prompts: list[str], histories: list[list[str]]) -> dict[str, Any]:
        """Pipeline inputs: the prompts, or with the adapter their embeddings plus the soft tokens."""
        if self.adapter is None:
            return {"prompt": prompts}
        cond, uncond = [], []
        with torch.inference_mode():
            for prompt, history in zip(prompts, histories, strict=True):
                pos, neg = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt="")
                soft = self.soft_embeddings(self.adapter, history).to(pos.dtype)
                cond.append(torch.cat([pos, soft], dim=1))
                uncond.append(torch.cat([neg, torch.zeros_like(soft)], dim=1))
        return {"prompt_embeds": torch.cat(cond), "negative_prompt_embeds": torch.cat(uncond)}

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        self.prepare()
        with self.profile.compute_threads(self.device):
            references, histories = self.texts(requests)
            keywords = self.keywords(histories)
            prompts = [f"{ref}, {kw}" for ref, kw in zip(references, keywords, strict=True)]
            images = self.render(
                requests,
                **self.conditioning(prompts, histories),
            )
        return [
            GenerationResult(
                im,
                {
                    "prompt": p,
                    "keywords": kw,
                    "reference_caption": ref,
                    "history_captions": h,
                    "soft_embeddings": self.adapter is not None,
                },
            )
            for im, p, kw, ref, h in zip(images, prompts, keywords, references, histories, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        self.load()
        return {
            **super().describe(),
            "llm": self.llm_ref,
            "llm_fingerprint": loading.fingerprint(self.llm_ref),
            "sd": self.sd_ref,
            "soft_embeddings": self.adapter is not None,
            "adapter": self.adapter_dir,
        }


# ---------------------------------------------------------------- training the soft preference adapter


def cached_finetune(gen: PMG, ds: Dataset) -> Path:
    """Train the adapter once per (dataset, models, settings) into the cache; return its folder."""
    gen.load()
    key = artifacts.digest(ds.digest, loading.fingerprint(gen.llm_ref), loading.fingerprint(gen.sd_ref),
                           gen.captioner().fingerprint, gen.opt("ft_steps"), gen.opt("ft_lr"), str(gen.dtype),
                           length=16)

    def build(folder: Path) -> None:
        finetune_pmg(gen, ds.root, folder, steps=gen.opt("ft_steps"), lr=gen.opt("ft_lr"))

    return artifacts.ensure("pmg-adapter", key, build,
                            what=f"pmg: training its soft-preference adapter on {ds.root} (train split)")


@loading.trains
def finetune_pmg(
    gen: PMG,
    data: str | Path,
    out: str | Path,
    steps: int = 0,
    lr: float = 1e-5,
    n_soft: int = 4,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train the soft tokens and their map (LLM and SD frozen) on SD's denoising loss for each training
    sample's target image, conditioned on "<reference caption>, <keywords>" plus its history's soft tokens.

    ``steps`` 0 means one pass over the shuffled train split, batch 1. Writes ``out`` atomically
    (pmg_adapter.safetensors + pmg_adapter.json with the settings and the loss per step).
    """
    from diffusers import DDPMScheduler

    from pigeon_bench.progress import progress as progress_bar

    out = Path(out)
    base.check_output_folder(out, ADAPTER_WEIGHTS)
    ds = Dataset(data)
    samples = ds.samples("train", limit)
    if not samples:
        raise UserError(f"{ds.root}: no samples in split 'train' to train on")
    gen.load()
    schedule = base.step_schedule(len(samples), steps, seed)
    used = sorted(set(schedule))
    with gen.profile.compute_threads(gen.device):
        examples = dict(zip(used, _examples(gen, ds, [samples[i] for i in used]), strict=True))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapter = SoftPreference(
                n_soft, gen.llm.config.hidden_size, gen.pipe.text_encoder.config.hidden_size
            )
        adapter.to(gen.device)
        optim = torch.optim.AdamW(adapter.parameters(), lr=lr, weight_decay=0.0)
        noise_sched = DDPMScheduler.from_config(gen.pipe.scheduler.config)
        rng = torch.Generator("cpu").manual_seed(seed)
        losses: list[float] = []
        with progress_bar() as progress:
            task = progress.add_task("training PMG's soft preference tokens", total=len(schedule))
            for i in schedule:
                latents, prompt_embeds, history = examples[i]
                noise = torch.randn(latents.shape, generator=rng).to(gen.device, gen.dtype)
                t = torch.randint(0, noise_sched.config.num_train_timesteps, (1,), generator=rng).to(
                    gen.device
                )
                soft = gen.soft_embeddings(adapter, history).to(gen.dtype)
                cond = torch.cat([prompt_embeds, soft], dim=1)
                pred = gen.pipe.unet(
                    noise_sched.add_noise(latents, noise, t), t, encoder_hidden_states=cond
                ).sample
                losses.append(round(base.denoising_step(optim, pred, latents, noise, t, noise_sched), 6))
                progress.advance(task)
    meta = {
        "n_soft": n_soft,
        "llm_hidden": gen.llm.config.hidden_size,
        "text_dim": gen.pipe.text_encoder.config.hidden_size,
        "llm": gen.llm_ref,
        "sd": gen.sd_ref,
        "captioner": gen.captioner().ref,
        "data": str(ds.root.resolve()),
        "profile": gen.profile.name,
        "steps": len(schedule),
        "lr": lr,
        "seed": seed,
        "n_train": len(used),
        "losses": losses,
    }
    with fileio.atomic_dir(out) as folder:
        adapter.save(folder, meta)
    return meta


def _examples(
    gen: PMG, ds: Dataset, samples: list[Sample]
) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(target latents, prompt embeddings, history captions) per training sample, computed without grad."""
    requests = [build_request(ds, s) for s in samples]
    references, histories = gen.texts(requests)
    keywords = gen.keywords(histories)
    out = []
    with torch.no_grad():  # plain tensors: training reads them outside inference mode
        for s, ref, kw, hist in zip(samples, references, keywords, histories, strict=True):
            pixels = loading.image_tensor([fileio.load_rgb(ds.image_path(s.target_id))], gen.opt("size"))
            dist = gen.pipe.vae.encode(pixels.to(gen.device, gen.dtype)).latent_dist
            latents = dist.mean * gen.pipe.vae.config.scaling_factor
            embeds, _ = gen.pipe.encode_prompt(f"{ref}, {kw}", gen.device, 1, False)
            out.append((latents, embeds, hist))
    return out
