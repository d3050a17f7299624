"""Import of the official Pigeon processed_seq layout (pickled numpy dicts and lists), on small fixtures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from pigeon_bench.cli import app
from pigeon_bench.data import Dataset
from pigeon_bench.data.official import import_official

PATHS = [f"t{1 + i // 7}/sticker_{1 + i % 7}.jpg" for i in range(14)]  # iids 0-6: theme 1, 7-13: theme 2
SPLITS = {
    "train": {0: {0: [[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6]]}, 1: {1: [np.arange(7, 13)]}},
    "valid": {1: {1: [[8, 9, 10, 11, 12, 13]]}},
    "test": {0: {0: [[2, 3, 4, 5, 6, 9]]}},  # the official sticker test windows end with the reference
}


def save(path: Path, obj) -> None:
    """As the official preprocessing saves: np.save(path, np.array(obj))."""
    np.save(path, np.array(obj, dtype=object) if isinstance(obj, dict) else np.array(obj))


def write_official(root: Path, scenario: str = "sticker", splits: dict | None = None) -> Path:
    seq = root / "processed_seq"
    seq.mkdir(parents=True)
    for split, data in (splits or SPLITS).items():
        save(seq / f"{split}.npy", data)
    save(seq / "all_image_paths.npy", PATHS)
    save(seq / f"{scenario}_semantics.npy", [f"semantics of {i}" for i in range(len(PATHS))])
    if scenario == "sticker":
        save(seq / "mapped_anno_dict.npy", {i: {"emo": "Neutral", "text": "hi" if i == 5 else ""}
                                             for i in range(len(PATHS))})
    else:
        info = {i: {"title": f"Movie {i} (2001)", "genres": "Drama", "intro": "Plot."}
                for i in range(len(PATHS))}
        save(seq / "mapped_movies.npy", info)
    return seq


def test_sticker_import(tmp_path):
    seq = write_official(tmp_path)
    result = import_official(seq, "sticker", tmp_path / "out")
    assert (result.stats["users"], result.stats["items"], result.stats["samples"]) == (2, 14, 5)
    assert result.stats["splits"] == {"train": 3, "valid": 1, "test": 1}
    data = Dataset(tmp_path / "out")
    test = data.samples("test")[0]
    assert (test.user_id, test.history, test.target_id, test.reference_id) == ("0", ("2", "3", "4", "5", "6"),
                                                                               "9", "9")
    assert [s.sample_id for s in data.samples("train")] == ["train-u0-g0-0000", "train-u0-g0-0001",
                                                           "train-u1-g1-0000"]
    assert data.samples("train")[2].history == tuple(str(i) for i in range(7, 12))
    # Image paths join the default image folder (../Images beside processed_seq) and all_image_paths.
    assert data.image_path("9") == (tmp_path / "Images" / "t2" / "sticker_3.jpg").resolve()
    assert data.items["9"].semantics == "semantics of 9"
    items = data.items_df.set_index("item_id")
    assert items.loc["5", "emotion"] == "Neutral" and items.loc["5", "text"] == "hi"
    assert result.stats["images_missing"] == 14


def test_movie_import_with_mapped_movies_and_image_folder(tmp_path):
    seq = write_official(tmp_path, "movie")
    posters = tmp_path / "posters"
    import_official(seq, "movie", tmp_path / "out", images=posters)
    data = Dataset(tmp_path / "out")
    assert data.scenario == "movie"
    assert data.image_path("0") == (posters / PATHS[0]).resolve()
    items = data.items_df.set_index("item_id")
    assert items.loc["3", "title"] == "Movie 3 (2001)" and items.loc["3", "overview"] == "Plot."
    assert all(s.instruction.startswith("generate a movie poster") for s in data.samples())


def user_error(args: list, match: str) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and re.search(match, err), err


def test_cli_import_and_bad_inputs(tmp_path):
    seq = write_official(tmp_path)
    cmd = ["data", "import-official", seq, "--out", tmp_path / "o", "--scenario"]
    ok = CliRunner().invoke(app, [str(a) for a in [*cmd, "sticker"]])
    assert ok.exit_code == 0, ok.output
    assert Dataset(tmp_path / "o").stats["samples"] == 5

    user_error([*cmd, "poster"], "unknown scenario 'poster'")
    user_error(["data", "import-official", tmp_path / "nope", "--out", tmp_path / "o", "--scenario", "movie"],
               "official data folder not found")
    user_error([*cmd, "movie"], "missing file: .*movie_semantics.npy")
    save(seq / "sticker_semantics.npy", ["x"])
    user_error([*cmd, "sticker"], "sticker_semantics.npy has 1 entries, all_image_paths.npy has 14")
    save(seq / "sticker_semantics.npy", ["x"] * 14)
    save(seq / "valid.npy", [[1, 2, 3]])
    user_error([*cmd, "sticker"], "valid.npy: expected a pickled dict")
    save(seq / "valid.npy", {1: {1: [[8, 9, 10, 11, 12]]}})
    user_error([*cmd, "sticker"], "valid.npy: user 1 group 1 window 0 is not 6 ids")
    save(seq / "valid.npy", {1: {1: [[8, 9, 10, 11, 12, 14]]}})
    user_error([*cmd, "sticker"], "item id 14 outside 0..13")
    save(seq / "valid.npy", {1: [1, 2]})
    user_error([*cmd, "sticker"], "user 1 maps to list, expected a dict")
    (seq / "valid.npy").write_bytes(b"\x93NUMPY garbage")
    user_error([*cmd, "sticker"], "cannot read .*valid.npy")
    (seq / "valid.npy").unlink()
    user_error([*cmd, "sticker"], "missing file: .*valid.npy")


def test_cli_malformed_windows_and_empty_splits(tmp_path):
    seq = write_official(tmp_path)
    cmd = [str(a) for a in ["data", "import-official", seq, "--out", tmp_path / "o", "--scenario", "sticker"]]
    save(seq / "valid.npy", {1: {1: 5}})
    user_error(cmd, "valid.npy: user 1 group 1 maps to int, expected a list of windows")
    save(seq / "valid.npy", {1: {1: [[8, 9, 10, 11, 12, True]]}})
    user_error(cmd, "valid.npy: user 1 group 1 window 0: item id True outside 0..13")
    for split in ("train", "valid", "test"):
        save(seq / f"{split}.npy", {})
    user_error(cmd, r"no samples: train\.npy, valid\.npy, test\.npy in .*processed_seq hold no windows")


def test_cli_import_over_a_dataset_needs_force(tmp_path):
    seq = write_official(tmp_path)
    cmd = [str(a) for a in ["data", "import-official", seq, "--out", tmp_path / "o", "--scenario", "sticker"]]
    assert CliRunner().invoke(app, cmd).exit_code == 0
    again = CliRunner().invoke(app, cmd)
    assert again.exit_code == 0 and "nothing written" in again.output
    save(seq / "valid.npy", {1: {1: [list(np.arange(7, 13))]}})  # numpy integers in a list
    user_error(cmd, "already holds a different dataset: pass --force")
    assert CliRunner().invoke(app, [*cmd, "--force"]).exit_code == 0
    assert Dataset(tmp_path / "o").samples("valid")[0].target_id == "12"
