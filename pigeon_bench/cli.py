"""The `pigeon-bench` command line. This module only parses arguments and calls into the library.

Each command group lives in its own marked section below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional  # noqa: F401 - used by command sections

import typer

from pigeon_bench.errors import UserError


class _App(typer.core.TyperGroup):
    """The root command: a UserError anywhere below is one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(UserError.exit_code) from None


app = typer.Typer(
    cls=_App,
    name="pigeon-bench",
    help="Evaluate and benchmark personalized image generation (Pigeon, WWW 2025) and its baselines.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain one-line errors
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build, import and inspect scenario datasets.", no_args_is_help=True,
                       rich_markup_mode=None)
models_app = typer.Typer(help="List, check and prefetch backbone weights.", no_args_is_help=True,
                         rich_markup_mode=None)
train_app = typer.Typer(help="Train Pigeon: stage 1 (SFT) and stage 2 (DPO).", no_args_is_help=True,
                        rich_markup_mode=None)
human_eval_app = typer.Typer(help="Human-evaluation kit (Table 2).", no_args_is_help=True,
                             rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(train_app, name="train")
app.add_typer(human_eval_app, name="human-eval")


# ---------------------------------------------------------------- data (issue 2)



class _ScenarioCommands(typer.core.TyperGroup):
    """`data build SCENARIO`: an unknown scenario is a one-line user error, not a usage screen."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise UserError(f"unknown scenario {args[0]!r} (known: {', '.join(sorted(self.commands))})")
        return super().resolve_command(ctx, args)


data_build_app = typer.Typer(help="Build a scenario dataset from its raw release (paper §3.1.1).",
                             no_args_is_help=True, rich_markup_mode=None, cls=_ScenarioCommands)
data_app.add_typer(data_build_app, name="build")
_SPLIT_MODE_HELP = ("random: all windows shuffled and cut 8:1:1 (the paper's wording); temporal: each "
                    "user's latest windows go to valid/test")


def _print_dataset_stats(stats: dict, title: str) -> None:
    """A dataset's stats.json as a rich table (counts, splits, what was dropped)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("field")
    table.add_column("value", justify="right")
    for key in ("scenario", "users", "items", "samples"):
        if key in stats:
            table.add_row(key, f"{stats[key]:,}" if isinstance(stats[key], int) else str(stats[key]))
    for split in ("train", "valid", "test"):
        if split in stats.get("splits", {}):
            table.add_row(f"samples ({split})", f"{stats['splits'][split]:,}")
    for key, n in stats.get("dropped", {}).items():
        table.add_row(f"dropped: {key.replace('_', ' ')}", f"{n:,}")
    for key in sorted(set(stats) - {"scenario", "users", "items", "samples", "splits", "dropped"}):
        table.add_row(key, str(stats[key]))
    Console().print(table)


def _check_split_mode(split_mode: str) -> str:
    from pigeon_bench.data.build import SPLIT_MODES

    if split_mode not in SPLIT_MODES:
        raise UserError(f"unknown split mode {split_mode!r} (known: {', '.join(SPLIT_MODES)})")
    return split_mode


@data_build_app.command("movie")
def data_build_movie(
    raw: Annotated[Path, typer.Option(help="ml-latest-small folder (ratings.csv, movies.csv, links.csv).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    images: Annotated[Path | None, typer.Option(
        help="Poster folder (<movieId>.jpg); interactions without a poster are dropped first.")] = None,
    min_rating: Annotated[float, typer.Option(help="Keep ratings >= this.")] = 4.0,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    split_mode: Annotated[str, typer.Option(help=_SPLIT_MODE_HELP)] = "random",
    overviews: Annotated[Path | None, typer.Option(
        help="Optional CSV (movieId, overview) appended to each poster's semantics text.")] = None,
) -> None:
    """Movie posters from MovieLens ml-latest-small: ratings >= 4 by time, windows of 5 history + target."""
    from pigeon_bench.data.movie import build_movie

    result = build_movie(raw, out, images=images, min_rating=min_rating, seed=seed,
                         split_mode=_check_split_mode(split_mode), overviews=overviews)
    _print_dataset_stats(result.stats, f"movie dataset written to {result.out}")


@data_build_app.command("sticker")
def data_build_sticker(
    raw: Annotated[Path, typer.Option(
        help="SER30K folder (Annotations/{train,val,test}.json, Images/<topic>/<file_name>).")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    seed: Annotated[int, typer.Option(help="Split and reference seed.")] = 0,
    split_mode: Annotated[str, typer.Option(help=_SPLIT_MODE_HELP)] = "random",
    exclude: Annotated[Path | None, typer.Option(
        help="Text file of themes to leave out (e.g. low quality), one per line.")] = None,
    emotion_names: Annotated[str | None, typer.Option(
        help="Comma-separated names of the emotion labels 1..7 (default: anger, disgust, fear, happiness, "
             "neutral, sadness, surprise).")] = None,
) -> None:
    """Stickers from SER30K: one user per theme, windows of 6; valid/test references from another theme."""
    from pigeon_bench.data.sticker import build_sticker

    names = [n.strip() for n in emotion_names.split(",")] if emotion_names else None
    result = build_sticker(raw, out, seed=seed, split_mode=_check_split_mode(split_mode), exclude=exclude,
                           emotion_names=names)
    _print_dataset_stats(result.stats, f"sticker dataset written to {result.out}")


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo world (ser30k/ and ml-latest-small/).")],
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    themes: Annotated[int, typer.Option(help="Sticker themes (users).")] = 28,
    users: Annotated[int, typer.Option(help="Movie users.")] = 20,
    movies_per_genre: Annotated[int, typer.Option(help="Movies per genre (8 genres).")] = 8,
    image_size: Annotated[int, typer.Option(help="Sticker side and poster height in pixels.")] = 256,
) -> None:
    """Write the offline demo world: procedural stickers (SER30K layout), posters (ml-latest-small layout)."""
    from pigeon_bench.data.demo import DemoSizes, write_demo_world

    if min(themes, users, movies_per_genre) < 2 or image_size < 32:
        raise UserError("demo sizes too small: themes, users, movies-per-genre >= 2 and image-size >= 32")
    sizes = DemoSizes(themes=themes, users=users, movies_per_genre=movies_per_genre, image_size=image_size)
    paths = write_demo_world(out, seed=seed, sizes=sizes)
    for scenario, path in paths.items():
        typer.echo(f"{scenario}: {path}  (pigeon-bench data build {scenario} --raw {path} ...)")


@data_app.command("stats")
def data_stats(
    data: Annotated[Path, typer.Argument(help="Dataset folder (items.parquet, samples.parquet, stats.json)")],
) -> None:
    """Print a dataset's statistics (Table 4 counts and per-split samples)."""
    from pigeon_bench.data import Dataset

    dataset = Dataset(data)
    dataset.samples_df  # noqa: B018 - validates samples.parquet and its columns
    dataset.items_df  # noqa: B018
    _print_dataset_stats(dataset.stats, str(data))


@data_app.command("import-official")
def data_import_official(
    src: Annotated[Path, typer.Argument(help="The official Pigeon processed_seq folder (train.npy, ...).")],
    scenario: Annotated[str, typer.Option(help="sticker or movie.")],
    out: Annotated[Path, typer.Option(help="Dataset folder to write.")],
    images: Annotated[Path | None, typer.Option(
        help="Image folder that all_image_paths.npy is relative to (default: ../Images for stickers, "
             "../poster for movies).")] = None,
) -> None:
    """Import the official Pigeon data (pickled numpy files: only import files you trust)."""
    from pigeon_bench.data.official import import_official

    result = import_official(src, scenario, out, images=images)
    _print_dataset_stats(result.stats, f"{scenario} dataset imported to {result.out}")

# ---------------------------------------------------------------- models, score (issue 3)

_PROFILE_HELP = "paper (the paper's models; local weights) or tiny (seeded random, offline; not comparable)."


_ROLE = Annotated[str | None, typer.Option(help="Only this role's models (scoring: the backbones).")]


def _check_role(role: str | None) -> None:
    from pigeon_bench import weights

    if role not in (None, weights.SCORING):
        raise UserError(f"unknown role {role!r} (this command lists the {weights.SCORING} backbones)")


@models_app.command("list")
def models_list(
    profile: Annotated[str, typer.Option(help=_PROFILE_HELP)] = "paper",
    role: _ROLE = None,
) -> None:
    """Show each backbone of a profile and where its weights are (no hashing, no loading)."""
    from pigeon_bench import weights
    from pigeon_bench.metrics import backbones as B
    from pigeon_bench.profiles import get_profile

    _check_role(role)
    prof = get_profile(profile)
    for bid in B.BACKBONE_IDS:
        spec = weights.get(bid)
        if prof.seeded_models:
            cls = B.backbones.get(bid).cls.__name__
            typer.echo(f"{bid}: tiny {cls}, seeded random weights built in memory")
            continue
        r = weights.resolve(bid)
        where = ", ".join(map(str, r.paths)) if r.found else "MISSING (looked in " + ", ".join(r.looked) + ")"
        typer.echo(f"{bid}: {spec.description}\n  weights: {where}\n  override: ${spec.env_var}")


@models_app.command("check")
def models_check(
    profile: Annotated[str, typer.Option(help=_PROFILE_HELP)] = "paper",
    role: _ROLE = None,
) -> None:
    """Resolve every backbone's weights and print their fingerprints; exit 2 listing any that are missing."""
    from pigeon_bench.profiles import get_profile

    _check_role(role)
    prof = get_profile(profile)
    for bid, b in prof.scoring_backbones().items():
        typer.echo(f"{bid}: {b.fingerprint}")
    if prof.notice:
        typer.echo(prof.notice)


@models_app.command("prefetch")
def models_prefetch() -> None:
    """Download the paper profile's weights into the usual caches (needs network; unset HF_HUB_OFFLINE)."""
    from pigeon_bench import weights
    from pigeon_bench.metrics import backbones as B

    for bid, r in weights.prefetch(list(B.BACKBONE_IDS)).items():
        typer.echo(f"{bid}: {', '.join(map(str, r.paths))}")


@app.command("score")
def score_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (images/<id>.png, manifest.json) or sweep.")],
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder; default: the manifest's \"data\".")] = None,
    profile: Annotated[str | None, typer.Option(
        help=_PROFILE_HELP + " Default: the manifest's profile, else paper.")] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Images per backbone forward.")] = 16,
    cache_dir: Annotated[Path | None, typer.Option(
        help="Cache root (default: $PIGEON_BENCH_CACHE or the user cache dir).")] = None,
) -> None:
    """Score a run folder (or every α_r folder of a sweep): writes scores.parquet and summary.json."""
    import warnings

    from pigeon_bench.runs.folder import RunFolder, scoreable
    from pigeon_bench.scoring import Scorer

    recorded = RunFolder(run_dir).manifest_or_empty().get("profile")
    scorer = Scorer(profile=profile or recorded or "paper", device=device, batch_size=batch_size,
                    cache_dir=cache_dir)
    for folder in scoreable(run_dir):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = scorer.score_run(folder, data)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        means = "  ".join(f"{m}={v['mean']:.4g}" for m, v in summary["metrics"].items()
                          if v["mean"] is not None)
        typer.echo(f"{folder}: n={summary['n']}  {means}")
        if summary["notice"]:
            typer.echo(summary["notice"])


