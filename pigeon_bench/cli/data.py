"""`pigeon-bench data`: build, import and inspect scenario datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pigeon_bench.cli import group
from pigeon_bench.errors import UserError

if TYPE_CHECKING:
    from pigeon_bench.data.build import BuildResult

data_app = group("Build, import and inspect scenario datasets.")


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
_Force = Annotated[bool, typer.Option(
    help="Replace a different dataset already in --out (an identical one is left as it is).")]


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
    for key in sorted(set(stats) - {"scenario", "users", "items", "samples", "splits", "dropped", "sha256"}):
        table.add_row(key, str(stats[key]))
    Console().print(table)


def _report(result: BuildResult, scenario: str, verb: str) -> None:
    """The stats of what a builder wrote, or one line when the folder already held exactly that."""
    if result.written:
        _print_dataset_stats(result.stats, f"{scenario} dataset {verb} {result.out}")
    else:
        typer.echo(f"{result.out} already holds this exact {scenario} dataset: nothing written")


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
    force: _Force = False,
) -> None:
    """Movie posters from MovieLens ml-latest-small: ratings >= 4 by time, windows of 5 history + target."""
    from pigeon_bench.data.movie import build_movie

    result = build_movie(raw, out, images=images, min_rating=min_rating, seed=seed,
                         split_mode=_check_split_mode(split_mode), overviews=overviews, force=force)
    _report(result, "movie", "written to")


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
    force: _Force = False,
) -> None:
    """Stickers from SER30K: one user per theme, windows of 6; valid/test references from another theme."""
    from pigeon_bench.data.sticker import build_sticker

    names = [n.strip() for n in emotion_names.split(",")] if emotion_names else None
    result = build_sticker(raw, out, seed=seed, split_mode=_check_split_mode(split_mode), exclude=exclude,
                           emotion_names=names, force=force)
    _report(result, "sticker", "written to")


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
    force: _Force = False,
) -> None:
    """Import the official Pigeon data (pickled numpy files: only import files you trust)."""
    from pigeon_bench.data.official import import_official

    result = import_official(src, scenario, out, images=images, force=force)
    _report(result, scenario, "imported to")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
