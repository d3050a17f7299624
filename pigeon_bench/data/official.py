"""Import the official Pigeon ``processed_seq`` folder (github.com/YiyanXu/Pigeon, its Google-Drive data).

The folder holds numpy files read with ``np.load(path, allow_pickle=True)``:

* ``train.npy`` / ``valid.npy`` / ``test.npy``: a pickled dict ``uid -> group id -> [[iid x 6], ...]``; each
  6-id window is 5 history items then the target, which is also the reference (for the sticker test set the
  official preprocessing already put the other-theme reference sticker in that last place);
* ``all_image_paths.npy``: image paths relative to the image folder, indexed by iid;
* ``sticker_semantics.npy`` / ``movie_semantics.npy``: the semantics text of each iid;
* optional ``mapped_movies.npy`` (iid -> {title, genres, intro}) and ``mapped_anno_dict.npy``
  (iid -> {emo, text}).

Unpickling can run code: import only files from a source you trust.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pigeon_bench.data.build import WINDOW, BuildResult, check_out, finish, image_dir_for
from pigeon_bench.errors import UserError

SPLIT_FILES = {"train": "train.npy", "valid": "valid.npy", "test": "test.npy"}
# Image folders beside processed_seq, as in the official README.
DEFAULT_IMAGE_FOLDER = {"sticker": "Images", "movie": "poster"}
ITEM_INFO = {"sticker": ("mapped_anno_dict.npy", {"emo": "emotion", "text": "text"}),
             "movie": ("mapped_movies.npy", {"title": "title", "genres": "genres", "intro": "overview"})}


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        return np.load(path, allow_pickle=True)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def load_dict(path: Path) -> dict:
    """A dict saved as ``np.save(path, np.array(d))``."""
    arr = _load(path)
    obj = arr.item() if isinstance(arr, np.ndarray) and arr.shape == () else None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a pickled dict (np.save of a dict)")
    return obj


def load_list(path: Path) -> list:
    """A list saved as ``np.save(path, np.array(items))``."""
    arr = _load(path)
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise UserError(f"{path}: expected a 1-d array")
    return arr.tolist()


def _safe(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(value))


def import_official(
    src: str | Path,
    scenario: str,
    out: str | Path,
    images: str | Path | None = None,
    relative_paths: bool = False,
    force: bool = False,
) -> BuildResult:
    """Convert an official ``processed_seq`` folder into a dataset folder; image paths join ``images``. An
    existing different dataset in ``out`` is replaced only with ``force``."""
    from pigeon_bench.scenarios import scenarios

    instruction = scenarios.get(scenario).instruction
    if scenario not in DEFAULT_IMAGE_FOLDER:
        raise UserError(f"no official layout for scenario {scenario!r} (known: sticker, movie)")
    src, out = Path(src), Path(out)
    check_out(out)
    if not src.is_dir():
        raise UserError(f"official data folder not found: {src}")
    image_root = Path(images) if images is not None else src.parent / DEFAULT_IMAGE_FOLDER[scenario]
    paths = [str(p) for p in load_list(src / "all_image_paths.npy")]
    semantics = [str(s) for s in load_list(src / f"{scenario}_semantics.npy")]
    if len(semantics) != len(paths):
        raise UserError(f"{src / f'{scenario}_semantics.npy'} has {len(semantics)} entries, "
                        f"all_image_paths.npy has {len(paths)}")

    rows: list[dict] = []
    for split, file_name in SPLIT_FILES.items():
        path = src / file_name
        for uid, groups in load_dict(path).items():
            if not isinstance(groups, dict):
                raise UserError(f"{path}: user {uid!r} maps to {type(groups).__name__}, expected a dict")
            for gid, windows in groups.items():
                if not isinstance(windows, (list, tuple, np.ndarray)):
                    raise UserError(f"{path}: user {uid!r} group {gid!r} maps to {type(windows).__name__}, "
                                    "expected a list of windows")
                for k, window in enumerate(windows):
                    ids = window.tolist() if isinstance(window, np.ndarray) else window
                    if not isinstance(ids, (list, tuple)) or len(ids) != WINDOW:
                        raise UserError(f"{path}: user {uid!r} group {gid!r} window {k} is not {WINDOW} ids")
                    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]  # numpy scalars
                    bad = [i for i in ids if type(i) is not int or not 0 <= i < len(paths)]
                    if bad:
                        raise UserError(f"{path}: user {uid!r} group {gid!r} window {k}: item id {bad[0]!r} "
                                        f"outside 0..{len(paths) - 1}")
                    target = str(ids[-1])
                    rows.append({"sample_id": f"{split}-u{_safe(uid)}-g{_safe(gid)}-{k:04d}",
                                 "user_id": str(uid), "history": [str(i) for i in ids[:-1]],
                                 "target_id": target, "reference_id": target, "split": split,
                                 "instruction": instruction})
    samples = pd.DataFrame(rows, columns=["sample_id", "user_id", "history", "target_id", "reference_id",
                                          "split", "instruction"])
    duplicates = samples["sample_id"][samples["sample_id"].duplicated()]
    if len(duplicates):
        raise UserError(f"{src}: user/group ids collide once made file-name safe (e.g. {duplicates.iloc[0]})")

    image_prefix = image_dir_for(image_root, out, relative_paths)
    items = pd.DataFrame({
        "item_id": [str(i) for i in range(len(paths))],
        "image_path": [os.path.join(image_prefix, p) for p in paths],
        "semantics": semantics,
    })
    info_file, fields = ITEM_INFO[scenario]
    if (src / info_file).is_file():
        info = load_dict(src / info_file)
        for key, column in fields.items():
            items[column] = [str((info.get(i) or {}).get(key, "")) for i in range(len(paths))]
    used = set(samples["history"].explode()) | set(samples["target_id"])
    missing = sum(1 for i, p in zip(items["item_id"], paths, strict=True)
                  if i in used and not (image_root / p).is_file())
    no_samples = f"{', '.join(SPLIT_FILES.values())} in {src} hold no windows"
    return finish(scenario, out, items, samples, {}, no_samples=no_samples, force=force,
                  source="official Pigeon processed_seq", images_missing=missing)