# ---------------------------------------------------------------- generate, run, select (issue 4)

_GEN_PROFILE_HELP = "paper (real weights) or tiny (tiny random models; numbers not comparable with the paper)"


@app.command()
def generate(
    data: Annotated[Path, typer.Option(help="Dataset folder (items.parquet, samples.parquet, stats.json).")],
    method: Annotated[str, typer.Option(help="Registered method name, e.g. grd, hist, pigeon.")],
    out: Annotated[Path, typer.Option(help="Run folder to write (an existing one is resumed).")],
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    limit: Annotated[int | None, typer.Option(help="At most this many samples (file order).")] = None,
    alpha_r: Annotated[float | None, typer.Option("--alpha-r", help="Reference mask ratio, 0 to 1.")] = None,
    sweep: Annotated[bool, typer.Option(help="Generate every alpha_r in 0.0, 0.1, ..., 1.0.")] = False,
    seed: Annotated[int, typer.Option(help="Run seed; each sample's seed derives from it and its id.")] = 0,
    profile: Annotated[str, typer.Option(help=_GEN_PROFILE_HELP)] = "paper",
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Requests per generator call.")] = 4,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="Method option key=value (repeatable), e.g. -o checkpoint=PATH.")] = None,
) -> None:
    """Generate one method's images for a dataset split into a resumable run folder."""
    from pigeon_bench import run as runs

    spec = runs.GenerateSpec(data=data, method=method, split=split, limit=limit, alpha_r=alpha_r, sweep=sweep,
                             seed=seed, profile=profile, device=device, dtype=dtype, batch_size=batch_size,
                             options=runs.parse_options(option or []))
    manifest = runs.generate(spec, out)
    c = manifest["counts"]
    typer.echo(f"{out}: {c['generated']} generated, {c['skipped']} skipped (already on disk), "
               f"{c['n']} in all")


