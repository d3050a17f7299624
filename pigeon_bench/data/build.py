"""Shared dataset-building steps: sliding windows, 8:1:1 splits, Table-4 statistics and writing.

Both scenario builders and the official-layout import end here, so every dataset folder is made the same way.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import pandas as pd

from pigeon_bench import fileio
from pigeon_bench.data.model import DATASET_FILES, N_HISTORY, SPLITS, dataset_files
from pigeon_bench.errors import UserError

WINDOW = N_HISTORY + 1  # 5 history items + the target
SPLIT_RATIOS = (0.8, 0.1, 0.1)
SplitMode = Literal["random", "temporal"]
SPLIT_MODES: tuple[str, ...] = ("random", "temporal")
T = TypeVar("T")


@dataclass
class BuildResult:
    """What a builder wrote: the dataset folder, its stats and what it dropped on the way; ``written`` is
    False when the folder already held exactly this dataset."""

    out: Path
    stats: dict
    dropped: dict[str, int] = field(default_factory=dict)
    written: bool = True


def check_seed(seed: int) -> int:
    """A seed numpy accepts (0 or more)."""
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    return seed


def check_out(out: Path) -> set[str]:
    """The dataset files ``out`` holds now. Refused: a file, a folder that is not writable, or a folder
    holding anything else (it is replaced whole, so it must hold a dataset or nothing)."""
    if not out.exists():
        return set()
    if not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not os.access(out, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(f"--out {out} is a folder you cannot write to")
    names = {p.name for p in out.iterdir()}
    other = sorted(names - set(DATASET_FILES))
    if other:
        raise UserError(f"--out {out} holds {len(other)} file(s) that are not part of a dataset (e.g. "
                        f"{other[0]!r}): choose a new or empty folder")
    return names


def install_dataset(out: Path, files: dict[str, bytes], force: bool) -> bool:
    """Put the dataset ``files`` in place as a whole folder (written beside ``out``, then swapped in).

    Returns False, writing nothing, when ``out`` holds exactly these files already; a different dataset
    there is replaced only with ``force``.
    """
    held = check_out(out)
    if held:
        if held == set(files) and all((out / n).read_bytes() == data for n, data in files.items()):
            return False
        if not force:
            raise UserError(f"--out {out} already holds a different dataset: pass --force to replace it, "
                            "or choose another folder")
    with fileio.whole_dir(out, "the dataset folder") as tmp:
        for name, data in files.items():
            fileio.write_bytes(tmp / name, data)
    return True


def sliding_windows(sequence: Sequence[str], size: int = WINDOW) -> list[tuple[tuple[str, ...], str]]:
    """Windows of ``size``, step 1: (the first size-1 items as history, oldest first; the last as target)."""
    n = len(sequence)
    return [(tuple(sequence[k:k + size - 1]), sequence[k + size - 1]) for k in range(n - size + 1)]


def split_sizes(n: int, ratios: tuple[float, float, float] = SPLIT_RATIOS) -> tuple[int, int, int]:
    """Split ``n`` samples 8:1:1: valid and test get n/10 rounded half up each, train the rest."""
    n_valid = int(n * ratios[1] + 0.5)
    n_test = int(n * ratios[2] + 0.5)
    return n - n_valid - n_test, n_valid, n_test


def assign_splits(windows_per_user: Sequence[int], mode: SplitMode, seed: int) -> list[str]:
    """One split name per window, users in order and each user's windows oldest first.

    ``random``: every window is shuffled with ``seed`` and cut 8:1:1 (the paper's wording).
    ``temporal``: the same global 8:1:1 sizes, but each user's latest windows go to test and the ones just
    before to valid, so no train target is later than a valid/test target of the same user. Per-user quotas
    are the 10% shares rounded down, the remainder going to the users with the largest fractional share
    (ties in a seeded random order).
    """
    n = int(sum(windows_per_user))
    n_train, n_valid, n_test = split_sizes(n)
    rng = np.random.default_rng(seed)
    if mode == "random":
        labels = np.array(["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test, dtype=object)
        out = np.empty(n, dtype=object)
        out[rng.permutation(n)] = labels
        return out.tolist()
    if mode != "temporal":
        raise UserError(f"unknown split mode {mode!r} (known: {', '.join(SPLIT_MODES)})")
    counts = np.asarray(windows_per_user, dtype=np.int64)
    tie_break = rng.permutation(len(counts))
    test = _quotas(counts, n_test, SPLIT_RATIOS[2], tie_break)
    valid = _quotas(counts - test, n_valid, SPLIT_RATIOS[1] / (1 - SPLIT_RATIOS[2]), tie_break)
    out_list: list[str] = []
    for c, v, t in zip(counts.tolist(), valid.tolist(), test.tolist(), strict=True):
        out_list += ["train"] * (c - v - t) + ["valid"] * v + ["test"] * t
    return out_list


def _quotas(counts: np.ndarray, total: int, share: float, tie_break: np.ndarray) -> np.ndarray:
    """Per-user counts summing to ``total``: floor(share * count), then the remainder by largest fraction."""
    ideal = counts * share
    quota = np.minimum(np.floor(ideal).astype(np.int64), counts)
    frac = ideal - quota
    # Largest fractional part first; equal fractions in the seeded order.
    order = np.lexsort((tie_break, -frac))
    remaining = total - int(quota.sum())
    while remaining > 0:
        progressed = False
        for i in order:
            if remaining == 0:
                break
            if quota[i] < counts[i]:
                quota[i] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    return quota


def windows_to_samples(
    sequences: Sequence[tuple[str, Sequence[str]]],
    instruction: str,
    split_mode: SplitMode,
    seed: int,
) -> pd.DataFrame:
    """Samples from per-user item sequences (users in order): windows, ids, splits; reference = target.

    Sample ids are ``u<user index>-<window index>`` (file-name safe; the user id itself is a column).
    """
    rows: list[dict] = []
    per_user: list[int] = []
    for u_index, (user_id, sequence) in enumerate(sequences):
        windows = sliding_windows(list(sequence))
        per_user.append(len(windows))
        for k, (history, target) in enumerate(windows):
            rows.append({"sample_id": f"u{u_index:05d}-{k:04d}", "user_id": str(user_id),
                         "history": list(history), "target_id": target, "reference_id": target,
                         "instruction": instruction})
    splits = assign_splits(per_user, split_mode, seed)
    columns = ["sample_id", "user_id", "history", "target_id", "reference_id", "instruction"]
    df = pd.DataFrame(rows, columns=columns)
    df["split"] = pd.Series(splits, dtype=object) if rows else pd.Series([], dtype=object)
    return df


def dataset_stats(scenario: str, samples: pd.DataFrame, **extra) -> dict:
    """Table-4 counts: users and items that occur in at least one sample (history, target or reference)."""
    item_ids = used_item_ids(samples)
    split_counts = samples["split"].value_counts()
    stats = {
        "scenario": scenario,
        "users": int(samples["user_id"].nunique()),
        "items": len(item_ids),
        "samples": len(samples),
        "splits": {s: int(split_counts.get(s, 0)) for s in SPLITS},
    }
    stats.update(extra)
    return stats


def used_item_ids(samples: pd.DataFrame) -> set[str]:
    """Every item id a sample mentions."""
    ids = set(itertools.chain.from_iterable(samples["history"].tolist()))
    return ids | set(samples["target_id"].tolist()) | set(samples["reference_id"].tolist())


def image_dir_for(folder: Path, out: Path, relative: bool) -> str:
    """How paths under ``folder`` start in items.parquet: absolute, or relative to the dataset folder."""
    folder_abs = os.path.abspath(folder)
    return os.path.relpath(folder_abs, os.path.abspath(out)) if relative else folder_abs


def finish(
    scenario: str,
    out: Path,
    items: pd.DataFrame,
    samples: pd.DataFrame,
    dropped: dict[str, int],
    *,
    no_samples: str,
    force: bool = False,
    **extra,
) -> BuildResult:
    """Keep the items the samples use (in item order), check ids, compute the stats and put the folder in
    place (see ``install_dataset``). ``no_samples`` says why, should there be no sample."""
    if samples.empty:
        raise UserError(f"no samples: {no_samples}")
    used = used_item_ids(samples)
    unknown = used - set(items["item_id"])
    if unknown:
        raise UserError(f"samples mention {len(unknown)} unknown item id(s), e.g. {sorted(unknown)[0]!r}")
    items = items[items["item_id"].isin(used)].reset_index(drop=True)
    stats = dataset_stats(scenario, samples, dropped=dict(dropped), **extra)
    files, stats = dataset_files(items, samples, stats)
    written = install_dataset(Path(out), files, force)
    return BuildResult(Path(out), stats, dict(dropped), written)


def pick_other_group_references(
    samples: pd.DataFrame,
    groups: dict[str, str],
    splits: Sequence[str],
    seed: int,
) -> pd.Series:
    """For samples in ``splits``, a seeded random item whose group differs from the sample user's group.

    ``groups`` maps item id -> group (theme). Other samples keep their current reference.
    """
    items = np.array(sorted(groups), dtype=object)
    item_groups = np.array([groups[i] for i in items], dtype=object)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EF]))
    refs = samples["reference_id"].copy()
    pools: dict[str, np.ndarray] = {}
    for idx, user_group, split in zip(samples.index, samples["user_id"], samples["split"], strict=True):
        if split not in splits:
            continue
        pool = pools.get(user_group)
        if pool is None:
            pool = pools[user_group] = items[item_groups != user_group]
        if len(pool) == 0:
            raise UserError("cannot pick a reference from another theme: only one theme has stickers")
        refs.at[idx] = pool[rng.integers(len(pool))]
    return refs


def progress(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A transient rich progress bar on stderr (nothing left behind once done)."""
    from rich.console import Console
    from rich.progress import track

    yield from track(iterable, description=description, total=total, transient=True,
                     console=Console(stderr=True))
