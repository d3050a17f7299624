"""Scale benchmark (not a test): the feature store, FID's CI, scoring at the paper's architectures and sizes.

Sections (``--only store,fid,paper,growth``; default: all, each at a size that runs in a few minutes on 2 CPU
cores; the flags below make them larger):

- store: N small entries (1-2 KB, like CLIP/DINO embeddings) written and read back through the earlier
  one-safetensors-file-per-entry layout and through FeatureStore (sqlite shards): entries/s, bytes on disk per
  entry, and two processes writing the same store at once.
- fid: bootstrap replicates of FID at n samples x 2048-d (the paper's test splits: n = 1,072 and 4,555) by
  ``frechet_distance`` of the resampled rows (the direct path) and by ``fid_ci`` (the scorer's: weighted
  rows, the smaller side), and the seconds per run folder for 100 and 1,000 replicates.
- paper: the paper's architectures with random weights (open_clip ViT-H-14, DINOv2-large, LPIPS-VGG16, the
  FID InceptionV3), built offline, at 512 px: a small job (samples of one user's sliding windows x folders)
  scored by this engine, and the official evaluation's pattern (every metric reloads its model, generated
  images repeated 5x, nothing shared across methods) priced with the per-image forward seconds measured on
  the same images in the same process (its repeats are the same forwards again); per generated image:
  seconds, backbone forwards, the backbone-forward-only time (the bound no scorer beats), cache bytes on
  disk, and the same extrapolated to a Table-1 job of 20 folders from one-pass scorings of 1 and of
  ``--paper-folders`` folders (as ``pigeon-bench run`` scores a job).
- growth: the tiny profile at N, 4N, 16N samples (each size in a fresh process: peak RSS) and 1 vs 20 folders
  (one after another, and in one `Scorer.score_many` pass): wall seconds, peak RSS, cache bytes per image.

    PYTHONPATH=. python benchmarks/bench_scale.py [--only SECTIONS] [--store-n 5000] [--fid-n 4555]
        [--paper-samples 2] [--paper-folders 3] [--growth-n 8] [--growth-folders 20]
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
import zlib
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


def bench_store(n: int, shards: tuple[int, ...], with_files: bool = True) -> dict:
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
            t_later = None
            if got is not None:  # a later session: its first reads also record the entries' last use
                later, clock = make(Path(tmp)), C._now
                C._now = lambda: clock() + 3600
                try:
                    t0 = time.perf_counter()
                    for start in range(0, n, 16):
                        later.get_many("clip/bench", order[start:start + 16])
                    t_later = time.perf_counter() - t0
                finally:
                    C._now = clock
            on_disk = _du(Path(tmp))
            files = sum(1 for p in Path(tmp).rglob("*") if p.is_file())
            t0 = time.perf_counter()
            import shutil

            shutil.rmtree(Path(tmp) / ("features" if hasattr(fresh, "cache_root") else "clip"),
                          ignore_errors=True)
            t_clear = time.perf_counter() - t0
        out[label] = {
            "write_entries_per_s": round(n / t_write), "read_entries_per_s": round(n / t_read),
            **({"get_many_entries_per_s": round(n / t_read_many),
                "later_session_get_many16_entries_per_s": round(n / t_later)} if got is not None else {}),
            "disk_bytes_per_entry": round(on_disk / n), "files": files, "clear_seconds": round(t_clear, 2)}

    if with_files:
        timed("one_file_per_entry", OneFilePerEntry, 1)
    default = C.SHARDS
    try:
        for s in shards:
            C.SHARDS = s

            def make(p: Path) -> C.FeatureStore:
                return C.FeatureStore(p, memory_bytes=0, budget=None)

            timed(f"sqlite_{s}_shards_put", make, 1)
            timed(f"sqlite_{s}_shards_put_many16", make, 16)
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


# ---------------------------------------------------------------- FID's CI

def bench_fid(n: int, d: int, reps_old: int, reps_new: int) -> dict:
    from pigeon_bench import stats
    from pigeon_bench.metrics import functional as Fn
    from pigeon_bench.metrics.fid_ci import fid_replicates

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d))
    b = rng.standard_normal((n, d)) * 1.1 + 0.2
    idx = stats.bootstrap_indices(n, max(reps_old, reps_new), seed=0)
    t0 = time.perf_counter()
    old = np.array([Fn.frechet_distance(a[r], b[r]) for r in idx[:reps_old]])  # the resampled rows, directly
    t_old = (time.perf_counter() - t0) / reps_old
    t0 = time.perf_counter()
    new = fid_replicates(a, b, idx[:reps_new])
    t_new = (time.perf_counter() - t0) / reps_new
    k = min(reps_old, reps_new)
    return {"n": n, "d": d, "seconds_per_replicate": {"frechet_distance": round(t_old, 3),
                                                      "fid_ci": round(t_new, 3)},
            "speedup": round(t_old / t_new, 2),
            "max_relative_difference": float(np.max(np.abs(old[:k] - new[:k]) / np.abs(old[:k]))),
            "seconds_per_run_folder": {f"{r}_replicates": {"before": round(r * t_old),
                                                           "after": round(r * t_new)} for r in (100, 1000)}}


# ---------------------------------------------------------------- synthetic Table-1 jobs

def _drawing(seed: int, size: int):
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
        draw.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def job(root: Path, n_samples: int, n_folders: int, size: int, per_user: int = 8) -> list[list]:
    """``n_folders`` lists of SampleInputs over the same ``n_samples`` samples (users of ``per_user`` sliding
    windows: consecutive samples share 4 of 5 history images), each folder with its own generated images."""
    from pigeon_bench.scoring import SampleInputs

    def image(name: str, seed: int) -> Path:
        path = root / "img" / f"{name}.png"
        if not path.is_file():
            fileio.save_image(path, _drawing(seed, size))
        return path

    samples = []
    for s in range(n_samples):
        user, j = divmod(s, per_user)
        hist = [f"u{user}-h{j + k}" for k in range(5)]
        samples.append((f"s{s}", hist, f"u{user}-r{j}"))
    seeds = {}
    folders = []
    for f in range(n_folders):
        inputs = []
        for sid, hist, ref in samples:
            for name in (*hist, ref):
                seeds.setdefault(name, len(seeds) + 10**6)
            generated = image(f"gen{f}-{sid}", zlib.crc32(f"{f}-{sid}".encode()))
            inputs.append(SampleInputs(sid, generated, [image(h, seeds[h]) for h in hist],
                                       [f"a picture of {h}" for h in hist], image(ref, seeds[ref]),
                                       f"a picture of {ref}"))
        folders.append(inputs)
    return folders


class Clock:
    """Wall and CPU seconds inside wrapped callables, per key (CPU: all threads of this process, which is the
    steadier figure on a shared machine)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, owner: object, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.wall[key] = self.wall.get(key, 0.0) + time.perf_counter() - t0
                self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0

        setattr(owner, name, timed)


