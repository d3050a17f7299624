"""Compare two scored runs on the same samples, metric by metric, and gate a CI job on regressions.

Per-sample metrics and Overall: paired over sample ids. The delta is candidate minus base; its CI is a paired
percentile bootstrap (the same resampled sample ids for both runs); its p-value is a two-sided paired
permutation test (randomly swapping the two runs' values within each sample; exact for tiny runs).
Overall = (p_cis + a_cs) / 2 is computed from the resampled p_cis and a_cs means of each run.

FID: a run folder exposes no per-sample Inception features (scoring keeps them in its feature cache only),
so no paired FID test is possible from the run folders. FID uses an unpaired normal approximation from the two
bootstrap CIs of the run summaries (se = CI width / 2z). Two runs on the same samples are positively
correlated, so ignoring the pairing overstates the variance of the delta: the test is conservative (it can
miss a small FID regression; it adds no false alarms).

Gates: ``metric:tolerance`` with the tolerance signed in the metric's worse direction (``overall:-0.5``
allows Overall to drop by up to 0.5, ``fid:+2`` allows FID to rise by up to 2). A gated metric fails
when its change is significant after Holm's correction over the gated metrics (p < alpha) and the whole
(1 - alpha) CI of the delta lies beyond the tolerance. Without any gate, every metric is gated at tolerance 0.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import norm

from pigeon_bench.errors import UserError
from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import format_value
from pigeon_bench.schema import METRICS, read_scores, read_summary, scored_run
from pigeon_bench.stats import DEFAULT_N_BOOT, DEFAULT_N_PERM, holm, paired_test

COMPARE_FORMATS = ("md", "json")
FID_METHOD = "unpaired normal approximation from the summary CIs (conservative)"
PAIRED_METHOD = "paired bootstrap CI, paired permutation p"


def parse_gate(text: str) -> tuple[str, float]:
    """``metric[:tolerance]`` -> (metric, tolerance), the tolerance signed in the metric's worse direction."""
    metric, sep, value = text.strip().partition(":")
    metric = metric.strip()
    if metric not in METRICS:
        raise UserError(f"gate {text!r}: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    try:
        tol = float(value) if sep else 0.0
    except ValueError:
        raise UserError(f"gate {text!r}: tolerance {value!r} is not a number") from None
    if not math.isfinite(tol):
        raise UserError(f"gate {text!r}: tolerance must be finite")
    up = table.get(metric).higher_is_better
    if (up and tol > 0) or (not up and tol < 0):
        raise UserError(f"gate {text!r}: {metric} is {'higher' if up else 'lower'}-is-better, so its "
                        f"tolerance is the allowed {'drop' if up else 'rise'}, written "
                        f"{metric}:{'-' if up else '+'}{abs(tol):g}")
    return metric, tol


@dataclass
class MetricResult:
    metric: str
    base: float
    cand: float
    delta: float
    lo: float
    hi: float
    p: float
    higher_is_better: bool
    method: str
    n: int
    gate: float | None = None
    p_holm: float | None = None
    verdict: str = ""  # better / worse / n.s. (not gated: by raw p) ; pass / FAIL (gated)


@dataclass
class Comparison:
    base: str
    candidate: str
    n: int
    alpha: float
    n_boot: int
    n_perm: int
    seed: int
    notices: list[str]
    results: list[MetricResult] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r.metric for r in self.results if r.verdict == "FAIL"]

    def to_dict(self) -> dict:
        return {**asdict(self), "failed": self.failed, "passed": not self.failed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n"

    def to_markdown(self) -> str:
        status = f"FAIL ({', '.join(self.failed)})" if self.failed else "PASS"
        level = round((1 - self.alpha) * 100, 2)
        lines = [f"## pigeon-bench compare: {status}", ""]
        for n in self.notices:
            lines += [f"> **{n}**", ""]
        lines += [
            f"Base `{self.base}` vs candidate `{self.candidate}` on the same {self.n} samples. "
            f"Delta = candidate - base; {level:g}% CI: paired bootstrap ({self.n_boot} resamples), "
            f"p: paired permutation ({self.n_perm} swaps), seed {self.seed}; FID: {FID_METHOD}. "
            f"Gated metrics are Holm-corrected at alpha {self.alpha:g} and fail when the CI lies beyond the "
            "tolerance.",
            "",
            f"| Metric | Base | Candidate | Δ | {level:g}% CI | p | p (Holm) | Gate | Verdict |",
            "|---|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for r in self.results:
            d = table.get(r.metric).digits
            arrow = table.get(r.metric).arrow
            gate = "-" if r.gate is None else f"{r.gate:+g}"
            ci = "-" if math.isnan(r.lo) else f"[{format_value(r.lo, d)}, {format_value(r.hi, d)}]"
            verdict = f"**{r.verdict}**" if r.verdict in ("FAIL", "worse") else r.verdict
            lines.append(
                f"| {r.metric} {arrow} | {format_value(r.base, d)} | {format_value(r.cand, d)} | "
                f"{_signed(r.delta, d)} | {ci} | {_p(r.p)} | {_p(r.p_holm)} | {gate} | {verdict} |")
        return "\n".join(lines) + "\n"


def _signed(x: float, digits: int) -> str:
    text = format_value(x, digits)
    return text if text == "-" or text.startswith("-") else f"+{text}"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def _fid_result(base: dict, cand: dict, alpha: float) -> tuple[float, float, float]:
    """(lo, hi, p) of the FID delta from the two summary CIs (unpaired normal approximation)."""
    z95 = norm.ppf(0.975)
    ses = []
    for s in (base, cand):
        lo, hi = s.get("lo"), s.get("hi")
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            return float("nan"), float("nan"), float("nan")
        ses.append((hi - lo) / (2 * z95))
    delta = cand["mean"] - base["mean"]
    se = math.hypot(*ses)
    if se == 0:
        return delta, delta, 1.0 if delta == 0 else 0.0
    z = norm.ppf(1 - alpha / 2)
    return delta - z * se, delta + z * se, float(2 * norm.sf(abs(delta) / se))


def compare_runs(base: str | Path, candidate: str | Path, gates: dict[str, float] | None = None,
                 alpha: float = 0.05, n_boot: int = DEFAULT_N_BOOT, n_perm: int = DEFAULT_N_PERM,
                 seed: int = 0) -> Comparison:
    """Compare two scored runs on the same samples; ``gates`` maps metric -> tolerance (None: all at 0)."""
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    if n_boot < 100 or n_perm < 100:
        raise UserError("use at least 100 bootstrap resamples and 100 permutations")
    base_run, cand_run = scored_run(base), scored_run(candidate)
    base_sum, cand_sum = read_summary(base_run), read_summary(cand_run)
    if base_sum.get("scenario") != cand_sum.get("scenario"):
        raise UserError(f"runs are on different scenarios: {base_sum.get('scenario')!r} (base) vs "
                        f"{cand_sum.get('scenario')!r} (candidate)")
    for key in ("profile", "backbones"):
        if base_sum.get(key) and cand_sum.get(key) and base_sum[key] != cand_sum[key]:
            raise UserError(f"runs were scored with different {key} ({_brief(base_sum[key])} vs "
                            f"{_brief(cand_sum[key])}): their scores are not comparable")
    b, c = read_scores(base_run), read_scores(cand_run)
    only_b, only_c = b.index.difference(c.index), c.index.difference(b.index)
    if len(only_b) or len(only_c):
        example = (only_b if len(only_b) else only_c)[0]
        raise UserError(f"runs are on different samples: {len(only_b)} only in base, {len(only_c)} only in "
                        f"candidate (e.g. {example!r})")
    if len(b) == 0:
        raise UserError(f"{base_run.scores_path}: no samples")
    c = c.loc[b.index]
    gates = {m: 0.0 for m in METRICS} if not gates else dict(gates)
    notices = sorted({s["notice"] for s in (base_sum, cand_sum) if s.get("notice")})
    out = Comparison(base=str(base_run), candidate=str(cand_run), n=len(b), alpha=alpha, n_boot=n_boot,
                     n_perm=n_perm, seed=seed, notices=notices)
    level = 1 - alpha
    for metric in table.TABLE:  # Overall first, FID last, as in Table 1
        m, hib = metric.name, metric.higher_is_better
        if metric.kind == table.SET:  # FID: from the summaries' CIs
            bm, cm = base_sum["metrics"][m], cand_sum["metrics"][m]
            bmean, cmean = _float(bm.get("mean")), _float(cm.get("mean"))
            lo, hi, p = _fid_result({**bm, "mean": bmean}, {**cm, "mean": cmean}, alpha)
            out.results.append(MetricResult(m, bmean, cmean, cmean - bmean, lo, hi, p, hib, FID_METHOD,
                                            len(b)))
            continue
        cols = list(metric.inputs or (m,))
        bv, cv = b[cols].to_numpy(np.float64), c[cols].to_numpy(np.float64)
        ok = ~(np.isnan(bv).any(axis=1) | np.isnan(cv).any(axis=1))
        combine = _combine(metric) if metric.inputs else None
        t = paired_test(bv[ok], cv[ok], combine, n_boot=n_boot, n_perm=n_perm, seed=seed, level=level)
        means = bv[ok].mean(axis=0) if ok.any() else np.full(len(cols), np.nan)
        bmean = float(combine(means[None])[0]) if combine else float(means[0])
        out.results.append(MetricResult(m, bmean, bmean + t.delta, t.delta, t.lo, t.hi, t.p, hib,
                                        PAIRED_METHOD, t.n))
    _decide(out.results, gates, alpha)
    return out


def _combine(metric: table.Metric):
    """A derived metric as a function of its inputs' (B, k) column means (see ``stats.paired_test``)."""
    fn = metric.function
    return lambda means: fn(*(means[:, j] for j in range(means.shape[1])))


def _brief(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _float(x) -> float:
    return float("nan") if x is None else float(x)


def _decide(results: list[MetricResult], gates: dict[str, float], alpha: float) -> None:
    """Verdicts: Holm over the gated metrics; a gated metric FAILs if significantly worse beyond its gate."""
    gated = [r for r in results if r.metric in gates]
    for r, p_adj in zip(gated, holm([r.p for r in gated]), strict=True):
        r.gate, r.p_holm = gates[r.metric], p_adj
    for r in results:
        p = r.p_holm if r.gate is not None else r.p
        if p is None or math.isnan(p) or math.isnan(r.delta):
            r.verdict = "n/a"
            continue
        worse = (r.delta < 0) == r.higher_is_better and r.delta != 0
        significant = p < alpha
        if r.gate is None:
            r.verdict = ("worse" if worse else "better") if significant else "n.s."
            continue
        beyond = r.hi < r.gate if r.higher_is_better else r.lo > r.gate
        r.verdict = "FAIL" if significant and worse and beyond else "pass"
