"""The data model: items, samples and a built dataset folder (items.parquet, samples.parquet, stats.json).

stats.json records the sha256 of the two tables (``sha256``); a folder whose tables are not the recorded
ones (an interrupted write, a file copied in from another build) is refused when a table is read. Folders
written before the digests existed load unchecked.
"""

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
TABLES = ("items.parquet", "samples.parquet")
DATASET_FILES = (*TABLES, "stats.json")
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
        return self._table("items.parquet", ITEM_COLUMNS)

    @cached_property
    def samples_df(self) -> pd.DataFrame:
        return self._table("samples.parquet", SAMPLE_COLUMNS)

    def _table(self, name: str, columns: list[str]) -> pd.DataFrame:
        """A table, checked against the sha256 that stats.json records (when it records one)."""
        recorded = self.stats.get("sha256", {}) if (self.root / "stats.json").is_file() else {}
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise UserError(f"{self.root / 'stats.json'}: 'sha256' is not a map of file names to digests")
        return fileio.read_parquet(self.root / name, columns, digest=recorded.get(name))

    @cached_property
    def stats(self) -> dict:
        stats = fileio.read_json(self.root / "stats.json")
        if not isinstance(stats, dict):
            found = type(stats).__name__
            raise UserError(f"{self.root / 'stats.json'}: expected a JSON object, found {found}")
        return stats

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


def dataset_files(items: pd.DataFrame, samples: pd.DataFrame, stats: dict) -> tuple[dict[str, bytes], dict]:
    """The bytes of a dataset folder's files (stats.json last), and the stats with the tables' sha256.

    Items may carry extra metadata columns after the required ones (e.g. theme/emotion, title/genres).
    Identical input gives identical bytes.
    """
    item_columns = ITEM_COLUMNS + [c for c in items.columns if c not in ITEM_COLUMNS]
    tables = {"items.parquet": fileio.parquet_bytes(items[item_columns].reset_index(drop=True)),
              "samples.parquet": fileio.parquet_bytes(samples[SAMPLE_COLUMNS].reset_index(drop=True))}
    stats = {**stats, "sha256": {name: fileio.sha256(data) for name, data in tables.items()}}
    return {**tables, "stats.json": fileio.json_bytes(stats)}, stats


def write_dataset(out: str | Path, items: pd.DataFrame, samples: pd.DataFrame, stats: dict) -> dict:
    """Write the dataset files into ``out`` one by one, keeping its other content (e.g. an images folder);
    returns the stats written. stats.json goes last, so an interrupted write leaves tables that stats.json
    does not record, which Dataset refuses. The builders put a whole folder in place instead
    (``pigeon_bench.data.build.install_dataset``)."""
    out = Path(out)
    files, stats = dataset_files(items, samples, stats)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        fileio.write_bytes(out / name, data)
    return stats
