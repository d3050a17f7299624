"""Windowing, 8:1:1 splits (random and temporal), other-theme references and the scenario registry."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pigeon_bench import fileio
from pigeon_bench.data import Dataset
from pigeon_bench.data.build import (
    assign_splits,
    finish,
    pick_other_group_references,
    sliding_windows,
    split_sizes,
    windows_to_samples,
)
from pigeon_bench.data.model import write_dataset
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


def stats_error(folder: Path, match: str) -> None:
    """`data stats` exits 2 with one line containing ``match``."""
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    result = CliRunner().invoke(app, ["data", "stats", str(folder)])
    err = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in err and match in err, result.output


def tiny_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    items = pd.DataFrame({"item_id": list("abcdefghijk"), "image_path": [f"{c}.png" for c in "abcdefghijk"],
                          "semantics": [f"{c} {seed}" for c in "ABCDEFGHIJK"]})
    return items, windows_to_samples([("u", list("abcdefghijk"))], "do it", "random", seed=seed)


def test_stats_command_and_its_bad_inputs(tmp_path):
    # Changed with the digests: a replaced table is first of all not the recorded one; the column and
    # format checks are seen on a folder written before stats.json recorded digests.
    from typer.testing import CliRunner

    from pigeon_bench.cli import app

    stats = build_tiny(tmp_path / "d").stats
    _, samples = tiny_tables()
    ok = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "d")])
    assert ok.exit_code == 0 and "samples (train)" in ok.output and "sha256" not in ok.output

    samples.drop(columns="split").to_parquet(tmp_path / "d" / "samples.parquet")
    stats_error(tmp_path / "d", "samples.parquet is not the file its folder recorded (sha256 differs)")
    legacy = {k: v for k, v in stats.items() if k != "sha256"}
    (tmp_path / "d" / "stats.json").write_text(json.dumps(legacy))
    stats_error(tmp_path / "d", "samples.parquet: missing column(s) split")
    (tmp_path / "d" / "samples.parquet").write_bytes(b"not parquet")
    stats_error(tmp_path / "d", "cannot read parquet")
    build_tiny(tmp_path / "d", force=True)
    (tmp_path / "d" / "stats.json").write_text("{")
    stats_error(tmp_path / "d", "not valid JSON")
    (tmp_path / "d" / "stats.json").write_text("[1, 2]")
    stats_error(tmp_path / "d", "stats.json: expected a JSON object, found list")
    (tmp_path / "d" / "stats.json").write_text('{"sha256": "abc"}')
    stats_error(tmp_path / "d", "stats.json: 'sha256' is not a map of file names to digests")


def test_a_folder_whose_tables_do_not_belong_together_is_refused(tmp_path):
    items, samples = tiny_tables(seed=0)
    _, other = tiny_tables(seed=3)
    assert not other.equals(samples)
    write_dataset(tmp_path / "a", items, samples, {"scenario": "sticker"})
    write_dataset(tmp_path / "b", items, other, {"scenario": "sticker"})
    shutil.copy(tmp_path / "b" / "samples.parquet", tmp_path / "a" / "samples.parquet")  # b's samples in a
    with pytest.raises(UserError, match=r"samples\.parquet is not the file its folder recorded"):
        Dataset(tmp_path / "a").samples()
    assert len(Dataset(tmp_path / "a").items) == 11  # the items are a's own
    stats_error(tmp_path / "a", "samples.parquet is not the file its folder recorded")
    # A folder written before the digests existed still loads.
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    del stats["sha256"]
    (tmp_path / "a" / "stats.json").write_text(json.dumps(stats))
    assert len(Dataset(tmp_path / "a").samples()) == len(other)


def build_tiny(out: Path, seed: int = 0, force: bool = False):
    items, samples = tiny_tables(seed)
    return finish("sticker", out, items, samples, {}, no_samples="none", force=force, seed=seed)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def kill_at(monkeypatch: pytest.MonkeyPatch, name: str, error: BaseException) -> None:
    """Make the write of the file ``name`` (through fileio.atomic_path) fail with ``error``."""
    real = fileio.atomic_path

    def failing(dest):
        if Path(dest).name == name:
            raise error
        return real(dest)

    monkeypatch.setattr(fileio, "atomic_path", failing)


def test_an_interrupted_build_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    build_tiny(tmp_path / "d", seed=0)
    before = folder_bytes(tmp_path / "d")
    kill_at(monkeypatch, "samples.parquet", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        build_tiny(tmp_path / "d", seed=1, force=True)
    assert folder_bytes(tmp_path / "d") == before  # not new items beside old samples
    assert Dataset(tmp_path / "d").items["a"].semantics == "A 0"
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "temporary folders left behind"
    assert len(Dataset(tmp_path / "d").samples()) == 6


def test_rebuilding_needs_force_unless_identical(tmp_path):
    first = build_tiny(tmp_path / "d")
    stamp = (tmp_path / "d" / "stats.json").stat().st_mtime_ns
    again = build_tiny(tmp_path / "d")
    assert first.written and not again.written and again.stats == first.stats
    assert (tmp_path / "d" / "stats.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="already holds a different dataset: pass --force to replace it"):
        build_tiny(tmp_path / "d", seed=1)
    assert Dataset(tmp_path / "d").stats["seed"] == 0
    assert build_tiny(tmp_path / "d", seed=1, force=True).written
    assert Dataset(tmp_path / "d").stats["seed"] == 1


def test_out_must_be_a_dataset_folder_or_nothing(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out .*file is a file, not a folder"):
        build_tiny(tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"--out .*mine holds 1 file\(s\) that are not part of a dataset "
                                        r"\(e\.g\. 'notes.txt'\): choose a new or empty folder"):
        build_tiny(tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    if os.geteuid() == 0:  # permissions do not bind root: answer as they would for anyone else
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "ro")
    with pytest.raises(UserError, match=r"--out .*ro is a folder you cannot write to"):
        build_tiny(tmp_path / "ro")
    (tmp_path / "ro").chmod(0o755)
    assert not list((tmp_path / "ro").iterdir())
    build_tiny(tmp_path / "empty")  # an empty folder is fine
