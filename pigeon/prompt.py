"""The hybrid prompt of Eq. (7) (§2.2.2): instruction text, masked history tokens, r_t and r_v.

A prompt is a list of segments; each is ("text", str), ("special", "bos"|"boi"|"eoi") or ("embeds", key)
where key names a tensor the caller supplies (history images "h0".."h4", "r_t", "r_v", "ref").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pigeon.backbone import Backbone

INSTRUCTION = (
    "Instruction: You are a helpful personalized assistant. You will receive a list of user-liked images "
    "that reflect the user's visual preferences. By analyzing user preferences, please generate a "
    "personalized image that aligns with the user's aesthetic taste and the semantics in a specified "
    "reference image."
)
INPUT_HISTORY = "Input: The user likes the following images:"
INPUT_REFERENCE = ". The reference image:"
RESPONSE = ". Response:"

Segment = tuple[str, str]


def prompt_layout(n_history: int, textual_tokens: bool = True, visual_feature: bool = True,
                  encoding: bool = True) -> list[Segment]:
    """Segments of p = Prompt(Ẽ_1..Ẽ_N, r_t, r_v), ending with the "boi" that opens the response image.

    Ablations (Table 3): ``textual_tokens=False`` drops r_t, ``visual_feature=False`` drops r_v,
    ``encoding=False`` puts the masked reference tokens themselves ("ref") in place of r_t, r_v.
    """
    segs: list[Segment] = [("special", "bos"), ("text", INSTRUCTION), ("text", INPUT_HISTORY)]
    for i in range(n_history):
        segs += [("special", "boi"), ("embeds", f"h{i}"), ("special", "eoi")]
    segs.append(("text", INPUT_REFERENCE))
    if not encoding:
        segs += [("special", "boi"), ("embeds", "ref"), ("special", "eoi")]
    else:
        if textual_tokens:
            segs.append(("embeds", "r_t"))
        if visual_feature:
            segs.append(("embeds", "r_v"))
    segs += [("text", RESPONSE), ("special", "boi")]
    return segs


class PromptBuilder:
    """Turns a layout plus per-example tensors into input embeddings (T, D); text is tokenized once."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def segment_embeds(self, kind: str, value: str) -> torch.Tensor:
        """Embeddings (n, D) of a "text" or "special" segment, computed once."""
        key = (kind, value)
        if key not in self._cache:
            bb = self.backbone
            ids = bb.tokenize_text([value])[0] if kind == "text" else torch.tensor([bb.special_ids[value]])
            with torch.no_grad():
                self._cache[key] = bb.embed_tokens(ids.to(bb.device))
        return self._cache[key]

    def build(self, layout: Sequence[Segment], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the segments' embeddings (each (n, D)) into one (T, D) prompt."""
        parts = []
        for kind, value in layout:
            parts.append(tensors[value] if kind == "embeds" else self.segment_embeds(kind, value))
        return torch.cat(parts, dim=0)