def _forward_clock() -> Clock:
    """Seconds inside each backbone's forwards (images and texts)."""
    from pigeon_bench.metrics import backbones as B

    clock = Clock()
    for cls, key in ((B.ClipBackbone, "clip"), (B.DinoBackbone, "dino"), (B.LpipsBackbone, "lpips-vgg"),
                     (B.InceptionBackbone, "fid-inception")):
        clock.wrap(cls, "_encode", key)
    clock.wrap(B.ClipBackbone, "encode_texts", "clip-text")
    return clock


def _store_bytes(cache: Path) -> dict[str, int]:
    """Bytes on disk: compact entries (sqlite), bulky ones (feature-map files), the pair table."""
    out = {"compact": 0, "bulky": 0, "pairs": 0}
    for f in C._files(cache):
        key = "pairs" if f.area == C.PAIRS else ("bulky" if f.kind == "entry" else "compact")
        out[key] += f.size
    return out


def score_job(scorer, folders: list[list], clock: Clock) -> dict:
    """Score each folder as ``pigeon-bench run`` does (one Scorer for all): per-sample scores + summary.
    Wall and CPU seconds per folder, in all and inside backbone forwards."""
    import warnings

    scorer.fingerprints()  # every backbone built before the clock starts
    per_folder = []
    for inputs in folders:
        wall0, cpu0 = sum(clock.wall.values()), sum(clock.cpu.values())
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FID's small-n warning
            scorer.summarize(scorer.score_samples(inputs))
        per_folder.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                           "forward_wall": sum(clock.wall.values()) - wall0,
                           "forward_cpu": sum(clock.cpu.values()) - cpu0})
    return {"per_folder": per_folder, **{k: sum(f[k] for f in per_folder) for k in per_folder[0]}}


# the official evaluation's backbone forwards per generated image (YiyanXu/Pigeon
# Evaluation/evaluate_pigeon.py: CLIP 2 + 1 + 5 + 5, texts 1 + 5, DINO 1 + 5, VGG 5 + 5, Inception 1 + 1)
OFFICIAL_PER_IMAGE = {"clip": 13, "clip-text": 6, "dino": 6, "lpips-vgg": 10, "fid-inception": 2}


