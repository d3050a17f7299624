"""The EVA-CLIP ViT-g/14 visual encoder as LaVIT builds it (keys of visual_tokenizer/eva_vitg_psz14.bin).

LaVIT's configuration (modeling_visual_encoder.py ``build_eva_clip``): width 1408, 40 blocks, head width 88,
mlp ratio 4.3637, qkv bias as separate ``q_bias``/``v_bias`` (k has none), LayerNorm eps 1e-6, no layer
scale, no relative position bias, no rope, a final ``norm`` and a 1024-d CLIP ``head``. LaVIT reads all
token features after the last block, before ``norm`` (``return_all_features=True``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pigeon.lavit.config import LaVITConfig
from pigeon.lavit.layers import FP32LayerNorm, Mlp


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EVAAttention(nn.Module):
    """Fused qkv projection without bias plus learned q/v biases (EVA's layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EVABlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = FP32LayerNorm(width, eps=1e-6)
        self.attn = EVAAttention(width, heads)
        self.norm2 = FP32LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EVAVisionEncoder(nn.Module):
    """Image (B, 3, S, S), CLIP-normalised -> patch features (B, num_patches, width)."""

    def __init__(self, config: LaVITConfig):
        super().__init__()
        w = config.vit_width
        self.patch_embed = PatchEmbed(config.patch_size, w)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, w))
        self.blocks = nn.ModuleList(EVABlock(w, config.vit_heads, config.vit_mlp_ratio)
                                    for _ in range(config.vit_depth))
        self.norm = FP32LayerNorm(w, eps=1e-6)  # in the weights; LaVIT's tokenizer path does not apply it
        self.head = nn.Linear(w, config.vit_embed_dim)  # CLIP projection; unused by LaVIT

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x[:, 1:]
