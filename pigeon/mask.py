"""Mask generation module (§2.2.1): importance scores over history and reference tokens, the history mask
m_h (low-score tokens dropped, Gumbel-softmax straight-through top-k) and the dual-phase reference mask m_r
(§2.2.4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HISTORY, REFERENCE = 1, 2  # type ids; 0 is padding

REFERENCE_MASK_SCHEMES = ("dual", "low", "high", "none", "random")
"""dual: mask high-score tokens in training, low-score at inference (Pigeon); low / high: that side in both
phases (Fig. 4(d)); none: no reference mask in training (Fig. 4(c)), low-score masking at inference;
random: random tokens in both phases, ignoring the scores (the fine-tuned LaVIT baseline)."""


def keep_count(n: int, ratio: float) -> int:
    """Tokens kept out of n at mask ratio ``ratio``: max(1, floor(n (1 - ratio)))."""
    return max(1, math.floor(n * (1.0 - ratio) + 1e-9))


def masks_high_scores(scheme: str, training: bool) -> bool:
    """Whether the reference mask drops the highest-scoring tokens under ``scheme`` in this phase."""
    if scheme not in REFERENCE_MASK_SCHEMES:
        raise ValueError(f"unknown reference mask scheme {scheme!r}")
    return scheme == "high" or (scheme == "dual" and training)


def topk_keep(scores: torch.Tensor, ratio: float, keep_high: bool = True, gumbel: bool = False,
              tau: float = 1.0) -> torch.Tensor:
    """Keep mask (n,) over one image's scores (n,): hard 0/1 values, straight-through soft gradients.

    The soft keep distribution is softmax(±scores) (plus Gumbel noise when ``gumbel``); the hard mask keeps
    its top ``keep_count(n, ratio)`` entries; the result is hard - soft.detach() + soft, so gradients reach
    ``scores``.
    """
    logits = scores if keep_high else -scores
    if gumbel:
        logits = logits + -torch.empty_like(logits).exponential_().log()
    soft = F.softmax(logits / tau, dim=-1)
    hard = torch.zeros_like(soft)
    hard[soft.topk(keep_count(scores.numel(), ratio)).indices] = 1.0
    return hard - soft.detach() + soft


class MaskGenerator(nn.Module):
    """Transformer encoder over [E_1..E_N, E_0] (+ position and type embeddings); s_ij = cos(z_ij, e_ij)."""

    def __init__(self, dim: int, heads: int = 4, layers: int = 1, max_positions: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        self.position = nn.Embedding(max_positions, dim)
        self.kind = nn.Embedding(3, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        nn.init.normal_(self.kind.weight, std=0.02)

    def scores(self, history: Sequence[Sequence[torch.Tensor]], reference: Sequence[torch.Tensor]
               ) -> list[list[torch.Tensor]]:
        """Importance scores (Eq. 2-3) for a batch.

        history[b] is N embeddings (L_i, D) of example b; reference[b] is (L_0, D). Returns, per example,
        N + 1 score vectors (L_i,) in the same order (history first, then reference).
        """
        seqs, types, positions, lengths = [], [], [], []
        for hist, ref in zip(history, reference, strict=True):
            parts = [*hist, ref]
            lengths.append([p.shape[0] for p in parts])
            seqs.append(torch.cat(parts))
            types.append(torch.cat([torch.full((p.shape[0],), HISTORY if i < len(hist) else REFERENCE)
                                    for i, p in enumerate(parts)]))
            positions.append(torch.cat([torch.arange(p.shape[0]) for p in parts]))
        device = seqs[0].device
        e = nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(self.out.weight.dtype)
        t = nn.utils.rnn.pad_sequence(types, batch_first=True).to(device)
        pos = nn.utils.rnn.pad_sequence(positions, batch_first=True).to(device)
        x = self.norm(e + self.position(pos) + self.kind(t))
        z = self.out(self.encoder(x, src_key_padding_mask=t == 0))
        s = F.cosine_similarity(z, e, dim=-1)  # (B, T)
        return [list(torch.split(s[b, : sum(lens)], lens)) for b, lens in enumerate(lengths)]
