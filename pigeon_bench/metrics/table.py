"""The metric table: one declarative entry per metric of the paper's Table 1 (in the manner of torchmetrics'
functional/modular twins and torch-fidelity's registry).

Each entry says what the metric is computed from (the backbone whose features feed it, what a generated image
is paired with), how it is computed (a function of the pure functional layer, by name, so that reading the
table imports no torch) and how it is shown (label, direction, digits). The scorer, the results schema, the
reports and ``compare`` all read it; no other module keeps its own list of metrics, directions or digits.

Entries are in Table 1's column order: Overall, personalization (p_ = vs the 5 history images), semantic
alignment (a_ = vs the reference), FID.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pigeon_bench.errors import UserError

# What a generated image is paired with (per sample): its history images (or their texts), or its reference.
HISTORY, REFERENCE = "history", "reference"
# What the pairs' features are compared with: images, or texts (the items' semantics, CLIP's text tower).
IMAGE, TEXT = "image", "text"
# How the function reads features: one embedding per image (cosine), LPIPS' per-layer maps, MS-SSIM's
# per-image terms of the resized pixels, one feature vector per image over the whole set (FID), or other
# metrics' per-sample values (Overall).
EMBEDDING, MAPS, PIXELS, SET, DERIVED = "embedding", "maps", "pixels", "set", "derived"


@dataclass(frozen=True)
class Family:
    """A group of Table 1 columns: its heading and the abbreviation a Markdown header uses."""

    name: str
    abbr: str


PERSONALIZATION = Family("Personalization", "Pers.")
SEMANTIC_ALIGNMENT = Family("Semantic alignment", "Sem.")


@dataclass(frozen=True)
class Metric:
    """One metric: a column of a run's per-sample scores (per-sample metrics) and of every report."""

    name: str
    short: str  # the paper's column name (CS, CIS, ...)
    higher_is_better: bool
    digits: int  # decimals printed, as the paper prints them
    kind: str  # EMBEDDING, MAPS, PIXELS, SET or DERIVED (see above)
    fn: str  # "module:function" of pigeon_bench.metrics (the pure functional layer)
    backbone: str | None = None  # weight-table id of the model whose features feed fn (None: no model)
    pairing: str | None = None  # HISTORY or REFERENCE (None: derived from other metrics)
    against: str = IMAGE  # IMAGE or TEXT: what the paired side's features are
    family: Family | None = None
    inputs: tuple[str, ...] = ()  # DERIVED: the metrics fn combines, in its argument order
    formula: str | None = None  # DERIVED: fn in words, as a report's legend prints it

    @property
    def per_sample(self) -> bool:
        """One value per sample (a column of the per-sample scores); else one per run (FID, Overall)."""
        return self.kind not in (SET, DERIVED)

    @property
    def label(self) -> str:
        """The short column label ("Pers. CIS", "FID")."""
        return f"{self.family.abbr} {self.short}" if self.family else self.short

    @property
    def title(self) -> str:
        """The long column label ("Personalization CIS", "FID")."""
        return f"{self.family.name} {self.short}" if self.family else self.short

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def latex_arrow(self) -> str:
        return r"$\uparrow$" if self.higher_is_better else r"$\downarrow$"

    @property
    def function(self) -> Callable[..., Any]:
        """The function of the functional layer that computes this metric (imported on first use)."""
        module, _, name = self.fn.partition(":")
        return getattr(importlib.import_module(f"pigeon_bench.metrics.{module}"), name)


_P, _A = PERSONALIZATION, SEMANTIC_ALIGNMENT
_COSINE = "functional:cosine_100"
TABLE: tuple[Metric, ...] = (
    Metric("overall", "Overall", True, 2, DERIVED, "aggregate:overall", inputs=("p_cis", "a_cs"),
           formula="(CIS + CS) / 2"),
    Metric("p_cs", "CS", True, 2, EMBEDDING, _COSINE, "clip", HISTORY, TEXT, _P),
    Metric("p_cis", "CIS", True, 2, EMBEDDING, _COSINE, "clip", HISTORY, IMAGE, _P),
    Metric("p_dis", "DIS", True, 2, EMBEDDING, _COSINE, "dino", HISTORY, IMAGE, _P),
    Metric("p_lpips", "LPIPS", False, 4, MAPS, "functional:lpips_from_maps", "lpips-vgg", HISTORY, IMAGE, _P),
    Metric("p_msssim", "MS-SSIM", True, 4, PIXELS, "functional:ms_ssim_from_stats", None, HISTORY, IMAGE, _P),
    Metric("a_cs", "CS", True, 2, EMBEDDING, _COSINE, "clip", REFERENCE, TEXT, _A),
    Metric("a_cis", "CIS", True, 2, EMBEDDING, _COSINE, "clip", REFERENCE, IMAGE, _A),
    Metric("a_dis", "DIS", True, 2, EMBEDDING, _COSINE, "dino", REFERENCE, IMAGE, _A),
    Metric("fid", "FID", False, 2, SET, "functional:frechet_distance", "fid-inception", REFERENCE),
)
METRICS: dict[str, Metric] = {m.name: m for m in TABLE}
NAMES: tuple[str, ...] = tuple(METRICS)
PER_SAMPLE: tuple[Metric, ...] = tuple(m for m in TABLE if m.per_sample)
BACKBONES: tuple[str, ...] = tuple(dict.fromkeys(m.backbone for m in TABLE if m.backbone))


def get(name: str) -> Metric:
    """A metric by name (unknown names: a one-line UserError listing the known ones)."""
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r} (known: {', '.join(NAMES)})")
    return METRICS[name]


def check_names(names: tuple[str, ...] | list[str]) -> None:
    """Refuse unknown metric names, all of them in one line."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(NAMES)})")
