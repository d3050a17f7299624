"""Scoring: the metric table's entries (``pigeon_bench.metrics.table``) computed over a run folder, through
the backbones, the feature cache and the pure functions of the functional layer.

Each unique image (by decoded-pixel hash) goes through each backbone at most once per input path, ever:
features are looked up in the content-addressed cache (``pigeon_bench.metrics.cache``) first, and only missing
ones are computed, in batches. History, reference and text features are therefore shared across methods,
alpha_r candidates and checkpoints scored with the same backbones and preprocessing.

The pair metrics (LPIPS from VGG maps, MS-SSIM from per-image terms) store values, not features: one float
per (generated image, paired image) in the pair table (``pigeon_bench.metrics.pairs``), beside the feature
store. ``score_samples`` walks the samples in blocks of consecutive ones (sliding windows share history
images), reads each block's known pairs, and forwards and computes only the missing ones, from maps and terms
held for the block only (and those of the previous block that it shares). A rescoring, resume or re-report
thus forwards no VGG image and computes no MS-SSIM term for a known pair.

The preprocessing mode (``pigeon_bench.metrics.preprocess``: official, clean, fast) says by which input path
(resized or original) each role (generated, history, reference) reaches each backbone; the path is part of the
cache key, so features of one image computed by two paths are never mixed.

Backbones are resolved when first used. One whose weights are missing skips the metrics it feeds: their
columns are NaN, their summary entries null, a one-line warning names the weights and the columns, and the
summary records them under ``skipped``. Only when no backbone has weights does scoring refuse (one error
naming every missing one).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pigeon_bench import stats
from pigeon_bench.artifacts import image_digest, text_digest
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.distributed import Ranks
from pigeon_bench.errors import UserError
from pigeon_bench.heap import HEAP_GROWTH, give_back_freed_memory
from pigeon_bench.metrics import functional as Fn
from pigeon_bench.metrics import preprocess as pre
from pigeon_bench.metrics import table
from pigeon_bench.metrics.backbones import Backbone, pixels
from pigeon_bench.metrics.cache import FeatureStore
from pigeon_bench.metrics.fid_ci import fid_ci
from pigeon_bench.metrics.pairs import Pair, PairStore, pair_namespace
from pigeon_bench.metrics.preprocess import GENERATED, RESIZED, Preprocess, ResizeSpec
from pigeon_bench.metrics.table import EMBEDDING, HISTORY, IMAGE, MAPS, PIXELS, REFERENCE, SET, TEXT, Metric
from pigeon_bench.profiles import PAPER, Profile, get_profile
from pigeon_bench.progress import progress as progress_bar
from pigeon_bench.runs.folder import IMAGE_SUFFIX, IMAGES, MANIFEST, RunFolder
from pigeon_bench.schema import METRICS
from pigeon_bench.weights import MissingWeights, Resolved

ImageSource = str | Path | Image.Image
FID_RECOMMENDED_N = 2048  # the Inception feature dimension: below it FID's covariances are rank-deficient
# Resamples for FID's CI when n exceeds the feature dimension: each resample is then a full (d, d) covariance
# and eigendecomposition (about 4 s at the paper's n = 4,555 and d = 2,048 on 2 CPU cores).
FID_MAX_BOOT_LARGE_N = 100
# decoded images (original and resized) reused within one call: a working set of a few batches and one pair
# block (16 images of 4 MB at 1024 px + their 512 px resize), so that memory does not grow with the samples
_PIXELS_LRU_BYTES = 1 << 27
_N_BOOT = "_n_boot"  # summary["bootstrap"][<set metric> + _N_BOOT]: its interval's resamples where not n_boot
_READ_CHUNK = 1024  # feature-store keys read per get_many
_PAIR_CHUNK_BYTES = 1 << 28  # bounds the stacked per-pair MS-SSIM terms / LPIPS maps of one vectorised block
_EMBEDDING_CHUNK_BYTES = 1 << 26  # bounds an embedding metric's stacked rows and temporaries (any n)
# Distinct images (generated and paired) of one block of consecutive samples: the LPIPS maps and MS-SSIM terms
# held at once (64 MB / 12 MB an image at 512 px with float16 maps).
_BLOCK_IMAGES = 16
_NOT_SCORED = {"mean": None, "lo": None, "hi": None}

NO_TEXTS = "no texts"  # why a text metric was skipped (in place of a missing backbone)

@dataclass
class SampleInputs:
    """What one sample is scored on: its generated image, 5 history images + texts, reference image + text.
    Without texts (None) the text metrics (CLIP score) are skipped."""

    sample_id: str
    generated: ImageSource
    history: Sequence[ImageSource]
    history_texts: Sequence[str] | None
    reference: ImageSource
    reference_text: str | None


@dataclass
class SampleScores:
    """What ``score_samples`` computed: per-sample columns, set-level features, and the metrics it skipped."""

    frame: pd.DataFrame  # sample_id, then one float column per per-sample metric (NaN where skipped)
    sets: dict[str, tuple[np.ndarray, np.ndarray]]  # set-level metric -> (generated, reference) features
    skipped: dict[str, str]  # metric -> the backbone whose weights are missing


Mine = Callable[..., bool]  # (namespace, *key) -> whether this rank computes that cache entry


def claim(namespace: str, *key: str) -> int:
    """A 64-bit name of one cache entry (a feature, text embedding or pair value: its namespace and key), by
    which the ranks of a torchrun job share the entries out (``Ranks.owned``)."""
    h = hashlib.blake2b("\0".join((namespace, *key)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


@dataclass
class _Paired:
    """One pairing's side of every sample: images (digests, digest -> source) and texts, k per sample."""

    digests: list[str]
    sources: dict[str, ImageSource]
    texts: list[str]
    k: int


