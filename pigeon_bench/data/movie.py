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
    BuildResult,
    SplitMode,
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


def read_csv(path: Path, columns: tuple[str, ...], numeric: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV: it must exist and parse, have ``columns``, and hold numbers in ``numeric`` columns."""
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={c: str for c in columns if c not in numeric})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read CSV {path}: {str(exc).strip().splitlines()[0]}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns))
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {found})")
    for col in numeric:
        if pd.api.types.is_numeric_dtype(df[col]) and not df[col].isna().any():
            continue
        bad = pd.to_numeric(df[col], errors="coerce").isna().to_numpy()
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: column {col} row {row + 2}: not a number: {str(df[col].iloc[row])!r}")
    return df


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
) -> BuildResult:
    """Build the movie dataset folder from ml-latest-small (ratings.csv, movies.csv, links.csv under ``raw``).

    With ``images`` (posters named ``<movieId>.jpg``) interactions whose movie has no poster are dropped
    before windowing; without it the paths ``raw/posters/<movieId>.jpg`` are recorded but need not exist.
    ``overviews`` is an optional CSV (movieId, overview) whose text is appended to the semantics.
    """
    from pigeon_bench.scenarios import scenarios

    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise UserError(f"MovieLens folder not found: {raw}")
    ratings = read_csv(raw / "ratings.csv", RATINGS_COLUMNS, numeric=RATINGS_COLUMNS)
    movies = read_csv(raw / "movies.csv", MOVIES_COLUMNS, numeric=("movieId",))
    links = read_csv(raw / "links.csv", LINKS_COLUMNS, numeric=("movieId",))
    duplicates = movies["movieId"][movies["movieId"].duplicated()]
    if len(duplicates):
        raise UserError(f"{raw / 'movies.csv'}: duplicate movieId {int(duplicates.iloc[0])}")
    overview_by_movie: dict[int, str] = {}
    if overviews is not None:
        ov = read_csv(Path(overviews), OVERVIEW_COLUMNS, numeric=("movieId",))
        overview_by_movie = dict(zip(ov["movieId"].astype(np.int64), ov["overview"], strict=True))

    dropped: dict[str, int] = {}
    ratings = ratings[ratings["rating"] >= min_rating]
    for col in ("userId", "movieId", "timestamp"):
        ratings[col] = ratings[col].astype(np.int64)
    known = ratings["movieId"].isin(set(movies["movieId"].astype(np.int64)))
    dropped["interactions_unknown_movie"] = int((~known).sum())
    ratings = ratings[known]

    poster_dir = Path(images) if images is not None else raw / "posters"
    if images is not None:
        if not poster_dir.is_dir():
            raise UserError(f"poster folder not found: {poster_dir}")
        available = {int(p.stem) for p in poster_dir.glob(f"*{POSTER_SUFFIX}") if p.stem.isdigit()}
        has_poster = ratings["movieId"].isin(available)
        dropped["interactions_without_poster"] = int((~has_poster).sum())
        dropped["movies_without_poster"] = int(ratings.loc[~has_poster, "movieId"].nunique())
        ratings = ratings[has_poster]

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

    movies["movieId"] = movies["movieId"].astype(np.int64)
    movies = movies[movies["movieId"].isin(set(ratings["movieId"].tolist()))]
    links["movieId"] = links["movieId"].astype(np.int64)
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
    return finish("movie", out, items, samples, dropped, split_mode=split_mode, seed=seed,
                  min_rating=float(min_rating), source="ml-latest-small",
                  posters_required=images is not None)