@app.command("run")
def run_command(
    scenario: Annotated[str, typer.Option(help="sticker or movie.")],
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder; default: the offline demo world, built into the cache (tiny profile).")] = None,
    methods: Annotated[list[str] | None, typer.Option(
        help="Methods to run (repeatable or comma-separated); default: every registered method.")] = None,
    profile: Annotated[str | None, typer.Option(
        help="paper or tiny; default: paper with --data, tiny on the demo world.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many samples per split.")] = None,
    out: Annotated[Path, typer.Option(help="Output root; runs go to OUT/<scenario>/.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Run seed.")] = 0,
    device: Annotated[str, typer.Option(help="torch device for generation and scoring.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 (generation).")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Requests per generator call.")] = 4,
    valid: Annotated[bool, typer.Option(
        help="For alpha_r methods, also sweep the valid split and pick one fixed alpha_r there.")] = True,
) -> None:
    """Generate, score, select and report every method on one scenario (resumable)."""
    from pigeon_bench import run as runs

    names = [n.strip() for m in (methods or []) for n in m.split(",") if n.strip()] or None
    text, path = runs.run(runs.RunSpec(scenario=scenario, data=data, methods=names, profile=profile,
                                       limit=limit, out=out, seed=seed, device=device, dtype=dtype,
                                       batch_size=batch_size, valid=valid))
    typer.echo(text)
    typer.echo(f"report written to {path}", err=True)


@app.command()
def select(
    run: Annotated[Path, typer.Argument(help="A sweep run folder (generate --sweep).")],
    valid_run: Annotated[Path | None, typer.Option(
        help="A sweep of the same method on the valid split: also pick one fixed alpha_r there.")] = None,
    device: Annotated[str, typer.Option(help="torch device for scoring.")] = "cpu",
) -> None:
    """Pick alpha_r per sample (test-time best of 11, the paper's rule) and score the selection as a run."""
    from pigeon_bench import run as runs

    scorer = runs.make_scorer(runs.read_manifest(run)["profile"], device)
    for folder in runs.select(run, scorer, valid_run):
        typer.echo(f"{folder}: {runs.read_manifest(folder)['selection']}")

# ---------------------------------------------------------------- baselines: adapter fine-tuning (issue 4)

baselines_app = typer.Typer(help="Train baseline adapters (LLaVA LoRA, PMG soft tokens).",
                            no_args_is_help=True,
                            rich_markup_mode=None)
app.add_typer(baselines_app, name="baselines")


@baselines_app.command("finetune-llava")
def baselines_finetune_llava(
    data: Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")],
    out: Annotated[Path, typer.Option(help="Output folder for the LoRA (PEFT adapter + finetune.json).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps (batch 1); 0: one pass over train.")] = 0,
    lr: Annotated[float, typer.Option(help="Learning rate (the paper tunes every baseline at 1e-5).")] = 1e-5,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Use at most this many training samples.")] = None,
    base: Annotated[str | None, typer.Option(help="LLaVA hub id or folder (default: the profile's).")] = None,
    captioner: Annotated[str | None, typer.Option(help="Captioner hub id or folder (BLIP-2).")] = None,
    profile: Annotated[str, typer.Option(help="paper (full-size models) or tiny (offline).")] = "paper",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Shuffling and initialisation seed.")] = 0,
) -> None:
    """Fine-tune LLaVA with LoRA on the train split: prompt (history + reference) -> the target's caption."""
    from baselines.llava import finetune_llava
    from pigeon_bench.generation import DTYPES

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if steps < 0 or (limit is not None and limit < 1):
        raise UserError("--steps must be >= 0 and --limit >= 1")
    meta = finetune_llava(data, out, base=base, profile=profile, steps=steps, lr=lr, rank=rank, alpha=alpha,
                          limit=limit, seed=seed, captioner_ref=captioner, device=device, dtype=DTYPES[dtype])
    typer.echo(f"LoRA written to {out} ({meta['steps']} steps on {meta['n_train']} training samples, "
               f"final loss {meta['losses'][-1]:.4f}); use it with --option lora={out} for method 'llava'")


@baselines_app.command("finetune-pmg")
def baselines_finetune_pmg(
    data: Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")],
    out: Annotated[Path, typer.Option(help="Output folder (pmg_adapter.safetensors + pmg_adapter.json).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps (batch 1); 0: one pass over train.")] = 0,
    lr: Annotated[float, typer.Option(help="Learning rate (the paper tunes every baseline at 1e-5).")] = 1e-5,
    n_soft: Annotated[int, typer.Option(help="Number of soft preference tokens.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Use at most this many training samples.")] = None,
    llm: Annotated[str | None, typer.Option(help="LLM hub id or folder (default: the profile's).")] = None,
    sd: Annotated[str | None, typer.Option(help="Stable Diffusion hub id or folder.")] = None,
    captioner: Annotated[str | None, typer.Option(help="Captioner hub id or folder (BLIP-2).")] = None,
    profile: Annotated[str, typer.Option(help="paper (full-size models) or tiny (offline).")] = "paper",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Shuffling, noise and initialisation seed.")] = 0,
) -> None:
    """Train PMG's soft preference tokens (LLM and SD frozen) on the train split's target images."""
    from baselines.pmg import PMG, finetune_pmg
    from pigeon_bench.generation import DTYPES

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if steps < 0 or n_soft < 1 or (limit is not None and limit < 1):
        raise UserError("--steps must be >= 0, --n-soft >= 1 and --limit >= 1")
    models = {k: v for k, v in {"llm": llm, "sd": sd, "captioner": captioner}.items() if v}
    gen = PMG(profile=profile, device=device, dtype=DTYPES[dtype], **models)
    meta = finetune_pmg(gen, data, out, steps=steps, lr=lr, n_soft=n_soft, limit=limit, seed=seed)
    typer.echo(f"PMG adapter written to {out} ({meta['steps']} steps on {meta['n_train']} training samples, "
               f"final loss {meta['losses'][-1]:.4f}); use it with --option adapter={out} for method 'pmg'")


# ---------------------------------------------------------------- train (issue 5)


def _pigeon_config(alpha_h: float, history_mask: bool, visual_feature: bool, textual_tokens: bool,
                   encoding: bool, reference_mask: str):
    from pigeon.model import PigeonConfig

    return PigeonConfig(alpha_h=alpha_h, history_mask=history_mask, visual_feature=visual_feature,
                        textual_tokens=textual_tokens, encoding=encoding, reference_mask=reference_mask)


def _train_summary(meta: dict, out: Path, key: str) -> str:
    from pigeon.train import margin_summary

    first, last = margin_summary(meta["log"], key)
    return (f"{meta['stage']}: {meta['step']} steps, {key} {first:.4f} -> {last:.4f} (mean of first/last 10 "
            f"steps), {meta.get('seconds', 0):.1f} s; checkpoint {out}")


_TrainData = Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")]
_TrainOut = Annotated[Path, typer.Option(help="Checkpoint folder (resumes from its last saved step).")]
_TrainBackbone = Annotated[str, typer.Option(help="LMM backbone: lavit or tiny.")]
_BackbonePath = Annotated[str | None, typer.Option(
    help="Backbone weights (LaVIT folder or hub id; tiny: a saved tiny folder). Default: lavit's release; "
         "tiny: pretrained on --data and cached.")]


@train_app.command("sft")
def train_sft_cmd(
    data: _TrainData,
    out: _TrainOut,
    backbone: _TrainBackbone = "tiny",
    backbone_path: _BackbonePath = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate (paper: 1e-5).")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of batches, α_r draws and Gumbel noise.")] = 0,
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 50,
    alpha_h: Annotated[float, typer.Option(help="History mask ratio α_h.")] = 0.2,
    history_mask: Annotated[bool, typer.Option(help="Ablation: --no-history-mask (Fig. 4(a)).")] = True,
    visual_feature: Annotated[bool, typer.Option(help="Ablation: --no-visual-feature (Table 3).")] = True,
    textual_tokens: Annotated[bool, typer.Option(help="Ablation: --no-textual-tokens (Table 3).")] = True,
    encoding: Annotated[bool, typer.Option(help="Ablation: --no-encoding (Table 3).")] = True,
    reference_mask: Annotated[str, typer.Option(
        help="dual (Pigeon), low, high (Fig. 4(d)), none (Fig. 4(c)), random.")] = "dual",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Stage 1: masked preference reconstruction (SFT of mask generator, adapter and LoRA)."""
    from pigeon.train import TrainSpec, train_sft

    if steps < 1 or batch_size < 1 or save_every < 1:
        raise UserError("--steps, --batch-size and --save-every must be at least 1")
    spec = TrainSpec(data=data, out=out, backbone=backbone,
                     backbone_options={"path": backbone_path} if backbone_path else {}, steps=steps,
                     batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, device=device,
                     config=_pigeon_config(alpha_h, history_mask, visual_feature, textual_tokens, encoding,
                                           reference_mask))
    typer.echo(_train_summary(train_sft(spec), out, "loss"))


@train_app.command("dpo")
def train_dpo_cmd(
    data: _TrainData,
    out: _TrainOut,
    init: Annotated[Path, typer.Option(help="The stage-1 (SFT) checkpoint; also the frozen DPO reference.")],
    backbone: _TrainBackbone = "tiny",
    backbone_path: _BackbonePath = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Preference pairs per step.")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate (paper: 1e-5).")] = 1e-5,
    beta: Annotated[float, typer.Option(help="DPO β.")] = 0.1,
    prompts: Annotated[int, typer.Option(help="Train prompts to build preference pairs from (11 candidates "
                                              "each, α_r = 0.0..1.0).")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of prompts, candidates, batches and α_r draws.")] = 0,
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 25,
    scorer_profile: Annotated[str, typer.Option(help="Scoring profile of the CLIP reward: tiny or paper.")]
        = "tiny",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Stage 2: DPO on chosen/rejected candidates ranked by CLIP similarity to the history (LoRA only)."""
    from pigeon.train import PREFERENCES, DPOSpec, train_dpo

    if steps < 1 or batch_size < 1 or save_every < 1 or prompts < 1:
        raise UserError("--steps, --batch-size, --save-every and --prompts must be at least 1")
    spec = DPOSpec(data=data, out=out, init=init, backbone=backbone,
                   backbone_options={"path": backbone_path} if backbone_path else {}, steps=steps,
                   batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, device=device, beta=beta,
                   prompts=prompts, scorer_profile=scorer_profile)
    meta = train_dpo(spec)
    typer.echo(_train_summary(meta, out, "margin") + f"; preference pairs in {out / PREFERENCES}")