@dataclass
class _PairKind:
    """How a pair metric is computed block by block: its pair-table namespace, the input paths of the
    generated and the paired images, each image's features, and the vectorised values of matching lists."""

    namespace: str
    paths: tuple[str, str]
    features: Callable[[dict[str, ImageSource], str], dict[str, object]]  # (digest -> source, path)
    values: Callable[[list, list], torch.Tensor]  # (p,) from p generated and p paired images' features
    nbytes: Callable[[object], int]  # bytes of one image's features and its pair temporaries


@dataclass
class _Prepared:
    """Checked samples ready to fill and score: ids, generated digests and sources, both pairings, the
    skipped metrics (why), each backbone with weights and the stored-feature metrics it feeds, the pair
    metrics."""

    sample_ids: list[str]
    gen_d: list[str]
    gen_u: dict[str, ImageSource]
    paired: dict[str, _Paired]
    skipped: dict[str, str]
    uses: dict[Backbone, list[Metric]]
    pair_metrics: list[Metric]


def _held_bytes(im: Image.Image) -> int:
    """The memory PIL holds for ``im``'s pixels: 4 bytes per pixel for a multi-band image (RGB included)."""
    return im.width * im.height * (4 if len(im.getbands()) > 1 else 1)


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
    """Backbones (resolved on first use) + feature cache, reusable across runs in one process.

    ``preprocess``: a mode name (``official``, ``clean``, ``fast``) or a resolved ``Preprocess``; None: the
    profile's default (paper: official, tiny: fast). ``resize`` ("mode": the mode's default, 512 or the
    profile's), ``fid`` (``pytorch-fid`` or ``torch-fidelity``) and ``dino_items`` override the mode's.
    """

    def __init__(self, profile: Profile | str = "paper", device: str = "cpu", batch_size: int = 16,
                 cache_dir: str | Path | None = None,
                 resize: ResizeSpec | int | Literal["mode"] | None = "mode",
                 weights: dict[str, str | Path] | None = None, n_boot: int = stats.DEFAULT_N_BOOT,
                 seed: int = 0, progress: bool = True, preprocess: str | Preprocess | None = None,
                 fid: str | None = None, dino_items: str | None = None):
        self.profile = get_profile(profile)
        self.device = device
        self.weights = weights
        self.batch_size = max(1, int(batch_size))
        self.preprocess = pre.resolve(preprocess, self.profile, resize, fid, dino_items)
        self.n_boot = n_boot
        self.seed = seed
        self.progress = progress
        self.store = FeatureStore(cache_dir)
        self._backbones: dict[str, Backbone] = {}
        self._missing: dict[str, Resolved] = {}
        self.pairs = PairStore(self.store.cache_root)  # the pair metrics' values, beside the features
        self._file_digests: dict[tuple[str, int, int], str] = {}
        # (digest, input path) -> the decoded image (ORIGINAL) or the resized one (RESIZED)
        self._pixels: OrderedDict[tuple[str, str], Image.Image] = OrderedDict()
        self._pixels_bytes = 0

    # ------------------------------------------------------------ backbones

    def _find(self, backbone_id: str) -> Backbone | None:
        """The backbone, resolved and built on first use; None when its weights are missing."""
        if backbone_id not in self._backbones and backbone_id not in self._missing:
            try:
                built = self.profile.scoring_backbones(self.device, self.weights, (backbone_id,))
            except MissingWeights as exc:
                self._missing[backbone_id] = exc.missing[0]
            else:
                for backbone in built.values():
                    backbone.configure(self.preprocess)
                self._backbones.update(built)
        return self._backbones.get(backbone_id)

    def backbone(self, backbone_id: str) -> Backbone:
        """A backbone, resolved and built on first use (missing weights: a MissingWeights error)."""
        found = self._find(backbone_id)
        if found is None:
            raise MissingWeights([self._missing[backbone_id]], self.profile.name)
        return found

    def fingerprints(self) -> dict[str, str]:
        """Backbone id -> weights fingerprint for each backbone of the metric table whose weights are here."""
        return {bid: b.fingerprint for bid in table.BACKBONES if (b := self._find(bid)) is not None}

    def forward_counts(self) -> dict[str, int]:
        """Images each built backbone has forwarded in this Scorer's life (texts: "<id>-text")."""
        counts = {k: b.forwards for k, b in self._backbones.items()}
        for bid in dict.fromkeys(m.backbone for m in table.TABLE if m.against == TEXT):
            if bid in self._backbones:
                counts[f"{bid}-text"] = self._backbones[bid].text_forwards
        return counts

    def wrote(self, summary: dict, intervals: bool = False) -> bool:
        """Whether ``summary`` came from this scorer's setup: profile, the fingerprints of the backbones whose
        weights are here now, preprocessing and bootstrap (n_boot, seed); with ``intervals``, also whether it
        holds its set-level intervals (``has_intervals``)."""
        boot = summary.get("bootstrap") or {}
        made_by = (summary.get("profile"), summary.get("backbones"), summary.get("preprocess"),
                   boot.get("n_boot"), boot.get("seed"))
        return made_by == (self.profile.name, self.fingerprints(), self.preprocess.record(), self.n_boot,
                           self.seed) and (not intervals or self.has_intervals(summary))

    @staticmethod
    def has_intervals(summary: dict) -> bool:
        """Whether ``summary`` holds its set-level intervals (not from ``summarize(set_intervals=False)``)."""
        boot = summary.get("bootstrap") or {}
        return not any(key.endswith(_N_BOOT) and value == 0 for key, value in boot.items())

    @property
    def notice(self) -> str:
        """The line printed beside every number this scorer produces: the profile's and the preprocessing."""
        return "; ".join(n for n in (self.profile.notice, self.preprocess.notice) if n)

    # ------------------------------------------------------------ features

    def _namespace(self, backbone: Backbone, path: str = RESIZED) -> str:
        return f"{backbone.namespace}-{self.preprocess.input_id(path)}"

    def _role_namespace(self, backbone: Backbone, role: str) -> str:
        """The cache namespace of ``role``'s images through ``backbone`` (its input path's)."""
        return self._namespace(backbone, self.preprocess.path(backbone.id, role))

    def _ensure(self, backbone: Backbone, images: dict[str, ImageSource], path: str = RESIZED,
                mine: Mine | None = None) -> None:
        """Compute and store features for the digests in ``images`` (reaching ``backbone`` by input ``path``)
        that the cache lacks (and, with ``mine``, that are this rank's), in batches."""
        ns = self._namespace(backbone, path)
        keys = [d for d in images if mine is None or mine(ns, d)]
        have: set[str] = set()
        for start in range(0, len(keys), _READ_CHUNK):
            have.update(self.store.get_many(ns, keys[start:start + _READ_CHUNK]))
        todo = {d: images[d] for d in keys if d not in have}
        for d, own in self._encoded(backbone, todo, path):
            self.store.put(ns, d, own)

    def _encoded(self, backbone: Backbone, images: dict[str, ImageSource],
                 path: str) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """(digest, own copy of its features) for each of ``images`` through ``backbone`` by input ``path``,
        in batches."""
        todo = list(images)
        with self._progress(f"{backbone.id} features", len(todo)) as advance:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start:start + self.batch_size]
                feats = backbone.encode([self._image(d, images[d], path) for d in chunk])
                for i, d in enumerate(chunk):
                    yield d, {k: v[i].clone(memory_format=torch.contiguous_format) for k, v in feats.items()}
                del feats
                give_back_freed_memory(HEAP_GROWTH)
                advance(len(chunk))

    def _stack(self, namespace: str, keys: Sequence[str], name: str) -> torch.Tensor:
        """(len(keys), ...) output ``name`` of the stored entries of ``keys``, read in chunks."""
        out = None
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start:start + _READ_CHUNK]
            got = self.store.get_many(namespace, chunk)
            rows = torch.stack([got[key][name] for key in chunk])
            if out is None:
                out = rows.new_empty((len(keys), *rows.shape[1:]))
            out[start:start + len(chunk)] = rows
        return out

    def _ensure_texts(self, backbone: Backbone, texts: Sequence[str], mine: Mine | None = None) -> None:
        """Compute and store the text-tower embeddings of ``texts`` that the cache lacks (and, with ``mine``,
        that are this rank's), in batches."""
        ns = backbone.text_namespace
        unique = [t for t in dict.fromkeys(texts) if mine is None or mine(ns, text_digest(t))]
        todo = [t for t in unique if not self.store.has(ns, text_digest(t))]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            emb = backbone.encode_texts(chunk)
            for t, e in zip(chunk, emb, strict=True):
                self.store.put(ns, text_digest(t), {backbone.outputs[0]: e.clone()})
            give_back_freed_memory(HEAP_GROWTH)

    def _digests(self, sources: Sequence[ImageSource]) -> tuple[list[str], dict[str, ImageSource]]:
        """Content digests of ``sources`` (of their pixels as the mode decodes them) and digest -> one source.

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
                    im = self.preprocess.load(src)
                    digest = image_digest(im)
                    self._remember_pixels((digest, pre.ORIGINAL), im)
                    if file_key:
                        self._file_digests[file_key] = digest
                by_key[key] = digest
                unique.setdefault(digest, src)
            out.append(by_key[key])
        return out, unique

    def _remember_pixels(self, key: tuple[str, str], im: Image.Image) -> None:
        old = self._pixels.pop(key, None)
        if old is not None:
            self._pixels_bytes -= _held_bytes(old)
        self._pixels[key] = im
        self._pixels_bytes += _held_bytes(im)
        while self._pixels_bytes > _PIXELS_LRU_BYTES and len(self._pixels) > 1:
            _, evicted = self._pixels.popitem(last=False)
            self._pixels_bytes -= _held_bytes(evicted)

    def _release_pixels(self) -> None:
        """Drop the decoded images: they are reused within one public call only."""
        self._pixels.clear()
        self._pixels_bytes = 0

    def _image(self, digest: str, src: ImageSource, path: str = RESIZED) -> Image.Image:
        """The RGB image of ``digest`` as input ``path`` gives it (resized, or as decoded): decoded at most
        once per score_samples call while it fits."""
        key = (digest, path)
        im = self._pixels.get(key)
        if im is not None:
            self._pixels.move_to_end(key)
            return im
        decoded = self._pixels.get((digest, pre.ORIGINAL))
        if decoded is None:
            decoded = self.preprocess.load(src)
            self._remember_pixels((digest, pre.ORIGINAL), decoded)
        im = self.preprocess.prepare(decoded, path)
        if im is not decoded:
            self._remember_pixels(key, im)
        return im

    def clip_image_embeddings(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """(n, d) L2-normalised CLIP image embeddings (as of generated images), through the cache."""
        clip = self.backbone("clip")
        digests, unique = self._digests(images)
        path = self.preprocess.path(clip.id, GENERATED)
        self._ensure(clip, unique, path)
        self._release_pixels()
        return self._stack(self._namespace(clip, path), digests, clip.outputs[0])

    def _msssim_terms(self, images: dict[str, ImageSource], path: str) -> dict[str, Fn.MsssimStats]:
        """Each image's own MS-SSIM terms, in batches.

        Not written to disk: at about 12 MB per 512 px image, writing them costs more than recomputing them.
        """
        out = {}
        todo = list(images)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            batch = Fn.msssim_stats(pixels([self._image(d, images[d], path) for d in chunk]))
            for i, d in enumerate(chunk):  # own copies: a slice would keep the whole batch alive
                out[d] = [tuple(t[i:i + 1].clone() for t in level) for level in batch]
        return out

    def _pairwise(self, gen_d: Sequence[str], other: Sequence[str], per_image_bytes: int,
                  score: Callable[[list[str], list[str]], torch.Tensor]) -> np.ndarray:
        """(n,) mean over each sample's k paired items of a vectorised pair score, ``score(m generated
        digests, m * k paired keys) -> (m, k)``, in blocks of m samples (_EMBEDDING_CHUNK_BYTES bounds)."""
        n = len(gen_d)
        k = len(other) // n
        # the stacked float32 rows and cosine_100's float64 copies and normalized twins (~6x the rows)
        step = max(1, _EMBEDDING_CHUNK_BYTES // max(1, 6 * (k + 1) * per_image_bytes))
        out = [score(list(gen_d[start:start + step]), list(other[start * k:(start + step) * k]))
               for start in range(0, n, step)]
        return torch.cat(out).double().mean(1).numpy()

    def _pair_kind(self, m: Metric) -> _PairKind:
        """How MAPS / PIXELS metric ``m`` is computed; its namespace holds every input of its values besides
        the two images (the backbone's weights, preprocessing and maps dtype, each role's input path)."""
        paths = (self.preprocess.path(m.backbone, GENERATED), self.preprocess.path(m.backbone, m.pairing))
        if m.kind == MAPS:
            backbone = self.backbone(m.backbone)
            roles = f"{self._role_namespace(backbone, GENERATED)}|{self._role_namespace(backbone, m.pairing)}"

            def map_values(gen: list[dict[str, torch.Tensor]], other: list[dict[str, torch.Tensor]]):
                # pair by pair on views: stacking would copy 64 MB of maps per image at 512 px
                return torch.cat([m.function([g[x][None] for x in backbone.outputs],
                                             [o[x][None] for x in backbone.outputs])
                                  for g, o in zip(gen, other, strict=True)])

            # bytes per image: its maps (held for the block; pairs are views of them)
            return _PairKind(pair_namespace(m.name, backbone.fingerprint, roles), paths,
                             lambda images, path: dict(self._encoded(backbone, images, path)), map_values,
                             lambda maps: sum(t.nbytes for t in maps.values()))
        if m.kind == PIXELS:
            inputs = "|".join(self.preprocess.input_id(path) for path in paths)
            # bytes per image: its MS-SSIM terms + the pair temporaries
            return _PairKind(pair_namespace(m.name, hashlib.sha256(m.fn.encode()).hexdigest(), inputs), paths,
                             self._msssim_terms,
                             lambda gen, other: m.function(Fn.cat_msssim_stats(gen),
                                                           Fn.cat_msssim_stats(other)),
                             lambda terms: 2 * _nbytes(terms))
        raise ValueError(f"metric {m.name}: kind {m.kind!r} is not a MAPS or PIXELS pair metric")

    @staticmethod
    def _blocks(gen_d: Sequence[str], others: Sequence[_Paired]) -> list[range]:
        """Consecutive samples in blocks of at most _BLOCK_IMAGES distinct images (at least one sample each):
        in sample order, so that samples sharing history images share a block."""
        blocks, start, seen = [], 0, set()
        for i, g in enumerate(gen_d):
            images = {g, *(d for o in others for d in o.digests[i * o.k:(i + 1) * o.k])}
            if i > start and len(seen | images) > _BLOCK_IMAGES:
                blocks.append(range(start, i))
                start, seen = i, set()
            seen |= images
        return [*blocks, range(start, len(gen_d))]

    def _streamed_pairs(self, metrics: Sequence[Metric], gen_d: list[str], gen_u: dict[str, ImageSource],
                        paired: dict[str, _Paired], mine: Mine | None = None) -> dict[str, np.ndarray]:
        """(n,) per-sample value of each MAPS / PIXELS metric of ``metrics`` (the mean over the k items of its
        pairing), block by block: the block's pair values from the pair table, the missing ones computed from
        features held for the block only (and those the previous block computed, when this one needs them) and
        written back. With ``mine``: only this rank's missing pairs computed and written, nothing returned."""
        n = len(gen_d)
        kinds = {m.name: self._pair_kind(m) for m in metrics}
        held: dict[str, dict[tuple[str, str], object]] = {m.name: {} for m in metrics}
        out = {m.name: np.empty((n, paired[m.pairing].k)) for m in metrics}
        with self._progress("pair metrics (samples)", n) as advance:
            for block in self._blocks(gen_d, [paired[m.pairing] for m in metrics]):
                self._block_pairs(block, metrics, kinds, held, out, gen_d, gen_u, paired, mine)
                give_back_freed_memory(HEAP_GROWTH)
                advance(len(block))
        if mine is not None:
            return {}
        return {name: torch.from_numpy(v).mean(1).numpy() for name, v in out.items()}

    def _block_pairs(self, block: range, metrics: Sequence[Metric], kinds: dict[str, _PairKind],
                     held: dict[str, dict[tuple[str, str], object]], out: dict[str, np.ndarray],
                     gen_d: list[str], gen_u: dict[str, ImageSource], paired: dict[str, _Paired],
                     mine: Mine | None) -> None:
        """One block's pair values of each metric into ``out``: read, the missing computed and written (with
        ``mine``: only this rank's, and ``out`` left alone)."""
        for m in metrics:
            kind, other = kinds[m.name], paired[m.pairing]
            k = other.k
            pairs = [(gen_d[i], o) for i in block for o in other.digests[i * k:(i + 1) * k]]
            if mine is not None:
                pairs = [p for p in pairs if mine(kind.namespace, *p)]
            values = self.pairs.get_many(kind.namespace, pairs)
            todo = [p for p in dict.fromkeys(pairs) if p not in values]
            new = self._compute_pairs(kind, todo, held[m.name], gen_u, other.sources)
            self.pairs.put_many(kind.namespace, new)
            if mine is None:
                values.update(new)
                out[m.name][block.start:block.stop] = np.reshape([values[p] for p in pairs], (len(block), k))

    def _compute_pairs(self, kind: _PairKind, todo: list[Pair], held: dict[tuple[str, str], object],
                       gen_u: dict[str, ImageSource], other_u: dict[str, ImageSource]) -> dict[Pair, float]:
        """The values of ``todo``'s pairs; ``held`` ((path, digest) -> features) keeps only what they need."""
        gen_path, other_path = kind.paths
        need = {*((gen_path, g) for g, _ in todo), *((other_path, o) for _, o in todo)}
        for key in [key for key in held if key not in need]:
            del held[key]
        by_path: dict[str, dict[str, ImageSource]] = {}  # one batch stream per input path, as _fill
        for path, digests, sources in ((gen_path, [g for g, _ in todo], gen_u),
                                       (other_path, [o for _, o in todo], other_u)):
            for d in dict.fromkeys(digests):
                if (path, d) not in held:
                    by_path.setdefault(path, {})[d] = sources[d]
        for path, images in by_path.items():
            held.update({(path, d): f for d, f in kind.features(images, path).items()})
        if not todo:
            return {}
        step = max(1, _PAIR_CHUNK_BYTES // (2 * kind.nbytes(held[(gen_path, todo[0][0])])))
        values: dict[Pair, float] = {}
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            got = kind.values([held[(gen_path, g)] for g, _ in chunk],
                              [held[(other_path, o)] for _, o in chunk])
            values.update(zip(chunk, got.tolist(), strict=True))
        return values

    # ------------------------------------------------------------ scoring

    def _prepare(self, samples: Sequence[SampleInputs]) -> _Prepared:
        """``samples`` checked, their images' digests, and the backbones with weights (one must have some)."""
        n = len(samples)
        if n == 0:
            raise UserError("nothing to score: no samples")
        texts = all(s.history_texts is not None and s.reference_text is not None for s in samples)
        for s in samples:
            if not s.history or (texts and len(s.history) != len(s.history_texts)):
                raise UserError(f"sample {s.sample_id}: history images and texts must be non-empty and match")
        k = len(samples[0].history)
        gen_d, gen_u = self._digests([s.generated for s in samples])
        hist_d, hist_u = self._digests([h for s in samples for h in s.history])
        ref_d, ref_u = self._digests([s.reference for s in samples])
        if any(len(s.history) != k for s in samples):
            raise UserError("every sample must have the same number of history items")
        paired = {HISTORY: _Paired(hist_d, hist_u, [t for s in samples for t in s.history_texts or ()], k),
                  REFERENCE: _Paired(ref_d, ref_u, [s.reference_text for s in samples] if texts else [], 1)}
        untexted = [] if texts else [m.name for m in table.TABLE if m.against == TEXT]  # table order
        found = {bid: self._find(bid) for bid in table.BACKBONES}
        if not any(found.values()):
            raise MissingWeights(list(self._missing.values()), self.profile.name)
        skipped = {m.name: m.backbone for m in table.TABLE if m.backbone and found[m.backbone] is None}
        skipped |= dict.fromkeys(untexted, NO_TEXTS)
        uses = {backbone: used for bid, backbone in found.items()
                if backbone is not None and (used := [m for m in table.TABLE if m.backbone == bid
                                                      and m.name not in untexted and m.kind != MAPS])}
        pair_metrics = [m for m in table.PER_SAMPLE if m.kind in (MAPS, PIXELS) and m.name not in skipped]
        return _Prepared([s.sample_id for s in samples], gen_d, gen_u, paired, skipped, uses, pair_metrics)

    def _fill(self, p: _Prepared, mine: Mine | None = None) -> dict[str, np.ndarray]:
        """The stored features and texts of ``p`` that the cache lacks, and its pair metrics' values (with
        ``mine``: only this rank's entries computed and written, nothing returned)."""
        for backbone, uses in p.uses.items():  # each over the images and texts of its stored features
            images, texts = self._inputs_of(backbone, uses, p.gen_u, p.paired)
            for path, by_digest in images.items():
                self._ensure(backbone, by_digest, path, mine)
            if texts:
                self._ensure_texts(backbone, texts, mine)
        return self._streamed_pairs(p.pair_metrics, p.gen_d, p.gen_u, p.paired, mine)

    def _claims(self, p: _Prepared) -> list[int]:
        """The names (``claim``) of every cache entry ``_fill(p)`` may write."""
        out = []
        for backbone, uses in p.uses.items():
            images, texts = self._inputs_of(backbone, uses, p.gen_u, p.paired)
            for path, by_digest in images.items():
                ns = self._namespace(backbone, path)
                out += [claim(ns, d) for d in by_digest]
            out += [claim(backbone.text_namespace, text_digest(t)) for t in dict.fromkeys(texts)]
        for m in p.pair_metrics:
            ns, other = self._pair_kind(m).namespace, p.paired[m.pairing]
            out += [claim(ns, g, o) for i, g in enumerate(p.gen_d)
                    for o in other.digests[i * other.k:(i + 1) * other.k]]
        return out

    def score_samples(self, samples: Sequence[SampleInputs]) -> SampleScores:
        """Every metric of the table whose backbone has weights: per-sample scores, set-level features."""
        p = self._prepare(samples)
        streamed = self._fill(p)
        skipped = dict(p.skipped)
        df = pd.DataFrame({"sample_id": p.sample_ids})
        for m in table.PER_SAMPLE:
            if m.name in skipped:
                values = np.full(len(p.gen_d), np.nan)
            elif m.name in streamed:
                values = streamed[m.name]
            else:
                values = self._embedding_metric(m, p.gen_d, p.paired)
            df[m.name] = values.astype(np.float64)
        self._release_pixels()
        give_back_freed_memory()
        sets = {}
        for m in table.TABLE:
            if m.kind == SET and m.name not in skipped:
                backbone = self.backbone(m.backbone)
                name = backbone.outputs[0]
                gen_ns = self._role_namespace(backbone, GENERATED)
                ref_ns = self._role_namespace(backbone, m.pairing)
                sets[m.name] = (self._stack(gen_ns, p.gen_d, name).numpy(),  # as stored (float32)
                                self._stack(ref_ns, p.paired[m.pairing].digests, name).numpy())
        for m in table.TABLE:  # derived metrics (Overall) lack what their inputs lack
            missing = [skipped[i] for i in m.inputs if i in skipped]
            if missing:
                skipped[m.name] = missing[0]
        if skipped:
            self._warn_skipped(skipped)
        return SampleScores(df, sets, skipped)

    @staticmethod
    def _interleaved(folders: Sequence[Sequence[SampleInputs]]) -> list[tuple[int, int]]:
        """(position, folder) of every sample of ``folders``, by position: a job's folders side by side."""
        return sorted((i, f) for f, folder in enumerate(folders) for i in range(len(folder)))

    def score_many(self, folders: Sequence[Sequence[SampleInputs]]) -> list[SampleScores]:
        """``score_samples`` of each of ``folders`` (a job's methods and candidates over one dataset) in one
        pass: the samples interleaved by position, so that a pair-metric block holds every folder's generated
        images of a few consecutive samples with the history images they share, and each history image goes
        through VGG once per job instead of once per folder."""
        order = self._interleaved(folders)
        scores = self.score_samples([folders[f][i] for i, f in order])
        rows: list[list[int]] = [[] for _ in folders]
        for row, (_, f) in enumerate(order):
            rows[f].append(row)
        return [SampleScores(scores.frame.iloc[r].reset_index(drop=True),
                             {m: (gen[r], ref[r]) for m, (gen, ref) in scores.sets.items()},
                             dict(scores.skipped))
                for r in rows]

    def _inputs_of(self, backbone: Backbone, uses: list[Metric], gen: dict[str, ImageSource],
                   paired: dict[str, _Paired]) -> tuple[dict[str, dict[str, ImageSource]], list[str]]:
        """The images (input path -> digest -> source: the generated ones and the paired ones that ``uses``
        read, each role's by its input path) and the texts whose ``backbone`` features ``uses`` read."""
        by_path: dict[str, dict[str, ImageSource]] = {}
        by_path.setdefault(self.preprocess.path(backbone.id, GENERATED), {}).update(gen)
        for pairing in (HISTORY, REFERENCE):
            if any(m.pairing == pairing and m.against == IMAGE for m in uses):
                path = self.preprocess.path(backbone.id, pairing)
                by_path.setdefault(path, {}).update(paired[pairing].sources)
        texts = [t for pairing in (HISTORY, REFERENCE)
                 if any(m.pairing == pairing and m.against == TEXT for m in uses)
                 for t in paired[pairing].texts]
        return by_path, texts

    def _embedding_metric(self, m: Metric, gen_d: list[str], paired: dict[str, _Paired]) -> np.ndarray:
        """(n,) per-sample EMBEDDING metric ``m``: its function over each generated image's stored embedding
        and its paired items', averaged over the k items of the pairing (history: 5, reference: 1)."""
        if m.kind != EMBEDDING:
            raise ValueError(f"metric {m.name}: kind {m.kind!r} is not an embedding metric")
        fn, other = m.function, paired[m.pairing]
        k = other.k
        backbone = self.backbone(m.backbone)
        ns, name = self._role_namespace(backbone, GENERATED), backbone.outputs[0]
        other_ns, keys = ((backbone.text_namespace, [text_digest(t) for t in other.texts])
                          if m.against == TEXT else
                          (self._role_namespace(backbone, m.pairing), other.digests))

        def embedding_pairs(g: list[str], o: list[str]) -> torch.Tensor:
            return fn(self._stack(ns, g, name)[:, None],
                      self._stack(other_ns, o, name).unflatten(0, (len(g), k)))

        return self._pairwise(gen_d, keys, self._stack(ns, gen_d[:1], name).nbytes, embedding_pairs)

    def _warn_skipped(self, skipped: dict[str, str]) -> None:
        """One line: the weights missing, where scoring looked, and the columns left unscored."""
        textless = [m for m, why in skipped.items() if why == NO_TEXTS]
        if textless:
            warnings.warn(f"the samples have no texts: {', '.join(textless)} not scored", stacklevel=3)
        missing = [self._missing[bid] for bid in dict.fromkeys(skipped.values()) if bid != NO_TEXTS]
        if not missing:
            return
        where = "; ".join(f"{r.id} (looked in {', '.join(r.looked)})" for r in missing)
        ids = " ".join(r.id for r in missing)
        columns = [m for m, why in skipped.items() if why != NO_TEXTS]
        warnings.warn(f"{self.profile.name} profile: no weights for {where}: {', '.join(columns)} not scored "
                      f"(`pigeon-bench models prefetch {ids}` fetches them)", stacklevel=3)

    def summarize(self, scores: SampleScores, set_intervals: bool = True) -> dict:
        """Means and seeded bootstrap CIs of every metric (set-level ones: resampling the sample set); null
        for the skipped ones. ``set_intervals=False`` leaves the set-level metrics' (FID's) interval null: the
        costly part of a summary, not needed where only means are read (a selection's candidates)."""
        df, n = scores.frame, len(scores.frame)
        set_metrics = [m for m in table.TABLE if m.name in scores.sets]
        if set_metrics and n < 2:
            raise UserError(f"{set_metrics[0].short} needs at least 2 samples, got {n}")
        for m in set_metrics:
            if n < FID_RECOMMENDED_N:
                warnings.warn(f"{m.short} on {n} samples (< {FID_RECOMMENDED_N}): biased, comparable only at "
                              "equal n", stacklevel=2)
        level = 0.95
        metrics: dict[str, dict[str, float | None]] = {}
        per_sample = {m.name: df[m.name].to_numpy() for m in table.PER_SAMPLE}
        for m in table.TABLE:
            if m.inputs:
                per_sample[m.name] = m.function(*(per_sample[i] for i in m.inputs))
        scored = [name for name in per_sample if name not in scores.skipped]
        intervals = stats.bootstrap_mean_cis([per_sample[name] for name in scored], self.n_boot, self.seed,
                                             level)
        give_back_freed_memory()  # what the sets' stacking and the intervals freed, before FID's peak
        metrics.update(dict.fromkeys(per_sample, _NOT_SCORED))
        metrics.update({name: {"mean": float(np.mean(per_sample[name])), "lo": lo, "hi": hi}
                        for name, (lo, hi) in zip(scored, intervals, strict=True)})
        bootstrap = {"n_boot": self.n_boot, "seed": self.seed, "level": level}
        for m in table.TABLE:
            if m.kind == SET and m.name not in scores.sets:
                metrics[m.name] = _NOT_SCORED
        # FID's float64 linear algebra on the scoring GPU (CUDA has float64; MPS has not)
        fid_device = self.device if str(self.device).startswith("cuda") else "cpu"
        for m in set_metrics:
            gen, ref = scores.sets[m.name]
            if not set_intervals:
                bootstrap[m.name + _N_BOOT] = 0
                metrics[m.name] = {"mean": m.function(gen, ref), "lo": None, "hi": None}
                continue
            n_boot = self.n_boot if n <= gen.shape[1] else min(self.n_boot, FID_MAX_BOOT_LARGE_N)
            if n_boot < self.n_boot:
                warnings.warn(f"{m.short}'s CI from {n_boot} resamples, not {self.n_boot}: with n = {n} > "
                              f"{gen.shape[1]} features each resample is a full covariance "
                              "eigendecomposition", stacklevel=2)
                bootstrap[m.name + _N_BOOT] = n_boot
            lo, hi = fid_ci(gen, ref, n_boot, self.seed, level, fid_device)
            metrics[m.name] = {"mean": m.function(gen, ref), "lo": lo, "hi": hi}
        return {
            "profile": self.profile.name,
            "notice": self.notice,
            "n": n,
            "metrics": {m: metrics[m] for m in METRICS},
            "backbones": self.fingerprints(),
            "bootstrap": bootstrap,
            "preprocess": self.preprocess.record(),
            **({"skipped": scores.skipped} if scores.skipped else {}),
        }

    def score_run(self, run: RunFolder | str | Path, data_dir: str | Path | None = None,
                  partial: bool = False) -> dict:
        """Score RUN's images against its dataset (``data_dir``, else the manifest's "data"); write RUN's
        scores and summary and return the summary.

        The dataset must be the one the run was made on (the manifest records its digest and scenario) and
        the images exactly the manifest's samples: missing or extra images are refused, unless ``partial``
        (then the samples with an image are scored and the summary lists the missing ones).
        """
        return self.score_runs([run], data_dir, partial)[0]

    def score_runs(self, runs: Sequence[RunFolder | str | Path], data_dir: str | Path | None = None,
                   partial: bool = False, ranks: Ranks | None = None,
                   means_only: Collection[RunFolder] = ()) -> list[dict]:
        """``score_run`` of each of ``runs`` in one pass (``score_many``): a job's methods and α_r candidates
        share their history images' pair-metric forwards. Every run is checked before any is scored.

        With ``ranks`` (every rank of a torchrun job calling this together), each rank first computes the
        features and pair values of its block of every run's samples into the shared cache; after a barrier
        rank 0 scores every run from the cache and writes them; the other ranks return no summaries.
        ``means_only``: runs whose summaries feed a selection only (no set-level interval, see ``summarize``).
        """
        jobs = self._jobs(runs, data_dir, partial)
        if ranks is not None and ranks.world > 1:
            self._fill_share([inputs for _, inputs, _, _ in jobs], ranks)
            if not ranks.main:
                return []
        scores = self.score_many([inputs for _, inputs, _, _ in jobs])
        out = []
        for (run, _, head, tail), got in zip(jobs, scores, strict=True):
            out.append(self._write(run, got, head, tail, set_intervals=run not in means_only))
        return out

    def prefill(self, runs: Sequence[RunFolder | str | Path], ranks: Ranks,
                data_dir: str | Path | None = None, partial: bool = False) -> None:
        """Every rank of a torchrun job (calling this together): the features and pair values of this rank's
        block of every run's samples into the shared cache, then a barrier; rank 0's scoring of ``runs``
        afterwards reads them (``pigeon-bench run`` shares its scoring this way)."""
        if ranks.world > 1:
            self._fill_share([inputs for _, inputs, _, _ in self._jobs(runs, data_dir, partial)], ranks)

    def _fill_share(self, folders: Sequence[Sequence[SampleInputs]], ranks: Ranks) -> None:
        """This rank's block of every folder's samples: the cache entries they need that no lower rank's block
        needs (``Ranks.owned``), computed and written; then a barrier. Each entry is computed once, by a rank
        that does not depend on timing, so a job's numbers are the same at every rerun."""
        shares = [ranks.block(inputs) for inputs in folders]
        share = [shares[f][i] for i, f in self._interleaved(shares)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rank 0 warns when it scores the whole
            prepared = self._prepare(share) if share else None
            owned = ranks.owned(self._claims(prepared) if prepared else [])
            if prepared:
                self._fill(prepared, lambda namespace, *key: claim(namespace, *key) in owned)
                self._release_pixels()
                give_back_freed_memory()
        ranks.barrier()

    def _jobs(self, runs: Sequence[RunFolder | str | Path], data_dir: str | Path | None, partial: bool
              ) -> list[tuple[RunFolder, list[SampleInputs], dict, dict]]:
        return [self._run_inputs(r if isinstance(r, RunFolder) else RunFolder(r), data_dir, partial)
                for r in runs]

    def _run_inputs(self, run: RunFolder, data_dir: str | Path | None, partial: bool
                    ) -> tuple[RunFolder, list[SampleInputs], dict, dict]:
        """A run's checked sample inputs and its summary's provenance (head, tail)."""
        manifest = run.manifest_or_empty()
        data = data_dir or manifest.get("data")
        if not data:
            raise UserError(f"{run.path}: no {MANIFEST} with \"data\"; pass the dataset folder (--data)")
        dataset = Dataset(data)
        _check_dataset(run, manifest, dataset)
        samples = _run_samples(run, dataset)
        missing = _check_samples(run, manifest, {s.sample_id for s in samples}, partial)
        inputs = [sample_inputs(dataset, s, run.image_path(s.sample_id)) for s in samples]
        head = {**{k: manifest.get(k) for k in ("method", "label", "group")},
                "scenario": manifest.get("scenario") or dataset.scenario}
        tail = {"selection": manifest.get("selection"), "alpha_r": manifest.get("alpha_r"),
                **({"missing": missing} if missing else {})}
        return run, inputs, head, tail

    def score_into(self, samples: Sequence[SampleInputs], run: RunFolder, head: dict | None = None,
                   tail: dict | None = None) -> dict:
        """Score ``samples`` and write the scores and summary into ``run`` (``head``/``tail``: the summary's
        provenance before and after the metrics); returns the summary."""
        return self._write(run, self.score_samples(samples), head, tail)

    def _write(self, run: RunFolder, scores: SampleScores, head: dict | None, tail: dict | None,
               set_intervals: bool = True) -> dict:
        summary = {**(head or {}), **self.summarize(scores, set_intervals), **(tail or {})}
        run.write_scores(scores.frame)
        run.write_summary(summary)
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


def _check_dataset(run: RunFolder, manifest: dict, dataset: Dataset) -> None:
    """Refuse a dataset other than the run's (its recorded digest), or of another scenario."""
    recorded = manifest.get("dataset_digest")
    if recorded and recorded != dataset.digest:
        raise UserError(f"{run.path} was made on another dataset than {dataset.root} (digest "
                        f"{recorded[:12]}, not {dataset.digest[:12]}): pass the one it was made on (--data)")
    scenario = manifest.get("scenario")
    if scenario and dataset.scenario and scenario != dataset.scenario:
        raise UserError(f"{run.path} is a {scenario} run, but {dataset.root} is a {dataset.scenario} dataset")


def _check_samples(run: RunFolder, manifest: dict, have: set[str], partial: bool) -> list[str]:
    """The manifest's samples without an image (refused unless ``partial``); images of other samples are
    always refused."""
    listed = manifest.get("sample_ids")
    if listed is None:
        return []
    extra = sorted(have - set(listed))
    if extra:
        raise UserError(f"{run.images_dir}: {len(extra)} image(s) of samples the run does not list "
                        f"(e.g. {extra[0]!r})")
    missing = [sid for sid in listed if sid not in have]
    if missing and not partial:
        raise UserError(f"{run.images_dir}: {len(missing)} of the run's {len(listed)} images are missing "
                        f"(e.g. {missing[0]!r}); generate them, or pass --partial to score the others")
    return missing


def _run_samples(run: RunFolder, dataset: Dataset) -> list[Sample]:
    """The dataset's samples having an image in the run, in dataset order; unknown ids are errors."""
    if not run.images_dir.is_dir():
        raise UserError(f"{run.path}: no {IMAGES}/ folder (expected {IMAGES}/<sample_id>{IMAGE_SUFFIX})")
    ids = run.image_ids()
    if not ids:
        raise UserError(f"{run.images_dir}: no <sample_id>{IMAGE_SUFFIX} images")
    by_id = {s.sample_id: s for s in dataset.samples()}
    unknown = sorted(ids - by_id.keys())
    if unknown:
        shown = ", ".join(unknown[:5])
        raise UserError(f"{run.images_dir}: image(s) for sample id(s) not in {dataset.root}: {shown}")
    return [s for sid, s in by_id.items() if sid in ids]


def recorded_preprocess(runs: Sequence[RunFolder]) -> dict:
    """The Scorer arguments of the preprocessing the first scored one of ``runs`` records ({}: none)."""
    for run in runs:
        if run.has_summary():
            return pre.from_record(run.read_summary().get("preprocess")) or {}
    return {}


def score_run(run_dir: str | Path, data_dir: str | Path | None = None, profile: Profile | str = PAPER,
              device: str = "cpu", batch_size: int = 16, cache_dir: str | Path | None = None) -> dict:
    """Convenience wrapper: a one-off Scorer for one run folder."""
    return Scorer(profile=profile, device=device, batch_size=batch_size, cache_dir=cache_dir).score_run(
        run_dir, data_dir)


def sample_inputs(dataset: Dataset, sample: Sample, generated: ImageSource) -> SampleInputs:
    """What ``sample`` of ``dataset`` is scored on, with ``generated`` as its generated image."""
    return SampleInputs(sample.sample_id, generated, [dataset.image_path(h) for h in sample.history],
                        [dataset.item(h).semantics for h in sample.history],
                        dataset.image_path(sample.reference_id), dataset.item(sample.reference_id).semantics)


def score_samples(samples: Sequence[SampleInputs], profile: Profile | str = PAPER,
                  **scorer_options) -> pd.DataFrame:
    """Per-sample metrics (sample_id + the per-sample columns) of ``samples``, with a one-off Scorer."""
    return Scorer(profile=profile, progress=False, **scorer_options).score_samples(samples).frame

