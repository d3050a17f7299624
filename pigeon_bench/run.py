"""Runs: generate a method's images into a run folder (resumable), score, select α_r, and `run` end to end.

Run folder (one method, one split, one α_r)::

    RUN/manifest.json        method, label, group, scenario, data, split, profile, alpha_r, seed,
                             versions, models, args, timings, counts, sample_ids, complete
    RUN/images/<sample_id>.png
    RUN/meta/<sample_id>.json  the generator's metadata (e.g. the prompt used), where it returned any
    RUN/scores.parquet, RUN/summary.json  written by the scorer

A sweep is ``RUN/manifest.json`` with ``"sweep": [0.0, ..., 1.0]`` and one run folder per α_r
(``RUN/alpha_r=0.3/``); selections are run folders too (``RUN/selected/``, ``RUN/valid-chosen/``).
An image on disk is a finished item: a rerun generates only the missing ones.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from pigeon_bench import fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import (
    ALPHA_R_GRID,
    Generator,
    build_request,
    check_alpha_r,
    create_generator,
    display_label,
    generators,
    method_dirname,
)
from pigeon_bench.metrics import overall
from pigeon_bench.profiles import TINY_NOTICE as TINY_PROFILE_NOTICE
from pigeon_bench.progress import console
from pigeon_bench.progress import progress as progress_bar
from pigeon_bench.scenarios import scenarios

PROFILES = ("paper", "tiny")
SELECTION_RULE = "per sample, the α_r maximizing (p_cis + a_cs) / 2, measured on the test images themselves"
VALID_RULE = "one fixed α_r maximizing the mean of (p_cis + a_cs) / 2 over the valid split"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")
# Manifest fields that must match for a rerun to continue an existing run folder.
_IDENTITY = ("method", "data", "split", "limit", "alpha_r", "seed", "profile", "dtype", "options")



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


def alpha_dirname(alpha_r: float) -> str:
    return f"alpha_r={alpha_r:.1f}"


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return fileio.read_json(Path(run_dir) / "manifest.json")


@dataclass
class MethodSession:
    """One method's generator, loaded on first use (a fully resumed run never loads weights)."""

    generator: Generator
    load_s: float | None = None

    def loaded(self) -> Generator:
        if self.load_s is None:
            start = time.perf_counter()
            self.generator.load()
            self.load_s = time.perf_counter() - start
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
    profile: str = "paper"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 4
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        check_alpha_r(self.alpha_r)
        if self.profile not in PROFILES:
            raise UserError(f"unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if self.sweep and self.alpha_r is not None:
            raise UserError("give either --alpha-r or --sweep, not both")


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["checkpoint=/x", "steps=4"]`` -> ``{"checkpoint": "/x", "steps": 4}`` (JSON values parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def generate(spec: GenerateSpec, out: Path, session: MethodSession | None = None) -> dict[str, Any]:
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
                                                        spec.options))
    cls = type(session.generator)
    if (spec.sweep or spec.alpha_r is not None) and not cls.supports_alpha_r:
        raise UserError(f"method {spec.method!r} has no reference mask ratio (alpha_r)")
    base = {
        "method": spec.method, "label": display_label(cls), "group": cls.group,
        "scenario": dataset.scenario, "data": str(dataset.root.resolve()), "split": spec.split,
        "limit": spec.limit, "profile": spec.profile, "notice": _notice(spec.profile), "seed": spec.seed,
        "dtype": spec.dtype, "options": spec.options,
        "args": {"device": spec.device, "batch_size": spec.batch_size, "sweep": spec.sweep},
    }
    if not spec.sweep:
        target = _open(out, {**base, "alpha_r": spec.alpha_r}, samples)
        return _close(target, session, _fill([target], session, dataset, spec))
    top = {**base, "alpha_r": None, "sweep": list(ALPHA_R_GRID)}
    old = _check_resumable(out, top)
    finished = bool(old and old.get("complete"))
    if not finished:
        fileio.write_json(out / "manifest.json", {**top, "versions": package_versions(), "complete": False})
    targets = [_open(out / alpha_dirname(a), {**base, "alpha_r": a,
                                              "label": f"{base['label']} (α_r={a:.1f})"}, samples)
               for a in ALPHA_R_GRID]
    per_image = _fill(targets, session, dataset, spec)
    manifests = [_close(t, session, per_image) for t in targets]
    counts = {k: sum(m["counts"][k] for m in manifests) for k in ("n", "generated", "skipped")}
    top.update(versions=package_versions(), counts=counts, complete=True,
               runs=[alpha_dirname(a) for a in ALPHA_R_GRID],
               timings={"load_s": session.load_s,
                        "generate_s": round(per_image * counts["generated"], 3) if per_image else None})
    if counts["generated"] or not finished:
        fileio.write_json(out / "manifest.json", top)
    return top


