"""Generate a method's images into a run folder (or a sweep of them), resumably.

An image on disk is a finished item: a rerun with the same arguments generates only the missing ones, with
the same per-sample seeds, so the images do not depend on batching, kills or resumes. A failed start leaves
nothing behind (a manifest is written only once the method has been created and its options accepted).
"""

from __future__ import annotations

import functools
import platform
import re
import time
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pigeon_bench import distributed
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import (
    ALPHA_R_GRID,
    Generator,
    build_request,
    check_alpha_r,
    create_generator,
    display_label,
    dtype_name,
)
from pigeon_bench.profiles import Profile
from pigeon_bench.progress import console
from pigeon_bench.progress import progress as progress_bar
from pigeon_bench.runs.folder import RunFolder, Sweep

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
# Manifest fields that must match for a rerun to continue an existing run folder.
IDENTITY = ("method", "data", "split", "limit", "alpha_r", "seed", "profile", "dtype", "options")


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Versions that can change generated images or scores (read once per process)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("pigeon-bench", "torch", "numpy", "pillow", "diffusers", "transformers", "open_clip_torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


@dataclass
class MethodSession:
    """One method's generator: prepared and loaded on first use (a fully resumed run loads nothing)."""

    generator: Generator
    prepare_s: float | None = None
    load_s: float | None = None

    def ready(self, samples: list[Sample]) -> Generator:
        """Prepare for ``samples`` (train or fetch what is missing, cached) and load the models once."""
        start = time.perf_counter()
        self.generator.prepare(samples)
        self.prepare_s = round((self.prepare_s or 0.0) + time.perf_counter() - start, 3)
        if self.load_s is None:
            start = time.perf_counter()
            self.generator.load()
            self.load_s = round(time.perf_counter() - start, 3)
        return self.generator


@dataclass
class GenerateSpec:
    """What to generate: the arguments of ``pigeon-bench generate``."""

    data: Path
    method: str
    split: str = "test"
    limit: int | None = None
    alpha_r: float | None = None
    sweep: bool = False
    seed: int = 0
    profile: str | Profile | None = None  # None: the one the options imply, else the default
    device: str = "cpu"
    dtype: str | None = None  # None: the method's default
    batch_size: int = 4
    options: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] | None = None  # the experiment config this run belongs to (recorded)

    def check(self) -> None:
        check_alpha_r(self.alpha_r)
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if self.sweep and self.alpha_r is not None:
            raise UserError("give either --alpha-r or --sweep, not both")


def generate(spec: GenerateSpec, out: str | Path, session: MethodSession | None = None) -> dict[str, Any]:
    """Generate one run folder (or a sweep of them) at ``out``; returns the top-level manifest."""
    spec.check()
    dataset = Dataset(spec.data)
    samples = dataset.samples(spec.split, spec.limit)
    if not samples:
        raise UserError(f"{dataset.root}: no samples in split {spec.split!r}")
    for s in samples:
        if not _SAFE_ID.match(s.sample_id):
            raise UserError(f"{dataset.root}: sample id {s.sample_id!r} cannot be a file name")
    session = session or MethodSession(create_generator(spec.method, spec.profile, spec.device, spec.dtype,
                                                        spec.options, dataset))
    gen = session.generator
    cls = type(gen)
    if (spec.sweep or spec.alpha_r is not None) and not cls.supports_alpha_r:
        raise UserError(f"method {spec.method!r} has no reference mask ratio (alpha_r)")
    base = {
        "method": spec.method, "label": display_label(cls), "group": cls.group,
        "scenario": dataset.scenario, "data": str(dataset.root.resolve()), "dataset_digest": dataset.digest,
        "split": spec.split, "limit": spec.limit, "profile": gen.profile.name, "notice": gen.profile.notice,
        "seed": spec.seed, "dtype": dtype_name(gen.dtype), "options": spec.options,
        "settings": gen.settings(),
        "args": {"device": spec.device, "batch_size": spec.batch_size, "sweep": spec.sweep},
        **({"experiment": spec.experiment} if spec.experiment else {}),
    }
    ranks = distributed.current()
    if spec.sweep:
        sweep = Sweep(out)
        top = {**base, "alpha_r": None, "sweep": list(ALPHA_R_GRID)}
        planned = [(sweep.point(a), {**base, "alpha_r": a, "label": f"{base['label']} (α_r={a:.1f})"})
                   for a in ALPHA_R_GRID]
    else:
        planned = [(RunFolder(out), {**base, "alpha_r": spec.alpha_r})]
    if ranks.main:
        old = _check_resumable(sweep, top) if spec.sweep else None
        for run, manifest in planned:
            _check_resumable(run, manifest)
        if spec.sweep and not (old and old.get("complete")):
            sweep.write_manifest({**top, "versions": package_versions(), "complete": False})
    targets = [_Target.open(run, manifest, samples) for run, manifest in planned]
    if ranks.main:
        for t in targets:
            t.start()
    ranks.barrier()  # the other ranks see the folders as rank 0 left them
    if not ranks.main:
        for t in targets:
            t.scan()
    per_image = _fill(targets, session, dataset, spec, ranks)
    ranks.barrier()  # every rank's images are on disk
    if ranks.main:
        manifests = [_close(t, session, per_image) for t in targets]
        if spec.sweep:
            counts = {k: sum(m["counts"][k] for m in manifests) for k in ("n", "generated", "skipped")}
            generate_s = round(per_image * counts["generated"], 3) if per_image else None
            top.update(versions=package_versions(), counts=counts, complete=True, runs=sweep.run_names(),
                       timings={"prepare_s": session.prepare_s, "load_s": session.load_s,
                                "generate_s": generate_s})
            if counts["generated"] or not (old and old.get("complete")):
                sweep.write_manifest(top)
    ranks.barrier()  # the final manifests are written
    result = Sweep(out).manifest() if spec.sweep else RunFolder(out).manifest()
    if spec.sweep:
        return top if ranks.main else result
    return manifests[0] if ranks.main else result


