"""Sticker scenario from the SER30K release layout (paper §3.1.1, Table 4).

SER30K's own train/val/test files (an emotion-recognition split) are pooled. One user per theme (``topic``);
the user's sequence is the theme's stickers in natural file-name order (``sticker_2`` before ``sticker_10``;
ties by the exact name). Themes with fewer than 6 stickers, or listed in an exclusion file, are left out. A
window of 6 slides with step 1. In train the reference is the target; in valid and test it is a seeded random
sticker of another theme.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pandas as pd

from pigeon_bench.data.build import (
    WINDOW,
    BuildResult,
    SplitMode,
    check_out,
    check_seed,
    finish,
    image_dir_for,
    pick_other_group_references,
    windows_to_samples,
)
from pigeon_bench.errors import UserError

ANNOTATION_FILES = ("train.json", "val.json", "test.json")
# SER30K's ``anno`` labels 1..7. SER30K's public code only uses ``anno - 1`` as a class index and does not
# name the classes; this mapping (the seven categories in alphabetical order) is our assumption. A
# ``categories`` field in an annotation file, or ``emotion_names``, overrides it.
EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
REFERENCE_FROM_OTHER_THEME = ("valid", "test")


def natural_key(name: str) -> tuple:
    """Sort key that compares digit runs as numbers: sticker_2 < sticker_10."""
    parts = re.split(r"(\d+)", name)
    return (tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts), name)


def sticker_semantics(emotion: str, text: str) -> str:
    """The semantics text of a sticker: its emotion and, when present, the text written on it."""
    out = f"a sticker with the emotion of {emotion}"
    text = " ".join(str(text).split())
    return out + (f', with the text "{text}"' if text else "")


def find_annotations(raw: Path) -> list[Path]:
    """Annotations/{train,val,test}.json, or the same under Annotations/image-level/."""
    for folder in (raw / "Annotations", raw / "Annotations" / "image-level"):
        if all((folder / f).is_file() for f in ANNOTATION_FILES):
            return [folder / f for f in ANNOTATION_FILES]
    missing = [f for f in ANNOTATION_FILES if not (raw / "Annotations" / f).is_file()]
    where = raw / "Annotations" / missing[0]
    raise UserError(f"missing file: {where} (also looked in Annotations/image-level/)")


def _category_names(doc: dict, path: Path) -> dict[int, str] | None:
    """Label names from an optional ``categories`` field: {"1": "name"}, ["name", ...] or [{"id", "name"}]."""
    cats = doc.get("categories")
    if not cats:
        return None
    try:
        if isinstance(cats, dict):
            return {int(k): str(v) for k, v in cats.items()}
        if all(isinstance(c, str) for c in cats):
            return {i + 1: c for i, c in enumerate(cats)}
        return {int(c["id"]): str(c["name"]) for c in cats}
    except (TypeError, ValueError, KeyError):
        raise UserError(f"{path}: unreadable 'categories' field") from None


def read_annotations(paths: Sequence[Path]) -> tuple[pd.DataFrame, dict[int, str] | None]:
    """Pool the annotation files: one row per (topic, file_name), first occurrence kept."""
    rows: list[dict] = []
    names: dict[int, str] | None = None
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"not valid JSON: {path} ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
            raise UserError(f"{path}: expected an object with an 'annotations' list")
        names = names or _category_names(doc, path)
        for i, entry in enumerate(doc["annotations"]):
            if not isinstance(entry, dict):
                raise UserError(f"{path}: annotation {i} is not an object")
            missing = [k for k in ("topic", "file_name", "anno") if k not in entry]
            if missing:
                raise UserError(f"{path}: annotation {i} lacks {', '.join(missing)}")
            label = _whole(entry["anno"])
            if label is None:
                raise UserError(f"{path}: annotation {i}: 'anno' is not an integer: {entry['anno']!r}")
            topic, file_name = str(entry["topic"]), str(entry["file_name"])
            for key, value in (("topic", topic), ("file_name", file_name)):
                if not _inside(value):
                    raise UserError(f"{path}: annotation {i}: {key} {value!r} is not a path inside Images/")
            text = entry.get("text") or ""
            rows.append({"topic": topic, "file_name": file_name, "anno": label, "text": str(text),
                         "source": path.name})
    df = pd.DataFrame(rows, columns=["topic", "file_name", "anno", "text", "source"])
    return df, names


def _whole(value: object) -> int | None:
    """An integer label given as 3, 3.0 or "3"; None for anything else (2.5, true, "happy")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return int(value) if isinstance(value, str) and value.strip().isdigit() else None


def _inside(name: str) -> bool:
    """A relative path that stays inside its folder (not empty, not absolute, no '..')."""
    path = PurePosixPath(name)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def read_exclusions(path: Path) -> set[str]:
    """Theme names to leave out, one per line; blank lines and '#' comments ignored."""
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    return {s for line in lines if (s := line.split("#", 1)[0].strip())}


