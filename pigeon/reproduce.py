"""``pigeon-bench reproduce``: the paper's experiments in one command, into one report folder.

- Table 1: every registered method (``pigeon-bench run``), selections labelled, beside the paper's rows.
- Table 3: the instruction-encoding ablations (stage 1, stickers in the paper): w/o visual feature, w/o
  textual tokens, w/o encoding.
- Fig. 4 (a) history mask on/off, (b) α_h swept at inference with α_r = 0.5, (c) reference mask on/off,
  (d) dual vs low-score vs high-score reference masking, (e) stage 1 vs stage 2 (DPO): one PNG each (the
  metrics against α_r or α_h, 95% CI bands) and, for (a) and (c)-(e), paired comparisons of each variant's
  test-time selection with Pigeon's (bootstrap CIs, permutation p-values; ``pigeon_bench.compare``).

Every variant is Pigeon with other options (``pigeon.generators.PigeonGenerator``): where the profile trains
what is missing (tiny), each variant's stage-1 checkpoint is trained with its own settings (cached); in the
paper profile Pigeon's checkpoint comes with ``-o pigeon.checkpoint=...`` and each variant's with
``checkpoints={variant name: folder}`` (``--variant NAME=CKPT``), trained with the matching switches of
``pigeon-bench train sft``. Everything resumes:
generation, scoring, training and selection each skip what is already done. What the runs show is reported as
measured; on the tiny profile no claim of the paper has to hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pigeon_bench import artifacts, fileio
from pigeon_bench import validate as known_answers
from pigeon_bench.data.model import Dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import create_generator
from pigeon_bench.progress import console
from pigeon_bench.runs import Experiment, GenerateSpec, MethodSession, Sweep
from pigeon_bench.runs.folder import param_dirname
from pigeon_bench.runs.pipeline import make_scorer, resolve_data, resolve_profile, run, run_method

PIGEON = "pigeon"
METRICS = ("p_cis", "a_cs")  # the two key metrics of Fig. 4
TABLE3 = {"w/o visual feature": {"visual_feature": False}, "w/o textual tokens": {"textual_tokens": False},
          "w/o encoding": {"encoding": False}}
FIG4 = {
    "a": ("history mask", {"w/o history mask": {"history_mask": False}}),
    "c": ("reference mask", {"w/o reference mask": {"reference_mask": "none"}}),
    "d": ("reference masking scheme", {"low-score": {"reference_mask": "low"},
                                       "high-score": {"reference_mask": "high"}}),
}
ALPHA_H = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # Fig. 4 (b), at α_r = 0.5
DPO_TINY = {"steps": 30, "batch_size": 4, "lr": 1e-3, "prompts": 8}  # the tiny profile's stage 2


@dataclass
class Reproduction:
    """What ``reproduce`` wrote: the report folder and its files."""

    folder: Path
    files: list[Path] = field(default_factory=list)


def reproduce(exp: Experiment, stage2: Path | None = None, dpo: dict[str, Any] | None = None,
              checkpoints: dict[str, Path] | None = None,
              log: Callable[[str], None] = console.print) -> Reproduction:
    """Run the paper's experiments for ``exp`` (its scenario, data, profile, options) and write the report
    folder ``OUT/reproduce/<scenario>/`` (the ablation runs under its ``runs/``; Table 1's runs are
    ``OUT/<scenario>/``, as ``run`` writes them). ``stage2``: Pigeon's stage-2 checkpoint (default: trained
    from its stage-1 one where the profile trains what is missing, with ``DPO_TINY`` updated by ``dpo``);
    ``checkpoints``: each training variant's stage-1 checkpoint, needed where the profile does not train."""
    text, report = run(exp, log=log)
    data, data_profile = resolve_data(exp)
    profile = resolve_profile(exp, [PIGEON], data_profile)
    dataset = Dataset(data)
    root = Path(exp.out) / exp.scenario
    dest = Path(exp.out) / "reproduce" / exp.scenario
    scorer = make_scorer(profile, exp.device, exp.weights)
    base = exp.method_options(PIGEON)
    template = GenerateSpec(data=data, method=PIGEON, limit=exp.limit, seed=exp.seed, profile=profile,
                            device=exp.device, dtype=exp.dtype, batch_size=exp.batch_size, sweep=True)

    needed = [*TABLE3, *(n for _, variants in FIG4.values() for n in variants)]
    missing = [n for n in needed if n not in (checkpoints or {})]
    if not profile.trains_missing and missing:
        raise UserError(f"reproduce in the {profile.name} profile needs each training variant's checkpoint "
                        "(train them with the switches of `pigeon-bench train sft`): --variant NAME=CKPT "
                        f"for {', '.join(repr(n) for n in missing)}")

    def variant(name: str, options: dict[str, Any]) -> Sweep:
        """Pigeon with ``options`` on the test split: a scored sweep and its test-time selection."""
        if name in (checkpoints or {}):
            options = {**options, "checkpoint": str(checkpoints[name])}
        out = dest / "runs" / _slug(name)
        session = MethodSession(create_generator(PIGEON, profile, exp.device, exp.dtype,
                                                 {**base, **options}, dataset))
        run_method(replace(template, options={**base, **options}), out, session, scorer, log=log)
        return Sweep(out)

    pigeon = Sweep(root / PIGEON)
    files = [_write(dest / "table1.md", text)]
    from pigeon_bench.reports import build_ablation, build_report, plot_sweeps

    files.append(_write(dest / "table1-paper.md", build_report([report.parent], scenario=exp.scenario,
                                                                  paper=True)))
    if known_answers.available(root):  # the demo world's known answers: is the evaluation itself sound?
        files.append(_write(dest / "validity.md", known_answers.check(root, seed=exp.seed).to_markdown()))
    t3 = [("Pigeon", pigeon.selected.path)] + [(n, variant(n, o).selected.path) for n, o in TABLE3.items()]
    files.append(_write(dest / "table3.md", build_ablation(t3, paper=exp.scenario == "sticker")
                        + "\n" + _comparisons("Table 3", pigeon, [(n, Sweep(p.parent)) for n, p in t3[1:]])))
    sections = []
    for panel, (title, variants) in FIG4.items():
        lines = [(n, variant(n, o)) for n, o in variants.items()]
        files.append(plot_sweeps([f"Pigeon={pigeon.path}", *(f"{n}={s.path}" for n, s in lines)],
                                 dest / f"fig4{panel}.png", METRICS))
        sections.append(_comparisons(f"Fig. 4 ({panel}): {title}", pigeon, lines))
    files.append(_alpha_h(dest / "runs" / "alpha_h", template, base, profile, dataset, exp, scorer,
                          dest / "fig4b.png", log))
    stage2 = stage2 or _stage2(base, profile, dataset, exp, DPO_TINY | (dpo or {}))
    dpo_run = variant("stage 2", {"checkpoint": str(stage2)})
    files.append(plot_sweeps([f"stage 1={pigeon.path}", f"stage 2={dpo_run.path}"], dest / "fig4e.png",
                             METRICS))
    sections.append(_comparisons("Fig. 4 (e): stage 1 vs stage 2", pigeon, [("stage 2", dpo_run)]))
    files.append(_write(dest / "fig4.md", "\n".join(sections)))
    files.append(_write(dest / "README.md", _index(exp, profile.notice, files)))
    return Reproduction(dest, files)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _write(path: Path, text: str) -> Path:
    fileio.write_text(path, text)
    return path