def _check_resumable(run: RunFolder, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Raise unless ``run`` is empty, absent, or a run folder made with the same arguments."""
    run.check_empty_or_run()
    if not run.exists():
        return None
    old = run.manifest()
    if not old.get("complete") and not _holds_images(run, old):
        return None  # a start that failed before its first image: nothing to continue
    for key in (*IDENTITY, "sweep"):
        if old.get(key) != manifest.get(key):
            raise UserError(f"{run.path} was made with {key}={old.get(key)!r}, not {manifest.get(key)!r}; "
                            "use another --out or delete it")
    return old


def _holds_images(run: RunFolder, manifest: dict[str, Any]) -> bool:
    points = Sweep(run.path).runs() if "sweep" in manifest else [run]
    return any(p.image_ids() for p in points)


@dataclass
class _Target:
    """One run folder being generated: its manifest, what an earlier run left, the samples it lacks."""

    run: RunFolder
    manifest: dict[str, Any]
    old: dict[str, Any] | None
    samples: list[Sample]
    pending: set[str]

    @classmethod
    def open(cls, run: RunFolder, manifest: dict[str, Any], samples: list[Sample]) -> _Target:
        old = run.manifest() if run.exists() else None
        return cls(run, manifest, old, samples, set())

    @property
    def finished(self) -> bool:
        return bool(self.old and self.old.get("complete") and not self.pending)

    def scan(self) -> None:
        """Find the samples whose image is missing."""
        have = self.run.image_ids()
        self.pending = {s.sample_id for s in self.samples if s.sample_id not in have}

    def start(self) -> None:
        """Drop a killed run's temp files, find the missing images, mark the folder incomplete."""
        self.run.drop_temp_files()
        self.scan()
        if not self.finished:
            self.run.write_manifest({**self.manifest, "versions": package_versions(), "complete": False})


def _fill(targets: list[_Target], session: MethodSession, dataset: Dataset, spec: GenerateSpec,
          ranks: distributed.Ranks) -> float | None:
    """Generate this rank's share of every target's missing images; returns the seconds per image (None:
    nothing to do).

    A generator call carries ``spec.batch_size`` samples, each with one request per target that lacks it
    (a sweep asks for all α_r candidates of a sample at once, sharing its decoded images). Images are
    independent of the batching (per-sample seeds), so a resumed run regenerates exactly the same ones.
    """
    work = [t for t in targets if t.pending]
    if not work:
        return None
    samples = ranks.shard([s for s in targets[0].samples if any(s.sample_id in t.pending for t in work)])
    if not samples:
        return None
    gen = session.ready(samples)
    start = time.perf_counter()
    alphas = [t.manifest["alpha_r"] for t in work if t.manifest["alpha_r"] is not None]
    what = f"{spec.method} {spec.split}" + (f" α_r={alphas[0]:.1f}" if len(alphas) == 1 else
                                           f" ({len(alphas)} α_r)" if alphas else "")
    with progress_bar(enabled=console.is_terminal) as progress:
        mine = {s.sample_id for s in samples}
        total = sum(len(t.pending & mine) for t in work)
        task = progress.add_task(what, total=total)
        for i in range(0, len(samples), spec.batch_size):
            jobs, requests = [], []
            for s in samples[i:i + spec.batch_size]:
                request = build_request(dataset, s, spec.seed)
                for t in work:
                    if s.sample_id in t.pending:
                        jobs.append((t, s.sample_id))
                        requests.append(replace(request, alpha_r=t.manifest["alpha_r"]))
            results = gen.generate(requests)
            if len(results) != len(requests):
                raise RuntimeError(f"{spec.method}: {len(results)} results for {len(requests)} requests")
            for (t, sid), r in zip(jobs, results, strict=True):
                if r.metadata:
                    t.run.write_meta(sid, r.metadata)
                t.run.write_image(sid, r.image)
            progress.advance(task, len(jobs))
    return (time.perf_counter() - start) / total


def _close(target: _Target, session: MethodSession, per_image: float | None) -> dict[str, Any]:
    """Write the target's final manifest; ``per_image``: seconds per image of the pass that filled it (a
    sweep's α_r folders are filled together, so each records its share)."""
    n, generated = len(target.samples), len(target.pending)
    counts = {"n": n, "generated": generated, "skipped": n - generated}
    if target.finished:  # finished earlier: leave it untouched
        return {**target.old, "counts": counts}
    old = target.old or {}
    timings = old.get("timings")
    if generated and per_image is not None:
        timings = {"prepare_s": session.prepare_s, "load_s": session.load_s,
                   "generate_s": round(per_image * generated, 3), "s_per_image": round(per_image, 4)}
    final = {
        **target.manifest,
        "versions": package_versions(),
        "models": session.generator.describe() if session.load_s is not None else old.get("models"),
        "timings": timings,
        "counts": counts,
        "sample_ids": [s.sample_id for s in target.samples],
        "complete": True,
    }
    target.run.write_manifest(final)
    return final
