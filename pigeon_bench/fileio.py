"""Atomic writes (temporary path, then rename) and robust image loading."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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
    aside first, put back if the swap fails, and removed after), else it is removed. Readers see the old
    folder or the new one. ``dest`` is resolved first (``.`` works; a symlink's target is replaced)."""
    dest = Path(dest).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp creates 0700; give the folder ordinary permissions
        old = tmp.with_suffix(".old")  # unique to this call, like tmp
        if dest.exists():
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old.exists():
                os.replace(old, dest)
            raise
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def whole_dir(dest: str | Path, what: str) -> Iterator[Path]:
    """``atomic_dir`` for a folder a user named: an OSError (a full disk, no permission, a file in the way)
    is a one-line UserError naming ``what`` and ``dest``, and ``dest`` is left as it was."""
    dest = Path(dest)
    try:
        with atomic_dir(dest) as tmp:
            yield tmp
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise UserError(f"cannot write {what} {dest}: {exc.strerror or exc}{where}; nothing was changed") \
            from None


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
    write_bytes(dest, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline), UTF-8."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode("utf-8")


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
    write_bytes(dest, parquet_bytes(df))


def parquet_bytes(df) -> bytes:  # df: pandas.DataFrame
    """A DataFrame as parquet, byte-identical for identical input."""
    buffer = io.BytesIO()
    df.to_parquet(buffer, index=False, engine="pyarrow", compression="zstd")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_parquet(path: str | Path, required: list[str] | None = None, digest: str | None = None):
    """Read parquet, checking required columns and, given ``digest``, that the file's sha256 is that one;
    errors name the file and what is wrong."""
    import pandas as pd
    import pyarrow

    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    data = path.read_bytes()
    if digest is not None and sha256(data) != digest:
        raise UserError(f"{path} is not the file its folder recorded (sha256 differs): an interrupted write "
                        "or a replaced file; write the folder again")
    try:
        df = pd.read_parquet(io.BytesIO(data), engine="pyarrow")
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


MAX_PIXELS_ENV = "PIGEON_BENCH_MAX_IMAGE_PIXELS"
_PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's default, 89,478,485
_ORIENTATION = 0x0112  # the EXIF tag
_FLOAT_SLACK = 1 / 512  # float pixels this far outside 0..1 still round to 0 or 255


def max_image_pixels() -> int:
    """Pillow's decompression-bomb guard, set here from PIGEON_BENCH_MAX_IMAGE_PIXELS (default Pillow's):
    Pillow warns about an image of more pixels and refuses one of more than twice as many."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        limit = int(raw) if raw else _PILLOW_MAX_PIXELS
    except ValueError:
        limit = 0
    if limit < 1:
        raise UserError(f"{MAX_PIXELS_ENV} must be a whole number of pixels above 0, got {raw!r}")
    Image.MAX_IMAGE_PIXELS = limit
    return limit


def load_rgb(path: str | Path) -> Image.Image:
    """Load any image (see ``to_rgb``; animated: the first frame) as 8-bit RGB; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing image: {path}")
    limit = max_image_pixels()
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            return to_rgb(im)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        need = f"to {math.ceil(int(found.group(1)) / 2)} or more" if found else "higher"
        raise UserError(f"{path}: {size} is above the limit of {2 * limit:,} pixels (twice {MAX_PIXELS_ENV}="
                        f"{limit}, a guard against decompression bombs); set {MAX_PIXELS_ENV} {need} to read "
                        "it") from None
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"corrupt or unreadable image: {path} ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied; transparency composited over white; 16-bit
    scaled from 0..65535; 32-bit integers from 0..65535 when they fit, else from 0..2**31-1 (negatives
    black); 32-bit floats from 0..1 (a float image with values outside 0..1 is refused)."""
    im = _upright(im)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = Image.fromarray(_gray8(im), "L")
    if im.mode == "La":
        im = im.convert("LA")  # Pillow converts premultiplied La to LA only
    if im.mode in ("P", "PA", "RGBa") or "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _upright(im: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a camera JPEG shot upright is stored sideways)."""
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):  # a broken EXIF block is not a broken picture
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _gray8(im: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image as 8-bit values, scaled from the mode's range."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        arr = np.nan_to_num(arr, nan=0.0)
        if arr.size and (arr.min() < -_FLOAT_SLACK or arr.max() > 1 + _FLOAT_SLACK):
            raise UserError(f"a float image holds values {arr.min():g}..{arr.max():g}, outside 0..1")
        peak = 1.0
    elif im.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
        peak = 2.0**31 - 1
    else:
        peak = 65535.0
    return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