def _paper_backbones(device: str = "cpu") -> tuple[dict, dict[str, float]]:
    """The paper's scoring architectures with seeded random weights (no download), and their build seconds."""
    import io

    import open_clip
    from torchvision.models.vgg import cfgs
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit import BitImageProcessorPil

    from pigeon_bench.metrics import backbones as B

    built, seconds = {}, {}

    def timed(bid: str, make):
        t0 = time.perf_counter()
        with B.seeded(0), B._quiet_root_logger():
            loaded = make()
        seconds[bid] = round(time.perf_counter() - t0, 1)
        return loaded

    clip = timed("clip", lambda: open_clip.create_model_and_transforms("ViT-H-14", pretrained=None))
    clip = (clip[0].eval(), clip[2], open_clip.get_tokenizer("ViT-H-14"))
    dino = timed("dino", lambda: (Dinov2Model(Dinov2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=14,
        image_size=518)).eval(), BitImageProcessorPil(  # facebook/dinov2-large's config and preprocessing
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])))
    vgg = timed("lpips-vgg", lambda: B.tiny_lpips_vgg(0, cfgs["D"]))  # VGG16 trunk, random

    def inception():
        buf = io.BytesIO()
        torch.save(B.tiny_inception_state_dict(0), buf)
        buf.seek(0)
        return B.load_fid_inception(buf).eval()

    inc = timed("fid-inception", inception)
    for bid, cls, loaded in (("clip", B.ClipBackbone, clip), ("dino", B.DinoBackbone, dino),
                             ("lpips-vgg", B.LpipsBackbone, vgg),
                             ("fid-inception", B.InceptionBackbone, inc)):
        built[bid] = cls(bid, f"random-{bid}-paper-architecture", f"paper architecture, random ({bid})",
                         lambda loaded=loaded: loaded, device)
    return built, seconds


def _cpu_seconds(fn, repeat: int = 3) -> float:
    fn()
    c0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - c0) / repeat


def paper_overheads() -> dict[str, float]:
    """CPU seconds per generated image of what the scorer does besides forwards, at 512 px: LPIPS of its 5
    history pairs from float16 VGG16 maps (64 MB an image), MS-SSIM terms and the 5 pair terms."""
    from pigeon_bench.metrics import functional as Fn

    sizes = ((64, 512), (128, 256), (256, 128), (512, 64), (512, 32))  # VGG16 relu1_2 .. relu5_3 at 512 px
    maps = {f"l{i}": torch.randn(c, h, h).half() for i, (c, h) in enumerate(sizes)}
    gen = [maps[k][None, None] for k in maps]
    hist = [maps[k].expand(5, *maps[k].shape)[None] for k in maps]
    x = torch.rand(1, 3, 512, 512) * 255
    others = Fn.msssim_stats(torch.rand(5, 3, 512, 512) * 255)
    return {"lpips_5_pairs_from_maps": round(_cpu_seconds(lambda: Fn.lpips_from_maps(gen, hist)), 3),
            "msssim_terms_and_5_pairs": round(_cpu_seconds(lambda: Fn.ms_ssim_from_stats(
                Fn.cat_msssim_stats([Fn.msssim_stats(x)] * 5), others)), 3),
            "map_mb": round(sum(t.nbytes for t in maps.values()) / 1e6, 1)}