def build_sticker(
    raw: str | Path,
    out: str | Path,
    seed: int = 0,
    split_mode: SplitMode = "random",
    exclude: str | Path | None = None,
    emotion_names: Sequence[str] | None = None,
    relative_paths: bool = False,
    force: bool = False,
) -> BuildResult:
    """Build the sticker dataset from a SER30K-layout folder (Annotations/*.json, Images/<topic>/<file>).

    An existing different dataset in ``out`` is replaced only with ``force``.
    """
    from pigeon_bench.scenarios import scenarios

    raw, out = Path(raw), Path(out)
    check_seed(seed)
    check_out(out)
    if not raw.is_dir():
        raise UserError(f"SER30K folder not found: {raw}")
    images_root = raw / "Images"
    if not images_root.is_dir():
        raise UserError(f"missing folder: {images_root}")
    annos, file_names = read_annotations(find_annotations(raw))
    if annos.empty:
        raise UserError(f"{raw / 'Annotations'}: the annotation files list no stickers")
    if emotion_names is not None:
        if len(emotion_names) != len(EMOTIONS):
            raise UserError(f"--emotion-names needs {len(EMOTIONS)} names, got {len(emotion_names)}")
        if not all(emotion_names) or len(set(emotion_names)) != len(emotion_names):
            raise UserError(f"--emotion-names needs {len(EMOTIONS)} different, non-empty names")
        names = {i + 1: n for i, n in enumerate(emotion_names)}
    else:
        names = file_names or {i + 1: n for i, n in enumerate(EMOTIONS)}
    bad = annos.loc[~annos["anno"].isin(list(names)), "anno"]
    if len(bad):
        raise UserError(f"emotion label {int(bad.iloc[0])} outside {min(names)}..{max(names)}")

    dropped: dict[str, int] = {}
    duplicated = annos.duplicated(["topic", "file_name"], keep="first")
    dropped["duplicate_annotations"] = int(duplicated.sum())
    annos = annos[~duplicated]
    pairs = zip(annos["topic"], annos["file_name"], strict=True)
    exists_s = pd.Series([(images_root / t / f).is_file() for t, f in pairs], index=annos.index, dtype=bool)
    dropped["stickers_without_image"] = int((~exists_s).sum())
    if not exists_s.any():
        first = annos.iloc[0]
        example = images_root / first["topic"] / first["file_name"]
        raise UserError(f"no annotated sticker has its image file (e.g. {example} is missing)")
    annos = annos[exists_s]
    excluded = read_exclusions(Path(exclude)) if exclude is not None else set()
    is_excluded = annos["topic"].isin(excluded)
    dropped["themes_excluded"] = int(annos.loc[is_excluded, "topic"].nunique())
    if is_excluded.all():
        raise UserError(f"--exclude {exclude} leaves out every theme")
    annos = annos[~is_excluded]
    sizes = annos.groupby("topic")["file_name"].transform("size")
    dropped["themes_too_small"] = int(annos.loc[sizes < WINDOW, "topic"].nunique())
    no_samples = (f"no theme has {WINDOW} or more stickers with an image file (the largest has "
                  f"{int(sizes.max())})")
    annos = annos[sizes >= WINDOW]

    # Fixed order: themes by name, stickers by natural file-name order; item ids number them in that order.
    annos = annos.assign(_key=[natural_key(f) for f in annos["file_name"]])
    annos = annos.sort_values(["topic", "_key"], kind="stable").drop(columns="_key").reset_index(drop=True)
    annos["item_id"] = [str(i) for i in range(len(annos))]
    annos["emotion"] = [names[a] for a in annos["anno"]]
    images_prefix = image_dir_for(images_root, out, relative_paths)
    items = pd.DataFrame({
        "item_id": annos["item_id"],
        "image_path": [os.path.join(images_prefix, t, f)
                       for t, f in zip(annos["topic"], annos["file_name"], strict=True)],
        "semantics": [sticker_semantics(e, t) for e, t in zip(annos["emotion"], annos["text"], strict=True)],
        "theme": annos["topic"],
        "file_name": annos["file_name"],
        "emotion": annos["emotion"],
        "text": annos["text"],
    })
    sequences = [(topic, group["item_id"].tolist()) for topic, group in annos.groupby("topic", sort=True)]
    samples = windows_to_samples(sequences, scenarios.get("sticker").instruction, split_mode, seed)
    theme_of = dict(zip(annos["item_id"], annos["topic"], strict=True))
    samples["reference_id"] = pick_other_group_references(samples, theme_of, REFERENCE_FROM_OTHER_THEME, seed)
    return finish("sticker", out, items, samples, dropped, no_samples=no_samples, force=force,
                  split_mode=split_mode, seed=seed, source="SER30K",
                  emotions={str(k): v for k, v in sorted(names.items())})