def _comparisons(title: str, pigeon: Sweep, variants: list[tuple[str, Sweep]]) -> str:
    """Each variant's test-time selection against Pigeon's: paired deltas with CIs, per Fig. 4 metric."""
    from pigeon_bench.compare import compare_runs

    lines = [f"### {title}", "", "Δ = variant - Pigeon (test-time selections, the same samples); 95% paired "
             "bootstrap CI; p: paired permutation test.", "",
             "| Variant | Metric | Pigeon | Variant | Δ | 95% CI | p |", "|---|---|--:|--:|--:|--:|--:|"]
    for name, sweep in variants:
        shown = ("overall", *METRICS)
        result = compare_runs(pigeon.selected.path, sweep.selected.path, dict.fromkeys(shown, 0.0))
        for r in result.results:
            if r.metric in shown:
                lines.append(f"| {name} | {r.metric} | {r.base:.2f} | {r.cand:.2f} | {r.delta:+.2f} | "
                             f"[{r.lo:+.2f}, {r.hi:+.2f}] | {r.p:.3g} |")
    return "\n".join(lines) + "\n"


def _alpha_h(folder: Path, template: GenerateSpec, base: dict[str, Any], profile, dataset: Dataset,
             exp: Experiment, scorer, png: Path, log: Callable[[str], None]) -> Path:
    """Fig. 4 (b): Pigeon at α_r = 0.5 with the history mask ratio α_h swept at inference."""
    from pigeon_bench.reports import plot_sweeps

    session = MethodSession(create_generator(PIGEON, profile, exp.device, exp.dtype, base, dataset))
    for a in ALPHA_H:
        session.generator.ctx.options["alpha_h"] = a  # an inference-time option: the loaded model is reused
        run_method(replace(template, sweep=False, alpha_r=0.5, options={**base, "alpha_h": a}),
                   folder / param_dirname("alpha_h", a), session, scorer, log=log)
    return plot_sweeps([f"Pigeon at α_r 0.5={folder}"], png, METRICS)


