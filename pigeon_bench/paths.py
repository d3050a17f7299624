"""Where pigeon-bench keeps caches and outputs."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "PIGEON_BENCH_CACHE"


def cache_dir(override: str | Path | None = None) -> Path:
    """The cache root: explicit override, else $PIGEON_BENCH_CACHE, else the user's cache dir."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(platformdirs.user_cache_dir("pigeon-bench"))
