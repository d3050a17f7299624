"""LaVIT's dynamic visual tokenizer (Eq. 1 of the Pigeon paper): token selector, token merger, codebook.

Module and key names follow LaVIT's ``DynamicVisualTokenizer`` (modeling_visual_tokenzier.py) so that
visual_tokenizer/tokenizer_encoder.bin loads into it: ``token_predictor.*`` (selector), ``causal_encoder.*``
(merger), ``encode_task_layer.*`` and ``quantize.embedding.weight`` (16384 x 32 codebook). The EVA encoder
sits under ``encoder.*`` and is loaded from eva_vitg_psz14.bin (keys without that prefix). LaVIT's
``vit_proj`` (used only for multimodal understanding; weights in language_model/visual_weight.bin) is left
out.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from pigeon.lavit.config import LaVITConfig
from pigeon.lavit.layers import FP32LayerNorm, Mlp, merge_heads, policy_attention, split_heads
from pigeon.lavit.visual_encoder import EVAVisionEncoder


class TokenPredictor(nn.Module):
    """Token selector: per-patch log-probabilities of (keep, drop) from a local and a global (mean) half."""

    def __init__(self, width: int):
        super().__init__()
        self.in_conv = nn.Sequential(FP32LayerNorm(width, eps=1e-5), nn.Linear(width, width), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(width, width // 2), nn.GELU(),
            nn.Linear(width // 2, width // 4), nn.GELU(),
            nn.Linear(width // 4, 2), nn.LogSoftmax(dim=-1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        half = x.shape[-1] // 2
        global_x = x[..., half:].mean(dim=1, keepdim=True).expand(-1, x.shape[1], -1)
        return self.out_conv(torch.cat([x[..., :half], global_x], dim=-1))


class TokenCausalAttention(nn.Module):
    """Causal self-attention in which dropped tokens are visible to nobody but themselves."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        eye = torch.eye(n, device=x.device, dtype=keep.dtype)
        visible = keep[:, None, None, :] + (1 - keep[:, None, None, :]) * eye
        causal = torch.ones(n, n, device=x.device, dtype=keep.dtype).tril()
        return self.proj(merge_heads(policy_attention(q, k, v, visible * causal)))


class TokenCrossAttention(nn.Module):
    """Every token attends to the dropped tokens' raw features (how the merger absorbs them)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, x_origin: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(x), self.heads)
        k = split_heads(self.key(x_origin), self.heads)
        v = split_heads(self.value(x_origin), self.heads)
        return self.proj(merge_heads(policy_attention(q, k, v, (1 - keep)[:, None, None, :])))


class CausalFuserBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm0 = FP32LayerNorm(width, eps=1e-5)
        self.token_causal_attn = TokenCausalAttention(width, heads)
        self.norm1 = FP32LayerNorm(width, eps=1e-5)
        self.token_cross_attn = TokenCrossAttention(width, heads)
        self.norm2 = FP32LayerNorm(width, eps=1e-5)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, x_origin: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.token_causal_attn(self.norm0(x), keep)
        x = x + self.token_cross_attn(self.norm1(x), x_origin, keep)
        return x + self.mlp(self.norm2(x))


class TokenMerger(nn.Module):
    def __init__(self, width: int, heads: int, depth: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(CausalFuserBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.ln_vision = FP32LayerNorm(width, eps=1e-5)
        self.norm = FP32LayerNorm(width, eps=1e-5)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x_origin = self.ln_vision(x)
        for block in self.blocks:
            x = block(x, x_origin, keep)
        return self.norm(x)


class CodebookEmbedding(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(size, dim), dim=-1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class VectorQuantizer(nn.Module):
    """Nearest codebook entry to the L2-normalised feature (squared Euclidean distance)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = CodebookEmbedding(size, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.normalize(z, dim=-1)
        e = self.embedding.weight
        dist = z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2 * z @ e.t()
        return dist.argmin(dim=-1)


class DynamicVisualTokenizer(nn.Module):
    """CLIP-normalised images -> one LongTensor of codebook ids (L_i <= num_patches) per image."""

    def __init__(self, config: LaVITConfig):
        super().__init__()
        self.config = config
        w = config.vit_width
        self.encoder = EVAVisionEncoder(config)
        self.token_predictor = TokenPredictor(w)
        self.causal_encoder = TokenMerger(w, config.merger_heads, config.merger_depth,
                                          config.merger_mlp_ratio)
        self.quantize = VectorQuantizer(config.codebook_size, config.code_dim)
        self.encode_task_layer = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, config.code_dim))

    def keep_decisions(self, log_probs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Sample keep (1) / drop (0) per patch as LaVIT does (hard gumbel-softmax, index 0 = keep).

        Each image's gumbel noise is seeded by ``selector_seed`` and the image's own pixels, so an image gets
        the same tokens in any batch while different images get independent noise. An image whose every
        patch is dropped keeps its most likely patch (LaVIT would fail on an empty sequence).
        """
        noise = []
        for image in images:
            digest = hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).digest()
            gen = torch.Generator().manual_seed(self.config.selector_seed ^ int.from_bytes(digest[:7], "big"))
            noise.append(torch.rand(log_probs.shape[1:], generator=gen, dtype=torch.float32))
        gumbel = -torch.log(-torch.log(torch.stack(noise).clamp_min(1e-20))).to(log_probs.device)
        keep = ((log_probs.float() + gumbel).argmax(dim=-1) == 0).float()
        empty = keep.sum(dim=1) == 0
        if empty.any():
            best = log_probs[..., 0].argmax(dim=1)
            keep[empty, best[empty]] = 1.0
        return keep

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(images)
        keep = self.keep_decisions(self.token_predictor(features), images)
        merged = self.causal_encoder(features, keep.to(features.dtype))
        ids = self.quantize(self.encode_task_layer(merged[keep.bool()]))
        return list(ids.split(keep.sum(dim=1).long().tolist()))

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of ids (*) -> (*, code_dim): what the tokenizer decoder reads."""
        return self.quantize.embedding(codes)
