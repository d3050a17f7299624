"""The data model: items, samples and a built dataset folder (items.parquet, samples.parquet, stats.json)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from pigeon_bench import fileio
from pigeon_bench.errors import UserError

ITEM_COLUMNS = ["item_id", "image_path", "semantics"]
SAMPLE_COLUMNS = [
    "sample_id", "user_id", "history", "target_id", "reference_id", "split", "instruction",
]
SPLITS = ("train", "valid", "test")
N_HISTORY = 5


@dataclass(frozen=True)
class Item:
    item_id: str
    image_path: str  # absolute, or relative to the dataset folder
    semantics: str


@dataclass(frozen=True)
class Sample:
    sample_id: str
    user_id: str
    history: tuple[str, ...]  # N_HISTORY item ids, oldest first
    target_id: str
    reference_id: str
    split: str
    instruction: str


class Dataset:
    """A built dataset folder. Image paths resolve relative to the folder unless absolute."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset folder not found: {self.root}")

    @cached_property
    def items_df(self) -> pd.DataFrame:
        return fileio.read_parquet(self.root / "items.parquet", ITEM_COLUMNS)

    @cached_property
    def samples_df(self) -> pd.DataFrame:
        return fileio.read_parquet(self.root / "samples.parquet", SAMPLE_COLUMNS)

    @cached_property
    def stats(self) -> dict:
        return fileio.read_json(self.root / "stats.json")

    @cached_property
    def items(self) -> dict[str, Item]:
        df = self.items_df
        return {
            str(r.item_id): Item(str(r.item_id), str(r.image_path), str(r.semantics))
            for r in df.itertuples(index=False)
        }

    def samples(self, split: str | None = None, limit: int | None = None) -> list[Sample]:
        """Samples of one split (all when None), in file order, at most ``limit``."""
        if split is not None and split not in SPLITS:
            raise UserError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        df = self.samples_df
        if split is not None:
            df = df[df["split"] == split]
        if limit is not None:
            df = df.head(limit)
        out = []
        for r in df.itertuples(index=False):
            history = tuple(str(h) for h in r.history)
            if len(history) != N_HISTORY:
                raise UserError(f"{self.root / 'samples.parquet'}: sample {r.sample_id} has {len(history)} "
                                f"history items, expected {N_HISTORY}")
            out.append(Sample(str(r.sample_id), str(r.user_id), history, str(r.target_id),
                              str(r.reference_id), str(r.split), str(r.instruction)))
        return out

    def item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise UserError(f"{self.root}: unknown item id {item_id!r}") from None

    def image_path(self, item_id: str) -> Path:
        p = Path(self.item(item_id).image_path)
        return p if p.is_absolute() else self.root / p

    @cached_property
    def digest(self) -> str:
        """sha256 of the dataset's tables (items and samples): its identity, and the cache key of what is
        trained on it."""
        import hashlib

        h = hashlib.sha256()
        for name in ("items.parquet", "samples.parquet"):
            path = self.root / name
            h.update(path.read_bytes() if path.is_file() else b"")
        return h.hexdigest()

    @property
    def scenario(self) -> str | None:
        return self.stats.get("scenario")


def write_dataset(out: str | Path, items: pd.DataFrame, samples: pd.DataFrame, stats: dict) -> None:
    """Write a dataset folder deterministically; each file goes through a temporary path and a rename.

    Items may carry extra metadata columns after the required ones (e.g. theme/emotion, title/genres).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    item_columns = ITEM_COLUMNS + [c for c in items.columns if c not in ITEM_COLUMNS]
    fileio.write_parquet(out / "items.parquet", items[item_columns].reset_index(drop=True))
    fileio.write_parquet(out / "samples.parquet", samples[SAMPLE_COLUMNS].reset_index(drop=True))
    fileio.write_json(out / "stats.json", stats)
