"""Atomic writes (temporary path, then rename) and robust image loading."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pigeon_bench.errors import UserError

ARTIFACT_MARKER = ".pigeon-bench-done"  # written into a finished cache artifact; not part of its content


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed over ``dest``, else removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``dest`` whole (an existing ``dest`` is moved
    aside first and removed after), else it is removed. Readers see the old folder or the new one."""
    import shutil

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; give the folder ordinary permissions
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(dest: str | Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | Path, obj: Any) -> None:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline)."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not valid JSON: {path} ({exc})") from None


def write_parquet(dest: str | Path, df) -> None:  # df: pandas.DataFrame
    """Write a DataFrame as parquet, byte-identical for identical input."""
    with atomic_path(dest) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")


def read_parquet(path: str | Path, required: list[str] | None = None):
    """Read parquet, checking required columns; errors name the file and the missing columns."""
    import pandas as pd
    import pyarrow

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        df = pd.read_parquet(path, engine="pyarrow")
    except (pyarrow.ArrowException, OSError) as exc:
        raise UserError(f"cannot read parquet {path}: {exc}") from None
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def save_image(dest: str | Path, image: Image.Image) -> None:
    """Save an image atomically; the format follows the suffix (PNG recommended: lossless, deterministic)."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        image.save(tmp, format=Image.registered_extensions().get(dest.suffix.lower(), "PNG"))


def folder_fingerprint(root: str | Path, *, content: bool = False, exclude: tuple[str, ...] = ()) -> str:
    """A short id of a model folder, independent of where it lies (first 16 hex digits of a sha256).

    It covers every file's relative path and, with ``content``, every byte; otherwise the JSON files' bytes
    and the other files' sizes, which is cheap for a many-GB checkpoint. ``exclude`` names files or folders
    to skip.
    """
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.name == ARTIFACT_MARKER or (exclude and any(part in exclude for part in rel.parts)):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        whole = content or path.suffix == ".json"
        h.update(path.read_bytes() if whole else str(path.stat().st_size).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def load_rgb(path: str | Path) -> Image.Image:
    """Load any image (grayscale, RGBA, palette, 16-bit, animated: first frame) as 8-bit RGB.

    Transparent pixels are composited on white, the way stickers are displayed.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing image: {path}")
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"corrupt or unreadable image: {path} ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha over white, 16-bit scaled down)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")
