"""The paper's two scenarios (§3.1.1): personalized stickers (SER30K) and movie posters (ml-latest-small)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pigeon_bench.registry import Registry


@dataclass(frozen=True)
class Scenario:
    """A scenario: name, the textual instruction stored in every sample, its builder and its demo dataset."""

    name: str
    instruction: str
    builder: str  # "module:function" of the raw-data builder, imported on use
    demo_key: str  # key of pigeon_bench.data.demo.ensure_demo_datasets()
    description: str

    def build(self, *args, **kwargs):
        """Call this scenario's builder (see pigeon_bench.data.sticker / .movie for the arguments)."""
        return self.builder_fn()(*args, **kwargs)

    def builder_fn(self) -> Callable:
        import importlib

        module, _, attr = self.builder.partition(":")
        return getattr(importlib.import_module(module), attr)


scenarios: Registry[Scenario] = Registry("scenario", entry_point_group="pigeon_bench.scenarios")

scenarios.register("sticker", Scenario(
    name="sticker",
    # The paper's own wording (§1).
    instruction="generate a sticker with the same emotional semantics as this reference image",
    builder="pigeon_bench.data.sticker:build_sticker",
    demo_key="sticker",
    description="SER30K: one user per sticker theme; valid/test references come from another theme",
))
scenarios.register("movie", Scenario(
    name="movie",
    # The paper gives no wording for posters; the reference is the target movie's own poster (§3.1.1).
    instruction="generate a movie poster with the same semantics as this reference poster",
    builder="pigeon_bench.data.movie:build_movie",
    demo_key="movie",
    description="ml-latest-small: ratings >= 4 sorted by time; the reference is the target poster",
))
