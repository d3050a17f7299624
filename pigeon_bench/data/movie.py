"""Movie-poster scenario from a MovieLens ml-latest-small release (paper §3.1.1, Table 4).

Ratings >= ``min_rating`` are kept, each user's interactions are sorted by timestamp (ties keep file order),
and a window of 6 slides with step 1: 5 history posters and the target poster, which is also the reference.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pigeon_bench.data.build import (
    WINDOW,
    BuildResult,
    SplitMode,
    check_out,
    check_seed,
    finish,
    image_dir_for,
    progress,
    windows_to_samples,
)
from pigeon_bench.errors import UserError

RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIES_COLUMNS = ("movieId", "title", "genres")
LINKS_COLUMNS = ("movieId", "imdbId", "tmdbId")
OVERVIEW_COLUMNS = ("movieId", "overview")
NO_GENRES = "(no genres listed)"
POSTER_SUFFIX = ".jpg"
MIN_RATING, MAX_RATING = 0.5, 5.0  # MovieLens: half stars


def read_csv(path: Path, columns: tuple[str, ...], integers: tuple[str, ...] = (),
             numbers: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV: it must exist and parse and have ``columns``; ``integers`` columns must hold whole
    numbers (read as int64), ``numbers`` columns finite numbers (float64); the other columns are text."""
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read CSV {path}: {str(exc).strip().splitlines()[0]}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns))
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    for col in (*integers, *numbers):
        values = pd.to_numeric(df[col].str.strip(), errors="coerce").astype(np.float64)
        ok = np.isfinite(values)
        if col in integers:
            ok &= (values % 1 == 0) & (values.abs() < 2**53)  # whole, and exact as a float
        if not ok.all():
            row = int(np.flatnonzero(~ok.to_numpy())[0])
            kind = "a whole number" if col in integers else "a number"
            raise UserError(f"{path}: column {col} row {row + 2}: not {kind}: {df[col].iloc[row]!r}")
        df[col] = values.astype(np.int64) if col in integers else values
    return df


def refuse_duplicates(df: pd.DataFrame, key: list[str], path: Path) -> None:
    """One row per ``key``: the first repeat is named with both its rows."""
    repeats = np.flatnonzero(df.duplicated(key).to_numpy())
    if len(repeats):
        values = [df[k].iloc[repeats[0]] for k in key]
        same = np.logical_and.reduce([df[k].to_numpy() == v for k, v in zip(key, values, strict=True)])
        what = ", ".join(f"{k} {v}" for k, v in zip(key, values, strict=True))
        raise UserError(f"{path}: duplicate {what} (rows {np.flatnonzero(same)[0] + 2} and {repeats[0] + 2})")


