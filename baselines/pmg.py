"""PMG (Shen et al., WWW 2024): personalized generation through an LLM's reading of captions.

The 5 history images and the reference are captioned (BLIP-2); an LLM (Llama-2-7B, as in PMG) reads the
history captions and writes preference keywords; Stable Diffusion draws "<reference caption>, <keywords>".
PMG uses its own Stable Diffusion 1.5 pipeline (the Pigeon paper: "We implement PMG following its default
model designs"), so this adapter loads ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (512 px, 50 steps,
guidance 7.5), not SDXL.

Not implemented: PMG's soft preference embeddings (P-Tuning V2 tokens mapped into the text encoder's space)
and its α-weighted accuracy/preference objective need PMG's own training; this adapter conditions on the
explicit keywords only, and says so in its manifest (``soft_embeddings: false``).

Options: ``sd`` (hub id or folder), ``llm``, ``captioner``, ``reference_text`` (caption|semantics; semantics
also replaces the history captions), ``steps``, ``size``, ``guidance``, ``batch_size``, ``max_new_tokens``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from baselines import captioner, models
from pigeon_bench.generation import GenerationRequest, GenerationResult, generators


def preference_prompt(history_captions: list[str]) -> str:
    """The LLM's task: preference keywords from the descriptions of the user's history images."""
    lines = "\n".join(f"{i}. {c}" for i, c in enumerate(history_captions, 1))
    return (
        f"A user liked images described as follows, oldest first.\n{lines}\n"
        "List a few keywords that describe this user's visual preferences (style, colours, subjects).\n"
        "Keywords:"
    )


@generators.register("pmg")
class PMG(models.BaselineGenerator):
    name = "pmg"
    group = "LLM-based"
    label = "PMG"
    accepted_options = (
        "sd",
        "llm",
        "captioner",
        "reference_text",
        "steps",
        "size",
        "guidance",
        "batch_size",
        "max_new_tokens",
    )
    defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(steps=3, size=64, guidance=7.5, batch_size=1, max_new_tokens=8, min_new_tokens=3),
        "paper": dict(steps=50, size=512, guidance=7.5, batch_size=1, max_new_tokens=24, min_new_tokens=1),
    }

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.llm = None

    def load(self) -> None:
        if self.llm is not None:
            return
        with models.compute_threads(self.profile, self.device):
            self.llm_ref = models.resolve(self.options.get("llm"), models.PMG_LLM, "llama", self.profile)
            self.llm, self.tokenizer = models.load_causal_lm(
                self.llm_ref, self.device, self.dtype, shared=self.profile == "tiny"
            )
            self.sd_ref = models.resolve(self.options.get("sd"), models.SD15, "sd", self.profile)
            self.pipe = models.load_pipeline(
                "sd", self.sd_ref, self.device, self.dtype, shared=self.profile == "tiny"
            )

    def keywords(self, history_captions: list[list[str]]) -> list[str]:
        """The LLM's preference keywords per request (greedy, batched, left-padded)."""
        tok = self.tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        out = []
        for start in range(0, len(history_captions), self.opt("batch_size")):
            texts = [preference_prompt(c) for c in history_captions[start : start + self.opt("batch_size")]]
            batch = tok(texts, return_tensors="pt", padding=True)
            out += models.generate_text(
                self.llm,
                tok,
                models.to_model_inputs(batch, self.device, self.dtype),
                self.opt("max_new_tokens"),
                self.opt("min_new_tokens"),
            )
        return out

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.load()
        with models.compute_threads(self.profile, self.device):
            references = captioner.reference_texts(self, requests)
            if (self.options.get("reference_text") or "caption") == "semantics":
                histories = [list(r.history_texts) for r in requests]
            else:
                flat = iter(self.captioner().caption([im for r in requests for im in r.history_images]))
                histories = [[next(flat) for _ in r.history_images] for r in requests]
            keywords = self.keywords(histories)
            prompts = [f"{ref}, {kw}" for ref, kw in zip(references, keywords, strict=True)]
            images = models.render(
                self.pipe,
                [r.seed for r in requests],
                self.opt("steps"),
                self.opt("size"),
                self.opt("guidance"),
                self.opt("batch_size"),
                prompt=prompts,
            )
        return [
            GenerationResult(
                im, {"prompt": p, "keywords": kw, "reference_caption": ref, "history_captions": h}
            )
            for im, p, kw, ref, h in zip(images, prompts, keywords, references, histories, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        self.load()
        return {
            **super().describe(),
            "llm": self.llm_ref,
            "llm_fingerprint": models.fingerprint(self.llm_ref),
            "sd": self.sd_ref,
            "soft_embeddings": False,
        }
