"""Scoring: orchestrates backbones, the feature cache and the pure metric functions over a run folder.

Each unique image (by decoded-pixel hash) goes through each backbone at most once, ever: features are looked
up in the content-addressed cache (``pigeon_bench.metrics.cache``) first, and only missing ones are computed,
in batches. History, reference and text features are therefore shared across methods, alpha_r candidates
and checkpoints scored with the same backbones and preprocessing.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pigeon_bench import fileio, stats
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics.aggregate import overall
from pigeon_bench.metrics.backbones import Backbone, ClipBackbone, build, pixels
from pigeon_bench.metrics.cache import DEFAULT_MEMORY_BYTES, FeatureStore
from pigeon_bench.metrics.preprocess import PROFILE_RESIZE, ResizeSpec, image_digest, load_image, text_digest
from pigeon_bench.progress import progress as progress_bar
from pigeon_bench.schema import METRICS, PER_SAMPLE_METRICS, TINY_PROFILE_NOTICE

ImageSource = str | Path | Image.Image
FID_RECOMMENDED_N = 2048
# Resamples for FID's CI when n exceeds the feature dimension: each resample is then a full (d, d) covariance
# and eigendecomposition (about 4 s at the paper's n = 4,555 and d = 2,048 on 2 CPU cores).
FID_MAX_BOOT_LARGE_N = 100
_MSSSIM_LRU_BYTES = 1 << 30  # MS-SSIM terms kept in memory: ~12 MB an image at 512 px, ~1.7 MB at 192
_PIXELS_LRU_BYTES = 1 << 29  # decoded images, reused within one score_samples call
_PAIR_CHUNK_BYTES = 1 << 28  # bounds the stacked per-pair MS-SSIM terms / LPIPS maps of one vectorised block


@dataclass
class SampleInputs:
    """What one sample is scored on: its generated image, 5 history images + texts, reference image + text."""

    sample_id: str
    generated: ImageSource
    history: Sequence[ImageSource]
    history_texts: Sequence[str]
    reference: ImageSource
    reference_text: str


def _nbytes(stats: Fn.MsssimStats) -> int:
    return sum(t.nbytes for level in stats for t in level)


def _file_key(src: str | Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns): a rewritten file gets a new key, so its digest is recomputed."""
    path = Path(src).resolve()
    try:
        st = path.stat()
    except OSError:
        raise UserError(f"missing image: {src}") from None
    return str(path), st.st_size, st.st_mtime_ns


