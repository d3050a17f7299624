"""The movie builder on hand-made MovieLens files, its bad-input paths (CLI), the shared ml-latest-small."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pandas as pd
from PIL import Image
from test_data_build import folder_bytes, kill_at
from typer.testing import CliRunner

from pigeon_bench.cli import app
from pigeon_bench.data import Dataset
from pigeon_bench.data.movie import build_movie, movie_semantics

# user 1: exactly 5 liked movies (no sample); user 2: exactly 6, out of time order in the file;
# user 3: 8 liked movies, a timestamp tie (33 is listed before 32) and a low rating in between.
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,1
1,2,4.0,2
1,3,5.0,3
1,4,4.5,4
1,5,4.0,5
1,6,3.0,6
2,21,4.0,500
2,20,5.0,100
2,22,4.5,300
2,23,4.0,400
2,24,4.0,200
2,25,4.0,600
3,30,4.0,10
3,31,4.0,20
3,99,2.0,25
3,33,4.0,30
3,32,4.0,30
3,34,5.0,40
3,35,4.0,50
3,36,4.0,60
3,37,4.0,70
"""
MOVIE_IDS = [1, 2, 3, 4, 5, 6, *range(20, 26), *range(30, 38), 99]


def write_movielens(root: Path, posters_missing: tuple[int, ...] = (34, 99)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(RATINGS)
    movies = pd.DataFrame({"movieId": MOVIE_IDS, "title": [f"Movie {m} (19{m:02d})" for m in MOVIE_IDS],
                           "genres": ["Action|Comedy" if m % 2 else "(no genres listed)" for m in MOVIE_IDS]})
    movies.to_csv(root / "movies.csv", index=False)
    pd.DataFrame({"movieId": MOVIE_IDS, "imdbId": [f"{m:07d}" for m in MOVIE_IDS],
                  "tmdbId": MOVIE_IDS}).to_csv(root / "links.csv", index=False)
    (root / "posters").mkdir(exist_ok=True)
    for m in MOVIE_IDS:
        if m not in posters_missing:
            Image.new("RGB", (8, 12), (m, 0, 0)).save(root / "posters" / f"{m}.jpg")
    return root


def test_windows_timestamp_ties_and_counts(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    result = build_movie(raw, tmp_path / "out")
    data = Dataset(tmp_path / "out")
    samples = data.samples()
    assert [(s.user_id, s.history, s.target_id) for s in samples] == [
        ("2", ("20", "24", "22", "23", "21"), "25"),
        ("3", ("30", "31", "33", "32", "34"), "35"),
        ("3", ("31", "33", "32", "34", "35"), "36"),
        ("3", ("33", "32", "34", "35", "36"), "37"),
    ]
    assert all(s.reference_id == s.target_id for s in samples)
    assert all(s.instruction.startswith("generate a movie poster") for s in samples)
    # Table-4 counting: user 1 (5 interactions) and its movies appear in no sample.
    assert (result.stats["users"], result.stats["items"], result.stats["samples"]) == (2, 14, 4)
    assert result.stats["splits"] == {"train": 4, "valid": 0, "test": 0}
    assert data.stats == result.stats and data.scenario == "movie"
    assert sorted(data.items, key=int) == [str(m) for m in [*range(20, 26), *range(30, 38)]]
    # Without --images the poster paths are recorded (absolute) but need not exist.
    assert data.image_path("34") == (raw / "posters" / "34.jpg").resolve()
    assert data.items["21"].semantics == "A poster for the movie Movie 21 (1921); genres: action, comedy."
    assert data.items_df.set_index("item_id").loc["20", "genres"] == "(no genres listed)"


def test_images_drop_interactions_without_poster_before_windowing(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    result = build_movie(raw, tmp_path / "out", images=raw / "posters")
    assert result.dropped == {"interactions_unknown_movie": 0, "interactions_without_poster": 1,
                              "movies_without_poster": 1}
    samples = Dataset(tmp_path / "out").samples()
    # Movie 34 is gone from user 3's sequence, so 7 interactions give 2 windows.
    assert [(s.history, s.target_id) for s in samples if s.user_id == "3"] == [
        (("30", "31", "33", "32", "35"), "36"), (("31", "33", "32", "35", "36"), "37"),
    ]
    assert all(Dataset(tmp_path / "out").image_path(i).is_file() for i in Dataset(tmp_path / "out").items)


def test_min_rating_and_overviews(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    (tmp_path / "ov.csv").write_text('movieId,overview\n31,"A  long\nstory."\n')
    result = build_movie(raw, tmp_path / "out", min_rating=2.0, overviews=tmp_path / "ov.csv")
    data = Dataset(tmp_path / "out")
    assert result.stats["users"] == 3  # user 1 now has 6 interactions
    assert "99" in data.items  # the low rating is kept
    assert data.items["31"].semantics.endswith("genres: action, comedy. A long story.")


def test_rebuild_is_byte_identical(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    build_movie(raw, tmp_path / "a", seed=5)
    build_movie(raw, tmp_path / "b", seed=5)
    build_movie(raw, tmp_path / "a", seed=5)  # over an existing build
    for name in ("items.parquet", "samples.parquet", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert not list((tmp_path / "a").glob(".*")), "temporary files left behind"


def test_title_parsing():
    assert movie_semantics("Toy Story (1995)", "Adventure|Animation") == \
        "A poster for the movie Toy Story (1995); genres: adventure, animation."
    assert movie_semantics("Babylon 5", "(no genres listed)") == "A poster for the movie Babylon 5."


def user_error(args: list[str], match: str) -> None:
    """The CLI exits 2 with one line naming the problem and no traceback."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert re.search(match, err), err
    assert "Traceback" not in result.output


def test_cli_build_and_bad_inputs(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    ok = CliRunner().invoke(app, ["data", "build", "movie", "--raw", str(raw), "--out", str(tmp_path / "o"),
                                  "--images", str(raw / "posters"), "--split-mode", "temporal"])
    assert ok.exit_code == 0, ok.output
    assert "interactions without poster" in ok.output
    assert Dataset(tmp_path / "o").stats["split_mode"] == "temporal"

    build = ["data", "build", "movie", "--out", tmp_path / "x", "--raw"]
    user_error([*build, tmp_path / "nope"], "MovieLens folder not found")
    user_error([*build, raw, "--images", tmp_path / "nope"], "poster folder not found")
    user_error([*build, raw, "--split-mode", "future"], "unknown split mode 'future'")
    user_error([*build, raw, "--overviews", tmp_path / "nope.csv"], "missing file: .*nope.csv")
    user_error(["data", "build", "poster", "--raw", raw], r"unknown scenario 'poster' \(known: movie")

    (raw / "links.csv").unlink()
    user_error([*build, raw], "missing file: .*links.csv")
    write_movielens(raw)
    (raw / "ratings.csv").write_text("user,movie,rating,timestamp\n1,1,4,1\n")
    user_error([*build, raw], "ratings.csv: missing column\\(s\\) userId, movieId")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,good,1\n")
    user_error([*build, raw], "ratings.csv: column rating row 2: not a number: 'good'")
    (raw / "ratings.csv").write_text('userId,movieId,rating,timestamp\n1,1,4,"1\n')
    user_error([*build, raw], "cannot read CSV .*ratings.csv")
    (raw / "ratings.csv").write_bytes(b"")
    user_error([*build, raw], "cannot read CSV .*ratings.csv")
    (raw / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    user_error([*build, raw], "no samples")
    (raw / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n1,B,Drama\n")
    user_error([*build, raw], "duplicate movieId 1")


def test_min_rating_is_checked_and_named_when_it_filters_everything(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    build = ["data", "build", "movie", "--raw", raw, "--out", tmp_path / "x", "--min-rating"]
    for bad in ("10", "-5", "nan", "0.4"):
        user_error([*build, bad], rf"--min-rating must be within 0\.5\.\.5 \(MovieLens ratings\), got {bad}")
    (raw / "ratings.csv").write_text(RATINGS.replace("5.0", "4.5"))
    user_error([*build, "5"], r"--min-rating 5 keeps none of the 21 ratings \(the highest is 4\.5\)")
    user_error([*build, "4.5"], r"no samples: no user has 6 or more ratings >= 4\.5 \(the most any user has "
                                r"is 2\)")
    user_error([*build, "4", "--images", raw / "empty"], "poster folder not found")
    (raw / "empty").mkdir()
    user_error([*build, "4", "--images", raw / "empty"], "--images .*empty: no movie rated >= 4 has a poster")
    assert not (tmp_path / "x").exists()


def test_degenerate_csvs_are_one_line_errors(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    build = ["data", "build", "movie", "--raw", raw, "--out", tmp_path / "x"]
    header = "userId,movieId,rating,timestamp\n"
    cases = {
        header: r"ratings\.csv holds no ratings",
        header + "1.5,1,4,1\n": r"ratings\.csv: column userId row 2: not a whole number: '1\.5'",
        header + "1,99999999999999999999,4,1\n": "column movieId row 2: not a whole number",
        header + "1,1,inf,1\n": "column rating row 2: not a number: 'inf'",
        header + "1,1,,1\n": "column rating row 2: not a number: ''",
        header + "1,2,4,1\n1,3,4,2\n1,2,5,3\n": r"ratings\.csv: duplicate userId 1, movieId 2 \(rows 2 and "
                                                 r"4\)",
    }
    for text, match in cases.items():
        (raw / "ratings.csv").write_text(text)
        user_error(build, match)
    (raw / "ratings.csv").write_text(RATINGS)
    (raw / "movies.csv").write_text("movieId,title,genres\n")
    user_error(build, r"no rating >= 4 is of a movie listed in .*movies\.csv")
    write_movielens(raw)
    (raw / "links.csv").write_text("movieId,imdbId,tmdbId\n1,1,1\n1,2,2\n")
    user_error(build, r"links\.csv: duplicate movieId 1 \(rows 2 and 3\)")
    (raw / "links.csv").write_text("movieId,imdbId,tmdbId\n")  # no links at all: the ids stay blank
    ok = CliRunner().invoke(app, [str(a) for a in build])
    assert ok.exit_code == 0, ok.output
    assert set(Dataset(tmp_path / "x").items_df["imdb_id"]) == {""}
    (tmp_path / "ov.csv").write_text("movieId,overview\n31,a\n31,b\n")
    user_error([*build, "--overviews", tmp_path / "ov.csv", "--force"], r"ov\.csv: duplicate movieId 31")
    user_error([*build, "--seed", "-1"], "--seed must be 0 or more, got -1")


def test_only_canonical_poster_names_count(tmp_path):
    raw = write_movielens(tmp_path / "ml", posters_missing=(21,))
    Image.new("RGB", (8, 12)).save(raw / "posters" / "0021.jpg")  # would be recorded as 21.jpg
    build_movie(raw, tmp_path / "out", images=raw / "posters")
    data = Dataset(tmp_path / "out")
    assert "21" not in data.items
    assert all(data.image_path(i).is_file() for i in data.items)


def test_building_over_a_dataset_needs_force(tmp_path):
    raw = write_movielens(tmp_path / "ml")
    build = ["data", "build", "movie", "--raw", str(raw), "--out", str(tmp_path / "d")]
    assert CliRunner().invoke(app, build).exit_code == 0
    before = folder_bytes(tmp_path / "d")
    same = CliRunner().invoke(app, build)
    assert same.exit_code == 0 and "already holds this exact movie dataset: nothing written" in same.output
    user_error([*build, "--seed", "1"], r"--out .*d already holds a different dataset: pass --force")
    assert folder_bytes(tmp_path / "d") == before
    forced = CliRunner().invoke(app, [*build, "--seed", "1", "--force"])
    assert forced.exit_code == 0 and Dataset(tmp_path / "d").stats["seed"] == 1
    user_error(["data", "build", "movie", "--raw", raw, "--out", raw, "--force"],
               r"--out .*ml holds 4 file\(s\) that are not part of a dataset")
    assert (raw / "ratings.csv").is_file()


def test_a_full_disk_is_one_line_naming_the_folder_and_nothing_changes(tmp_path, monkeypatch):
    raw = write_movielens(tmp_path / "ml")
    build = ["data", "build", "movie", "--raw", str(raw), "--out", str(tmp_path / "d")]
    full = (f"error: cannot write the dataset folder {tmp_path / 'd'}: No space left on device; nothing was "
            "changed")

    def fails(args: list[str]) -> None:
        with monkeypatch.context() as m:
            kill_at(m, "samples.parquet", OSError(errno.ENOSPC, "No space left on device"))
            result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.stderr.strip() == full, result.output

    fails(build)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml"]  # no half-written folder
    assert CliRunner().invoke(app, build).exit_code == 0
    before = folder_bytes(tmp_path / "d")
    fails([*build, "--seed", "1", "--force"])
    assert folder_bytes(tmp_path / "d") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "ml"]


def test_shared_ml_latest_small(shared_dir, tmp_path):
    """The real ml-latest-small (2018 release): Table-4 counts, with and without the 300 shared posters."""
    raw = shared_dir / "data" / "movielens" / "ml-latest-small"
    full = build_movie(raw, tmp_path / "full")
    assert (full.stats["users"], full.stats["items"], full.stats["samples"]) == (599, 6298, 45547)
    posters = build_movie(raw, tmp_path / "posters", images=shared_dir / "data" / "movielens" / "posters")
    # shared/data/SOURCES.md counted 519 users and 14,803 windows over the 300 posters independently.
    assert (posters.stats["users"], posters.stats["items"], posters.stats["samples"]) == (519, 300, 14803)
    # The first window of user 1 is its 6 earliest ratings >= 4 (stable on timestamp ties).
    ratings = pd.read_csv(raw / "ratings.csv")
    first = ratings[(ratings.userId == 1) & (ratings.rating >= 4)].sort_values("timestamp", kind="stable")
    sample = Dataset(tmp_path / "full").samples()[0]
    assert [*sample.history, sample.target_id] == [str(m) for m in first.movieId.head(6)]
