"""The sticker builder on a hand-made SER30K-layout folder, and its bad-input paths (CLI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pigeon_bench.cli import app
from pigeon_bench.data import Dataset
from pigeon_bench.data.sticker import build_sticker, natural_key

# theme -> number of stickers. c-small is too small, d-low is on the exclusion list, e-theme loses one image.
THEMES = {"b-theme": 12, "a-theme": 6, "c-small": 5, "d-low": 7, "e-theme": 8}


def write_ser30k(root: Path, image_level: bool = False, categories: dict | None = None) -> Path:
    files: dict[str, list[dict]] = {"train.json": [], "val.json": [], "test.json": []}
    n = 0
    for theme, count in THEMES.items():
        for i in range(count, 0, -1):  # listed in reverse: the builder must sort
            name = f"sticker_{i}.jpg"
            image = root / "Images" / theme / name
            image.parent.mkdir(parents=True, exist_ok=True)
            if not (theme == "e-theme" and i == 3):
                Image.new("RGB", (4, 4), (n % 256, i, 0)).save(image)
            entry = {"topic": theme, "file_name": name, "anno": 1 + n % 7, "text": "OK!" if i == 2 else ""}
            files[("train.json", "val.json", "test.json")[n % 3]].append(entry)
            n += 1
    files["test.json"].append(dict(files["train.json"][0]))  # a duplicate annotation
    folder = root / "Annotations" / ("image-level" if image_level else "")
    folder.mkdir(parents=True, exist_ok=True)
    for name, entries in files.items():
        doc = {"annotations": entries}
        if categories and name == "train.json":
            doc["categories"] = categories
        (folder / name).write_text(json.dumps(doc))
    (root / "low_quality.txt").write_text("# low quality themes\nd-low\n\n")
    return root


def build(tmp_path: Path, seed: int = 0, **kwargs):
    layout = {k: kwargs.pop(k) for k in ("image_level", "categories") if k in kwargs}
    raw = write_ser30k(tmp_path / "ser", **layout)
    return build_sticker(raw, tmp_path / f"out{seed}", seed=seed, exclude=raw / "low_quality.txt", **kwargs)


def test_themes_order_counts_and_drops(tmp_path):
    result = build(tmp_path)
    assert (result.stats["users"], result.stats["items"], result.stats["samples"]) == (3, 25, 10)
    assert result.stats["splits"] == {"train": 8, "valid": 1, "test": 1}
    assert result.dropped == {"duplicate_annotations": 1, "stickers_without_image": 1, "themes_excluded": 1,
                              "themes_too_small": 1}
    data = Dataset(result.out)
    items = data.items_df.set_index("item_id")
    # One user per theme; the sequence is the theme's stickers in natural file-name order.
    b_samples = [s for s in data.samples() if s.user_id == "b-theme"]
    sequence = [items.loc[i, "file_name"] for i in b_samples[0].history] + \
        [items.loc[s.target_id, "file_name"] for s in b_samples]
    assert sequence == [f"sticker_{i}.jpg" for i in range(1, 13)]
    assert len([s for s in data.samples() if s.user_id == "a-theme"]) == 1  # exactly 6 stickers
    e_files = {items.loc[i, "file_name"] for s in data.samples() if s.user_id == "e-theme"
               for i in (*s.history, s.target_id)}
    assert "sticker_3.jpg" not in e_files and len(e_files) == 7
    assert set(items["theme"]) == {"a-theme", "b-theme", "e-theme"}
    assert all(data.image_path(i).is_file() for i in data.items)
    assert items["image_path"].map(lambda p: Path(p).is_absolute()).all()


def test_reference_from_another_theme_in_valid_and_test(tmp_path):
    for seed in range(6):
        data = Dataset(build(tmp_path, seed=seed).out)
        theme = data.items_df.set_index("item_id")["theme"]
        for s in data.samples():
            if s.split == "train":
                assert s.reference_id == s.target_id
            else:
                assert theme[s.reference_id] != s.user_id, (seed, s)
                assert theme[s.target_id] == s.user_id
            assert s.instruction.startswith("generate a sticker with the same emotional semantics")


def test_emotion_mapping_semantics_and_overrides(tmp_path):
    data = Dataset(build(tmp_path).out)
    items = data.items_df.set_index("item_id")
    row = items[(items["theme"] == "b-theme") & (items["file_name"] == "sticker_2.jpg")].iloc[0]
    assert row["emotion"] == "happiness"  # anno 4 in the default (alphabetical) mapping
    assert row["semantics"] == 'a sticker with the emotion of happiness, with the text "OK!"'
    assert data.stats["emotions"]["1"] == "anger"

    cats = {str(i): f"E{i}" for i in range(1, 8)}
    other = Dataset(build(tmp_path / "c", categories=cats, image_level=True).out)
    assert set(other.items_df["emotion"]) <= set(cats.values())
    named = build(tmp_path / "n", emotion_names=list("ABCDEFG"))
    assert named.stats["emotions"] == dict(zip(map(str, range(1, 8)), "ABCDEFG", strict=True))


def test_natural_order_key():
    names = ["sticker_10.png", "sticker_2.png", "sticker_1.png", "Sticker_2.png"]
    assert sorted(names, key=natural_key) == ["sticker_1.png", "Sticker_2.png", "sticker_2.png",
                                              "sticker_10.png"]


def test_rebuild_is_byte_identical(tmp_path):
    raw = write_ser30k(tmp_path / "ser")
    for out in ("a", "b"):
        build_sticker(raw, tmp_path / out, seed=3)
    for name in ("items.parquet", "samples.parquet", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def user_error(args: list, match: str) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and re.search(match, err), err
    assert "Traceback" not in result.output


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_ser30k(tmp_path / "ser")


def test_cli_build(raw, tmp_path):
    args = ["data", "build", "sticker", "--raw", raw, "--out", tmp_path / "o", "--exclude",
            raw / "low_quality.txt", "--seed", "4"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "themes too small" in result.output
    assert Dataset(tmp_path / "o").stats["seed"] == 4
    stats = CliRunner().invoke(app, ["data", "stats", str(tmp_path / "o")])
    assert stats.exit_code == 0 and "samples (test)" in stats.output


def test_cli_bad_inputs(raw, tmp_path):
    build = ["data", "build", "sticker", "--out", tmp_path / "x", "--raw"]
    user_error([*build, tmp_path / "nope"], "SER30K folder not found")
    user_error([*build, raw, "--exclude", tmp_path / "nope.txt"], "missing file: .*nope.txt")
    user_error([*build, raw, "--emotion-names", "a,b"], "needs 7 names, got 2")
    user_error([*build, raw, "--split-mode", "x"], "unknown split mode")
    ann = raw / "Annotations"
    (ann / "val.json").write_text('{"annotations": [')
    user_error([*build, raw], "not valid JSON: .*val.json")
    (ann / "val.json").write_text('[1, 2]')
    user_error([*build, raw], "val.json: expected an object with an 'annotations' list")
    (ann / "val.json").write_text('{"annotations": [{"topic": "t", "anno": 1}]}')
    user_error([*build, raw], "val.json: annotation 0 lacks file_name")
    (ann / "val.json").write_text('{"annotations": [{"topic": "t", "file_name": "f", "anno": "happy"}]}')
    user_error([*build, raw], "annotation 0: 'anno' is not an integer: 'happy'")
    (ann / "val.json").write_text('{"annotations": [{"topic": "t", "file_name": "f", "anno": 9}]}')
    user_error([*build, raw], "emotion label 9 outside 1..7")
    (ann / "val.json").unlink()
    user_error([*build, raw], "missing file: .*Annotations/val.json")
    (ann / "val.json").write_text('{"annotations": []}')
    for theme in THEMES:
        for image in (raw / "Images" / theme).glob("sticker_[4-9]*.jpg"):
            image.unlink()
    user_error([*build, raw], "no samples")
    (raw / "Images").rename(raw / "Pictures")
    user_error([*build, raw], "missing folder: .*Images")
    user_error(["data", "stats", tmp_path / "nope"], "dataset folder not found")


def set_annotations(raw: Path, entries: list[dict]) -> None:
    """train.json holds ``entries``; val.json and test.json are empty."""
    for name in ("train.json", "val.json", "test.json"):
        doc = {"annotations": entries if name == "train.json" else []}
        (raw / "Annotations" / name).write_text(json.dumps(doc))


def test_cli_names_what_left_nothing_to_build(raw, tmp_path):
    build = ["data", "build", "sticker", "--out", tmp_path / "x", "--raw", raw]
    exclude_all = tmp_path / "all.txt"
    exclude_all.write_text("\n".join(THEMES))
    user_error([*build, "--exclude", exclude_all], r"--exclude .*all\.txt leaves out every theme")
    user_error([*build, "--seed", "-1"], "--seed must be 0 or more, got -1")
    user_error([*build, "--emotion-names", "a,,b,c,d,e,f"], "needs 7 different, non-empty names")
    user_error([*build, "--emotion-names", "a,a,b,c,d,e,f"], "needs 7 different, non-empty names")
    set_annotations(raw, [{"topic": "b-theme", "file_name": f"gone_{i}.jpg", "anno": 1} for i in range(8)])
    user_error(build, r"no annotated sticker has its image file \(e\.g\. .*Images/b-theme/gone_0\.jpg is "
                      "missing")
    set_annotations(raw, [])
    user_error(build, r"Annotations: the annotation files list no stickers")
    assert not (tmp_path / "x").exists()


def test_annotations_must_stay_inside_images_and_labels_be_whole(raw, tmp_path):
    build = ["data", "build", "sticker", "--out", tmp_path / "x", "--raw", raw]
    good = [{"topic": "b-theme", "file_name": f"sticker_{i}.jpg", "anno": 1} for i in range(1, 7)]
    outside = raw.parent / "secret.jpg"
    Image.new("RGB", (4, 4)).save(outside)
    for key, value in (("file_name", str(outside)), ("file_name", "../../secret.jpg"), ("topic", ""),
                       ("topic", "..")):
        set_annotations(raw, [*good, {**good[0], key: value}])
        user_error(build, rf"train\.json: annotation 6: {key} '{re.escape(value)}' is not a path inside "
                          "Images/")
    for label in (2.5, True, "happy", None):
        set_annotations(raw, [*good, {**good[0], "anno": label}])
        user_error(build, rf"annotation 6: 'anno' is not an integer: {re.escape(repr(label))}")
    set_annotations(raw, [{**entry, "anno": label} for entry, label in zip(good, (3, 3.0, "3", 3, 3, 3),
                                                                              strict=True)])
    data = Dataset(build_sticker(raw, tmp_path / "ok").out)
    assert set(data.items_df["emotion"]) == {"fear"}
