"""Personalization module (§2.2.2): multimodal instruction encoding into r_t (Eq. 5) and r_v (Eq. 6)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pigeon.backbone import Backbone


class Adapter(nn.Module):
    """Aligns the pooled tokenizer-decoder feature v_0 (C) with the LM width (D): r_v = Adapter(v_0).

    dropout(tanh(decoder(dropout(encoder(v))))): two Linear layers with no activation between them, a tanh
    head, the one dropout module applied twice (state-dict keys encoder.*, decoder.*).
    """

    def __init__(self, feature_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = nn.Linear(feature_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_dim, out_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.tanh(self.decoder(self.drop(self.encoder(v)))))


def textual_tokens(backbone: Backbone, texts: Sequence[str]) -> list[torch.Tensor]:
    """r_t = Text_Tokenizer(text) embedded: one (T_i, D) tensor per text (the caption, or the prompt's
    target description that holds it)."""
    with torch.no_grad():
        return [backbone.embed_tokens(ids.to(backbone.device)) for ids in backbone.tokenize_text(texts)]


def visual_features(backbone: Backbone, adapter: Adapter, kept_codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """r_v = Adapter(AvgPooling(Tokenizer_Decoder(Ẽ_0))): (B, D) from the kept reference codes."""
    with torch.no_grad():
        v0 = backbone.decode_tokens(kept_codes).mean(dim=1)  # (B, C)
    return adapter(v0.to(adapter.encoder.weight.dtype))
