"""`pigeon-bench generate`, `run`, `select`, `score` and `import-results`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pigeon_bench.errors import UserError
from pigeon_bench.metrics.preprocess import DINO_ITEMS, FID_IMPLEMENTATIONS
from pigeon_bench.metrics.preprocess import HELP as PREPROCESS_HELP
from pigeon_bench.profiles import HELP as PROFILE_HELP

CANDIDATE_INTERVALS_HELP = ("Also compute FID's bootstrap interval for each fixed-alpha_r test candidate of "
                            "a sweep (default: only for the selections, the rows a report ranks; the "
                            "candidates' FID means are always computed).")
_OPTION_HELP = "Method option key=value (repeatable), e.g. -o checkpoint=PATH (see `pigeon-bench methods`)."


def generate(
    data: Annotated[Path, typer.Option(help="Dataset folder (items.parquet, samples.parquet, stats.json).")],
    method: Annotated[str, typer.Option(help="Registered method name, e.g. grd, hist, pigeon.")],
    out: Annotated[Path, typer.Option(help="Run folder to write (an existing one is resumed).")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    limit: Annotated[int | None, typer.Option(help="At most this many samples (file order).")] = None,
    alpha_r: Annotated[float | None, typer.Option("--alpha-r", help="Reference mask ratio, 0 to 1.")] = None,
    sweep: Annotated[bool, typer.Option(help="Generate every alpha_r in 0.0, 0.1, ..., 1.0.")] = False,
    seed: Annotated[int, typer.Option(help="Run seed; each sample's seed derives from it and its id.")] = 0,
    profile: Annotated[str | None, typer.Option(
        help=PROFILE_HELP + ". Default: the one the options imply (a checkpoint's), else paper.")] = None,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    dtype: Annotated[str | None, typer.Option(
        help="float32, bfloat16 or float16; default: the method's (Pigeon's LaVIT in the paper profile: "
             "bfloat16, as the official script; else float32).")] = None,
    batch_size: Annotated[int, typer.Option(help="Requests per generator call.")] = 4,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help=_OPTION_HELP)] = None,
) -> None:
    """Generate one method's images for a dataset split into a resumable run folder."""
    from pigeon_bench.generation import option_pairs
    from pigeon_bench.runs import GenerateSpec, generate

    spec = GenerateSpec(data=data, method=method, split=split, limit=limit, alpha_r=alpha_r, sweep=sweep,
                        seed=seed, profile=profile, device=device, dtype=dtype, batch_size=batch_size,
                        options=option_pairs(option or []))
    from pigeon_bench import distributed

    manifest = generate(spec, out)
    c = manifest["counts"]
    if distributed.current().main:
        typer.echo(f"{out}: {c['generated']} generated, {c['skipped']} skipped (already on disk), "
                   f"{c['n']} in all")


def run(
    scenario: Annotated[str | None, typer.Option(help="sticker or movie (or the config's).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Experiment TOML file (methods, per-method options, models, weights, ...); flags override it.")
    ] = None,
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder; default: the offline demo world, built into the cache (tiny profile).")] = None,
    methods: Annotated[list[str] | None, typer.Option(
        help="Methods to run (repeatable or comma-separated); default: every registered method.")] = None,
    profile: Annotated[str | None, typer.Option(
        help=PROFILE_HELP + ". Default: the one the options imply, else paper with --data, tiny on the "
                            "demo world.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many samples per split.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output root; runs go to OUT/<scenario>/ (default runs).")
                   ] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (default 0).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device for generation and scoring.")] = None,
    dtype: Annotated[str | None, typer.Option(
        help="float32, bfloat16 or float16 (generation); default: each method's.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Requests per generator call (default 4).")] = None,
    valid: Annotated[bool | None, typer.Option(
        help="For alpha_r methods, also sweep the valid split and pick one fixed alpha_r there.")] = None,
    candidate_intervals: Annotated[bool | None, typer.Option(
        help=CANDIDATE_INTERVALS_HELP)] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="METHOD.KEY=VALUE (one method) or KEY=VALUE (every method that has it), "
                               "repeatable, e.g. -o pigeon.checkpoint=CKPT.")] = None,
) -> None:
    """Generate, score, select and report every method on one scenario (resumable)."""
    from pigeon_bench.runs import experiment, run

    names = [n.strip() for m in (methods or []) for n in m.split(",") if n.strip()] or None
    exp = experiment(config, option or [], scenario=scenario, data=data, methods=names, profile=profile,
                     limit=limit, out=out, seed=seed, device=device, dtype=dtype, batch_size=batch_size,
                     valid=valid, candidate_intervals=candidate_intervals)
    text, path = run(exp)
    if text:  # under torchrun, rank 0 reports
        typer.echo(text)
        typer.echo(f"report written to {path}", err=True)


