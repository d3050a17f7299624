"""``pigeon-bench run``: generate, score, select and report every method of an experiment, resumably."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pigeon_bench import distributed, fileio
from pigeon_bench.data.model import Dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import create_generator, generators, method_dirname
from pigeon_bench.profiles import DEMO_DEFAULT, Profile, get_profile
from pigeon_bench.progress import console
from pigeon_bench.runs.config import Experiment
from pigeon_bench.runs.folder import RunFolder, Sweep, report_runs
from pigeon_bench.runs.generate import GenerateSpec, MethodSession, generate
from pigeon_bench.runs.selection import score, select, sweep_means_only, unscored
from pigeon_bench.scenarios import scenarios

REPORT = "report.md"


def resolve_data(exp: Experiment) -> tuple[Path, Profile | None]:
    """The dataset folder, and the profile when the experiment leaves it to the data: ``data``, else the
    offline demo world with the tiny profile."""
    sc = scenarios.get(exp.scenario)
    if exp.data is not None:
        return Path(exp.data), None
    from pigeon_bench.data.demo import ensure_demo_datasets

    folder = ensure_demo_datasets()[sc.demo_key]
    profile = get_profile(exp.profile, DEMO_DEFAULT)
    console.print(f"[bold]No --data given: using the offline demo world ({folder}) with the {profile.name} "
                  f"profile. {profile.notice or ''}[/bold]")
    return folder, profile


def resolve_profile(exp: Experiment, methods: list[str], data_default: Profile | None) -> Profile:
    """The experiment's profile: as given, else the one the method options imply (a checkpoint's), else
    the data's default; a given profile that contradicts the options is refused."""
    implied = {}
    for m in methods:
        name = generators.get(m).implied_profile(exp.method_options(m))
        if name is not None:
            implied[m] = name
    if len(set(implied.values())) > 1:
        raise UserError(f"the method options imply different profiles: {implied}")
    if exp.profile is not None:
        profile = get_profile(exp.profile)
        for m, name in implied.items():
            if name != profile.name:
                raise UserError(f"method {m!r}: its options imply the {name} profile (e.g. a {name}-profile "
                                f"checkpoint), but the experiment's profile is {profile.name}")
        return profile
    if implied:
        return get_profile(next(iter(implied.values())))
    return data_default or get_profile(None)


def make_scorer(profile: Profile, device: str = "cpu", weights: dict[str, str] | None = None,
                batch_size: int = 16):
    from pigeon_bench.scoring import Scorer

    return Scorer(profile=profile.name, device=device, batch_size=batch_size, weights=weights or None)


def run(exp: Experiment, log: Callable[[str], None] = console.print, scorer=None) -> tuple[str, Path]:
    """Every method of the experiment; returns the report text and its path (``OUT/<scenario>/report.md``).

    ``scorer``: a ready ``pigeon_bench.scoring.Scorer`` (default: one for the run's profile and device).
    Under torchrun every rank generates its share of the samples and rank 0 scores, selects and reports
    (the other ranks return an empty text).
    """
    if exp.limit is not None and exp.limit < 2:
        raise UserError(f"run scores FID, which needs at least 2 samples: --limit must be 2 or more, "
                        f"got {exp.limit}")
    exp.check()
    data, data_profile = resolve_data(exp)
    dataset = Dataset(data)
    methods = exp.methods or [m for m in generators.names() if generators.get(m).unavailable(dataset) is None]
    profile = resolve_profile(exp, methods, data_profile)
    template = GenerateSpec(data=data, method="", limit=exp.limit, seed=exp.seed, profile=profile,
                            device=exp.device, dtype=exp.dtype, batch_size=exp.batch_size,
                            experiment={**exp.to_dict(), "data": str(data), "profile": profile.name})
    template.check()
    if dataset.scenario is not None and dataset.scenario != exp.scenario:
        raise UserError(f"{data} is a {dataset.scenario!r} dataset, not {exp.scenario!r}")
    ranks = distributed.current()
    device = ranks.device(exp.device)
    sessions = {m: MethodSession(create_generator(m, profile, device, exp.dtype, exp.method_options(m),
                                                  dataset)) for m in methods}
    has_valid = exp.valid and bool(dataset.samples("valid", 1))
    root = Path(exp.out) / exp.scenario
    path = root / REPORT
    scorer = scorer or make_scorer(profile, device, exp.weights)  # every rank scores a share
    for method in methods:
        session = sessions.pop(method)
        gspec = replace(template, method=method, device=device, options=exp.method_options(method),
                        sweep=type(session.generator).supports_alpha_r)
        out = root / method_dirname(method)
        valid_out = root / "valid" / method_dirname(method) if gspec.sweep and has_valid else None
        run_method(gspec, out, session, scorer, valid_out, log, ranks, exp.candidate_intervals)
        del session
        ranks.barrier()  # rank 0 has scored and selected this method
    if not ranks.main:
        return "", path
    from pigeon_bench.reports import build_report

    text = build_report([r.path for r in report_runs(root)], scenario=exp.scenario)
    fileio.write_text(path, text)
    return text, path


def run_method(gspec: GenerateSpec, out: Path, session: MethodSession, scorer, valid_out: Path | None = None,
               log: Callable[[str], None] = console.print,
               ranks: distributed.Ranks | None = None, candidate_intervals: bool = False) -> list[RunFolder]:
    """One method's test run at ``out`` (a sweep, with a valid-split sweep at ``valid_out`` if given),
    generated, scored and selected; returns the scored folders. Under torchrun (``ranks``) every rank
    generates and scores its share into the shared folder and cache, and rank 0 scores the whole from the
    cache, selects and writes (the other ranks return no folders)."""
    ranks = ranks or distributed.Ranks()
    start = time.perf_counter()
    manifests = [generate(gspec, out, session)]
    if valid_out is not None:
        manifests.append(generate(replace(gspec, split="valid"), valid_out, session))
    generated_s = time.perf_counter() - start
    folders, means_only = [RunFolder(out)], []
    if gspec.sweep:
        sweep, valid = Sweep(out), Sweep(valid_out) if valid_out else None
        folders, means_only = sweep.runs() + (valid.runs() if valid else []), sweep_means_only(
            sweep, valid, candidate_intervals)  # valid: the selection reads means
    if ranks.world > 1:
        scorer.prefill(unscored(folders, scorer, set(means_only)), ranks)
        if not ranks.main:
            return []
    score(folders, scorer, means_only)
    if gspec.sweep:
        folders = select(sweep, scorer, valid, candidate_intervals) + sweep.runs()
    counts = {k: sum(m["counts"][k] for m in manifests) for k in ("generated", "skipped")}
    log(f"{gspec.method}: {counts['generated']} images generated, {counts['skipped']} skipped (already on "
        f"disk); generation {generated_s:.1f} s, scoring {time.perf_counter() - start - generated_s:.1f} s")
    return folders
