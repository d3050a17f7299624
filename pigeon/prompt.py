"""The hybrid prompt of Eq. (7) (§2.2.2): instruction text, masked history tokens, r_t and r_v.

Two prompt styles (``PROMPTS``): "official", the per-scenario templates the released models were trained
with (the default), and "paper", the single instruction printed in §2.2.2.

A prompt is a list of segments; each is ("text", str) (fixed text, embedded once), ("words", str)
(per-example text), ("special", "bos"|"boi"|"eoi") or ("embeds", key) where key names a tensor the caller
supplies (history images "h0".."h4", "r_t", "r_v", "ref").
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from pigeon.backbone import Backbone

PROMPTS = ("official", "paper")

# the paper's prompt (§2.2.2)
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

_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that provides further "
             "context. Write a response that appropriately completes the request.")


@dataclass(frozen=True)
class Template:
    """One scenario's official prompt. Pieces are joined by newlines; {emotion} / {title} are the
    reference's (``target_plain`` stands in when that field is unknown); movies put each history title
    before its image."""

    task: str
    history: str
    target: str
    target_plain: str
    history_titles: bool
    preamble: str = _PREAMBLE
    start: str = "Input: "
    response: str = "Response: "


TEMPLATES: dict[str, Template] = {
    "sticker": Template(
        task="Instruction: You are a helpful personalized assistant. You will be provided with a list of "
             "stickers that the user likes to analyze the user's preference over stickers. Based on this "
             "analysis, please design a personalized sticker that aligns with target sticker info and the "
             "user's sticker tastes.",
        history="The user likes the following stickers: ",
        target="The target sticker info: a sticker with the emotion of {emotion}. ",
        target_plain="The target sticker info: ",
        history_titles=False,
    ),
    "movie": Template(
        task="Instruction: You are a helpful personalized assistant. You will be provided with a list of "
             "movies that the user likes, along with the movie posters, to analyze the user's preference "
             "over posters. Based on this analysis, please design a personalized poster that aligns with "
             "target movie and the user's poster tastes.",
        history="The user likes the following movies: ",
        target="The target movie is titled '{title}'. ",
        target_plain="",
        history_titles=True,
    ),
}

_YEAR = re.compile(r"^(.*) \(\d+\) *$")


def short_title(title: str) -> str:
    """A MovieLens title without its trailing " (year)" ("Heat (1995)" -> "Heat"), as the templates use."""
    m = _YEAR.match(title)
    return m.group(1) if m else title


def reference_text(caption: str, prompt: str = "official", scenario: str = "sticker",
                   emotion: str | None = None, title: str | None = None) -> str:
    """The text r_t is made of: the caption (paper), or the template's target sentence + caption
    (official)."""
    if prompt == "paper":
        return caption
    tpl = TEMPLATES[scenario]
    field = {"emotion": emotion, "title": title}
    needed = re.findall(r"\{(\w+)\}", tpl.target)
    head = tpl.target.format(**field) if all(field[k] is not None for k in needed) else tpl.target_plain
    return (head + caption).strip()


def prompt_layout(n_history: int, textual_tokens: bool = True, visual_feature: bool = True,
                  encoding: bool = True, prompt: str = "official", scenario: str = "sticker",
                  history_titles: Sequence[str] | None = None) -> list[Segment]:
    """Segments of p = Prompt(Ẽ_1..Ẽ_N, r_t, r_v), ending with the "boi" that opens the response image.

    Ablations (Table 3): ``textual_tokens=False`` drops r_t, ``visual_feature=False`` drops r_v,
    ``encoding=False`` puts the masked reference tokens themselves ("ref") in place of r_t, r_v.
    """
    if prompt == "paper":
        return _paper_layout(n_history, textual_tokens, visual_feature, encoding)
    return _official_layout(TEMPLATES[scenario], n_history, textual_tokens, visual_feature, encoding,
                            history_titles)


def _paper_layout(n_history: int, textual_tokens: bool, visual_feature: bool, encoding: bool
                  ) -> list[Segment]:
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


def _official_layout(tpl: Template, n_history: int, textual_tokens: bool, visual_feature: bool,
                     encoding: bool, history_titles: Sequence[str] | None) -> list[Segment]:
    """The template text with an image placeholder per history image and one for r_v, cut at the
    placeholders; each piece loses the whitespace next to a placeholder and empty pieces vanish (how
    LaVIT's slow Llama tokenizer, transformers <= 4.33, splits text around its added <img>/<emb> tokens).
    No BOS, and no <img>/</img> around history images."""
    segs: list[Segment] = []

    def piece(text: str, kind: str = "text") -> None:
        if text.strip():
            segs.append((kind, text.strip()))

    head = f"{tpl.preamble}\n{tpl.task}\n{tpl.start}{tpl.history}"
    for i in range(n_history):
        title = history_titles[i] if tpl.history_titles and history_titles is not None else None
        sep = "\n" if title is None else f"\n{title} "
        piece(head + sep if i == 0 else sep, "text" if title is None else "words")
        segs.append(("embeds", f"h{i}"))
    if not encoding:
        segs.append(("embeds", "ref"))
    else:
        if textual_tokens:
            segs.append(("embeds", "r_t"))
        if visual_feature:
            segs.append(("embeds", "r_v"))
    piece(tpl.response)
    segs.append(("special", "boi"))
    return segs


def template_texts() -> list[str]:
    """Every fixed text of both prompt styles (for a word-level tokenizer's vocabulary)."""
    fixed = [INSTRUCTION, INPUT_HISTORY, INPUT_REFERENCE, RESPONSE]
    for tpl in TEMPLATES.values():
        fixed += [tpl.preamble, tpl.task, tpl.start, tpl.history, tpl.target, tpl.target_plain, tpl.response]
    return [re.sub(r"\{\w+\}", "", t) for t in fixed if t]


class PromptBuilder:
    """Turns a layout plus per-example tensors into input embeddings (T, D); fixed text is embedded once."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def _embed(self, kind: str, value: str) -> torch.Tensor:
        bb = self.backbone
        ids = torch.tensor([bb.special_ids[value]]) if kind == "special" else bb.tokenize_text([value])[0]
        with torch.no_grad():
            return bb.embed_tokens(ids.to(bb.device))

    def segment_embeds(self, kind: str, value: str) -> torch.Tensor:
        """Embeddings (n, D) of a "text", "words" or "special" segment ("words" are not kept)."""
        if kind == "words":
            return self._embed(kind, value)
        key = (kind, value)
        if key not in self._cache:
            self._cache[key] = self._embed(kind, value)
        return self._cache[key]

    def build(self, layout: Sequence[Segment], tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the segments' embeddings (each (n, D)) into one (T, D) prompt."""
        parts = []
        for kind, value in layout:
            parts.append(tensors[value] if kind == "embeds" else self.segment_embeds(kind, value))
        return torch.cat(parts, dim=0)