def select(
    run: Annotated[Path, typer.Argument(help="A sweep run folder (generate --sweep).")],
    valid_run: Annotated[Path | None, typer.Option(
        help="A sweep of the same method on the valid split: also pick one fixed alpha_r there.")] = None,
    device: Annotated[str, typer.Option(help="torch device for scoring.")] = "cpu",
    candidate_intervals: Annotated[bool, typer.Option(help=CANDIDATE_INTERVALS_HELP)] = False,
) -> None:
    """Pick alpha_r per sample (test-time best of 11, the paper's rule) and score the selection as a run
    (with the preprocessing the sweep was scored with)."""
    from pigeon_bench.profiles import get_profile
    from pigeon_bench.runs import Sweep, select
    from pigeon_bench.scoring import Scorer, recorded_preprocess

    sweep = Sweep(run)
    scorer = Scorer(profile=get_profile(sweep.manifest().get("profile")), device=device,
                    **recorded_preprocess(sweep.runs()))
    for folder in select(sweep, scorer, Sweep(valid_run) if valid_run else None, candidate_intervals):
        typer.echo(f"{folder}: {folder.manifest()['selection']}")


def score(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="Run folders (or sweeps) written by generate, scored with one scorer (shared features).")
    ] = None,
    generated: Annotated[Path | None, typer.Option(
        help="Instead of runs: a folder of generated images <sample_id>.png|jpg|webp (with --history and "
             "--reference, and --out).")] = None,
    history: Annotated[Path | None, typer.Option(
        help="History images: <sample_id>/*.png or <sample_id>_<k>.png.")] = None,
    reference: Annotated[Path | None, typer.Option(help="Reference images: <sample_id>.png.")] = None,
    manifest: Annotated[Path | None, typer.Option(
        help="Instead of runs or folders: a CSV/JSONL of sample_id, generated, history, reference "
             "[, history_texts, reference_text].")] = None,
    out: Annotated[Path | None, typer.Option(
        help="With --generated or --manifest: the folder that receives the scores and summary.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder; default: the manifest's \"data\".")] = None,
    profile: Annotated[str | None, typer.Option(
        help=PROFILE_HELP + ". Default: the manifest's profile, else paper.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images per backbone forward.")] = 16,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Cache root (default: $PIGEON_BENCH_CACHE or the user cache dir).")] = None,
    preprocess: Annotated[str | None, typer.Option(
        help=PREPROCESS_HELP + ". Default: the profile's.")] = None,
    resize: Annotated[int | None, typer.Option(
        help="Common resize in pixels (default: the mode's; official and clean 512, fast the profile's).")
    ] = None,
    fid: Annotated[str | None, typer.Option(
        help=f"FID implementation: {' or '.join(FID_IMPLEMENTATIONS)} (default: the mode's; official: "
             "pytorch-fid).")] = None,
    partial: Annotated[bool, typer.Option(
        help="Score a run whose images are not all there (the summary lists the missing samples).")] = False,
    dino_items: Annotated[str | None, typer.Option(
        help=f"Official mode: the history and reference DINO features from {' or '.join(DINO_ITEMS)} "
             "images (default resized, as the paper's Grd a_dis of 100.00 implies).")] = None,
) -> None:
    """Score run folders (every α_r folder of a sweep), or any images (folders or a manifest): writes the
    per-sample scores and the summary."""
    import warnings

    from pigeon_bench import inputs
    from pigeon_bench.profiles import get_profile
    from pigeon_bench.runs import RunFolder, scoreable
    from pigeon_bench.scoring import Scorer

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    images = [o for o in (generated, history, reference) if o is not None]
    if (images or manifest) and runs:
        raise UserError("give run folders, or --generated/--history/--reference, or --manifest: not several")
    if images and (len(images) < 3 or manifest):
        raise UserError("--generated, --history and --reference go together (or give --manifest alone)")
    if (images or manifest) and out is None:
        raise UserError("scoring folders or a manifest needs --out, the folder for the scores and summary")
    if not (images or manifest or runs):
        raise UserError("nothing to score: give run folders, --generated/--history/--reference, or "
                        "--manifest")
    folders = [f for r in runs or [] for f in scoreable(r)]
    recorded = RunFolder(runs[0]).manifest_or_empty().get("profile") if runs else None
    scorer = Scorer(profile=get_profile(profile or recorded).name, device=device, batch_size=batch_size,
                    cache_dir=cache_dir, preprocess=preprocess, resize="mode" if resize is None else resize,
                    fid=fid, dino_items=dino_items)
    samples = None
    if manifest:
        samples = inputs.from_manifest(manifest)
    elif images:
        samples = inputs.from_folders(generated, history, reference)
    from pigeon_bench import distributed

    ranks = distributed.current()  # under torchrun: every rank scores a block of the runs' samples
    if samples is not None and not ranks.main:
        return  # folders of images or a manifest: rank 0 scores them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summaries = (scorer.score_runs(folders, data, partial, ranks) if samples is None
                     else [scorer.score_into(samples, RunFolder(out))])
    if not ranks.main:
        return
    for text in dict.fromkeys(str(w.message) for w in caught):  # each warning once per command
        typer.echo(f"warning: {text}", err=True)
    for folder, summary in zip(folders or [RunFolder(out)], summaries, strict=True):
        means = "  ".join(f"{m}={v['mean']:.4g}" for m, v in summary["metrics"].items()
                          if v["mean"] is not None)
        typer.echo(f"{folder}: n={summary['n']}  {means}")
        if summary["notice"]:
            typer.echo(summary["notice"])


