"""Baseline adapters; importing this package registers every baseline method (see pigeon_bench.generation)."""

from baselines import grd, hist, llava, pmg, ti

__all__ = ["grd", "hist", "llava", "pmg", "ti"]