def bench_paper(n_samples: int, n_folders: int) -> dict:
    """The paper architectures at 512 px on a small job, scored as ``pigeon-bench run`` scores (one
    ``score_many`` pass over a job's folders), once with 1 folder and once with ``n_folders``, each on an
    empty cache: their difference is the cost of a generated image, the rest the shared history, references
    and texts; a Table-1 job of 20 folders is extrapolated from both. The official pattern is priced with the
    per-image forward seconds measured here (its repeats are the same forwards again)."""
    from pigeon_bench.scoring import Scorer

    if n_folders < 2:
        raise SystemExit("--paper-folders must be 2 or more (a 1-folder pass is the baseline)")
    backbones, build_seconds = _paper_backbones()
    clock = _forward_clock()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folders = job(root, n_samples, n_folders, 512, per_user=max(2, n_samples))
        passes, disk = {}, {}
        for f in (1, n_folders):
            scorer = Scorer(profile="paper", cache_dir=root / f"cache-{f}", progress=False, batch_size=4)
            scorer._backbones.update(backbones)  # the random-weight stand-ins instead of resolving weights
            before = scorer.forward_counts()
            passes[f] = _one_pass(scorer, folders[:f], clock)
            passes[f]["forwards"] = {k: v - before[k] for k, v in scorer.forward_counts().items()}
            scorer.store.close()  # the last connection folds the WAL into the database files
            scorer.pairs.close()
            disk = _store_bytes(root / f"cache-{f}")
        counts = scorer.forward_counts()  # both passes
    n_gen = n_samples * n_folders
    cpu_per_image = {k: clock.cpu[k] / counts[k] for k in counts if counts[k]}
    wall_per_image = {k: clock.wall[k] / counts[k] for k in counts if counts[k]}
    official = {m: sum(OFFICIAL_PER_IMAGE[k] * per[k] for k in OFFICIAL_PER_IMAGE)
                for m, per in (("cpu", cpu_per_image), ("wall", wall_per_image))}
    one, many = passes[1], passes[n_folders]

    def table1(key: str) -> float:
        """Seconds per generated image of a Table-1 job (20 folders on the same samples: 9 methods + 11
        alpha_r candidates): the shared part once, each generated image's own part 20 n times."""
        own = (many[key] - one[key]) / ((n_folders - 1) * n_samples)
        shared = one[key] - n_samples * own
        return (shared + 20 * n_samples * own) / (20 * n_samples)

    def figures(m: str) -> dict:
        fwd = f"forward_{m}"
        return {
            "engine_seconds_per_generated_image": round(many[m] / n_gen, 2),
            "engine_forward_only_seconds_per_generated_image": round(many[fwd] / n_gen, 2),
            "engine_total_over_forwards": round(many[m] / many[fwd], 3),
            "official_seconds_per_generated_image": round(official[m], 1),
            "official_over_engine": round(official[m] * n_gen / many[m], 2),
            "official_over_forward_only_bound": round(official[m] * n_gen / many[fwd], 2),
            "table1_job": {"engine_seconds_per_generated_image": round(table1(m), 2),
                           "engine_forward_only_seconds_per_generated_image": round(table1(fwd), 2),
                           "engine_total_over_forwards": round(table1(m) / table1(fwd), 3),
                           "official_over_engine": round(official[m] / table1(m), 2),
                           "official_over_forward_only_bound": round(official[m] / table1(fwd), 2)}}

    return {
        "samples": n_samples, "folders": n_folders, "generated_images": n_gen, "resize": 512,
        "build_seconds": build_seconds,
        "forward_cpu_seconds_per_image": {k: round(v, 2) for k, v in cpu_per_image.items()},
        "engine_forwards": many["forwards"], "engine_forwards_1_folder": one["forwards"],
        "engine_image_forwards_per_generated_image": round(sum(
            v for k, v in many["forwards"].items() if k != "clip-text") / n_gen, 2),
        "official_forwards_per_generated_image": OFFICIAL_PER_IMAGE,
        "official_note": "priced from the forward seconds per image measured here; model reloads not "
                         "included (per folder 4 CLIP, 2 DINO, 1 VGG, 1 Inception: amortised over a "
                         "paper-size folder)",
        "cpu": figures("cpu"), "wall": figures("wall"),
        "passes": {f: {k: round(v, 1) for k, v in p.items() if k != "forwards"} for f, p in passes.items()},
        "cache_bytes_per_generated_image": {k: round(v / n_gen) for k, v in disk.items()},
        "overhead_cpu_seconds_per_generated_image": paper_overheads(),
    }


def _one_pass(scorer, folders: list[list], clock: Clock) -> dict:
    """Score every folder in one ``score_many`` pass (then each summary), timed as ``score_job`` times one."""
    import warnings

    scorer.fingerprints()
    wall0, cpu0 = sum(clock.wall.values()), sum(clock.cpu.values())
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for scores in scorer.score_many(folders):
            scorer.summarize(scores)
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
            "forward_wall": sum(clock.wall.values()) - wall0, "forward_cpu": sum(clock.cpu.values()) - cpu0}


