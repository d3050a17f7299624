"""Metrics: the metric table (table), backbones (registry, loading, tiny stand-ins), the feature cache, and
the pure functional layer (functional, aggregate) the table's entries name.

Importing this package is light (no torch models); heavy modules load on use.
"""

from __future__ import annotations

from pigeon_bench.metrics.aggregate import overall

__all__ = ["overall"]
