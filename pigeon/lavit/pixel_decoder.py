"""LaVIT's high-resolution pixel decoder: an SDXL-architecture diffusers UNet conditioned on the tokenizer
decoder's context (B, 256, 2048) and pooled (B, 1280) embeddings, an AutoencoderKL and a DDIM scheduler,
read from highres_pixel_decoding/{unet,vae,scheduler} as LaVIT does (UNet weights are a .bin there).

Sampling follows LaVIT's ``generate_image``: classifier-free guidance against all-zero context and pooled
embeddings, SDXL micro-conditioning time ids (size, crop (0, 0), size), DDIM steps, VAE decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from pigeon_bench.errors import UserError


class PixelDecoder(nn.Module):
    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler: object):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype) -> PixelDecoder:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        try:
            # the release ships the UNet as a .bin (LaVIT: use_safetensors=False); a converted copy may not
            safetensors = (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=safetensors,
                                                        torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
            scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise UserError(f"{folder}: cannot load the pixel decoder ({reason})") from None
        if unet.config.addition_embed_type != "text_time":
            raise UserError(f"{folder}/unet: expected an SDXL-style UNet (addition_embed_type 'text_time'), "
                            f"found {unet.config.addition_embed_type!r}")
        return cls(unet, vae, scheduler)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def forward(self, context: torch.Tensor, pooled: torch.Tensor, seeds: Sequence[int], size: int,
                steps: int, guidance: float, show_progress: bool = False) -> list[Image.Image]:
        """Context (B, F, C) + pooled (B, P) -> B RGB images of ``size`` px, noise from ``seeds``."""
        device, dtype = context.device, self.unet.dtype
        b = context.shape[0]
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} images")
        latent = size // self.vae_scale
        noise = [torch.randn((self.unet.config.in_channels, latent, latent),
                             generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        latents = torch.stack(noise).to(device, dtype) * self.scheduler.init_noise_sigma
        ctx = torch.cat([torch.zeros_like(context), context]).to(dtype)
        text_embeds = torch.cat([torch.zeros_like(pooled), pooled]).to(dtype)
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).repeat(2 * b, 1)
        self.scheduler.set_timesteps(steps, device=device)
        timesteps = self.scheduler.timesteps
        for t in _progress(timesteps, show_progress):
            model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
            pred = self.unet(model_in, t, encoder_hidden_states=ctx,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
            uncond, cond = pred.chunk(2)
            latents = self.scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:  # fp16 VAEs overflow (SDXL)
            self.vae.to(torch.float32)
        pixels = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        pixels = ((pixels.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy(), "RGB") for p in pixels]


def _progress(items: torch.Tensor, show: bool):
    if not show:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description="LaVIT pixel decoding", transient=True)
