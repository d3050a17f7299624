"""Oracle and Other user: the demo renderer's known answers, offered only where the dataset carries the demo
factors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pigeon_bench.cli import app
from pigeon_bench.data import Dataset
from pigeon_bench.data.demo import FACTOR_COLUMNS, demo_dataset, draw_poster, draw_sticker, poster_rng
from pigeon_bench.errors import UserError
from pigeon_bench.generation import build_request, create_generator, generators
from pigeon_bench.runs import Experiment, run


def answers(method: str, data: Dataset, n: int = 8):
    gen = create_generator(method, "tiny", dataset=data)
    requests = [build_request(data, s, run_seed=0) for s in data.samples("test", n)]
    return requests, gen.generate(requests)


def test_sticker_oracle_draws_the_users_theme_with_the_references_emotion_and_caption():
    data = demo_dataset("sticker")
    items = data.items_df.set_index("item_id")
    requests, results = answers("oracle", data)
    for r, res in zip(requests, results, strict=True):
        user = items.loc[r.sample.history[-1]]
        assert {items.loc[h, "theme"] for h in r.sample.history} == {user["theme"]}
        ref = items.loc[r.sample.reference_id]
        assert ref["theme"] != user["theme"]  # test references come from another theme
        expected = draw_sticker(user["character"], user["palette"], user["style"], ref["emotion"],
                                ref["text"], r.reference_image.width, np.random.default_rng(r.seed))
        assert np.array_equal(np.asarray(res.image), np.asarray(expected))
        assert res.metadata["theme"] == (user["character"], user["palette"], user["style"])


def test_sticker_other_user_is_a_stranger_showing_the_references_emotion():
    data = demo_dataset("sticker")
    items = data.items_df.set_index("item_id")
    requests, results = answers("other-user", data)
    themes = {tuple(t) for t in items[["character", "palette", "style"]].to_numpy()}
    for r, res in zip(requests, results, strict=True):
        user = tuple(items.loc[r.sample.history[-1], ["character", "palette", "style"]])
        ref = items.loc[r.sample.reference_id]
        other = res.metadata["theme"]
        assert other in themes and other != tuple(ref[["character", "palette", "style"]])
        assert all(a != b for a, b in zip(other, user, strict=True))  # shares no factor with the user
        expected = draw_sticker(*other, ref["emotion"], ref["text"], r.reference_image.width,
                                np.random.default_rng(r.seed))
        assert np.array_equal(np.asarray(res.image), np.asarray(expected))
    assert len({res.metadata["theme"] for res in results}) > 1  # a seeded choice, not one fixed theme


def test_movie_oracle_and_other_user_draw_the_reference_poster_in_favourite_and_foreign_genres():
    data = demo_dataset("movie")
    items = data.items_df.set_index("item_id")
    requests, oracle = answers("oracle", data)
    _, other = answers("other-user", data)
    for r, mine, theirs in zip(requests, oracle, other, strict=True):
        first = Counter(items.loc[h, "genres"].split("|")[0] for h in r.sample.history)
        favourites = set(mine.metadata["genres"])
        assert len(favourites) == min(2, len(first))
        assert all(first[g] >= first[other_g] for g in favourites for other_g in set(first) - favourites)
        ref = items.loc[r.sample.reference_id]
        if ref["genres"].split("|")[0] in favourites:
            assert mine.metadata["genres"][0] == ref["genres"].split("|")[0]
        assert not favourites & set(theirs.metadata["genres"])
        for res in (mine, theirs):
            expected = draw_poster(ref["title"], res.metadata["genres"], r.reference_image.height,
                                   poster_rng(int(ref["demo_seed"]), int(r.sample.reference_id)))
            assert np.array_equal(np.asarray(res.image), np.asarray(expected))
            assert res.image.size == r.reference_image.size


@pytest.fixture
def plain_sticker(tmp_path: Path) -> Path:
    """The demo world's stickers built by the ordinary SER30K builder: no demo factor columns."""
    world = Path(demo_dataset("sticker").root).parent / "world" / "ser30k"
    out = tmp_path / "plain" / "sticker"
    result = CliRunner().invoke(app, ["data", "build", "sticker", "--raw", str(world), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not set(FACTOR_COLUMNS["sticker"]) & set(Dataset(out).items_df.columns)
    return out


@pytest.mark.parametrize("method", ["oracle", "other-user"])
def test_elsewhere_they_are_refused_in_one_line(plain_sticker, tmp_path, method):
    with pytest.raises(UserError, match="not a demo dataset") as caught:
        create_generator(method, "tiny", dataset=plain_sticker)
    assert "\n" not in str(caught.value) and method in str(caught.value)
    with pytest.raises(UserError, match="no dataset was given"):
        create_generator(method, "tiny")
    result = CliRunner().invoke(app, ["generate", "--data", str(plain_sticker), "--method", method,
                                      "--out", str(tmp_path / method), "--profile", "tiny"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / method).exists()
    cls = generators.get(method)
    assert cls.unavailable(Dataset(plain_sticker)) and cls.unavailable(demo_dataset("sticker")) is None


def test_run_leaves_them_out_on_other_datasets_unless_named(plain_sticker, tmp_path, monkeypatch):
    monkeypatch.setattr(generators, "names", lambda: ["grd", "oracle", "other-user"])
    exp = Experiment(scenario="sticker", data=plain_sticker, limit=2, out=tmp_path, profile="tiny")
    text, _ = run(exp, log=lambda _: None)
    assert "| Grd |" in text and "Oracle" not in text
    assert sorted(p.name for p in (tmp_path / "sticker").iterdir() if p.is_dir()) == ["grd"]
    with pytest.raises(UserError, match="not a demo dataset"):
        run(Experiment(scenario="sticker", data=plain_sticker, limit=2, out=tmp_path / "named",
                       profile="tiny", methods=["oracle"]), log=lambda _: None)