# ---------------------------------------------------------------- report, compare, human-eval (issue 6)


def _emit(text: str, out: Path | None) -> None:
    """Write ``text`` to ``out`` atomically, or print it."""
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    from pigeon_bench import fileio

    fileio.write_text(out, text)
    typer.echo(f"wrote {out}", err=True)


@app.command()
def report(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="Scored run folders (a sweep folder stands for its selected/ run).")] = None,
    scenario: Annotated[str | None, typer.Option(
        help="Only this scenario (required to match every run).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md, latex, csv or html.")] = "md",
    paper: Annotated[bool, typer.Option(
        "--paper", help="Put the paper's numbers beside ours (alone when no run is given).")] = False,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    ci: Annotated[bool, typer.Option(help="Show each value's bootstrap 95% CI.")] = True,
    ablation: Annotated[list[str] | None, typer.Option(
        help="NAME=RUN (repeatable): a Table 3-style ablation table instead of Table 1.")] = None,
    metric: Annotated[list[str] | None, typer.Option(
        help="Ablation columns (repeatable); default Table 3's p_cis, p_lpips, a_cs.")] = None,
    cases: Annotated[int, typer.Option(help="HTML: how many cases to show with their images.")] = 8,
) -> None:
    """Table 1 (or an ablation table) from scored runs, optionally beside the paper's numbers."""
    from pigeon_bench import reports as rep

    if ablation:
        if runs:
            raise UserError("give either RUN folders (Table 1) or --ablation NAME=RUN, not both")
        named = [rep.parse_named_run(a) for a in ablation]
        columns = tuple(metric or rep.TABLE3_COLUMNS)
        text = rep.build_ablation(named, fmt=fmt, paper=paper, columns=columns, ci=ci)
    else:
        if metric:
            raise UserError("--metric applies to --ablation tables only")
        text = rep.build_report(runs or [], scenario=scenario, fmt=fmt, paper=paper, ci=ci, n_cases=cases)
    _emit(text, out)


