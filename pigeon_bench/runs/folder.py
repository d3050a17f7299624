"""The run folder, the toolkit's central contract; no other module spells its file names.

A run folder holds one method's images for one split (and one α_r)::

    RUN/manifest.json          method, label, group, scenario, data, dataset digest, split, profile, alpha_r,
                               seed, options, versions, models, timings, counts, sample_ids, complete
    RUN/images/<sample_id>.png
    RUN/meta/<sample_id>.json  the generator's metadata (e.g. the prompt used), where it returned any
    RUN/scores.parquet         per-sample scores (written by scoring)
    RUN/summary.json           means, CIs and FID (written by scoring)
    RUN/selection.parquet      a selection's per-sample choice of α_r

A sweep is a folder whose manifest lists ``"sweep": [0.0, ..., 1.0]``, with one run folder per α_r
(``SWEEP/alpha_r=0.3/``) and its selections, run folders too (``SWEEP/selected/``, ``SWEEP/valid-chosen/``).
Other parameter sweeps (Fig. 4 (b): ``alpha_h=0.2/``) use the same ``param=value`` naming.
An image on disk is a finished item: a rerun generates only the missing ones.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.errors import UserError

MANIFEST = "manifest.json"
IMAGES = "images"
META = "meta"
SCORES = "scores.parquet"
SUMMARY = "summary.json"
SELECTION = "selection.parquet"
SELECTED = "selected"
VALID_CHOSEN = "valid-chosen"
IMAGE_SUFFIX = ".png"


def param_dirname(param: str, value: float) -> str:
    """``alpha_r=0.3``: the folder of one point of a sweep."""
    return f"{param}={value:.1f}"


def parse_param_dirname(name: str) -> tuple[str, float] | None:
    """("alpha_r", 0.3) from ``alpha_r=0.3``; None for other names."""
    param, sep, value = name.partition("=")
    if not sep or not param:
        return None
    try:
        return param, float(value)
    except ValueError:
        return None


class RunFolder:
    """One run folder: paths, manifest, images, metadata, scores and summary."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------ paths

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def images_dir(self) -> Path:
        return self.path / IMAGES

    @property
    def scores_path(self) -> Path:
        return self.path / SCORES

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def selection_path(self) -> Path:
        return self.path / SELECTION

    def image_path(self, sample_id: str) -> Path:
        return self.images_dir / f"{sample_id}{IMAGE_SUFFIX}"

    def meta_path(self, sample_id: str) -> Path:
        return self.path / META / f"{sample_id}.json"

    # ------------------------------------------------------------ manifest

    def exists(self) -> bool:
        """Whether a manifest is there (the folder is a run folder)."""
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest; a one-line error when the folder or the manifest is missing."""
        if not self.path.is_dir():
            raise UserError(f"run folder not found: {self.path}")
        if not self.exists():
            raise UserError(f"{self.path} is not a run folder (no {MANIFEST})")
        return fileio.read_json(self.manifest_path)

    def manifest_or_empty(self) -> dict[str, Any]:
        """The manifest, or {} for a folder of images without one (scored against an explicit dataset)."""
        if not self.path.is_dir():
            raise UserError(f"run folder not found: {self.path}")
        return fileio.read_json(self.manifest_path) if self.exists() else {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        fileio.write_json(self.manifest_path, manifest)

    @property
    def is_sweep(self) -> bool:
        return self.exists() and "sweep" in self.manifest()

    def check_empty_or_run(self) -> None:
        """Refuse a folder that holds files but is not a run folder (nothing is written into it)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} exists and is a file, not a folder; choose another --out")
        if not self.exists() and self.path.is_dir() and any(self.path.iterdir()):
            raise UserError(f"{self.path} exists and is not a run folder (no {MANIFEST}); "
                            "choose another --out")

    # ------------------------------------------------------------ images and metadata

    def image_ids(self) -> set[str]:
        """Sample ids with an image (temporary files of a killed write are skipped)."""
        if not self.images_dir.is_dir():
            return set()
        return {p.stem for p in self.images_dir.glob(f"*{IMAGE_SUFFIX}") if not p.name.startswith(".")}

    def has_image(self, sample_id: str) -> bool:
        return self.image_path(sample_id).is_file()

    def write_image(self, sample_id: str, image: Image.Image) -> None:
        fileio.save_image(self.image_path(sample_id), fileio.to_rgb(image))

    def write_meta(self, sample_id: str, meta: dict[str, Any]) -> None:
        fileio.write_json(self.meta_path(sample_id), meta)

    def read_meta(self, sample_id: str) -> dict[str, Any] | None:
        path = self.meta_path(sample_id)
        return fileio.read_json(path) if path.is_file() else None

    def drop_temp_files(self) -> None:
        """Remove what a killed write left behind (hidden temporary files)."""
        for folder in (self.images_dir, self.path / META):
            for tmp in folder.glob(".*.tmp*"):
                tmp.unlink()

    def copy_items_from(self, picks: Sequence[tuple[str, RunFolder]]) -> None:
        """Copy each (sample_id, source run)'s image and metadata into this folder."""
        for sid, src in picks:
            fileio.write_bytes(self.image_path(sid), src.image_path(sid).read_bytes())
            meta = src.meta_path(sid)
            if meta.is_file():
                fileio.write_bytes(self.meta_path(sid), meta.read_bytes())

    # ------------------------------------------------------------ scores and summary

    def has_scores(self) -> bool:
        return self.scores_path.is_file()

    def has_summary(self) -> bool:
        return self.summary_path.is_file()

    def read_scores(self, columns: Sequence[str] = ()) -> pd.DataFrame:
        df = fileio.read_parquet(self.scores_path, ["sample_id", *columns])
        return df.assign(sample_id=df["sample_id"].astype(str))

    def write_scores(self, df: pd.DataFrame) -> None:
        fileio.write_parquet(self.scores_path, df)

    def read_summary(self) -> dict[str, Any]:
        if not self.has_summary():
            raise UserError(f"{self.path} is not scored (no {SUMMARY}); score it first: "
                            f"pigeon-bench score {self.path}")
        return fileio.read_json(self.summary_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        fileio.write_json(self.summary_path, summary)

    def copy_scores_from(self, src: RunFolder, summary_update: dict[str, Any]) -> None:
        """The same images as ``src``, hence the same scores: copied, not recomputed."""
        fileio.write_bytes(self.scores_path, src.scores_path.read_bytes())
        if src.has_summary():
            self.write_summary({**src.read_summary(), **summary_update})

    def read_selection(self) -> pd.DataFrame:
        return fileio.read_parquet(self.selection_path, ["sample_id", "alpha_r"])

    def write_selection(self, df: pd.DataFrame) -> None:
        fileio.write_parquet(self.selection_path, df)

    def scored_since_change(self) -> bool:
        """Whether scores and a summary exist and the summary was written after the manifest."""
        return self.has_scores() and newer(self.summary_path, [self.manifest_path])

    def clear(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path)


class Sweep(RunFolder):
    """A sweep folder: its α_r run folders and its selections."""

    PARAM = "alpha_r"

    def alphas(self) -> list[float]:
        manifest = self.manifest()
        if "sweep" not in manifest:
            raise UserError(f"{self.path} is not a sweep (generate it with --sweep)")
        return [float(a) for a in manifest["sweep"]]

    def point(self, alpha_r: float) -> RunFolder:
        return RunFolder(self.path / param_dirname(self.PARAM, alpha_r))

    def runs(self) -> list[RunFolder]:
        return [self.point(a) for a in self.alphas()]

    def run_names(self) -> list[str]:
        return [r.name for r in self.runs()]

    @property
    def selected(self) -> RunFolder:
        return RunFolder(self.path / SELECTED)

    @property
    def valid_chosen(self) -> RunFolder:
        return RunFolder(self.path / VALID_CHOSEN)

    def read_scores_by_alpha(self, columns: Sequence[str]) -> dict[float, pd.DataFrame]:
        return {a: self.point(a).read_scores(columns) for a in self.alphas()}


def open_run(path: str | Path) -> RunFolder:
    """A Sweep or a RunFolder, by what the manifest says (a folder without one is a plain RunFolder)."""
    run = RunFolder(path)
    return Sweep(run.path) if run.is_sweep else run


def scoreable(path: str | Path) -> list[RunFolder]:
    """The run folders that ``path`` stands for when scoring: itself, or a sweep's α_r folders."""
    run = open_run(path)
    return run.runs() if isinstance(run, Sweep) else [run]


def param_points(path: str | Path) -> list[tuple[str, float, RunFolder]]:
    """A sweep-like folder's ``param=value`` sub-runs, sorted by value."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"sweep folder not found: {folder}")
    out = []
    for sub in folder.iterdir():
        parsed = parse_param_dirname(sub.name)
        if sub.is_dir() and parsed is not None:
            out.append((parsed[0], parsed[1], RunFolder(sub)))
        elif sub.is_dir() and "=" in sub.name:
            raise UserError(f"{sub}: sweep sub-run value {sub.name.partition('=')[2]!r} is not a number")
    return sorted(out, key=lambda t: (t[0], t[1]))


def report_runs(path: str | Path) -> list[RunFolder]:
    """The scored runs a report shows for ``path``: a scored run itself; a sweep's selections (and its
    scored α_r runs); a folder of runs (what ``run`` writes), every scored run under it except the
    valid-split sweeps used only for selection."""
    run = open_run(path)
    if isinstance(run, Sweep):
        picks = [r for r in (run.selected, run.valid_chosen) if r.has_summary()]
        return picks + [r for r in run.runs() if r.has_summary()]
    if run.exists() or run.has_summary():
        return [run]
    if not run.path.is_dir():
        raise UserError(f"run folder not found: {run.path}")
    out: list[RunFolder] = []
    for child in sorted(p for p in run.path.iterdir() if p.is_dir()):
        sub = RunFolder(child)
        if sub.exists() and sub.manifest().get("split") == "valid":
            continue
        if sub.exists() or sub.has_summary() or any(c.is_dir() for c in child.iterdir()):
            out += [r for r in report_runs(child) if r not in out]
    return out


def walk(root: str | Path) -> Iterator[RunFolder]:
    """Every run folder (with a manifest) at or below ``root``."""
    for manifest in sorted(Path(root).rglob(MANIFEST)):
        yield RunFolder(manifest.parent)


def newer(path: Path, deps: Sequence[Path]) -> bool:
    """Whether ``path`` exists and was written after every one of ``deps``."""
    return path.is_file() and all(path.stat().st_mtime_ns >= d.stat().st_mtime_ns for d in deps)