def _notice(profile: str) -> str | None:
    return TINY_PROFILE_NOTICE if profile == "tiny" else None


def _check_resumable(out: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Raise unless ``out`` is empty, absent, or a run folder made with the same arguments."""
    path = out / "manifest.json"
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise UserError(f"{out} exists and is not a run folder (no manifest.json); choose another --out")
        return None
    old = fileio.read_json(path)
    for key in (*_IDENTITY, "sweep"):
        if old.get(key) != manifest.get(key):
            raise UserError(f"{out} was made with {key}={old.get(key)!r}, not {manifest.get(key)!r}; "
                            "use another --out or delete it")
    return old


@dataclass
class _Target:
    """One run folder being generated: its manifest, what an earlier run left, the samples it lacks."""

    out: Path
    manifest: dict[str, Any]
    old: dict[str, Any] | None
    samples: list[Sample]
    pending: set[str]

    @property
    def finished(self) -> bool:
        return bool(self.old and self.old.get("complete") and not self.pending)


def _open(out: Path, manifest: dict[str, Any], samples: list[Sample]) -> _Target:
    """Check that ``out`` can take this run, drop a killed run's temp files, find the missing images."""
    old = _check_resumable(out, manifest)
    for stale in (out / "images", out / "meta"):
        for tmp in stale.glob(".*.tmp*"):
            tmp.unlink()
    pending = {s.sample_id for s in samples if not (out / "images" / f"{s.sample_id}.png").is_file()}
    target = _Target(out, manifest, old, samples, pending)
    if not target.finished:
        fileio.write_json(out / "manifest.json",
                          {**manifest, "versions": package_versions(), "complete": False})
    return target


def _fill(targets: list[_Target], session: MethodSession, dataset: Dataset, spec: GenerateSpec
          ) -> float | None:
    """Generate every target's missing images; returns the seconds per image (None: nothing to do).

    A generator call carries ``spec.batch_size`` samples, each with one request per target that lacks it
    (a sweep asks for all α_r candidates of a sample at once, sharing its decoded images). Images are
    independent of the batching (per-sample seeds), so a resumed run regenerates exactly the same ones.
    """
    work = [t for t in targets if t.pending]
    if not work:
        return None
    samples = [s for s in targets[0].samples if any(s.sample_id in t.pending for t in work)]
    start = time.perf_counter()
    gen = session.loaded()
    alphas = [t.manifest["alpha_r"] for t in work if t.manifest["alpha_r"] is not None]
    what = f"{spec.method} {spec.split}" + (f" α_r={alphas[0]:.1f}" if len(alphas) == 1 else
                                           f" ({len(alphas)} α_r)" if alphas else "")
    with progress_bar(enabled=console.is_terminal) as progress:
        task = progress.add_task(what, total=sum(len(t.pending) for t in work))
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
                    fileio.write_json(t.out / "meta" / f"{sid}.json", r.metadata)
                fileio.save_image(t.out / "images" / f"{sid}.png", fileio.to_rgb(r.image))
            progress.advance(task, len(jobs))
    return (time.perf_counter() - start) / sum(len(t.pending) for t in work)


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
        timings = {"load_s": session.load_s, "generate_s": round(per_image * generated, 3),
                   "s_per_image": round(per_image, 4)}
    final = {
        **target.manifest,
        "versions": package_versions(),
        "models": session.generator.describe() if session.load_s is not None else old.get("models"),
        "timings": timings,
        "counts": counts,
        "sample_ids": [s.sample_id for s in target.samples],
        "complete": True,
    }
    fileio.write_json(target.out / "manifest.json", final)
    return final


# ---------------------------------------------------------------- scoring and selection


def run_folders(run_dir: Path) -> list[Path]:
    """The scoreable run folders at ``run_dir``: itself, or a sweep's α_r folders."""
    manifest = read_manifest(run_dir)
    if "sweep" in manifest:
        return [run_dir / alpha_dirname(a) for a in manifest["sweep"]]
    return [run_dir]


def _read_scores(run_dir: Path) -> pd.DataFrame:
    df = fileio.read_parquet(run_dir / "scores.parquet", ["sample_id", "p_cis", "a_cs"])
    return df.assign(sample_id=df["sample_id"].astype(str))


def choose_per_sample(scores: dict[float, pd.DataFrame]) -> pd.DataFrame:
    """Per sample, the α_r maximizing (p_cis + a_cs) / 2 (ties: the smaller α_r).

    Returns columns sample_id, alpha_r, criterion, in the sample order of the first frame.
    """
    frames = [pd.DataFrame({"sample_id": df["sample_id"].astype(str).to_numpy(), "alpha_r": a,
                            "criterion": overall(df["p_cis"].to_numpy(), df["a_cs"].to_numpy())})
              for a, df in sorted(scores.items())]
    ids = [set(f["sample_id"]) for f in frames]
    if any(s != ids[0] for s in ids):
        raise UserError("the sweep's α_r runs do not hold the same samples; finish generating them first")
    table = pd.concat(frames, ignore_index=True)
    if table["criterion"].isna().any():
        raise UserError("missing p_cis or a_cs scores in the sweep; score it again")
    best = table.sort_values(["criterion", "alpha_r"], ascending=[False, True], kind="stable")
    best = best.drop_duplicates("sample_id").set_index("sample_id")
    return best.loc[frames[0]["sample_id"]].reset_index()


def choose_fixed(scores: dict[float, pd.DataFrame]) -> tuple[float, dict[float, float]]:
    """The one α_r with the largest mean (p_cis + a_cs) / 2 (ties: the smaller α_r), and every α_r's mean."""
    means = {a: float(overall(df["p_cis"].to_numpy(), df["a_cs"].to_numpy()).mean())
             for a, df in sorted(scores.items())}
    best = max(means, key=lambda a: (means[a], -a))
    return best, means


def _sweep_scores(sweep_dir: Path) -> dict[float, pd.DataFrame]:
    manifest = read_manifest(sweep_dir)
    if "sweep" not in manifest:
        raise UserError(f"{sweep_dir} is not a sweep (generate it with --sweep)")
    return {a: _read_scores(sweep_dir / alpha_dirname(a)) for a in manifest["sweep"]}


def _copy_run(dest: Path, manifest: dict[str, Any], picks: list[tuple[str, Path]]) -> None:
    """Write ``dest`` as a run folder holding the picked (sample_id, source run) images."""
    for sid, src in picks:
        fileio.write_bytes(dest / "images" / f"{sid}.png", (src / "images" / f"{sid}.png").read_bytes())
        meta = src / "meta" / f"{sid}.json"
        if meta.is_file():
            fileio.write_bytes(dest / "meta" / f"{sid}.json", meta.read_bytes())
    fileio.write_json(dest / "manifest.json", manifest)


def _clear(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def select_test_time(sweep_dir: Path) -> Path:
    """Write ``SWEEP/selected/``: per sample, the best α_r by the paper's rule on the test metrics."""
    dest = sweep_dir / "selected"
    if _newer(dest / "manifest.json", [d / "scores.parquet" for d in run_folders(sweep_dir)]):
        return dest  # selected since the sweep was last scored
    scores = _sweep_scores(sweep_dir)
    picks = choose_per_sample(scores)
    top = read_manifest(sweep_dir)
    label = f"test-time best of {len(scores)}"
    _clear(dest)
    sources = [(sid, sweep_dir / alpha_dirname(a)) for sid, a in picks[["sample_id", "alpha_r"]].to_numpy()]
    _copy_run(dest, {
        **{k: v for k, v in top.items() if k not in ("sweep", "runs", "complete")},
        "alpha_r": None, "selection": label,
        "selection_rule": SELECTION_RULE, "sample_ids": list(picks["sample_id"]), "counts": {"n": len(picks)},
        "complete": True,
    }, sources)
    fileio.write_parquet(dest / "selection.parquet", picks)
    return dest


def select_on_valid(sweep_dir: Path, valid_sweep: Path) -> Path:
    """Write ``SWEEP/valid-chosen/``: the test run of the one α_r that scores best on the valid split."""
    valid_manifest = read_manifest(valid_sweep)
    if valid_manifest.get("split") != "valid":
        raise UserError(f"{valid_sweep} is a sweep on split {valid_manifest.get('split')!r}, not 'valid'")
    dest = sweep_dir / "valid-chosen"
    deps = [d / "scores.parquet" for d in run_folders(sweep_dir) + run_folders(valid_sweep)]
    valid_run = str(valid_sweep.resolve())
    if _newer(dest / "manifest.json", deps) and read_manifest(dest)["valid_run"] == valid_run:
        return dest  # chosen since both sweeps were last scored
    best, means = choose_fixed(_sweep_scores(valid_sweep))
    src = sweep_dir / alpha_dirname(best)
    manifest = read_manifest(src)
    _clear(dest)
    relabel = {"label": read_manifest(sweep_dir)["label"],
               "selection": f"fixed α_r={best:.1f} chosen on valid"}
    # The same images as the chosen α_r run, hence the same scores: copied, not recomputed.
    fileio.write_bytes(dest / "scores.parquet", (src / "scores.parquet").read_bytes())
    if (src / "summary.json").is_file():
        fileio.write_json(dest / "summary.json", {**fileio.read_json(src / "summary.json"), **relabel})
    _copy_run(dest, {
        **{k: v for k, v in manifest.items() if k != "timings"}, **relabel,
        "selection_rule": VALID_RULE, "valid_run": valid_run,
        "valid_means": {f"{a:.1f}": round(m, 4) for a, m in means.items()},
    }, [(sid, src) for sid in manifest["sample_ids"]])
    return dest


# ---------------------------------------------------------------- scoring glue


def make_scorer(profile: str, device: str = "cpu", batch_size: int = 16):
    from pigeon_bench.scoring import Scorer

    return Scorer(profile=profile, device=device, batch_size=batch_size)


def score(run_dirs: Sequence[Path], scorer) -> None:
    """Score the run folders not already scored by this scorer since their last change.

    One scorer serves every run, so its feature cache is shared (history and reference features once).
    """
    for d in run_dirs:
        if not is_scored(d, scorer):
            scorer.score_run(d)


def is_scored(run_dir: Path, scorer) -> bool:
    """Whether RUN/summary.json is newer than RUN/manifest.json and came from the same scorer setup."""
    summary = run_dir / "summary.json"
    if not (_newer(summary, [run_dir / "manifest.json"]) and (run_dir / "scores.parquet").is_file()):
        return False
    return scorer.wrote(fileio.read_json(summary))


def _newer(path: Path, deps: Sequence[Path]) -> bool:
    """Whether ``path`` exists and was written after every one of ``deps``."""
    return path.is_file() and all(path.stat().st_mtime_ns >= d.stat().st_mtime_ns for d in deps)


def select(sweep_dir: Path, scorer, valid_sweep: Path | None = None) -> list[Path]:
    """Score a sweep where needed, write its selections and score them; returns the selection folders."""
    sweeps = [sweep_dir] + ([valid_sweep] if valid_sweep else [])
    for s in sweeps:
        score([d for d in run_folders(s) if not (d / "scores.parquet").is_file()], scorer)
    selected = select_test_time(sweep_dir)
    score([selected], scorer)
    return [selected] + ([select_on_valid(sweep_dir, valid_sweep)] if valid_sweep is not None else [])


# ---------------------------------------------------------------- pigeon-bench run


@dataclass
class RunSpec:
    scenario: str
    data: Path | None = None
    methods: list[str] | None = None
    profile: str | None = None
    limit: int | None = None
    out: Path = Path("runs")
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 4
    valid: bool = True


def resolve_data(scenario: str, data: Path | None, profile: str | None) -> tuple[Path, str]:
    """The dataset folder and profile: ``--data``, else the offline demo world with the tiny profile."""
    sc = scenarios.get(scenario)
    if data is not None:
        return Path(data), profile or "paper"
    from pigeon_bench.data.demo import ensure_demo_datasets

    folder = ensure_demo_datasets()[sc.demo_key]
    profile = profile or "tiny"
    console.print(f"[bold]No --data given: using the offline demo world ({folder}) with the {profile} "
                  f"profile. {TINY_PROFILE_NOTICE if profile == 'tiny' else ''}[/bold]")
    return folder, profile


def run(spec: RunSpec, log: Callable[[str], None] = console.print, scorer=None) -> tuple[str, Path]:
    """generate -> score -> select -> report for each method; returns the report text and its path.

    ``scorer``: a ready ``pigeon_bench.scoring.Scorer`` (default: one for the run's profile and device).
    """
    if spec.limit is not None and spec.limit < 2:
        raise UserError(f"run scores FID, which needs at least 2 samples: --limit must be 2 or more, "
                        f"got {spec.limit}")
    data, profile = resolve_data(spec.scenario, spec.data, spec.profile)
    template = GenerateSpec(data=data, method="", limit=spec.limit, seed=spec.seed, profile=profile,
                            device=spec.device, dtype=spec.dtype, batch_size=spec.batch_size)
    template.check()
    dataset = Dataset(data)
    if dataset.scenario is not None and dataset.scenario != spec.scenario:
        raise UserError(f"{data} is a {dataset.scenario!r} dataset, not {spec.scenario!r}")
    methods = spec.methods or generators.names()
    for m in methods:
        generators.get(m)
    has_valid = spec.valid and bool(dataset.samples("valid", 1))
    root = Path(spec.out) / spec.scenario
    scorer = scorer or make_scorer(profile, spec.device)
    report_runs: list[Path] = []
    for method in methods:
        session = MethodSession(create_generator(method, profile, spec.device, spec.dtype))
        gspec = replace(template, method=method, sweep=type(session.generator).supports_alpha_r)
        report_runs += _run_method(gspec, root, session, scorer, has_valid, log)
        del session
    from pigeon_bench.reports import build_report

    text = build_report(report_runs, scenario=spec.scenario)
    path = root / "report.md"
    fileio.write_text(path, text)
    return text, path


def _run_method(gspec: GenerateSpec, root: Path, session: MethodSession, scorer, has_valid: bool,
                log: Callable[[str], None]) -> list[Path]:
    """One method of ``run``: its test run (a sweep, plus a valid sweep if possible), scored and selected."""
    start = time.perf_counter()
    out = root / method_dirname(gspec.method)
    manifests = [generate(gspec, out, session)]
    valid_out = root / "valid" / method_dirname(gspec.method) if gspec.sweep and has_valid else None
    if valid_out is not None:
        manifests.append(generate(replace(gspec, split="valid"), valid_out, session))
    generated_s = time.perf_counter() - start
    score(run_folders(out) + (run_folders(valid_out) if valid_out else []), scorer)
    folders = select(out, scorer, valid_out) + run_folders(out) if gspec.sweep else [out]
    counts = {k: sum(m["counts"][k] for m in manifests) for k in ("generated", "skipped")}
    log(f"{gspec.method}: {counts['generated']} images generated, {counts['skipped']} skipped (already on "
        f"disk); generation {generated_s:.1f} s, scoring {time.perf_counter() - start - generated_s:.1f} s")
    return folders