@app.command("plot-sweep")
def plot_sweep(
    sweeps: Annotated[list[Path], typer.Argument(
        help="Sweep folders with alpha_r=... (or alpha_h=...) sub-runs.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    metric: Annotated[list[str] | None, typer.Option(
        help="Metrics to plot (repeatable); default p_cis, a_cs.")] = None,
) -> None:
    """Fig. 4-style line plots of metrics against the swept mask ratio, one line per sweep."""
    from pigeon_bench.reports import plot_sweeps

    typer.echo(f"wrote {plot_sweeps(sweeps, out, tuple(metric or ('p_cis', 'a_cs')))}", err=True)


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="Baseline run folder (scored).")],
    candidate: Annotated[Path, typer.Argument(help="Candidate run folder, scored on the same samples.")],
    gate: Annotated[list[str] | None, typer.Option(
        help="METRIC:TOLERANCE, signed in the worse direction, e.g. overall:-0.5 or fid:+2 (repeatable); "
             "default: every metric at 0.")] = None,
    alpha: Annotated[float, typer.Option(
        help="Family-wise significance level (Holm over gated metrics).")] = 0.05,
    fmt: Annotated[str, typer.Option("--format", help="md or json.")] = "md",
    n_boot: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = 2000,
    n_perm: Annotated[int, typer.Option(help="Permutations (exact enumeration when 2^n is smaller).")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the permutations.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the report to this file.")] = None,
) -> None:
    """Paired per-metric comparison of two runs; exit 1 when a gated metric regresses significantly."""
    from pigeon_bench.compare import COMPARE_FORMATS, compare_runs, parse_gate

    if fmt not in COMPARE_FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(COMPARE_FORMATS)})")
    gates = dict(parse_gate(g) for g in gate or [])
    result = compare_runs(base, candidate, gates or None, alpha=alpha, n_boot=n_boot, n_perm=n_perm,
                          seed=seed)
    text = result.to_json() if fmt == "json" else result.to_markdown()
    if out is not None:
        _emit(text, out)
    typer.echo(text, nl=False)
    if result.failed:
        typer.echo(f"regression: {', '.join(result.failed)}", err=True)
        raise typer.Exit(1)


