"""Hist: the user's most recent history image, a sanity upper bound for personalization.

Any sound personalization metric must rank it first on p_cis (it is one of the five images compared against).
"""

from __future__ import annotations

from pigeon_bench.generation import GenerationRequest, GenerationResult, Generator, generators


@generators.register("hist")
class MostRecentHistory(Generator):
    name = "hist"
    group = "Sanity"
    label = "Hist"

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [GenerationResult(r.history_images[-1].copy(), {"source": r.sample.history[-1]})
                for r in requests]