class Scorer:
    """Backbones + feature cache, reusable across runs in one process."""

    def __init__(self, profile: str = "paper", device: str = "cpu", batch_size: int = 16,
                 cache_dir: str | Path | None = None, resize: ResizeSpec | int | str | None = "profile",
                 weights: dict[str, str | Path] | None = None, n_boot: int = stats.DEFAULT_N_BOOT,
                 seed: int = 0, memory_bytes: int = DEFAULT_MEMORY_BYTES, progress: bool = True):
        self.profile = profile
        self.batch_size = max(1, int(batch_size))
        if resize == "profile":  # paper: 512 (the official evaluation's resize); tiny: 192
            resize = PROFILE_RESIZE.get(profile, PROFILE_RESIZE["paper"])
        self.resize = resize if isinstance(resize, ResizeSpec) else ResizeSpec(size=resize)
        self.n_boot = n_boot
        self.seed = seed
        self.progress = progress
        self.backbones: dict[str, Backbone] = build(profile, device=device, weights=weights)
        self.store = FeatureStore(cache_dir, memory_bytes=memory_bytes)
        self._msssim: OrderedDict[str, Fn.MsssimStats] = OrderedDict()
        self._msssim_bytes = 0
        self._file_digests: dict[tuple[str, int, int], str] = {}
        self._pixels: OrderedDict[str, Image.Image] = OrderedDict()  # digest -> decoded (resized once used)
        self._pixels_bytes = 0

    # ------------------------------------------------------------ features

    def fingerprints(self) -> dict[str, str]:
        return {k: b.fingerprint for k, b in self.backbones.items()}

    def forward_counts(self) -> dict[str, int]:
        """Images each backbone (texts: "clip-text") has forwarded in this Scorer's life."""
        counts = {k: b.forwards for k, b in self.backbones.items()}
        counts["clip-text"] = self.backbones["clip"].text_forwards
        return counts

    def wrote(self, summary: dict) -> bool:
        """Whether ``summary`` came from this scorer's setup (profile, backbones, preprocessing, n_boot)."""
        boot = summary.get("bootstrap") or {}
        made_by = (summary.get("profile"), summary.get("backbones"), summary.get("preprocess"),
                   boot.get("n_boot"))
        return made_by == (self.profile, self.fingerprints(), self.resize.id, self.n_boot)

    def _namespace(self, backbone: Backbone) -> str:
        return f"{backbone.namespace}-{self.resize.id}"

    def _ensure(self, backbone: Backbone, images: dict[str, ImageSource]) -> None:
        """Compute and store features for the digests in ``images`` that the cache lacks, in batches."""
        ns = self._namespace(backbone)
        todo = [d for d in images if not self.store.has(ns, d)]
        if not todo:
            return
        with self._progress(f"{backbone.id} features", len(todo)) as advance:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                feats = backbone.encode([self._image(d, images[d]) for d in chunk])
                for i, d in enumerate(chunk):
                    own = {k: v[i].clone(memory_format=torch.contiguous_format) for k, v in feats.items()}
                    self.store.put(ns, d, own)
                advance(len(chunk))

    def _stack(self, backbone: Backbone, digests: Sequence[str], name: str) -> torch.Tensor:
        ns = self._namespace(backbone)
        return torch.stack([self.store.get(ns, d)[name] for d in digests])

    def _text_embeddings(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        clip = self.backbones["clip"]
        assert isinstance(clip, ClipBackbone)
        ns = clip.text_namespace
        unique = list(dict.fromkeys(texts))
        todo = [t for t in unique if not self.store.has(ns, text_digest(t))]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            emb = clip.encode_texts(chunk)
            for t, e in zip(chunk, emb, strict=True):
                self.store.put(ns, text_digest(t), {"emb": e.clone()})
        return {t: self.store.get(ns, text_digest(t))["emb"] for t in unique}

    def _digests(self, sources: Sequence[ImageSource]) -> tuple[list[str], dict[str, ImageSource]]:
        """Content digests of ``sources`` and digest -> one source of it.

        A file is decoded only when its (resolved path, size, mtime_ns) is new to this Scorer; the decoded
        image is kept for the backbones and MS-SSIM of the same call (``_image``).
        """
        by_key: dict[object, str] = {}
        out, unique = [], {}
        for src in sources:
            key = str(src) if isinstance(src, str | Path) else id(src)
            if key not in by_key:
                file_key = _file_key(src) if isinstance(src, str | Path) else None
                digest = self._file_digests.get(file_key) if file_key else None
                if digest is None:
                    im = load_image(src)
                    digest = image_digest(im)
                    self._remember_pixels(digest, im)
                    if file_key:
                        self._file_digests[file_key] = digest
                by_key[key] = digest
                unique.setdefault(digest, src)
            out.append(by_key[key])
        return out, unique

    def _remember_pixels(self, digest: str, im: Image.Image) -> None:
        old = self._pixels.pop(digest, None)
        if old is not None:
            self._pixels_bytes -= len(old.mode) * old.width * old.height
        self._pixels[digest] = im
        self._pixels_bytes += len(im.mode) * im.width * im.height
        while self._pixels_bytes > _PIXELS_LRU_BYTES and len(self._pixels) > 1:
            _, evicted = self._pixels.popitem(last=False)
            self._pixels_bytes -= len(evicted.mode) * evicted.width * evicted.height

    def _release_pixels(self) -> None:
        """Drop the decoded images: they are reused within one public call only."""
        self._pixels.clear()
        self._pixels_bytes = 0

    def _image(self, digest: str, src: ImageSource) -> Image.Image:
        """The resized RGB image of ``digest``: decoded at most once per score_samples call while it fits."""
        im = self._pixels.get(digest)
        if im is None:
            im = load_image(src)
        resized = self.resize.apply(im)
        if resized is not im or digest not in self._pixels:
            self._remember_pixels(digest, resized)
        else:
            self._pixels.move_to_end(digest)
        return resized

    def clip_image_embeddings(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """(n, d) L2-normalised CLIP image embeddings (after the common resize), through the cache."""
        digests, unique = self._digests(images)
        self._ensure(self.backbones["clip"], unique)
        self._release_pixels()
        return self._stack(self.backbones["clip"], digests, "emb")

    def _msssim_terms(self, images: dict[str, ImageSource]) -> dict[str, Fn.MsssimStats]:
        """Each image's own MS-SSIM terms, computed in batches for those missing from an in-memory LRU of
        1 GiB (history images recur across runs).

        Not written to disk: at about 12 MB per 512 px image, writing them costs more than recomputing them.
        """
        todo = [d for d in images if d not in self._msssim]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            batch = Fn.msssim_stats(pixels([self._image(d, images[d]) for d in chunk]))
            for i, d in enumerate(chunk):  # own copies: a slice would keep the whole batch alive
                terms = [tuple(t[i:i + 1].clone() for t in level) for level in batch]
                self._msssim[d] = terms
                self._msssim_bytes += _nbytes(terms)
        out = {}
        for d in images:
            self._msssim.move_to_end(d)
            out[d] = self._msssim[d]
        while self._msssim_bytes > _MSSSIM_LRU_BYTES and len(self._msssim) > len(out):
            self._msssim_bytes -= _nbytes(self._msssim.popitem(last=False)[1])
        return out

    def _pairwise(self, gen_d: Sequence[str], hist_d: Sequence[str], per_image_bytes: int,
                  score: Callable[[list[str], list[str]], torch.Tensor]) -> np.ndarray:
        """(n,) mean over each sample's k history images of a vectorised pair score, ``score(m generated
        digests, m * k history digests) -> (m, k)``, in blocks of m samples (bounded by _PAIR_CHUNK_BYTES)."""
        n = len(gen_d)
        k = len(hist_d) // n
        step = max(1, _PAIR_CHUNK_BYTES // max(1, 2 * k * per_image_bytes))
        out = [score(list(gen_d[start:start + step]), list(hist_d[start * k:(start + step) * k]))
               for start in range(0, n, step)]
        return torch.cat(out).double().mean(1).numpy()

    # ------------------------------------------------------------ scoring

    def score_samples(self, samples: Sequence[SampleInputs]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Per-sample metrics (sample_id + PER_SAMPLE_METRICS) and the FID features of generated/reference."""
        n = len(samples)
        if n == 0:
            raise UserError("nothing to score: no samples")
        for s in samples:
            if len(s.history) != len(s.history_texts) or not s.history:
                raise UserError(f"sample {s.sample_id}: history images and texts must be non-empty and match")
        k = len(samples[0].history)
        gen_d, gen_u = self._digests([s.generated for s in samples])
        hist_d, hist_u = self._digests([h for s in samples for h in s.history])
        ref_d, ref_u = self._digests([s.reference for s in samples])
        if any(len(s.history) != k for s in samples):
            raise UserError("every sample must have the same number of history items")
        b = self.backbones
        self._ensure(b["clip"], {**gen_u, **hist_u, **ref_u})
        self._ensure(b["dino"], {**gen_u, **hist_u, **ref_u})
        self._ensure(b["lpips-vgg"], {**gen_u, **hist_u})
        self._ensure(b["fid-inception"], {**gen_u, **ref_u})
        texts = self._text_embeddings([t for s in samples for t in s.history_texts] +
                                      [s.reference_text for s in samples])

        cols: dict[str, np.ndarray] = {}
        for bid, prefix in (("clip", "cis"), ("dino", "dis")):
            g = self._stack(b[bid], gen_d, "emb")
            h = self._stack(b[bid], hist_d, "emb").reshape(n, k, -1)
            r = self._stack(b[bid], ref_d, "emb")
            cols[f"p_{prefix}"] = Fn.cosine_100(g[:, None, :], h).mean(1).numpy()
            cols[f"a_{prefix}"] = Fn.cosine_100(g, r).numpy()
        g = self._stack(b["clip"], gen_d, "emb")
        ht = torch.stack([texts[t] for s in samples for t in s.history_texts]).reshape(n, k, -1)
        rt = torch.stack([texts[s.reference_text] for s in samples])
        cols["p_cs"] = Fn.cosine_100(g[:, None, :], ht).mean(1).numpy()
        cols["a_cs"] = Fn.cosine_100(g, rt).numpy()

        vgg = b["lpips-vgg"]
        ns = self._namespace(vgg)

        def lpips_pairs(g: list[str], h: list[str]) -> torch.Tensor:
            maps = {d: self.store.get(ns, d) for d in dict.fromkeys([*g, *h])}
            return Fn.lpips_from_maps(
                [torch.stack([maps[d][x] for d in g])[:, None] for x in vgg.outputs],
                [torch.stack([maps[d][x] for d in h]).unflatten(0, (len(g), k)) for x in vgg.outputs])

        sources = {**hist_u, **gen_u}

        def msssim_pairs(g: list[str], h: list[str]) -> torch.Tensor:
            terms = self._msssim_terms({d: sources[d] for d in dict.fromkeys([*g, *h])})
            return Fn.ms_ssim_from_stats(Fn.cat_msssim_stats([terms[d] for d in g for _ in range(k)]),
                                         Fn.cat_msssim_stats([terms[d] for d in h])).reshape(len(g), k)

        # bytes per image of a block: fp16 maps + their fp32 difference; MS-SSIM terms + the pair temporaries
        map_bytes = 3 * sum(t.nbytes for t in self.store.get(ns, gen_d[0]).values())
        cols["p_lpips"] = self._pairwise(gen_d, hist_d, map_bytes, lpips_pairs)
        first = self._msssim_terms({gen_d[0]: gen_u[gen_d[0]]})[gen_d[0]]
        cols["p_msssim"] = self._pairwise(gen_d, hist_d, 2 * _nbytes(first), msssim_pairs)
        self._release_pixels()

        df = pd.DataFrame({"sample_id": [s.sample_id for s in samples]})
        for m in PER_SAMPLE_METRICS:
            df[m] = cols[m].astype(np.float64)
        fid_gen = self._stack(b["fid-inception"], gen_d, "pool3").double().numpy()
        fid_ref = self._stack(b["fid-inception"], ref_d, "pool3").double().numpy()
        return df, fid_gen, fid_ref

    def summarize(self, df: pd.DataFrame, fid_gen: np.ndarray, fid_ref: np.ndarray) -> dict:
        """Means and seeded bootstrap CIs of every metric (fid: resampling the sample set)."""
        n = len(df)
        if n < 2:
            raise UserError(f"FID needs at least 2 samples, got {n}")
        if n < FID_RECOMMENDED_N:
            warnings.warn(f"FID on {n} samples (< {FID_RECOMMENDED_N}): biased, comparable only at equal n",
                          stacklevel=2)
        level = 0.95
        metrics: dict[str, dict[str, float]] = {}
        per_sample = {m: df[m].to_numpy() for m in PER_SAMPLE_METRICS}
        per_sample["overall"] = overall(per_sample["p_cis"], per_sample["a_cs"])
        for m, values in per_sample.items():
            lo, hi = stats.bootstrap_ci(values, self.n_boot, self.seed, level)
            metrics[m] = {"mean": float(np.mean(values)), "lo": lo, "hi": hi}
        fid_of = Fn.paired_fid(fid_gen, fid_ref)
        fid_boot = self.n_boot if n <= fid_gen.shape[1] else min(self.n_boot, FID_MAX_BOOT_LARGE_N)
        if fid_boot < self.n_boot:
            warnings.warn(f"FID's CI from {fid_boot} resamples, not {self.n_boot}: with n = {n} > "
                          f"{fid_gen.shape[1]} features each resample is a full covariance "
                          "eigendecomposition", stacklevel=2)
        lo, hi = stats.bootstrap_ci(np.arange(n), fid_boot, self.seed, level,
                                    statistic=lambda rows: fid_of(rows.astype(np.int64)))
        metrics["fid"] = {"mean": fid_of(np.arange(n)), "lo": lo, "hi": hi}
        return {
            "profile": self.profile,
            "notice": TINY_PROFILE_NOTICE if self.profile == "tiny" else None,
            "n": n,
            "metrics": {m: metrics[m] for m in METRICS},
            "backbones": self.fingerprints(),
            "bootstrap": {"n_boot": self.n_boot, "seed": self.seed, "level": level,
                          **({"fid_n_boot": fid_boot} if fid_boot != self.n_boot else {})},
            "preprocess": self.resize.id,
        }

    def score_run(self, run_dir: str | Path, data_dir: str | Path | None = None) -> dict:
        """Score RUN/images/<sample_id>.png; write RUN/scores.parquet and RUN/summary.json."""
        run_dir = Path(run_dir)
        manifest = read_manifest(run_dir)
        data = data_dir or manifest.get("data")
        if not data:
            raise UserError(f"{run_dir}: no manifest.json with \"data\"; pass the dataset folder (--data)")
        dataset = Dataset(data)
        samples = run_samples(run_dir, dataset)
        inputs = [SampleInputs(
            s.sample_id, run_dir / "images" / f"{s.sample_id}.png",
            [dataset.image_path(h) for h in s.history], [dataset.item(h).semantics for h in s.history],
            dataset.image_path(s.reference_id), dataset.item(s.reference_id).semantics) for s in samples]
        df, fid_gen, fid_ref = self.score_samples(inputs)
        summary = {
            **{k: manifest.get(k) for k in ("method", "label", "group")},
            "scenario": manifest.get("scenario") or dataset.scenario,
            **self.summarize(df, fid_gen, fid_ref),
            "selection": manifest.get("selection"),
            "alpha_r": manifest.get("alpha_r"),
        }
        fileio.write_parquet(run_dir / "scores.parquet", df)
        fileio.write_json(run_dir / "summary.json", summary)
        return summary

    # ------------------------------------------------------------ helpers

    def _progress(self, label: str, total: int):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            if not self.progress or total < 32:
                yield lambda k: None
                return
            with progress_bar() as prog:
                task = prog.add_task(label, total=total)
                yield lambda k: prog.advance(task, k)

        return bar()


def read_manifest(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    path = run_dir / "manifest.json"
    return fileio.read_json(path) if path.is_file() else {}


def run_samples(run_dir: Path, dataset: Dataset) -> list[Sample]:
    """The dataset's samples having RUN/images/<sample_id>.png, in dataset order; unknown ids are errors."""
    images = run_dir / "images"
    if not images.is_dir():
        raise UserError(f"{run_dir}: no images/ folder (expected images/<sample_id>.png)")
    ids = {p.stem for p in images.glob("*.png") if not p.name.startswith(".")}  # skip a killed write's temp
    if not ids:
        raise UserError(f"{images}: no <sample_id>.png images")
    by_id = {s.sample_id: s for s in dataset.samples()}
    unknown = sorted(ids - by_id.keys())
    if unknown:
        shown = ", ".join(unknown[:5])
        raise UserError(f"{images}: image(s) for sample id(s) not in {dataset.root}: {shown}")
    return [s for sid, s in by_id.items() if sid in ids]


def score_run(run_dir: str | Path, data_dir: str | Path | None = None, profile: str = "paper",
              device: str = "cpu", batch_size: int = 16, cache_dir: str | Path | None = None) -> dict:
    """Convenience wrapper: a one-off Scorer for one run folder."""
    return Scorer(profile=profile, device=device, batch_size=batch_size, cache_dir=cache_dir).score_run(
        run_dir, data_dir)


def sample_inputs(dataset: Dataset, sample: Sample, generated: ImageSource) -> SampleInputs:
    """What ``sample`` of ``dataset`` is scored on, with ``generated`` as its generated image."""
    return SampleInputs(sample.sample_id, generated, [dataset.image_path(h) for h in sample.history],
                        [dataset.item(h).semantics for h in sample.history],
                        dataset.image_path(sample.reference_id), dataset.item(sample.reference_id).semantics)


def score_samples(samples: Sequence[SampleInputs], profile: str = "paper", **scorer_options) -> pd.DataFrame:
    """Per-sample metrics (sample_id + the per-sample columns) of ``samples``, with a one-off Scorer."""
    return Scorer(profile=getattr(profile, "name", profile), progress=False, **scorer_options
                  ).score_samples(samples)[0]

