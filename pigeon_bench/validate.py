"""``pigeon-bench validate``: the metrics must rank known answers in the order their ground truth implies.

On the demo world (``pigeon_bench.data.demo``) four methods have known answers: Hist (the user's latest
history image), Grd (the reference itself), Oracle (the user's taste with the reference's content) and Other
user (the reference's content in a stranger's taste; ``baselines.oracle``). Any sound evaluation, whatever its
backbones, must order them in certain ways: personalization (vs the history) ranks Hist and Oracle above
Other user and Grd; alignment (vs the reference) ranks Grd first and Oracle above Hist; Overall ranks Oracle
first; LPIPS and MS-SSIM agree with CIS on Hist vs Other user. A scorer that pairs the generated image with
the wrong images (history for reference, or the reverse) breaks these orderings.

Each expected ordering is a paired test on the same samples (``pigeon_bench.compare``: a paired permutation
p-value; Overall from the resampled p_cis and a_cs means): it passes when the difference points the expected
way with p < alpha (0.01). :func:`check` tests scored run folders; :func:`validate` generates, scores and
checks the four methods on a dataset (default: the demo world).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pigeon_bench.compare import compare_runs
from pigeon_bench.data.model import Dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import method_dirname
from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import format_value
from pigeon_bench.runs.folder import RunFolder
from pigeon_bench.schema import read_summary, scored_run
from pigeon_bench.stats import DEFAULT_N_BOOT, DEFAULT_N_PERM

METHODS: tuple[str, ...] = ("hist", "grd", "oracle", "other-user")
ALPHA = 0.01
SCENARIO = "sticker"  # its test references come from another user: Grd is aligned, not personalized


@dataclass(frozen=True)
class Expected:
    """``better`` beats ``worse`` on ``metric`` (in the metric's own direction)."""

    metric: str
    better: str
    worse: str
    why: str


def expected_orderings(grd_is_personal: bool = False) -> tuple[Expected, ...]:
    """The orderings the demo world's ground truth implies. Where the reference is the sample's target (the
    movie scenario: the target poster, a movie the user liked), Grd is personalized too: the orderings that
    put it below Hist and Oracle on personalization and Overall do not hold and are left out."""
    out: list[Expected] = []
    for metric in ("p_cis", "p_dis"):
        out += [Expected(metric, better, worse, "personalization: like the history")
                for better in ("hist", "oracle") for worse in ("other-user", "grd")
                if not (grd_is_personal and worse == "grd")]
    for metric in ("a_cis", "a_dis"):
        out += [Expected(metric, "grd", worse, "alignment: the reference itself")
                for worse in ("hist", "oracle", "other-user")]
        out.append(Expected(metric, "oracle", "hist", "alignment: the reference's content"))
    out.append(Expected("a_cs", "oracle", "hist", "alignment with the reference's text"))
    out += [Expected("overall", "oracle", other, "ideal personalization and alignment")
            for other in ("hist", "grd", "other-user") if not (grd_is_personal and other == "grd")]
    out += [Expected(metric, "hist", "other-user", "agrees with CIS") for metric in ("p_lpips", "p_msssim")]
    return tuple(out)


@dataclass
class Outcome:
    """One expected ordering's observed means, paired p-value and verdict."""

    expected: Expected
    better_mean: float
    worse_mean: float
    p: float
    passed: bool


@dataclass
class Validation:
    """Every expected ordering's outcome, on ``n`` paired samples."""

    scenario: str | None
    n: int
    alpha: float
    notices: list[str]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n"

    def to_markdown(self) -> str:
        status = "PASS" if self.passed else f"FAIL ({len(self.failed)} of {len(self.outcomes)} orderings)"
        lines = [f"## pigeon-bench validate: {status}", ""]
        lines += [line for n in self.notices for line in (f"> **{n}**", "")]
        lines += [f"Known answers on the {self.scenario or '?'} scenario, {self.n} paired samples; each "
                  "ordering passes when the paired difference points the expected way with permutation p < "
                  f"{self.alpha:g}.", "",
                  "| Metric | Expected | Why | Means | p | Result |", "|---|---|---|--:|--:|---|"]
        for o in self.outcomes:
            m = table.get(o.expected.metric)
            sign = ">" if m.higher_is_better else "<"
            means = f"{format_value(o.better_mean, m.digits)} {sign} {format_value(o.worse_mean, m.digits)}"
            p = "-" if math.isnan(o.p) else (f"{o.p:.4f}" if o.p >= 1e-4 else f"{o.p:.1e}")
            lines.append(f"| {m.label} {m.arrow} | {o.expected.better} {sign} {o.expected.worse} | "
                         f"{o.expected.why} | {means} | {p} | {'pass' if o.passed else '**FAIL**'} |")
        return "\n".join(lines) + "\n"


def _runs_of(runs: Mapping[str, str | Path] | str | Path) -> dict[str, RunFolder]:
    """Method -> scored run folder: a mapping, or a folder holding one run folder per method."""
    if isinstance(runs, Mapping):
        given = {m: Path(p) for m, p in runs.items()}
    else:
        given = {m: Path(runs) / method_dirname(m) for m in METHODS}
    missing = [m for m in METHODS if m not in given]
    if missing:
        raise UserError(f"validate needs a scored run of each of {', '.join(METHODS)}; missing: "
                        f"{', '.join(missing)}")
    return {m: scored_run(given[m]) for m in METHODS}


def available(folder: str | Path) -> bool:
    """Whether ``folder`` (as ``run`` writes it) holds a scored run of each known-answer method."""
    return all(RunFolder(Path(folder) / method_dirname(m)).has_summary() for m in METHODS)


def _references_are_targets(run: RunFolder) -> bool:
    """Whether every sample of ``run`` takes its own target as the reference (read from its dataset)."""
    manifest = run.manifest()
    scored = set(manifest.get("sample_ids") or run.image_ids())
    samples = [s for s in Dataset(manifest["data"]).samples() if s.sample_id in scored]
    return bool(samples) and all(s.reference_id == s.target_id for s in samples)


def check(runs: Mapping[str, str | Path] | str | Path, expected: tuple[Expected, ...] | None = None,
          alpha: float = ALPHA, n_boot: int = DEFAULT_N_BOOT, n_perm: int = DEFAULT_N_PERM,
          seed: int = 0) -> Validation:
    """Test the ``expected`` orderings (default: :func:`expected_orderings` for the runs' samples) on scored
    runs of the four known-answer methods: a mapping method -> run folder, or a folder of runs named after
    the methods, as ``pigeon-bench run`` writes them."""
    folders = _runs_of(runs)
    scenario = read_summary(folders[METHODS[0]]).get("scenario")
    expected = expected_orderings(_references_are_targets(folders["grd"])) if expected is None else expected
    pairs = {(worse, better): compare_runs(folders[worse], folders[better], alpha=alpha, n_boot=n_boot,
                                           n_perm=n_perm, seed=seed)
             for worse, better in dict.fromkeys((e.worse, e.better) for e in expected)}
    first = next(iter(pairs.values()))
    out = Validation(scenario, first.n, alpha, first.notices)
    for e in expected:
        r = next(r for r in pairs[(e.worse, e.better)].results if r.metric == e.metric)
        right_way = r.delta > 0 if r.higher_is_better else r.delta < 0
        out.outcomes.append(Outcome(e, r.cand, r.base, r.p, bool(right_way and r.p < alpha)))
    return out


def validate(data: str | Path | None = None, scenario: str = SCENARIO, out: str | Path | None = None,
             profile: str | None = None, device: str = "cpu", limit: int | None = None, seed: int = 0,
             alpha: float = ALPHA, scorer=None) -> Validation:
    """Generate, score and check the known-answer methods on ``data`` (default: the demo world) into
    ``out`` (default: a temporary folder, removed afterwards)."""
    from pigeon_bench.runs.config import Experiment
    from pigeon_bench.runs.pipeline import run

    def into(folder: Path) -> Validation:
        exp = Experiment(scenario=scenario, data=Path(data) if data else None, profile=profile,
                         methods=list(METHODS), device=device, limit=limit, seed=seed, valid=False,
                         out=folder)
        run(exp, log=lambda _: None, scorer=scorer)
        return check(folder / scenario, alpha=alpha, seed=seed)

    if out is not None:
        return into(Path(out))
    with tempfile.TemporaryDirectory(prefix="pigeon-validate-") as tmp:
        return into(Path(tmp))
