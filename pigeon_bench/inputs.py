"""What to score when the images are not a run folder: folders of image files, or a manifest file.

Folders (as torch-fidelity and clean-fid users keep images)::

    GENERATED/<sample_id>.<ext>        one generated image per sample
    REFERENCE/<sample_id>.<ext>        its reference image
    HISTORY/<sample_id>/<any>.<ext>    its history images (sorted by name), or HISTORY/<sample_id>_<k>.<ext>

A manifest (CSV or JSONL) has one row per sample: ``sample_id``, ``generated``, ``history`` (a JSON list, or
paths joined by ``;`` in a CSV), ``reference`` and, optionally, ``history_texts`` (likewise a list) and
``reference_text``. Relative paths are read from the manifest's folder. Without texts the text metrics
(CLIP score) are skipped and named. Images may be PNG, JPEG, WebP, BMP or TIFF.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pigeon_bench.errors import UserError
from pigeon_bench.scoring import SampleInputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _images(folder: Path) -> dict[str, Path]:
    """stem -> file of the images directly in ``folder``; two files of one stem are an error."""
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in out:
                raise UserError(f"{folder}: two images for {p.stem!r} ({out[p.stem].name}, {p.name})")
            out[p.stem] = p
    return out


def _history(folder: Path, sample_id: str, flat: dict[str, Path]) -> list[Path]:
    sub = folder / sample_id
    if sub.is_dir():
        return list(_images(sub).values())
    prefix = f"{sample_id}_"
    return [p for stem, p in sorted(flat.items()) if stem.startswith(prefix) and stem[len(prefix):].isdigit()]


def from_folders(generated: str | Path, history: str | Path, reference: str | Path) -> list[SampleInputs]:
    """One sample per generated image, with the reference and history images of the same sample id."""
    gen, ref = _images(Path(generated)), _images(Path(reference))
    flat = _images(Path(history))
    if not gen:
        raise UserError(f"{generated}: no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for sid, g in gen.items():
        if sid not in ref:
            raise UserError(f"{reference}: no reference image for sample {sid!r}")
        hist = _history(Path(history), sid, flat)
        if not hist:
            raise UserError(f"{history}: no history images for sample {sid!r} (expected {sid}/*.png or "
                            f"{sid}_0.png, {sid}_1.png, ...)")
        out.append(SampleInputs(sid, g, hist, None, ref[sid], None))
    return out


def _list(value, column: str, row: int) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value).strip()
    if text.startswith("["):
        try:
            return [str(v) for v in json.loads(text)]
        except json.JSONDecodeError:
            raise UserError(f"row {row}: {column} is not a JSON list: {text[:60]!r}") from None
    return [v.strip() for v in text.split(";") if v.strip()]


def from_manifest(path: str | Path) -> list[SampleInputs]:
    """The samples of a CSV or JSONL manifest (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("sample_id", "generated", "history", "reference") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise UserError(f"{path}: no samples")
    has_texts = "history_texts" in df.columns and "reference_text" in df.columns
    base = path.parent
    out = []
    for i, r in enumerate(df.to_dict("records"), start=1):
        hist = [base / h for h in _list(r["history"], "history", i)]
        if not hist:
            raise UserError(f"{path}: row {i} (sample {r['sample_id']!r}) has no history images")
        texts = _list(r["history_texts"], "history_texts", i) if has_texts else None
        if texts is not None and len(texts) != len(hist):
            raise UserError(f"{path}: row {i} has {len(hist)} history images but {len(texts)} history texts")
        out.append(SampleInputs(str(r["sample_id"]), base / str(r["generated"]), hist, texts,
                                base / str(r["reference"]), str(r["reference_text"]) if has_texts else None))
    ids = [s.sample_id for s in out]
    if len(set(ids)) != len(ids):
        raise UserError(f"{path}: sample ids repeat (e.g. {next(i for i in ids if ids.count(i) > 1)!r})")
    return out


def score_folders(generated: str | Path, history: str | Path, reference: str | Path,
                  profile: str = "paper", **scorer_options) -> pd.DataFrame:
    """Per-sample metrics of folders of images (see ``from_folders``), as a DataFrame."""
    from pigeon_bench.scoring import score_samples

    return score_samples(from_folders(generated, history, reference), profile, **scorer_options)

