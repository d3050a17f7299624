"""The HTML report's gallery: a seeded sample of cases, each with its history, reference and every run's
output (thumbnails as data URIs) and per-sample scores."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pigeon_bench import fileio
from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import format_value, sweep_rows
from pigeon_bench.reports.rows import Row
from pigeon_bench.schema import read_scores


def thumbnail_uri(path: Path, size: int = 160) -> str:
    """A base64 JPEG data URI of an image, at most ``size`` px on its long side."""
    im = fileio.load_rgb(path)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Case:
    sample_id: str
    instruction: str
    history: list[str]
    reference: str | None
    reference_text: str
    outputs: list[tuple[str, str | None, dict[str, str]]]  # (label, data URI, printed scores)


def _printed_scores(values) -> dict[str, str]:
    """One sample's scores as printed, by column label (derived metrics recomputed; set-level ones absent)."""
    out = {}
    for m in table.TABLE:
        if m.per_sample:
            out[m.label] = format_value(values[m.name], m.digits)
        elif m.inputs:
            out[m.label] = format_value(m.function(*(values[i] for i in m.inputs)), m.digits)
    return out


def gallery(rows: list[Row], n_cases: int, seed: int = 0) -> tuple[list[Case], str | None]:
    """A seeded sample of the cases every run of ``rows`` has an image for (a sweep's fixed-α_r rows beside
    its selection are left out); returns (cases, note when degraded)."""
    from pigeon_bench.data import Dataset

    skip = sweep_rows(rows)
    runs = [r for i, r in enumerate(rows) if r.run is not None and i not in skip]
    if not runs or n_cases <= 0:
        return [], None
    common = set.intersection(*(r.run.image_ids() for r in runs))
    if not common:
        return [], "no sample has an image in every run"
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(sorted(common), size=min(n_cases, len(common)), replace=False).tolist())
    data = runs[0].run.manifest_or_empty().get("data")
    data_dir = Path(data) if data else None
    dataset = Dataset(data_dir) if data_dir is not None and data_dir.is_dir() else None
    samples = {s.sample_id: s for s in dataset.samples()} if dataset else {}
    scores = {r.label: read_scores(r.run) if r.run.has_scores() else None for r in runs}
    cases = []
    for sid in chosen:
        s = samples.get(sid)
        outputs = []
        for r in runs:
            frame = scores[r.label]
            shown = _printed_scores(frame.loc[sid]) if frame is not None and sid in frame.index else {}
            outputs.append((r.label, thumbnail_uri(r.run.image_path(sid)), shown))
        cases.append(Case(
            sample_id=sid, instruction=s.instruction if s else "",
            history=[thumbnail_uri(dataset.image_path(h), 96) for h in s.history] if s else [],
            reference=thumbnail_uri(dataset.image_path(s.reference_id)) if s else None,
            reference_text=dataset.item(s.reference_id).semantics if s else "", outputs=outputs))
    note = None if dataset else f"dataset folder {data_dir} not found: history and reference images not shown"
    return cases, note
