"""The artifact cache: everything pigeon-bench builds once and reuses (tiny models, trained adapters and
checkpoints, captions, the demo world, weight digests), with one set of guarantees.

- ``ensure(kind, key, build)``: the folder ``<cache>/<kind>/<key>/``, built at most once. Concurrent callers
  serialise on a file lock; the builder fills a work folder beside the final one, which gets a done marker
  and is renamed into place whole, so a reader sees a complete artifact or none. A killed build leaves only
  the work folder, which a ``resumable`` builder continues (training resumes from its last saved step) and
  any other builder starts afresh. Final folders get ordinary permissions (0777 minus the umask).
- ``update_json(path, change)``: a small shared JSON file changed under a lock, written atomically.
- ``digest`` / ``image_digest`` / ``text_digest``: the content digests every cache key is made of.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.paths import cache_dir

log = logging.getLogger("pigeon_bench")

DONE = fileio.ARTIFACT_MARKER  # marker file inside a finished artifact folder


def digest(*parts: Any, length: int | None = None) -> str:
    """sha256 hex of the parts (bytes, or anything JSON-serialisable with sorted keys), each framed."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    out = h.hexdigest()
    return out[:length] if length else out


def image_digest(im: Image.Image) -> str:
    """sha256 of the decoded 8-bit RGB pixels and size: one picture keys the same entry in any file format."""
    im = fileio.to_rgb(im)
    h = hashlib.sha256(f"rgb8:{im.size[0]}x{im.size[1]}:".encode())
    h.update(np.asarray(im, dtype=np.uint8).tobytes())
    return h.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(("text:" + text).encode("utf-8")).hexdigest()


def artifact_dir(kind: str, key: str, root: str | Path | None = None) -> Path:
    return cache_dir(root) / kind / key


def is_done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def ensure(kind: str, key: str, build: Callable[[Path], None], *, root: str | Path | None = None,
           what: str | None = None, resumable: bool = False) -> Path:
    """The artifact folder ``<cache>/<kind>/<key>``, calling ``build(work_folder)`` once if it is missing.

    ``what`` is logged (at warning level, so a user sees why a command takes longer) before building.
    """
    final = artifact_dir(kind, key, root)
    if is_done(final):
        return final
    from filelock import FileLock

    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        if is_done(final):
            return final
        work = final.parent / f".{final.name}.partial"
        if work.exists() and not resumable:
            shutil.rmtree(work)
        work.mkdir(exist_ok=True)
        if what:
            log.warning("%s -> %s", what, final)
        build(work)
        (work / DONE).write_text(json.dumps({"kind": kind, "key": key}) + "\n")
        _ordinary_permissions(work)
        if final.exists():  # an incomplete folder from an older layout
            shutil.rmtree(final)
        os.replace(work, final)
    return final


def _ordinary_permissions(folder: Path) -> None:
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)


def update_json(path: str | Path, change: Callable[[dict], dict]) -> dict:
    """Read a shared JSON object (missing or unreadable: {}), apply ``change`` and write it back, under a
    file lock so that concurrent processes never lose each other's entries."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            current = {}
        new = change(dict(current))
        if new != current:
            fileio.write_json(path, new)
    return new
