"""LaVIT's high-resolution tokenizer decoder (keys of visual_tokenizer/highres_tokenizer_decoder.bin).

Follows ``HighresVQDecoder`` in LaVIT/models/modeling_decoder.py: codebook vectors -> ``in_proj`` -> padded
sequence + ``pos_embed``; ``num_patches`` learned queries (``query_embed``) run self-attention and masked
cross-attention to it through ``blocks``; ``norm`` -> ``decode_task_layer`` gives the decoded visual features;
``unet_proj_1``/``unet_proj_2`` (768 + 1280 = 2048) form the UNet context and ``unet_attnpool`` (an attention
pool) the pooled 1280-d SDXL "text_embeds".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pigeon.lavit.config import LaVITConfig
from pigeon.lavit.layers import FP32LayerNorm, Mlp, merge_heads, split_heads


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(nn.functional.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Queries attend to the code sequence; padded codes get LaVIT's additive -10000 mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(x), self.heads)
        k = split_heads(self.key(codes), self.heads)
        v = split_heads(self.value(codes), self.heads)
        bias = ((1.0 - mask) * -10000.0)[:, None, None, :].to(q.dtype)
        return self.proj(merge_heads(nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)))


class DecoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm0 = FP32LayerNorm(width, eps=1e-5)
        self.self_attn = SelfAttention(width, heads)
        self.norm1 = FP32LayerNorm(width, eps=1e-5)
        self.cross_attn = CrossAttention(width, heads)
        self.norm2 = FP32LayerNorm(width, eps=1e-5)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm0(x))
        x = x + self.cross_attn(self.norm1(x), codes, mask)
        return x + self.mlp(self.norm2(x))


class AttentionPool(nn.Module):
    """CLIP-style attention pooling: the mean token (plus positions) queries all tokens; one output vector."""

    def __init__(self, seq_len: int, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(seq_len + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        q = split_heads(self.q_proj(x[:, :1]), self.heads)
        k = split_heads(self.k_proj(x), self.heads)
        v = split_heads(self.v_proj(x), self.heads)
        return self.c_proj(merge_heads(nn.functional.scaled_dot_product_attention(q, k, v)))[:, 0]


class HighresTokenizerDecoder(nn.Module):
    """Codebook vectors of each image -> (UNet context (B, num_patches, 2048), pooled (B, 1280))."""

    def __init__(self, config: LaVITConfig):
        super().__init__()
        w, n = config.decoder_width, config.num_patches
        self.in_proj = nn.Linear(config.code_dim, w)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, w))
        self.query_embed = nn.Parameter(torch.zeros(1, n, w))
        self.blocks = nn.ModuleList(DecoderBlock(w, config.decoder_heads, config.decoder_mlp_ratio)
                                    for _ in range(config.decoder_depth))
        self.norm = FP32LayerNorm(w, eps=1e-5)
        d = config.decoder_out_dim
        self.decode_task_layer = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, d))
        ctx1, ctx2 = config.unet_context_dims
        self.unet_proj_1 = nn.Linear(d, ctx1)
        self.unet_proj_2 = nn.Linear(d, ctx2)
        self.unet_attnpool = AttentionPool(n, d, config.decoder_heads, config.unet_pooled_dim)

    def decoded_features(self, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-image codebook vectors (L_i, code_dim) -> decoded visual features (B, num_patches, out_dim)."""
        n_max = self.pos_embed.shape[1]
        lengths = [len(v) for v in vectors]
        if max(lengths) > n_max or min(lengths) == 0:
            raise ValueError(f"the tokenizer decoder takes 1..{n_max} visual tokens per image, got {lengths}")
        x = self.in_proj(torch.cat(list(vectors)))
        padded = x.new_zeros(len(lengths), max(lengths), x.shape[-1])
        mask = x.new_zeros(len(lengths), max(lengths))
        for i, chunk in enumerate(x.split(lengths)):
            padded[i, : len(chunk)] = chunk
            mask[i, : len(chunk)] = 1
        padded = padded + self.pos_embed[:, : padded.shape[1]]
        queries = self.query_embed.expand(len(lengths), -1, -1)
        for block in self.blocks:
            queries = block(queries, padded, mask)
        return self.decode_task_layer(self.norm(queries))

    def context(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoded features -> UNet cross-attention context (B, num_patches, sum(unet_context_dims))."""
        return torch.cat([self.unet_proj_1(decoded), self.unet_proj_2(decoded)], dim=-1)

    def forward(self, vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        decoded = self.decoded_features(vectors)
        return self.context(decoded), self.unet_attnpool(decoded)

    def pooled_from_context(self, context: torch.Tensor) -> torch.Tensor:
        """Recover the pooled embedding from a UNet context alone (for ``Backbone.decode_pixels``).

        The context is an affine map [W1; W2] d + b of the decoded features d; with more context dims than
        feature dims (2048 > 1408 released, 40 > 32 tiny) that map is injective, so the least-squares solve
        returns d exactly up to float32 rounding and the attention pool gives the pooled embedding.
        """
        weight = torch.cat([self.unet_proj_1.weight, self.unet_proj_2.weight]).float()
        bias = torch.cat([self.unet_proj_1.bias, self.unet_proj_2.bias]).float()
        rhs = (context.float() - bias).reshape(-1, weight.shape[0]).t()
        decoded = torch.linalg.lstsq(weight, rhs).solution.t().reshape(*context.shape[:-1], -1)
        return self.unet_attnpool(decoded.to(context.dtype))
