"""Windowing, 8:1:1 splits (random and temporal), other-theme references and the scenario registry."""

from __future__ import annotations

import pandas as pd
import pytest

from pigeon_bench.data.build import (
    assign_splits,
    pick_other_group_references,
    sliding_windows,
    split_sizes,
    windows_to_samples,
)
from pigeon_bench.errors import UserError
from pigeon_bench.scenarios import scenarios

ORDER = {"train": 0, "valid": 1, "test": 2}


def test_sliding_windows_step_one_history_oldest_first():
    assert sliding_windows(list("abcde")) == []  # exactly 5 interactions: no sample
    assert sliding_windows(list("abcdef")) == [(tuple("abcde"), "f")]
    assert sliding_windows(list("abcdefgh")) == [
        (tuple("abcde"), "f"), (tuple("bcdef"), "g"), (tuple("cdefg"), "h"),
    ]


@pytest.mark.parametrize(("n", "expected"), [(0, (0, 0, 0)), (4, (4, 0, 0)), (5, (3, 1, 1)), (7, (5, 1, 1)),
                                             (10, (8, 1, 1)), (25, (19, 3, 3)), (45547, (36437, 4555, 4555))])
def test_split_sizes_are_8_1_1(n, expected):
    assert split_sizes(n) == expected
    assert sum(split_sizes(n)) == n


def test_random_split_is_seeded_and_8_1_1():
    counts = [3, 7, 1, 12, 5, 9, 2, 11]
    a = assign_splits(counts, "random", seed=0)
    assert a == assign_splits(counts, "random", seed=0)
    assert a != assign_splits(counts, "random", seed=1)
    n = sum(counts)
    assert [a.count(s) for s in ORDER] == list(split_sizes(n))


def test_temporal_split_puts_each_users_latest_windows_last():
    counts = [1, 2, 3, 10, 25, 4, 7, 13, 9, 30]
    labels = assign_splits(counts, "temporal", seed=3)
    assert [labels.count(s) for s in ORDER] == list(split_sizes(sum(counts)))
    start = 0
    for c in counts:
        mine = [ORDER[x] for x in labels[start:start + c]]
        assert mine == sorted(mine), "a train window comes after a valid/test window of the same user"
        start += c
    # Users with many windows contribute to valid and test.
    assert labels[sum(counts[:4]) - 1] == "test"


def test_unknown_split_mode():
    with pytest.raises(UserError, match="unknown split mode 'future'"):
        assign_splits([6], "future", seed=0)


def test_windows_to_samples_ids_and_reference_is_target():
    df = windows_to_samples([("u1", list("abcdef")), ("u2", list("abcde")), ("u3", list("pqrstuvw"))],
                            "do it", "random", seed=0)
    assert df["sample_id"].tolist() == ["u00000-0000", "u00002-0000", "u00002-0001", "u00002-0002"]
    assert df["user_id"].tolist() == ["u1", "u3", "u3", "u3"]
    assert df["history"].iloc[3] == list("rstuv")
    assert df["target_id"].iloc[3] == "w"
    assert (df["reference_id"] == df["target_id"]).all()
    assert set(df["split"]) <= set(ORDER)


def test_other_group_references_never_from_the_users_theme():
    groups = {f"{t}{i}": t for t in "ABC" for i in range(8)}
    samples = pd.DataFrame({
        "user_id": list("ABCABCABC") * 4,
        "split": (["test", "valid", "train"] * 12),
        "reference_id": ["A0"] * 36,
    })
    for seed in range(10):
        refs = pick_other_group_references(samples, groups, ("valid", "test"), seed)
        for user, split, ref in zip(samples["user_id"], samples["split"], refs, strict=True):
            if split == "train":
                assert ref == "A0"
            else:
                assert groups[ref] != user
    assert refs.tolist() == pick_other_group_references(samples, groups, ("valid", "test"), 9).tolist()


def test_other_group_reference_needs_two_themes():
    samples = pd.DataFrame({"user_id": ["A"], "split": ["test"], "reference_id": ["A0"]})
    with pytest.raises(UserError, match="another theme"):
        pick_other_group_references(samples, {"A0": "A"}, ("test",), 0)


def test_scenario_registry():
    assert set(scenarios.names()) >= {"sticker", "movie"}
    sticker = scenarios.get("sticker")
    assert sticker.instruction == ("generate a sticker with the same emotional semantics as this "
                                   "reference image")
    assert sticker.demo_key == "sticker"
    assert sticker.builder_fn().__name__ == "build_sticker"
    assert scenarios.get("movie").builder_fn().__name__ == "build_movie"
    with pytest.raises(UserError, match="unknown scenario 'poster'"):
        scenarios.get("poster")


def test_stats_command_and_its_bad_inputs(tmp_path):
    from typer.testing import CliRunner

    from pigeon_bench.cli import app
    from pigeon_bench.data.build import finish

    items = pd.DataFrame({"item_id": list("abcdefg"), "image_path": [f"{c}.png" for c in "abcdefg"],
                          "semantics": list("ABCDEFG")})
    samples = windows_to_samples([("u", list("abcdefg"))], "do it", "random", seed=0)
    finish("sticker", tmp_path / "d", items, samples, {})
    ok = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "d")])
    assert ok.exit_code == 0 and "samples (train)" in ok.output

    def error(match: str) -> None:
        result = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "d")])
        err = result.stderr.strip()
        assert result.exit_code == 2 and "\n" not in err and match in err, result.output

    samples.drop(columns="split").to_parquet(tmp_path / "d" / "samples.parquet")
    error("samples.parquet: missing column(s) split")
    (tmp_path / "d" / "samples.parquet").write_bytes(b"not parquet")
    error("cannot read parquet")
    finish("sticker", tmp_path / "d", items, samples, {})
    (tmp_path / "d" / "stats.json").write_text("{")
    error("not valid JSON")
