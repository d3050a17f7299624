"""TI: Textual Inversion (Gal et al., 2023) as a personalization baseline on Stable Diffusion XL.

For each distinct history (the user's 5 images) a new token ``<pigeon-user>`` gets one learned vector per
SDXL text encoder, fitted with SDXL's own denoising loss on the history images (prompts "a picture in the
style of <pigeon-user>", ...); UNet, VAE and text encoders stay frozen. The image is then text-to-image from
"<reference caption>, in the style of <pigeon-user>".

The inversions are the method's preparation step (``prepare``): one per distinct history of the samples to
generate, cached on disk by history and settings, so a resumed run does not repeat them. Options: see
``pigeon-bench methods ti``. Defaults: paper profile 1024 px, 50 denoising steps, 500 inversion steps at lr
5e-3 (TI's own learning rate: the paper's 1e-5 for tuned baselines would leave the token where it started);
tiny profile 64 px, 3 steps, 2 inversion steps.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image

from baselines import base, loading
from pigeon_bench import artifacts, fileio
from pigeon_bench.data.model import Sample
from pigeon_bench.generation import GenerationRequest, GenerationResult, Option, generators
from pigeon_bench.profiles import ByProfile
from pigeon_bench.progress import progress as progress_bar

PLACEHOLDER = "<pigeon-user>"
TEMPLATES = (
    "a picture in the style of {}",
    "an image that {} likes",
    "a picture in {} style",
    "artwork in the style of {}",
    "a favourite image of {}",
)


def prompt_for(caption: str) -> str:
    """The generation prompt: the reference caption plus the learned user token."""
    return f"{caption}, in the style of {PLACEHOLDER}"


@generators.register("ti")
class TextualInversion(base.BaselineGenerator):
    name = "ti"
    group = "DM-based"
    label = "TI"
    options = (
        Option("sdxl", str, "SDXL: hub id or folder (default: the profile's)"),
        *base.render_options(steps=ByProfile(paper=50, tiny=3), size=ByProfile(paper=1024, tiny=64),
                             guidance=5.0),
        Option("ti_steps", int, "inversion steps per history", ByProfile(paper=500, tiny=2)),
        Option("ti_lr", float, "inversion learning rate", ByProfile(paper=5e-3, tiny=5e-2)),
        Option("ti_init", str, "the word whose embedding starts the user token", "style"),
        Option("ti_seed", int, "inversion seed", 0),
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.vectors: dict[tuple[str, ...], list[torch.Tensor]] = {}  # history -> one vector per encoder

    def load(self) -> None:
        if self.pipe is not None:
            return
        self.sdxl_ref = self.profile.resolve_model("sdxl", self.opt("sdxl"))
        with self.profile.compute_threads(self.device):
            self.pipe = loading.load_pipeline(
                "sdxl", self.sdxl_ref, self.device, self.dtype, shared=self.profile.seeded_models
            )
        for tok, enc in self._encoders():
            if PLACEHOLDER not in tok.get_vocab():
                tok.add_tokens([PLACEHOLDER])
            if enc.get_input_embeddings().num_embeddings < len(tok):
                enc.resize_token_embeddings(len(tok), mean_resizing=False)
            pooler = getattr(enc, "text_model", enc)  # the module that holds eos_token_id for pooling
            if pooler.eos_token_id == 2 != tok.eos_token_id:
                # Legacy CLIP configs (SDXL's) pool at argmax(input_ids): the added token's position once it
                # exists. Pool at the end-of-text token instead (the same place for every other prompt).
                pooler.eos_token_id = enc.config.eos_token_id = tok.eos_token_id
        self.token_ids = [tok.convert_tokens_to_ids(PLACEHOLDER) for tok, _ in self._encoders()]

    def _encoders(self) -> list[tuple[Any, torch.nn.Module]]:
        return [
            (self.pipe.tokenizer, self.pipe.text_encoder),
            (self.pipe.tokenizer_2, self.pipe.text_encoder_2),
        ]

    @contextlib.contextmanager
    def _user_token(self, vectors: list[torch.Tensor]) -> Iterator[None]:
        """Inside the block the placeholder token embeds as ``vectors`` (differentiably) in both encoders."""
        handles = []
        for (_, enc), token_id, vec in zip(self._encoders(), self.token_ids, vectors, strict=True):

            def hook(module, args, output, token_id=token_id, vec=vec):
                mask = (args[0] == token_id).unsqueeze(-1)
                return torch.where(mask, vec.to(output.dtype), output)

            handles.append(enc.get_input_embeddings().register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _encode(self, prompts: list[str], vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._user_token(vectors):
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        return embeds, pooled

    def prepare(self, samples: Sequence[Sample]) -> None:
        """Invert every distinct history of ``samples`` that is not cached yet (one token per history)."""
        self.load()
        todo = {}
        for s in samples:
            key = (s.user_id, *s.history)
            if key not in self.vectors and not self._vectors_path(key).is_file():
                todo.setdefault(key, s)
        ds = self.ctx.dataset
        if not todo or ds is None:  # without a dataset, the images arrive with the requests
            return
        self.ctx.log(f"ti: learning the user token of {len(todo)} histories "
                     f"({self.opt('ti_steps')} steps each)")
        with progress_bar() as progress:
            task = progress.add_task("ti: inverting histories", total=len(todo))
            for key, s in todo.items():
                self.invert([fileio.load_rgb(ds.image_path(i)) for i in s.history], key)
                progress.advance(task)

    def _vectors_path(self, key: tuple[str, ...]):
        settings = {k: self.opt(k) for k in ("ti_steps", "ti_lr", "ti_init", "ti_seed", "size")}
        folder = artifacts.digest(loading.fingerprint(self.sdxl_ref), settings, str(self.dtype), length=16)
        data = self.ctx.dataset.digest if self.ctx.dataset is not None else ""
        return artifacts.artifact_dir("ti-tokens", folder) / f"{artifacts.digest(data, key)}.safetensors"

    def invert(self, history: list[Image.Image], key: tuple[str, ...]) -> list[torch.Tensor]:
        """The user token's vectors for a history, learnt with the SDXL denoising loss (memory, then disk
        cache, else computed and stored)."""
        if key not in self.vectors:
            from safetensors.torch import load_file, save_file

            path = self._vectors_path(key)
            if path.is_file():
                state = load_file(str(path))
                self.vectors[key] = [state[str(i)] for i in range(len(state))]
            else:
                with self.profile.compute_threads(self.device):
                    self.vectors[key] = self._invert(history, key)
                with fileio.atomic_path(path) as tmp:
                    save_file({str(i): v.contiguous() for i, v in enumerate(self.vectors[key])}, str(tmp))
        return self.vectors[key]

    @loading.trains
    def _invert(self, history: list[Image.Image], key: tuple[str, ...]) -> list[torch.Tensor]:
        from diffusers import DDPMScheduler

        pipe = self.pipe
        size = self.opt("size")
        seed = int.from_bytes(
            hashlib.sha256(f"{self.opt('ti_seed')}|{'|'.join(key)}".encode()).digest()[:8], "little"
        )
        gen = torch.Generator("cpu").manual_seed(seed)
        noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
        init_ids = [
            tok(self.opt("ti_init"), add_special_tokens=False).input_ids[:1] or [0]
            for tok, _ in self._encoders()
        ]
        vectors = [
            enc.get_input_embeddings().weight[i[0]].detach().float().clone().requires_grad_(True)
            for (_, enc), i in zip(self._encoders(), init_ids, strict=True)
        ]
        # SDXL's VAE overflows in float16 (its config says force_upcast): encode in float32 then, as the
        # pipeline itself decodes.
        upcast = self.dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False)
        vae_dtype = torch.float32 if upcast else self.dtype
        pixels = loading.image_tensor(history, size).to(self.device, vae_dtype)
        with torch.no_grad():
            if upcast:
                pipe.vae.to(vae_dtype)
            dist = pipe.vae.encode(pixels).latent_dist
            if upcast:
                pipe.vae.to(self.dtype)
            noise = torch.randn(dist.mean.shape, generator=gen).to(self.device, vae_dtype)
            latents = ((dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor).to(self.dtype)
        n = len(history)
        self._fit(vectors, latents, n, size, gen, noise_sched)
        return [v.detach() for v in vectors]

    def _fit(
        self,
        vectors: list[torch.Tensor],
        latents: torch.Tensor,
        n: int,
        size: int,
        gen: torch.Generator,
        noise_sched: Any,
    ) -> None:
        """Optimise ``vectors`` in place (the only trainable tensors) on the noise-prediction loss."""
        pipe = self.pipe
        optim = torch.optim.AdamW(vectors, lr=self.opt("ti_lr"), weight_decay=0.0)
        prompts = [TEMPLATES[i % len(TEMPLATES)].format(PLACEHOLDER) for i in range(n)]
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * n, device=self.device, dtype=self.dtype)
        for _ in range(self.opt("ti_steps")):
            noise = torch.randn(latents.shape, generator=gen).to(self.device, self.dtype)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (n,), generator=gen).to(self.device)
            noisy = noise_sched.add_noise(latents, noise, t)
            embeds, pooled = self._encode(prompts, vectors)
            pred = pipe.unet(
                noisy,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            ).sample
            base.denoising_step(optim, pred, latents, noise, t, noise_sched)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        with self.profile.compute_threads(self.device):
            captions = self.reference_texts(requests)
            prompts = [prompt_for(c) for c in captions]
            embeds, pooled = [], []
            for r, prompt in zip(requests, prompts, strict=True):
                vectors = self.invert(r.history_images, (r.sample.user_id, *r.sample.history))
                with torch.inference_mode():
                    e, p = self._encode([prompt], vectors)
                embeds.append(e)
                pooled.append(p)
            images = self.render(
                requests,
                prompt_embeds=torch.cat(embeds),
                pooled_prompt_embeds=torch.cat(pooled),
            )
        return [
            GenerationResult(im, {"prompt": p, "reference_caption": c, "user_token": PLACEHOLDER})
            for im, p, c in zip(images, prompts, captions, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        self.load()
        return {
            **super().describe(),
            "sdxl": self.sdxl_ref,
            "sdxl_fingerprint": loading.fingerprint(self.sdxl_ref),
        }
