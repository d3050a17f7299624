"""Baseline adapters; importing this package registers every baseline method (see pigeon_bench.generation)."""

from baselines import grd, hist

__all__ = ["grd", "hist"]
