"""Scale benchmark (not a test): the feature store, FID's CI, scoring at the paper's architectures and sizes.

Sections (``--only store,fid,paper,growth``; default: all, each at a size that runs in a few minutes on 2 CPU
cores; the flags below make them larger):

- store: N small entries (1-2 KB, like CLIP/DINO embeddings) written and read back through the earlier
  one-safetensors-file-per-entry layout and through FeatureStore (sqlite shards): entries/s, bytes on disk per
  entry, and two processes writing the same store at once.
- fid: one bootstrap replicate of FID at n samples x 2048-d (the paper's movie test split: n = 4,555) by the
  earlier path (resampled rows, ``frechet_distance``) and by ``fid_ci`` (weighted covariances), and the
  seconds per run folder for 100 and 1,000 replicates.
- paper: the paper's architectures with random weights (open_clip ViT-H-14, DINOv2-large, LPIPS-VGG16, the FID
  InceptionV3), built offline, at 512 px: a small Table-1 job (samples of one user's sliding windows x methods,
  one of them an alpha sweep) scored by this engine and by the official evaluation's pattern (every metric
  reloads its model, generated images repeated 5x, nothing shared across methods) on the same images in one
  process; per generated image: seconds, backbone forwards, the backbone-forward-only time (the bound no
  scorer beats), cache bytes on disk.
- growth: the tiny profile at N, 4N, 16N samples (each size in a fresh process: peak RSS) and 1 vs 10 methods:
  wall seconds, peak RSS, cache bytes per generated image.

    python benchmarks/bench_scale.py [--only SECTIONS] [--store-n 20000] [--fid-n 4555] [--paper-samples 2]
        [--paper-methods 2] [--growth-n 125]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pigeon_bench import fileio
from pigeon_bench.metrics import cache as C

ROOT = Path(__file__).resolve().parents[1]


def _du(path: Path) -> int:
    return sum(C._allocated(p.lstat()) for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------- store layouts

class OneFilePerEntry:
    """The earlier layout, for comparison: ``<ns>/<key[:2]>/<key>.safetensors``, written atomically."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, ns: str, key: str) -> Path:
        return self.root / ns / key[:2] / f"{key}.safetensors"

    def put(self, ns: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        with fileio.atomic_path(self._path(ns, key)) as tmp:
            save_file(tensors, tmp)

    def get(self, ns: str, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self._path(ns, key)
        return load_file(path) if path.is_file() else None


def _entries(n: int, seed: int = 0) -> list[tuple[str, dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(seed)
    dims = rng.integers(256, 513, size=n)  # 1-2 KB float32 vectors
    return [(f"{rng.bytes(32).hex()}", {"emb": torch.from_numpy(rng.standard_normal(d, dtype=np.float32))})
            for d in dims]


def _store_writer(root: str, n: int, seed: int, batch: int) -> None:
    """One process of the concurrency check: write n entries in batches, then read all of them back."""
    torch.set_num_threads(1)
    store = C.FeatureStore(root, memory_bytes=0)
    items = _entries(n, seed)
    for start in range(0, n, batch):
        store.put_many("clip/bench", dict(items[start:start + batch]))
    assert len(store.get_many("clip/bench", [k for k, _ in items])) == n


def bench_store(n: int, shards: tuple[int, ...]) -> dict:
    items = _entries(n)
    keys = [k for k, _ in items]
    order = keys[:]
    random.Random(0).shuffle(order)
    payload = sum(t["emb"].nbytes for _, t in items)
    out: dict = {"entries": n, "payload_bytes_per_entry": round(payload / n)}

    def timed(label: str, make, put_batch: int) -> None:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            store = make(Path(tmp))
            t0 = time.perf_counter()
            if put_batch == 1:
                for k, t in items:
                    store.put("clip/bench", k, t)
            else:
                for start in range(0, n, put_batch):
                    store.put_many("clip/bench", dict(items[start:start + put_batch]))
            t_write = time.perf_counter() - t0
            fresh = make(Path(tmp))
            t0 = time.perf_counter()
            for k in order:
                assert fresh.get("clip/bench", k) is not None
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = fresh.get_many("clip/bench", order) if hasattr(fresh, "get_many") else None
            t_read_many = time.perf_counter() - t0
            on_disk = _du(Path(tmp))
            files = sum(1 for p in Path(tmp).rglob("*") if p.is_file())
            t0 = time.perf_counter()
            import shutil

            shutil.rmtree(Path(tmp) / ("features" if hasattr(fresh, "cache_root") else "clip"),
                          ignore_errors=True)
            t_clear = time.perf_counter() - t0
        out[label] = {
            "write_entries_per_s": round(n / t_write), "read_entries_per_s": round(n / t_read),
            **({"get_many_entries_per_s": round(n / t_read_many)} if got is not None else {}),
            "disk_bytes_per_entry": round(on_disk / n), "files": files, "clear_seconds": round(t_clear, 2)}

    timed("one_file_per_entry", OneFilePerEntry, 1)
    default = C.SHARDS
    try:
        for s in shards:
            C.SHARDS = s
            timed(f"sqlite_{s}_shards_put", lambda p: C.FeatureStore(p, memory_bytes=0, budget=None), 1)
            timed(f"sqlite_{s}_shards_put_many16", lambda p: C.FeatureStore(p, memory_bytes=0, budget=None), 16)
    finally:
        C.SHARDS = default
    # two processes writing the same store at once (each its own keys), then each reading everything back
    with tempfile.TemporaryDirectory() as tmp:
        half = max(1, n // 10)
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--store-writer", tmp, str(half), str(seed)],
                                  cwd=ROOT) for seed in (1, 2)]
        codes = [p.wait() for p in procs]
        t = time.perf_counter() - t0
        entries = C.store_info(tmp).namespaces[0].entries
        out["two_writer_processes"] = {"entries_each": half, "returncodes": codes, "entries_after": entries,
                                       "no_entry_lost": entries == 2 * half, "seconds": round(t, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="store,fid,paper,growth")
    parser.add_argument("--store-n", type=int, default=20000)
    parser.add_argument("--store-shards", default="1,4,16")
    parser.add_argument("--store-writer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store_writer:
        root, n, seed = args.store_writer
        _store_writer(root, int(n), int(seed), 16)
        return
    sections = args.only.split(",")
    report: dict = {"threads": torch.get_num_threads()}
    if "store" in sections:
        report["store"] = bench_store(args.store_n, tuple(int(s) for s in args.store_shards.split(",")))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
