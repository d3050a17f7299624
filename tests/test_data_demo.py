"""The offline demo world: deterministic, learnable preferences, both builders run on it, cached datasets."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pigeon_bench.cli import app
from pigeon_bench.data import Dataset
from pigeon_bench.data.demo import (
    DEMO_VERSION,
    FACTOR_COLUMNS,
    DemoSizes,
    demo_factors,
    ensure_demo_datasets,
    theme_factors,
    theme_name,
    write_demo_world,
)
from pigeon_bench.errors import UserError
from pigeon_bench.scenarios import scenarios

SMALL = DemoSizes(themes=6, users=5, movies_per_genre=3, image_size=48, posters_missing=1)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    write_demo_world(out, seed=1, sizes=SMALL)
    return out


def test_layouts_and_determinism(world, tmp_path):
    stickers, movies = world / "ser30k", world / "ml-latest-small"
    assert {p.name for p in (stickers / "Annotations").iterdir()} == {"train.json", "val.json", "test.json"}
    themes = sorted(p.name for p in (stickers / "Images").iterdir())
    assert len(themes) == SMALL.themes
    assert all(8 <= len(list((stickers / "Images" / t).iterdir())) <= 14 for t in themes)
    assert Image.open(next((stickers / "Images" / themes[0]).iterdir())).size == (48, 48)
    for name in ("ratings.csv", "movies.csv", "links.csv"):
        assert (movies / name).is_file()
    n_movies = len(pd.read_csv(movies / "movies.csv"))
    assert n_movies == 8 * SMALL.movies_per_genre
    assert len(list((movies / "posters").glob("*.jpg"))) == n_movies - SMALL.posters_missing

    write_demo_world(tmp_path / "again", seed=1, sizes=SMALL)
    assert files(tmp_path / "again") == files(world)
    write_demo_world(tmp_path / "other", seed=2, sizes=SMALL)
    assert (tmp_path / "other" / "ml-latest-small" / "ratings.csv").read_bytes() != \
        (movies / "ratings.csv").read_bytes()


def test_sticker_themes_are_recognisable(world):
    """A theme's stickers share character, palette and style: a colour histogram finds a sticker's theme."""
    feats, labels = [], []
    for p in sorted((world / "ser30k" / "Images").glob("*/*.png")):
        a = np.asarray(Image.open(p).convert("RGB")) // 64
        feats.append(np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64))
        labels.append(p.parent.name)
    f, lab = np.array(feats, dtype=float), np.array(labels)
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (lab[d.argmin(1)] == lab).mean() >= 0.75  # chance: 1/6


def test_movie_users_prefer_two_genres(world):
    raw = world / "ml-latest-small"
    ratings = pd.read_csv(raw / "ratings.csv")
    primary = pd.read_csv(raw / "movies.csv").set_index("movieId")["genres"].str.split("|").str[0]
    liked = ratings[ratings.rating >= 4].assign(genre=lambda d: d.movieId.map(primary))
    for _, group in liked.groupby("userId"):
        top2 = group["genre"].value_counts().head(2).sum()
        assert top2 / len(group) >= 0.7  # 2 of 8 genres hold most of what a user likes (chance: ~1/4)
    disliked = ratings[ratings.rating < 4]
    assert len(disliked) > 0


def test_both_builders_run_on_the_demo_world(world, tmp_path):
    runner = CliRunner()
    sticker = runner.invoke(app, ["data", "build", "sticker", "--raw", str(world / "ser30k"),
                                  "--out", str(tmp_path / "sticker")])
    assert sticker.exit_code == 0, sticker.output
    raw = world / "ml-latest-small"
    movie = runner.invoke(app, ["data", "build", "movie", "--raw", str(raw), "--out", str(tmp_path / "movie"),
                                "--images", str(raw / "posters")])
    assert movie.exit_code == 0, movie.output
    s, m = Dataset(tmp_path / "sticker"), Dataset(tmp_path / "movie")
    assert s.stats["users"] == SMALL.themes and s.stats["splits"]["test"] >= 1
    assert m.stats["dropped"]["movies_without_poster"] == SMALL.posters_missing
    assert all(m.image_path(i).is_file() for i in m.items)
    before = files(tmp_path / "movie")
    runner.invoke(app, ["data", "build", "movie", "--raw", str(raw), "--out", str(tmp_path / "movie"),
                        "--images", str(raw / "posters")])
    assert files(tmp_path / "movie") == before


def test_ensure_demo_datasets_builds_once_and_concurrently(tmp_path):
    results: list[dict] = []
    def build() -> None:
        results.append(ensure_demo_datasets(tmp_path, seed=0, sizes=SMALL))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    paths = results[0]
    base = tmp_path / "demo" / f"v{DEMO_VERSION}"
    # One folder, no temporary ones left behind.
    assert [p.name for p in base.iterdir() if p.is_dir()] == [paths["sticker"].parent.name]
    stamp = (paths["movie"] / "stats.json").stat().st_mtime_ns
    assert ensure_demo_datasets(tmp_path, seed=0, sizes=SMALL) == paths
    assert (paths["movie"] / "stats.json").stat().st_mtime_ns == stamp
    for name in scenarios.names():
        data = Dataset(paths[scenarios.get(name).demo_key])
        assert data.scenario == name
        # Image paths are relative to the dataset folder, so the cache can move.
        sample = data.samples("test")[0]
        assert not Path(data.item(sample.target_id).image_path).is_absolute()
        assert data.image_path(sample.reference_id).is_file()


def test_default_demo_sizes_give_a_small_test_split(tmp_path):
    """The embedded default: roughly 16-24 test samples per scenario (keeps `pigeon-bench run` short)."""
    paths = ensure_demo_datasets(tmp_path)
    for name, folder in paths.items():
        stats = Dataset(folder).stats
        assert 16 <= stats["splits"]["test"] <= 24, (name, stats)


def test_impossible_demo_sizes_are_refused():
    with pytest.raises(UserError, match=r"demo movies-per-genre must be 2\.\.176, got 177"):
        DemoSizes(movies_per_genre=177)  # more than the title templates can name: an endless loop before
    with pytest.raises(UserError, match=r"demo themes must be 2\.\.256, got 300"):
        DemoSizes(themes=300)  # silently 256 before
    with pytest.raises(UserError, match=r"demo image-size must be 32\.\.2048, got 100000"):
        DemoSizes(image_size=100_000)
    with pytest.raises(UserError, match=r"demo posters-missing must be 0\.\.15, got 16"):
        DemoSizes(movies_per_genre=2, posters_missing=16)
    assert DemoSizes(movies_per_genre=176).movies_per_genre == 176
    for args, match in ((["--users", "1"], "demo users must be 2 or more, got 1"),
                        (["--seed", "-1"], "--seed must be 0 or more, got -1")):
        result = CliRunner().invoke(app, ["data", "demo", "--out", "unused", *args])
        assert result.exit_code == 2 and result.stderr.strip() == f"error: {match}", result.output


TINY = DemoSizes(themes=2, users=2, movies_per_genre=3, image_size=32, posters_missing=1)


def test_a_demo_world_replaces_an_earlier_one_whole(tmp_path):
    write_demo_world(tmp_path, sizes=TINY)
    assert (tmp_path / "ml-latest-small" / "posters" / "16.jpg").is_file()  # 24 movies, the last lacks one
    smaller = dataclasses.replace(TINY, movies_per_genre=2)
    write_demo_world(tmp_path, sizes=smaller)
    posters = tmp_path / "ml-latest-small" / "posters"
    assert sorted(int(p.stem) for p in posters.iterdir()) == list(range(1, 16))  # no poster left from before
    write_demo_world(tmp_path / "fresh", sizes=smaller)
    assert files(tmp_path / "fresh" / "ml-latest-small") == files(tmp_path / "ml-latest-small")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "ml-latest-small", "ser30k"]


def test_a_demo_world_never_replaces_other_data(tmp_path):
    real = tmp_path / "ser30k" / "Annotations"
    real.mkdir(parents=True)
    (real / "train.json").write_text("{}")
    result = CliRunner().invoke(app, ["data", "demo", "--out", str(tmp_path), "--themes", "2"])
    err = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in err, result.output
    assert err.endswith("ser30k holds data that is not a demo world (no pigeon-bench-demo.json): choose "
                        "another --out")
    assert (real / "train.json").read_text() == "{}" and not (tmp_path / "ml-latest-small").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out .*file is a file, not a folder"):
        write_demo_world(tmp_path / "file", sizes=TINY)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ml-latest-small").write_text("mine")
    with pytest.raises(UserError, match="ml-latest-small holds data that is not a demo world"):
        write_demo_world(tmp_path / "other", sizes=TINY)
    assert (tmp_path / "other" / "ml-latest-small").read_text() == "mine"


def test_stickers_show_their_emotion_whatever_the_theme(world):
    """An emotion's glow and mark: a sticker's nearest neighbour by colour histogram among the stickers of
    the other themes mostly shows the same emotion."""
    annotations = {(a["topic"], a["file_name"]): a["anno"]
                   for split in ("train", "val", "test")
                   for a in json.loads((world / "ser30k" / "Annotations" / f"{split}.json").read_text())[
                       "annotations"]}
    feats, themes, emotions = [], [], []
    for p in sorted((world / "ser30k" / "Images").glob("*/*.png")):
        a = np.asarray(Image.open(p).convert("RGB")) // 32
        feats.append(np.bincount((a[..., 0] * 64 + a[..., 1] * 8 + a[..., 2]).ravel(), minlength=512))
        themes.append(p.parent.name)
        emotions.append(annotations[(p.parent.name, p.name)])
    f, th, em = np.array(feats, dtype=float), np.array(themes), np.array(emotions)
    f /= f.sum(1, keepdims=True)
    d = np.abs(f[:, None] - f[None]).sum(-1)
    d[th[:, None] == th[None]] = np.inf  # neighbours from other themes only
    assert (em[d.argmin(1)] == em).mean() >= 0.5  # chance: 1/7


def test_demo_items_carry_their_factors_beside_the_builders_columns(tmp_path):
    paths = ensure_demo_datasets(tmp_path, seed=3, sizes=SMALL)
    world = paths["sticker"].parent / "world"
    posters = world / "ml-latest-small" / "posters"
    runner = CliRunner()
    for scenario, raw, extra in (("sticker", world / "ser30k", []),
                                 ("movie", world / "ml-latest-small", ["--images", str(posters)])):
        plain = tmp_path / "plain" / scenario
        result = runner.invoke(app, ["data", "build", scenario, "--raw", str(raw), "--out", str(plain),
                                     "--seed", "3", *extra])
        assert result.exit_code == 0, result.output
        demo, built = Dataset(paths[scenario]), Dataset(plain)
        assert list(demo.items_df.columns) == [*built.items_df.columns, *FACTOR_COLUMNS[scenario]]
        same = [c for c in built.items_df.columns if c != "image_path"]  # the demo's paths are relative
        pd.testing.assert_frame_equal(demo.items_df[same], built.items_df[same])
        assert (paths[scenario] / "samples.parquet").read_bytes() == (plain / "samples.parquet").read_bytes()
        assert (demo.items_df["demo_seed"] == 3).all()
        assert demo_factors(demo) is not None and demo_factors(built) is None
    items = Dataset(paths["sticker"]).items_df
    for row in items.itertuples():
        assert theme_factors(row.theme) == (row.character, row.palette, row.style)
        assert row.theme.endswith(theme_name(0, row.character, row.palette, row.style)[2:])
