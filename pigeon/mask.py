"""Mask generation module (§2.2.1): importance scores over history and reference tokens, the history mask
m_h (low-score tokens dropped) and the dual-phase reference mask m_r (§2.2.4).

Two sets of selection rules (``MASK_RULES``, docs/pigeon-official.md): "official" follows the authors' code
(the default: it produced the paper's numbers), "paper" follows the paper's text where the two differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HISTORY, REFERENCE = 1, 2  # type ids; 0 is padding

MASK_RULES = ("official", "paper")

REFERENCE_MASK_SCHEMES = ("dual", "low", "high", "none", "random")
"""dual: mask high-score tokens in training, low-score at inference (Pigeon); low / high: that side in both
phases (Fig. 4(d)); none: no reference mask in training (Fig. 4(c)), low-score masking at inference;
random: random tokens in both phases, ignoring the scores (the fine-tuned LaVIT baseline)."""


def check_rules(rules: str) -> None:
    if rules not in MASK_RULES:
        raise ValueError(f"unknown mask rules {rules!r} (known: {', '.join(MASK_RULES)})")


def keep_count(n: int, ratio: float, rules: str = "official") -> int:
    """Entries kept out of n at mask ratio ``ratio``, at least 1.

    official: int(n (1 - ratio)), truncating the float product (n = 10, ratio = 0.8 keeps 1: 10 * 0.2 is
    1.9999999999999996); paper: the exact floor of n (1 - ratio) (keeps 2 there).
    """
    check_rules(rules)
    if rules == "official":
        return max(1, int(n * (1 - ratio)))
    return max(1, math.floor(n * (1.0 - ratio) + 1e-9))


def masks_high_scores(scheme: str, training: bool) -> bool:
    """Whether the reference mask drops the highest-scoring tokens under ``scheme`` in this phase."""
    if scheme not in REFERENCE_MASK_SCHEMES:
        raise ValueError(f"unknown reference mask scheme {scheme!r}")
    return scheme == "high" or (scheme == "dual" and training)


def keep_logits(scores: torch.Tensor, drop_high: bool, rules: str = "official") -> torch.Tensor:
    """Log keep-probabilities of one group of scores (n,), the logits the Gumbel top-k ranks.

    Keeping high scores: log softmax(s) (both rules). Dropping high scores: official log(1 - softmax(s)),
    paper log softmax(-s) (the reverse order of s).
    """
    check_rules(rules)
    if not drop_high:
        return F.softmax(scores, dim=-1).log()
    if rules == "official":
        return torch.log1p(-F.softmax(scores, dim=-1))
    return F.softmax(-scores, dim=-1).log()


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like ``like``, from ``generator`` (CPU) or torch's global RNG."""
    e = torch.empty(like.shape, dtype=torch.float32).exponential_(generator=generator)
    return -e.log().to(like.device, like.dtype)


def topk_keep(logits: torch.Tensor, keep: int, noise: torch.Tensor | None = None, tau: float = 1.0,
              straight_through: bool = False) -> torch.Tensor:
    """Keep mask (n,) with ones at the ``keep`` largest entries of softmax((logits + noise) / tau).

    ``straight_through``: hard - soft.detach() + soft (values stay 0/1, gradients reach the logits);
    otherwise the hard mask alone, without gradient.
    """
    if logits.numel() == 1:
        return torch.ones_like(logits)
    y = logits if noise is None else logits + noise
    soft = F.softmax(y / tau, dim=-1)
    hard = torch.zeros_like(soft)
    hard[soft.topk(keep).indices] = 1.0
    return hard - soft.detach() + soft if straight_through else hard.detach()


def keep_masks(groups: Sequence[torch.Tensor], ratio: float, *, drop_high: bool = False,
               rules: str = "official", joint: bool = False, noise: bool = True,
               generator: torch.Generator | None = None, tau: float = 1.0) -> list[torch.Tensor]:
    """One keep mask per score group (e.g. per history image) at mask ratio ``ratio``.

    ``joint``: one top-k over all groups together (keep_count of their total length), else one per group.
    ``noise``: Gumbel noise from ``generator`` (or the global RNG) on the logits. Under the paper's rules
    the masks are straight-through (gradients reach the scores); under the official ones they are hard.
    """
    parts = [torch.cat(list(groups))] if joint else list(groups)
    out = []
    for s in parts:
        logits = keep_logits(s, drop_high, rules)
        g = gumbel_noise(logits, generator) if noise else None
        out.append(topk_keep(logits, keep_count(s.numel(), ratio, rules), g, tau,
                             straight_through=rules == "paper"))
    return list(torch.split(out[0], [g.numel() for g in groups])) if joint else out


def sinusoid_table(rows: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position table (rows, dim): sin(p ω_i) at even columns, cos(p ω_i) at odd ones,
    ω_i = 10000^(-2i / dim)."""
    table = torch.zeros(rows, dim)
    p = torch.arange(rows, dtype=torch.float).unsqueeze(1)
    omega = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
    table[:, 0::2] = torch.sin(p * omega)
    table[:, 1::2] = torch.cos(p * omega[: dim // 2])
    return table


class SinusoidPositions(nn.Module):
    """The position table as a (persistent) buffer ``pe``; positions past its rows are computed directly."""

    def __init__(self, dim: int, rows: int = 257):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(rows, dim))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        table = self.pe
        top = int(positions.max()) + 1 if positions.numel() else 0
        if top > table.shape[0]:
            table = sinusoid_table(top, table.shape[1]).to(table)
        return table[positions]


class MaskGenerator(nn.Module):
    """Transformer encoder over [E_1..E_N, E_0] (+ position and type embeddings); s_ij = cos(z_ij, e_ij).

    x = dropout(LayerNorm(e + sinusoid(position) + type)), h = post-norm encoder(x),
    z = dropout(tanh(dense(LayerNorm(h)))) with the same LayerNorm; positions count from 1 within each image.
    """

    def __init__(self, dim: int, heads: int = 4, layers: int = 1, feedforward: int = 2048,
                 dropout: float = 0.2, encoder_dropout: float = 0.1, positions: int = 257):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=feedforward, dropout=encoder_dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.position_embedding = SinusoidPositions(dim, positions)
        self.type_embedding = nn.Embedding(3, dim)
        self.dense = nn.Linear(dim, dim)
        self.LayerNorm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def hidden(self, e: torch.Tensor, positions: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Hidden states z (B, T, D) of token embeddings e (B, T, D) at ``positions`` and ``types`` (B, T;
        type 0: padding, which attention ignores)."""
        x = self.dropout(self.LayerNorm(e + self.position_embedding(positions) + self.type_embedding(types)))
        h = self.encoder(x, src_key_padding_mask=types == 0)
        return self.dropout(torch.tanh(self.dense(self.LayerNorm(h))))

    def forward(self, e: torch.Tensor, positions: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Scores s = cos(z, e) (B, T)."""
        return F.cosine_similarity(self.hidden(e, positions, types), e, dim=-1)

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
            positions.append(torch.cat([torch.arange(1, p.shape[0] + 1) for p in parts]))
        device = seqs[0].device
        e = nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(self.dense.weight.dtype)
        t = nn.utils.rnn.pad_sequence(types, batch_first=True).to(device)
        pos = nn.utils.rnn.pad_sequence(positions, batch_first=True).to(device)
        s = self(e, pos, t)
        return [list(torch.split(s[b, : sum(lens)], lens)) for b, lens in enumerate(lengths)]
