"""Shared fixtures. Tests run offline: HF_HUB_OFFLINE=1 is set before anything imports transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def _session_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo-world folder for the whole session: the demo world is built at most once per seed and size."""
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                    _session_demo_dir: Path) -> None:
    """Every test gets its own pigeon-bench cache (sharing only the session's demo world)."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "demo").symlink_to(_session_demo_dir, target_is_directory=True)
    monkeypatch.setenv("PIGEON_BENCH_CACHE", str(cache))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (read-only project material); tests using it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED} (it sits beside the checkout in dev and CI)")
    return SHARED
