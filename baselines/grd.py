"""Grd: the reference image itself (the paper's "Grd" row): semantic alignment without any personalization."""

from __future__ import annotations

from pigeon_bench.generation import GenerationRequest, GenerationResult, Generator, generators


@generators.register("grd")
class GroundReference(Generator):
    name = "grd"
    group = "Reference"
    label = "Grd"

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [GenerationResult(r.reference_image.copy(), {"source": r.sample.reference_id})
                for r in requests]
