"""Sharded execution under torchrun (torch.distributed, one engine).

``torchrun --nproc-per-node N -m pigeon_bench run ...`` starts N processes; each reads its rank from the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). Samples are split across ranks deterministically,
every rank writes its images and features into the shared run folder and cache (atomically), and rank 0 writes
the manifests, the global statistics (FID, CIs) and the report. Ranks meet at barriers through a gloo process
group (it runs on CPU and beside CUDA alike). Without torchrun everything runs in one process, unchanged.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")

TIMEOUT_ENV = "PIGEON_BENCH_DIST_TIMEOUT_S"  # how long a rank waits at a barrier (rank 0 scores meanwhile)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every world-th item from its rank on (deterministic)."""
        return list(items[self.rank::self.world])

    def block(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (neighbours stay together: sliding windows share
        history images)."""
        n = len(items)
        return list(items[n * self.rank // self.world:n * (self.rank + 1) // self.world])

    def owned(self, claims: Sequence[int]) -> set[int]:
        """Of ``claims`` (64-bit names of the work this rank's share could do), the ones this rank does, every
        rank calling this together: each name claimed by several ranks falls to the lowest of them, so that
        nothing is done twice and who does what does not depend on timing."""
        mine = np.unique(np.asarray(claims, dtype=np.uint64))
        if self.world == 1:
            return set(mine.tolist())
        import torch.distributed as dist

        gathered: list[np.ndarray | None] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return set(first_claims(gathered, self.rank).tolist())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, device: str) -> str:
        """A bare ``cuda`` means this rank's local GPU under torchrun."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world > 1 else device


def first_claims(claims: Sequence[np.ndarray], rank: int) -> np.ndarray:
    """The names in ``claims[rank]`` that no lower rank claims."""
    if rank == 0:
        return claims[0]
    return claims[rank][~np.isin(claims[rank], np.concatenate(claims[:rank]))]


@functools.cache
def current() -> Ranks:
    """The ranks from torchrun's environment; the process group is created on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 24 * 3600)))
        dist.init_process_group("gloo", timeout=timeout)
    return ranks