@human_eval_app.command("make")
def human_eval_make(
    run_a: Annotated[Path, typer.Argument(help="Run A (e.g. Pigeon): its preference rate is reported.")],
    run_b: Annotated[Path, typer.Argument(help="Run B (the method compared against).")],
    aspect: Annotated[str, typer.Option(help="personalization or semantic_alignment.")],
    out: Annotated[Path, typer.Option(help="Kit folder to create (must be new or empty).")],
    n: Annotated[int, typer.Option("--n", help="Cases (binary-choice tasks).")] = 50,
    checks: Annotated[int | None, typer.Option(
        help="Attention-check tasks; default n // 10, at least 1.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the case sample and the left/right order.")] = 0,
    base_url: Annotated[str, typer.Option(
        help="Prefix of image URLs in batch.csv (where DIR/ is hosted, ending in /).")] = "",
) -> None:
    """Write a binary-choice kit (MTurk batch CSV, HIT template, static pages, private answer key)."""
    from pigeon_bench.human_eval import make_kit

    info = make_kit(run_a, run_b, aspect, out, n=n, checks=checks, seed=seed, base_url=base_url)
    typer.echo(f"{out}: {info['cases']} cases + {info['checks']} attention checks ({info['labels']['a']} "
               f"vs {info['labels']['b']}, {info['aspect']}, {info['scenario']}); upload batch.csv, "
               "keep key.csv private", err=True)


@human_eval_app.command("score")
def human_eval_score(
    responses: Annotated[list[Path], typer.Argument(
        help="Results CSVs (MTurk batch results, or columns task_id, worker_id, choice).")],
    key: Annotated[list[Path] | None, typer.Option(
        help="Answer keys (repeatable); default: key.csv beside each responses file.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md (Table 2 layout) or csv.")] = "md",
    paper: Annotated[bool, typer.Option(
        "--paper", help="Show the paper's Table 2 value in each cell.")] = False,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Preference rates with 95% CIs in Table 2's layout; failed attention checks excluded and counted."""
    from pigeon_bench.human_eval import check_format, render_table2, score_responses

    check_format(fmt)
    _emit(render_table2(score_responses(responses, key or [], seed=seed), fmt=fmt, paper=paper), out)


def main() -> None:
    """Console-script entry point: warnings print as one line each, each text once per process (libraries
    that reset the warning filters cannot make a repeated warning, e.g. FID's n < 2048, print again)."""
    import sys
    import warnings

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in shown:
            shown.add(text)
            print(f"warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("once", UserWarning)
    app()


if __name__ == "__main__":
    main()
