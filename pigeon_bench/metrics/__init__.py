"""Metrics: backbones (registry, profiles, loading), the feature cache, and pure functions over features.

Importing this package is light (no torch models); heavy modules load on use.
"""

from __future__ import annotations

from pigeon_bench.metrics.aggregate import overall

__all__ = ["overall"]