def split_title(title: str) -> tuple[str, str | None]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); titles without a year are kept whole."""
    m = re.match(r"^(.*?)\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$", title)
    return (m.group(1), m.group(2)) if m else (title.strip(), None)


def movie_semantics(title: str, genres: str, overview: str = "") -> str:
    """The semantics text of a poster: title, year, genres and, when given, the overview."""
    name, year = split_title(title)
    text = f"A poster for the movie {name}" + (f" ({year})" if year else "")
    genre_list = [g.strip().lower() for g in genres.split("|") if g.strip() and g.strip() != NO_GENRES]
    if genre_list:
        text += f"; genres: {', '.join(genre_list)}"
    text += "."
    if overview.strip():
        text += " " + " ".join(overview.split())
    return text


def build_movie(
    raw: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    min_rating: float = 4.0,
    seed: int = 0,
    split_mode: SplitMode = "random",
    overviews: str | Path | None = None,
    relative_paths: bool = False,
    force: bool = False,
) -> BuildResult:
    """Build the movie dataset folder from ml-latest-small (ratings.csv, movies.csv, links.csv under ``raw``).

    With ``images`` (posters named ``<movieId>.jpg``) interactions whose movie has no poster are dropped
    before windowing; without it the paths ``raw/posters/<movieId>.jpg`` are recorded but need not exist.
    ``overviews`` is an optional CSV (movieId, overview) whose text is appended to the semantics. An existing
    different dataset in ``out`` is replaced only with ``force`` (see ``build.install_dataset``).
    """
    from pigeon_bench.scenarios import scenarios

    raw, out = Path(raw), Path(out)
    check_seed(seed)
    if not MIN_RATING <= min_rating <= MAX_RATING:
        raise UserError(f"--min-rating must be within {MIN_RATING:g}..{MAX_RATING:g} (MovieLens ratings), "
                        f"got {min_rating:g}")
    check_out(out)
    if not raw.is_dir():
        raise UserError(f"MovieLens folder not found: {raw}")
    ratings = read_csv(raw / "ratings.csv", RATINGS_COLUMNS, integers=("userId", "movieId", "timestamp"),
                       numbers=("rating",))
    movies = read_csv(raw / "movies.csv", MOVIES_COLUMNS, integers=("movieId",))
    links = read_csv(raw / "links.csv", LINKS_COLUMNS, integers=("movieId",))
    refuse_duplicates(ratings, ["userId", "movieId"], raw / "ratings.csv")
    refuse_duplicates(movies, ["movieId"], raw / "movies.csv")
    refuse_duplicates(links, ["movieId"], raw / "links.csv")
    overview_by_movie: dict[int, str] = {}
    if overviews is not None:
        ov = read_csv(Path(overviews), OVERVIEW_COLUMNS, integers=("movieId",))
        refuse_duplicates(ov, ["movieId"], Path(overviews))
        overview_by_movie = dict(zip(ov["movieId"], ov["overview"], strict=True))
    if ratings.empty:
        raise UserError(f"{raw / 'ratings.csv'} holds no ratings")

    dropped: dict[str, int] = {}
    liked = ratings[ratings["rating"] >= min_rating]
    if liked.empty:
        raise UserError(f"--min-rating {min_rating:g} keeps none of the {len(ratings):,} ratings (the "
                        f"highest is {ratings['rating'].max():g})")
    known = liked["movieId"].isin(set(movies["movieId"]))
    dropped["interactions_unknown_movie"] = int((~known).sum())
    ratings = liked[known]
    if ratings.empty:
        raise UserError(f"no rating >= {min_rating:g} is of a movie listed in {raw / 'movies.csv'}")

    poster_dir = Path(images) if images is not None else raw / "posters"
    if images is not None:
        if not poster_dir.is_dir():
            raise UserError(f"poster folder not found: {poster_dir}")
        # Only canonical names: 0042.jpg would be recorded as 42.jpg, which is not there.
        available = {int(p.stem) for p in poster_dir.glob(f"*{POSTER_SUFFIX}")
                     if p.stem.isascii() and p.stem.isdigit() and str(int(p.stem)) == p.stem}
        has_poster = ratings["movieId"].isin(available)
        dropped["interactions_without_poster"] = int((~has_poster).sum())
        dropped["movies_without_poster"] = int(ratings.loc[~has_poster, "movieId"].nunique())
        ratings = ratings[has_poster]
        if ratings.empty:
            raise UserError(f"--images {poster_dir}: no movie rated >= {min_rating:g} has a poster there "
                            f"(<movieId>{POSTER_SUFFIX})")

    # Sort by user, then timestamp; ties keep their order in ratings.csv (explicit last key).
    order = np.lexsort((np.arange(len(ratings)), ratings["timestamp"].to_numpy(),
                        ratings["userId"].to_numpy()))
    ratings = ratings.iloc[order]
    sequences = [
        (str(user), [str(m) for m in group["movieId"].tolist()])
        for user, group in progress(ratings.groupby("userId", sort=True), "windowing users",
                                    total=ratings["userId"].nunique())
    ]
    samples = windows_to_samples(sequences, scenarios.get("movie").instruction, split_mode, seed)

    movies = movies[movies["movieId"].isin(set(ratings["movieId"].tolist()))]
    movies = movies.merge(links[list(LINKS_COLUMNS)], on="movieId", how="left")
    poster_prefix = image_dir_for(poster_dir, out, relative_paths)
    items = pd.DataFrame({
        "item_id": movies["movieId"].astype(str),
        "image_path": [os.path.join(poster_prefix, f"{m}{POSTER_SUFFIX}") for m in movies["movieId"]],
        "semantics": [movie_semantics(t, g, overview_by_movie.get(m, ""))
                      for m, t, g in zip(movies["movieId"], movies["title"], movies["genres"], strict=True)],
        "title": movies["title"].astype(str),
        "genres": movies["genres"].astype(str),
        "imdb_id": movies["imdbId"].fillna("").astype(str),
        "tmdb_id": movies["tmdbId"].fillna("").astype(str),
    })
    most = max((len(seq) for _, seq in sequences), default=0)
    no_samples = (f"no user has {WINDOW} or more ratings >= {min_rating:g}"
                  + (" of movies with a poster in --images" if images is not None else "")
                  + f" (the most any user has is {most})")
    return finish("movie", out, items, samples, dropped, no_samples=no_samples, force=force,
                  split_mode=split_mode, seed=seed, min_rating=float(min_rating), source="ml-latest-small",
                  posters_required=images is not None)