def _stage2(base: dict[str, Any], profile, dataset: Dataset, exp: Experiment,
            settings: dict[str, Any]) -> Path:
    """The stage-2 (DPO) checkpoint trained from Pigeon's stage-1 checkpoint (cached)."""
    from pigeon.train import DPOSpec, train_dpo

    if not profile.trains_missing:
        raise UserError(f"reproduce in the {profile.name} profile needs Pigeon's stage-2 checkpoint: train "
                        "it with `pigeon-bench train dpo` and pass --stage2 CKPT")
    gen = create_generator(PIGEON, profile, exp.device, exp.dtype, base, dataset)
    gen.prepare([])
    init = Path(gen.checkpoint)
    spec = {"data": dataset.digest, "init": str(init), "backbone": gen.opt("backbone"), **settings}

    def build(out: Path) -> None:
        options = {"path": gen.opt("backbone_path")} if gen.opt("backbone_path") else {}
        train_dpo(DPOSpec(data=dataset.root, out=out, init=init, backbone=gen.opt("backbone"),
                          backbone_options=options, device=exp.device, scorer_profile=profile.name,
                          save_every=max(1, settings["steps"] // 3), **settings))

    return artifacts.ensure("pigeon/dpo", artifacts.digest(spec, length=16), build, resumable=True,
                            what=f"training a {settings['steps']}-step stage-2 (DPO) checkpoint from {init}")


def _index(exp: Experiment, notice: str | None, files: list[Path]) -> str:
    lines = [f"# The paper's experiments: {exp.scenario}", ""]
    if notice:
        lines += [f"> **{notice}**", ""]
    lines += ["What each file holds (every number measured by these runs; on the tiny profile no claim of "
              "the paper has to hold):", ""]
    about = {"table1.md": "Table 1: every method, Pigeon's selections labelled",
             "table1-paper.md": "Table 1 beside the paper's rows",
             "validity.md": "known-answer orderings of Hist, Grd, Oracle, Other user (`validate`)",
             "table3.md": "Table 3: instruction-encoding ablations (stage 1), with paired comparisons",
             "fig4a.png": "Fig. 4 (a): with and without the history mask",
             "fig4b.png": "Fig. 4 (b): α_h at inference, α_r = 0.5",
             "fig4c.png": "Fig. 4 (c): with and without the reference mask",
             "fig4d.png": "Fig. 4 (d): dual vs low-score vs high-score reference masking",
             "fig4e.png": "Fig. 4 (e): stage 1 vs stage 2 (DPO)",
             "fig4.md": "Fig. 4: paired comparisons of each variant with Pigeon"}
    lines += [f"- [{f.name}]({f.name}): {about.get(f.name, '')}" for f in files if f.name != "README.md"]
    return "\n".join(lines) + "\n"

