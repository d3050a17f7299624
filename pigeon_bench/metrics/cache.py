"""Content-addressed feature cache: a safetensors file per (image or text, backbone, weights, preprocessing).

Layout: ``<root>/features/<backbone_id>/<fingerprint[:16]>-<spec_id>/<key[:2]>/<key>.safetensors``.
Each file is written to a temporary name beside it and renamed into place
(``pigeon_bench.fileio.atomic_path``),
so a concurrent reader sees either no file or a complete one, and a kill mid-write leaves only an ignored
temporary file. Concurrent writers of the same key write identical bytes; the last rename wins. An unreadable
entry counts as a miss and is recomputed. An in-memory LRU layer (bounded in bytes) avoids re-reads.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from pigeon_bench import fileio
from pigeon_bench.paths import cache_dir

DEFAULT_MEMORY_BYTES = 1 << 30


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class FeatureStore:
    """Sharded on-disk store of tensor dicts keyed by (namespace, key), with an in-memory LRU in front."""

    def __init__(self, root: str | Path | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.root = cache_dir(root) / "features"
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self._memory_used = 0
        self.disk_reads = 0
        self.disk_writes = 0

    def path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / f"{key}.safetensors"

    def has(self, namespace: str, key: str) -> bool:
        """Present in memory or as a complete file on disk (header and size checked, data not read).

        An incomplete or unreadable file is removed so that the entry is recomputed and rewritten.
        """
        if (namespace, key) in self._memory:
            return True
        path = self.path(namespace, key)
        if not path.is_file():
            return False
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError):
            path.unlink(missing_ok=True)
            return False
        return True

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        hit = self._memory.get((namespace, key))
        if hit is not None:
            self._memory.move_to_end((namespace, key))
            return hit
        path = self.path(namespace, key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError):
            return None  # unreadable entry: a miss, recomputed and rewritten
        self.disk_reads += 1
        self._remember(namespace, key, tensors)
        return tensors

    def put(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}  # pass clones, not views
        with fileio.atomic_path(self.path(namespace, key)) as tmp:
            save_file(tensors, tmp)
        self.disk_writes += 1
        self._remember(namespace, key, tensors)

    def _remember(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        size = _nbytes(tensors)
        if size > self.memory_bytes:
            return
        old = self._memory.pop((namespace, key), None)
        if old is not None:
            self._memory_used -= _nbytes(old)
        self._memory[(namespace, key)] = tensors
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= _nbytes(evicted)

    def clear_memory(self) -> None:
        """Drop the in-memory layer (the disk store stays)."""
        self._memory.clear()
        self._memory_used = 0
