"""Importing this module registers every baseline method."""

from baselines import grd, hist, llava, oracle, pmg, ti

__all__ = ["grd", "hist", "llava", "oracle", "pmg", "ti"]