class PhasePeaks:
    """Peak RSS (MB, sampled every 0.2 s) in each of the scorer's phases: features, pair metrics, summary."""

    def __init__(self) -> None:
        import threading

        from pigeon_bench.scoring import Scorer

        self.phase, self.peaks = "setup", {}
        for name, label in (("_ensure", "features"), ("_streamed_pairs", "pair metrics"),
                            ("summarize", "summary")):
            self._wrap(Scorer, name, label)
        threading.Thread(target=self._sample, daemon=True).start()

    def _wrap(self, owner: type, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def marked(*args, **kwargs):
            outer, self.phase = self.phase, label
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = outer

        setattr(owner, name, marked)

    def _sample(self) -> None:
        from pigeon_bench.heap import resident_bytes

        while True:
            mb = resident_bytes() / 2**20
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), mb)
            time.sleep(0.2)


def _growth_worker(n_samples: int, n_folders: int, one_pass: int = 0) -> dict:
    """One size of the growth section, in its own process (peak RSS is per process); ``one_pass``: the
    folders through ``Scorer.score_many``."""
    from pigeon_bench.scoring import Scorer

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    clock = _forward_clock()
    phases = PhasePeaks()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        folders = job(root, n_samples, n_folders, 96)
        t_data = time.perf_counter() - t0
        rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scorer = Scorer(profile="tiny", cache_dir=root / "cache", progress=False)
        result = (_one_pass if one_pass else score_job)(scorer, folders, clock)
        scorer.store.close()
        scorer.pairs.close()
        disk = _store_bytes(root / "cache")
    n_gen = n_samples * n_folders
    return {"samples": n_samples, "folders": n_folders, "wall_seconds": round(result["wall"], 1),
            "cpu_seconds": round(result["cpu"], 1),
            "cpu_seconds_per_generated_image": round(result["cpu"] / n_gen, 4),
            "cpu_total_over_forwards": round(result["cpu"] / result["forward_cpu"], 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_after_making_the_images_mb": round(rss_data / 1024), "image_seconds": round(t_data, 1),
            "peak_rss_mb_by_phase": {k: round(v) for k, v in phases.peaks.items()},
            "forwards": scorer.forward_counts(),
            "cache_bytes_per_generated_image": {k: round(v / n_gen) for k, v in disk.items()}}


def bench_growth(n: int, table1_folders: int) -> dict:
    def run(samples: int, folders: int, one_pass: int = 0) -> dict:
        out = subprocess.run([sys.executable, __file__, "--growth-worker", str(samples), str(folders),
                              str(one_pass)],
                             cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        return json.loads(out.stdout)

    sizes = {f"{k}N": run(k * n, 1) for k in (1, 4, 16)}
    methods = {"1_folder": sizes["1N"], f"{table1_folders}_folders": run(n, table1_folders),
               f"{table1_folders}_folders_one_pass": run(n, table1_folders, 1)}
    cpu = {k: v["cpu_seconds_per_generated_image"] for k, v in sizes.items()}
    return {"N": n, "samples": sizes, "folders": methods,
            "peak_rss_16N_over_N": round(sizes["16N"]["peak_rss_mb"] / sizes["1N"]["peak_rss_mb"], 2),
            "cpu_seconds_per_generated_image_16N_over_N": round(cpu["16N"] / cpu["1N"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="store,fid,growth,paper")
    parser.add_argument("--store-n", type=int, default=5000)
    parser.add_argument("--store-shards", default="1,4")
    parser.add_argument("--store-no-files", action="store_true", help="skip the one-file-per-entry layout")
    parser.add_argument("--fid-n", type=int, default=4555)
    parser.add_argument("--fid-reps", type=int, default=1, help="replicates timed per path")
    parser.add_argument("--paper-samples", type=int, default=2)
    parser.add_argument("--paper-folders", type=int, default=3)
    parser.add_argument("--growth-n", type=int, default=8)
    parser.add_argument("--growth-folders", type=int, default=20, help="a Table-1 job: 9 methods + 11 alphas")
    parser.add_argument("--store-writer", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--growth-worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.store_writer:
        root, n, seed = args.store_writer
        _store_writer(root, int(n), int(seed), 16)
        return
    if args.growth_worker:
        print(json.dumps(_growth_worker(*args.growth_worker)))
        return
    sections = args.only.split(",")
    report: dict = {"threads": torch.get_num_threads()}
    if "store" in sections:
        report["store"] = bench_store(args.store_n, tuple(int(s) for s in args.store_shards.split(",")),
                                      not args.store_no_files)
    if "fid" in sections:
        report["fid"] = bench_fid(args.fid_n, 2048, args.fid_reps, args.fid_reps)
    if "growth" in sections:
        report["growth"] = bench_growth(args.growth_n, args.growth_folders)
    if "paper" in sections:
        report["paper"] = bench_paper(args.paper_samples, args.paper_folders)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
