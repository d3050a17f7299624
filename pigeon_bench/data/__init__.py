"""Datasets: items, samples, builders and the offline demo world."""

from pigeon_bench.data.model import Dataset, Item, Sample

__all__ = ["Dataset", "Item", "Sample"]
