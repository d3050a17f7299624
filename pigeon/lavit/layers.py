"""Small building blocks shared by the LaVIT encoder, tokenizer and tokenizer decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (LaVIT's fallback for apex FusedLayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class Mlp(nn.Sequential):
    """fc1 -> GELU -> fc2 (keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C // heads)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def policy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     eps: float = 1e-6) -> torch.Tensor:
    """Attention whose weights are renormalised over ``allowed`` keys (B, 1|H, Nq, Nk in {0, 1}).

    LaVIT's token merger does this instead of a -inf mask: exp(scores - max) * allowed, then
    (w + eps / Nk) / (sum w + eps), so a query with no allowed key attends uniformly.
    """
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores - scores.amax(dim=-1, keepdim=True)
    w = scores.float().exp() * allowed.float()
    w = (w + eps / w.shape[-1]) / (w.sum(dim=-1, keepdim=True) + eps)
    return w.to(v.dtype) @ v
