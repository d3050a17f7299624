"""Oracle and Other user: known answers drawn by the demo world's own renderer (sanity rows beside Hist/Grd).

The demo world knows what every image shows (``pigeon_bench.data.demo``), so it can draw the ideal answer:

- ``oracle``: the user's own taste with the reference's content. Stickers: the user's theme (character,
  palette, style) showing the reference's emotion and caption. Posters: the reference movie's title and layout
  in the user's favourite genres (the most frequent first genres of the history; the reference's own genre
  leads when it is one of them). Ideal personalization and alignment.
- ``other-user``: the reference's content in the taste of another user, one that shares nothing with this
  user (a theme with another character, palette and style; two other favourite genres). Aligned, not
  personalized.

They exist only on datasets whose items carry the demo factors; elsewhere creating them is a one-line error.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from functools import cached_property

import numpy as np
import pandas as pd
from PIL import Image

from pigeon_bench.data import demo
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import GenerationRequest, GenerationResult, Generator, MethodContext, generators

N_FAVOURITES = 2  # the demo world's users like two genres


def _first_genre(genres: str) -> str:
    return genres.split("|")[0]


class DemoTruth:
    """The ground truth of a demo dataset: its items' factors, and each user's theme or favourite genres."""

    def __init__(self, dataset: Dataset, items: pd.DataFrame):
        self.dataset = dataset
        self.items = items
        self.scenario = dataset.scenario

    @classmethod
    def missing(cls, dataset: Dataset | None) -> str | None:
        """Why ``dataset`` has no demo ground truth (None: it has)."""
        if dataset is None:
            return "no dataset was given"
        if demo.demo_factors(dataset) is None:
            columns = ", ".join(demo.FACTOR_COLUMNS.get(dataset.scenario or "", ())) or "none known"
            return (f"{dataset.root} is not a demo dataset: its items lack the demo world's factor columns "
                    f"({columns})")
        return None

    @classmethod
    def of(cls, dataset: Dataset | None, method: str) -> DemoTruth:
        reason = cls.missing(dataset)
        if reason is not None:
            raise UserError(f"method {method!r} draws known answers and needs the offline demo world "
                            f"(pigeon-bench run without --data): {reason}")
        return cls(dataset, demo.demo_factors(dataset))

    def row(self, item_id: str):
        return self.items.loc[item_id]

    # ------------------------------------------------------------ stickers

    def theme(self, item_id: str) -> tuple[str, str, str]:
        row = self.row(item_id)
        return row["character"], row["palette"], row["style"]

    @cached_property
    def themes(self) -> list[tuple[str, str, str]]:
        rows = self.items.drop_duplicates("theme").sort_values("theme")
        return list(zip(rows["character"], rows["palette"], rows["style"], strict=True))

    def other_theme(self, user: tuple[str, str, str], reference: tuple[str, str, str],
                    rng: np.random.Generator) -> tuple[str, str, str]:
        """A theme sharing no factor with ``user`` and other than the reference's (seeded choice)."""
        strangers = [t for t in self.themes
                     if t != reference and all(a != b for a, b in zip(t, user, strict=True))]
        others = strangers or [t for t in self.themes if t not in (user, reference)]
        if not others:
            raise UserError(f"{self.dataset.root}: no theme other than the user's and the reference's")
        return others[int(rng.integers(len(others)))]

    def sticker(self, theme: tuple[str, str, str], reference: str, size: int, seed: int) -> Image.Image:
        """``theme`` showing the emotion and caption of the ``reference`` sticker."""
        ref = self.row(reference)
        character, palette, style = theme
        return demo.draw_sticker(character, palette, style, ref["emotion"], ref["text"], size,
                                 np.random.default_rng(seed))

    # ------------------------------------------------------------ posters

    def favourites(self, item_ids: Sequence[str]) -> list[str]:
        """First genres of ``item_ids``, most frequent first (ties: the most recently seen first)."""
        genres = [_first_genre(self.row(i)["genres"]) for i in item_ids]
        counts = Counter(genres)
        last = {g: k for k, g in enumerate(genres)}
        return sorted(counts, key=lambda g: (-counts[g], -last[g]))[:N_FAVOURITES]

    @cached_property
    def user_favourites(self) -> dict[str, list[str]]:
        """Each user's favourite genres over all the posters of their samples, in user order."""
        seen: dict[str, list[str]] = {}
        for s in self.dataset.samples():
            items = seen.setdefault(s.user_id, [])
            items += [i for i in (*s.history, s.target_id) if i not in items]
        return {user: self.favourites(items) for user, items in seen.items()}

    def poster(self, genres: Sequence[str], reference: str, height: int) -> Image.Image:
        """The ``reference`` movie's poster (title, layout) drawn in ``genres``."""
        ref = self.row(reference)
        return demo.draw_poster(ref["title"], list(genres), height,
                                demo.poster_rng(int(ref["demo_seed"]), int(reference)))

    def oracle_genres(self, sample: Sample) -> list[str]:
        favourites = self.favourites(sample.history)
        first = _first_genre(self.row(sample.reference_id)["genres"])
        return sorted(favourites, key=lambda g: g != first)

    def other_genres(self, sample: Sample, rng: np.random.Generator) -> list[str]:
        """The favourite genres of another user whose favourites share none with this user's (seeded)."""
        mine = set(self.favourites(sample.history))
        pool = [f for u, f in self.user_favourites.items() if u != sample.user_id and not mine & set(f)]
        if not pool:
            raise UserError(f"{self.dataset.root}: no user whose favourite genres differ from user "
                            f"{sample.user_id}'s ({', '.join(sorted(mine))})")
        return pool[int(rng.integers(len(pool)))]


class KnownAnswer(Generator):
    """A method drawing the answer the demo world's ground truth implies."""

    group = "Sanity"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        self.truth = DemoTruth.of(ctx.dataset, self.name)

    @classmethod
    def unavailable(cls, dataset: Dataset | None) -> str | None:
        return DemoTruth.missing(dataset)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [self.answer(r) for r in requests]

    @abstractmethod
    def answer(self, request: GenerationRequest) -> GenerationResult:
        """The known answer to one request."""


@generators.register("oracle")
class Oracle(KnownAnswer):
    name = "oracle"
    label = "Oracle"

    def answer(self, r: GenerationRequest) -> GenerationResult:
        t, ref = self.truth, r.sample.reference_id
        if t.scenario == "sticker":
            theme = t.theme(r.sample.history[-1])
            return GenerationResult(t.sticker(theme, ref, r.reference_image.width, r.seed), {"theme": theme})
        genres = t.oracle_genres(r.sample)
        return GenerationResult(t.poster(genres, ref, r.reference_image.height), {"genres": genres})


@generators.register("other-user")
class OtherUser(KnownAnswer):
    name = "other-user"
    label = "Other user"

    def answer(self, r: GenerationRequest) -> GenerationResult:
        t, ref = self.truth, r.sample.reference_id
        choice = np.random.default_rng([r.seed, 1])
        if t.scenario == "sticker":
            theme = t.other_theme(t.theme(r.sample.history[-1]), t.theme(ref), choice)
            return GenerationResult(t.sticker(theme, ref, r.reference_image.width, r.seed), {"theme": theme})
        genres = t.other_genres(r.sample, choice)
        return GenerationResult(t.poster(genres, ref, r.reference_image.height), {"genres": genres})