def import_results(
    results: Annotated[Path, typer.Argument(
        help="The official inference output: OUTPUT_DIR/eval-test (or OUTPUT_DIR holding one eval folder), "
             "with checkpoint-N-scaleS-maskR/all_res_dm_scaleD.npy for the 11 mask ratios.")],
    data: Annotated[Path, typer.Option(
        help="Dataset folder built from the same processed_seq (`pigeon-bench data import-official`).")],
    out: Annotated[Path, typer.Option(help="Sweep folder to write (one run folder per α_r).")],
    checkpoint: Annotated[int | None, typer.Option(help="N of checkpoint-N (default: the only one).")] = None,
    scale: Annotated[str | None, typer.Option(
        help="S of -scaleS, the LLM guidance scale as the folders spell it (default: the only one).")] = None,
    dm_scale: Annotated[str | None, typer.Option(
        help="D of all_res_dm_scaleD.npy, the diffusion guidance scale (default: the only one).")] = None,
    split: Annotated[str | None, typer.Option(
        help="test or valid (default: from the folder name, eval-test or eval).")] = None,
    seq: Annotated[int, typer.Option(help="Which returned sequence of each sample.")] = 0,
    image: Annotated[int, typer.Option(help="Which returned image of that sequence.")] = 0,
    method: Annotated[str, typer.Option(help="Registered method the images are from.")] = "pigeon",
    label: Annotated[str | None, typer.Option(help="Row label (default: the method's).")] = None,
    profile: Annotated[str, typer.Option(
        help="Profile recorded as the images' (scoring's default): " + PROFILE_HELP)] = "paper",
) -> None:
    """Import the authors' generated results (official inference layout) as an α_r sweep, for `score`,
    `select` and `report`."""
    from pigeon_bench.runs.official_results import import_results as run_import

    top = run_import(results, data, out, checkpoint=checkpoint, scale=scale, dm_scale=dm_scale, split=split,
                     seq=seq, image=image, method=method, label=label, profile=profile)
    s, k = top["settings"], len(top["sweep"])
    typer.echo(f"{out}: {top['counts']['n'] // k} {top['split']} samples x {k} α_r imported from "
               f"{top['imported']['source']} (checkpoint-{s['checkpoint']}, "
               f"scale{s['guidance_scale_for_llm']}, dm_scale{s['guidance_scale_for_dm']})")


def register(app: typer.Typer) -> None:
    app.command()(generate)
    app.command("run")(run)
    app.command()(select)
    app.command("score")(score)
    app.command("import-results")(import_results)
