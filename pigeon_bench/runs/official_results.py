"""Import the authors' generated results (github.com/YiyanXu/Pigeon ``Pigeon/inference.py``'s output) as an
α_r sweep of run folders, so that ``score``, ``select`` and ``report`` work on the authors' own images.

The layout, as ``inference.py`` writes it (``generate_images``, ``save_batch_results``) and
``Evaluation/evaluate_pigeon.py`` and ``cal_scores.py`` read it::

    OUTPUT_DIR/eval-test/                       the test split ("eval": valid; "-wo-mask" when run without
                                                masks; inference.py itself spells the test folder "eval-tes")
      checkpoint-N-scaleS-maskR/                one folder per reference mask ratio R (α_r) 0.0, 0.1, ..., 1.0
                                                (S: the LLM guidance scale; cal_scores.py reads all 11)
        all_res_dm_scaleD.npy                   np.save of a pickled dict (D: the diffusion guidance scale)
        dm_scaleD/<uid>/<tgt_iid>/<genre_id>/<seq_id>/<j>.jpg

``all_res[uid][tgt_iid][genre_id]`` holds ``"history"`` (a tensor of the 5 history item ids), ``"labels"``
and ``"seqs"``: ``{seq_id: {"tokens": ..., "images": [path relative to the eval folder, ...]}}``; the
evaluation scores image j of sequence i against ``tgt_iid`` (this toolkit's reference) and the history.

Each entry is matched to the sample of a dataset folder (built by ``pigeon-bench data import-official`` from
the same ``processed_seq``) with the same user, history and target. Unpickling can run code: import only
results from a source you trust.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.data.official import load_dict
from pigeon_bench.errors import UserError
from pigeon_bench.generation import ALPHA_R_GRID, display_label, generators
from pigeon_bench.metrics.preprocess import open_image
from pigeon_bench.profiles import get_profile
from pigeon_bench.progress import console
from pigeon_bench.progress import progress as progress_bar
from pigeon_bench.runs.folder import Sweep
from pigeon_bench.runs.generate import package_versions

_POINT = re.compile(r"^checkpoint-(?P<ckpt>\d+)-scale(?P<scale>[0-9.]+)-mask(?P<mask>[0-9.]+)$")
_RESULTS = re.compile(r"^all_res_dm_scale(?P<dm>[0-9.]+)\.npy$")
_EVAL_DIR = re.compile(r"^eval(?P<test>-test?)?(-wo-mask)?(_hist[0-9.]+)?$")
LAYOUT = "YiyanXu/Pigeon Pigeon/inference.py output"


@dataclass(frozen=True)
class OfficialResults:
    """One inference setting's 11 α_r result folders in an official eval folder."""

    eval_dir: Path
    checkpoint: int
    scale: str  # the LLM guidance scale as the folder names spell it
    dm_scale: str  # the diffusion guidance scale as the file names spell it
    split: str
    folders: tuple[Path, ...]  # checkpoint-N-scaleS-maskR, in ALPHA_R_GRID order

    def results_file(self, alpha_r: float) -> Path:
        return self.folders[ALPHA_R_GRID.index(alpha_r)] / f"all_res_dm_scale{self.dm_scale}.npy"

    def record(self) -> dict[str, Any]:
        return {"source": str(self.eval_dir.resolve()), "layout": LAYOUT, "checkpoint": self.checkpoint,
                "scale_for_llm": self.scale, "scale_for_dm": self.dm_scale}


def _eval_dir(path: Path) -> Path:
    """``path`` when it holds checkpoint folders, else its one eval folder that does."""
    if not path.is_dir():
        raise UserError(f"official results folder not found: {path}")
    if any(_POINT.match(p.name) for p in path.iterdir() if p.is_dir()):
        return path
    found = sorted(p for p in path.iterdir() if p.is_dir() and _EVAL_DIR.match(p.name)
                   and any(_POINT.match(c.name) for c in p.iterdir() if c.is_dir()))
    if len(found) != 1:
        what = f"several ({', '.join(p.name for p in found)}): pass one" if found else "none"
        raise UserError(f"{path}: no checkpoint-N-scaleS-maskR folders; eval folders holding them: {what}")
    return found[0]


def _pick(kind: str, flag: str, given: Any, found: set, where: Path) -> Any:
    """The one value of ``found`` (or ``given``, which must be among them)."""
    if given is not None:
        if given not in found:
            raise UserError(f"{where}: no {kind} {given} (found: {', '.join(map(str, sorted(found)))})")
        return given
    if len(found) != 1:
        raise UserError(f"{where}: several {kind}s ({', '.join(map(str, sorted(found)))}): choose one with "
                        f"{flag}")
    return next(iter(found))


def find_results(path: str | Path, checkpoint: int | None = None, scale: str | None = None,
                 dm_scale: str | None = None, split: str | None = None) -> OfficialResults:
    """The eval folder under ``path`` and the one setting (given, or the only one there) with all 11 α_r."""
    eval_dir = _eval_dir(Path(path))
    points = [(m, p) for p in eval_dir.iterdir() if p.is_dir() and (m := _POINT.match(p.name))]
    ckpt = _pick("checkpoint", "--checkpoint", checkpoint, {int(m["ckpt"]) for m, _ in points}, eval_dir)
    scale = _pick("LLM guidance scale", "--scale", scale,
                  {m["scale"] for m, _ in points if int(m["ckpt"]) == ckpt}, eval_dir)
    masks = {float(m["mask"]): p for m, p in points if int(m["ckpt"]) == ckpt and m["scale"] == scale}
    missing = [f"{a:.1f}" for a in ALPHA_R_GRID if a not in masks]
    if missing:
        raise UserError(f"{eval_dir}: checkpoint-{ckpt}-scale{scale} lacks mask ratio(s) "
                        f"{', '.join(missing)} (a sweep needs all 11)")
    folders = tuple(masks[a] for a in ALPHA_R_GRID)
    dm = {m["dm"] for p in folders for f in p.iterdir() if (m := _RESULTS.match(f.name))}
    dm_scale = _pick("diffusion guidance scale", "--dm-scale", dm_scale, dm, eval_dir)
    if split is None:
        named = _EVAL_DIR.match(eval_dir.name)
        if named is None:
            raise UserError(f"{eval_dir}: cannot tell the split from the folder name; pass --split")
        split = "test" if named["test"] else "valid"
    found = OfficialResults(eval_dir, ckpt, scale, dm_scale, split, folders)
    absent = [str(found.results_file(a)) for a in ALPHA_R_GRID if not found.results_file(a).is_file()]
    if absent:
        raise UserError(f"missing file: {absent[0]}" + (f" (and {len(absent) - 1} more)" if len(absent) > 1
                                                       else ""))
    return found


def _ids(value: Any) -> list[int]:
    """Item ids from a tensor, array or list of ints."""
    as_list = value.tolist() if hasattr(value, "tolist") else list(value)
    return [int(v) for v in as_list]


def entries(all_res: dict, path: Path, seq: int, image: int) -> list[tuple[str, list[str], str, str]]:
    """(user id, history ids, target id, image path) of every entry of an ``all_res`` dict, in its order."""
    out = []
    for uid, targets in all_res.items():
        for tgt, genres in _mapping(targets, path, f"user {uid}").items():
            for genre, entry in _mapping(genres, path, f"user {uid} target {tgt}").items():
                where = f"{path}: user {uid} target {tgt} genre {genre}"
                if not isinstance(entry, dict) or "history" not in entry or "seqs" not in entry:
                    raise UserError(f"{where}: expected a dict with \"history\" and \"seqs\"")
                try:
                    history = _ids(entry["history"])
                    images = entry["seqs"][seq]["images"]
                    img = str(images[image])
                except (KeyError, IndexError, TypeError, ValueError):
                    raise UserError(f"{where}: no image {image} of sequence {seq} (or unreadable history)"
                                    ) from None
                out.append((str(uid), [str(h) for h in history], str(tgt), img))
    return out


def _mapping(value: Any, path: Path, what: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{path}: {what} maps to {type(value).__name__}, expected a dict")
    return value


def match_samples(dataset: Dataset, split: str, listed: list[tuple[str, list[str], str, str]],
                  source: Path) -> list[tuple[Sample, str]]:
    """Each listed entry's dataset sample (same user, history and target; entries with identical inputs take
    such samples in dataset order) and image path."""
    by_key: dict[tuple, list[Sample]] = {}
    for s in dataset.samples(split):
        by_key.setdefault((s.user_id, s.history, s.target_id), []).append(s)
    taken: dict[tuple, int] = {}
    out = []
    for uid, history, tgt, img in listed:
        key = (uid, tuple(history), tgt)
        candidates = by_key.get(key, [])
        if taken.get(key, 0) >= len(candidates):
            raise UserError(f"{source}: user {uid} target {tgt} history {' '.join(history)} matches no "
                            f"{split} sample of {dataset.root} (build it with `pigeon-bench data "
                            "import-official` from the same processed_seq)")
        out.append((candidates[taken.get(key, 0)], img))
        taken[key] = taken.get(key, 0) + 1
    return out


def import_results(path: str | Path, data: str | Path, out: str | Path, *, checkpoint: int | None = None,
                   scale: str | None = None, dm_scale: str | None = None, split: str | None = None,
                   seq: int = 0, image: int = 0, method: str = "pigeon", label: str | None = None,
                   profile: str | None = "paper") -> dict[str, Any]:
    """Write the sweep ``out`` (one run folder per α_r, as ``generate --sweep`` writes) from the official
    results under ``path``; returns the sweep's manifest. A rerun on the same source fills in what is missing.
    """
    results = find_results(path, checkpoint, scale, dm_scale, split)
    dataset = Dataset(data)
    if not dataset.samples(results.split, 1):
        raise UserError(f"{dataset.root}: no {results.split} samples to match the official results with")
    cls = generators.get(method)
    label = label or display_label(cls)
    prof = get_profile(profile)
    imported = {**results.record(), "seq": seq, "image": image}
    base = {
        "method": method, "label": label, "group": cls.group, "scenario": dataset.scenario,
        "data": str(dataset.root.resolve()), "dataset_digest": dataset.digest, "split": results.split,
        "limit": None, "profile": prof.name, "notice": prof.notice, "seed": None, "dtype": None,
        "options": {},
        "settings": {"checkpoint": results.checkpoint, "guidance_scale_for_llm": results.scale,
                     "guidance_scale_for_dm": results.dm_scale},
        "args": {}, "imported": imported,
    }
    sweep = Sweep(out)
    _check_target(sweep, imported)
    picks = {}
    for a in ALPHA_R_GRID:
        source = results.results_file(a)
        listed = entries(load_dict(source), source, seq, image)
        picks[a] = match_samples(dataset, results.split, listed, source)
    ids = {a: [s.sample_id for s, _ in p] for a, p in picks.items()}
    first = ids[ALPHA_R_GRID[0]]
    for a, at_a in ids.items():
        if sorted(at_a) != sorted(first):
            raise UserError(f"{results.results_file(a)} lists other samples than {results.results_file(0.0)} "
                            f"({len(at_a)} vs {len(first)}): a sweep needs the same samples at every α_r")
    order = [s.sample_id for s in dataset.samples(results.split) if s.sample_id in set(first)]
    top = {**base, "alpha_r": None, "sweep": list(ALPHA_R_GRID), "versions": package_versions(),
           "counts": _counts(len(order) * len(ALPHA_R_GRID)), "complete": True,
           "runs": [sweep.point(a).name for a in ALPHA_R_GRID],
           "timings": None}
    if sweep.exists() and sweep.manifest() == top:
        return top  # imported before, completely: the manifests (and the scores newer than them) stand
    sweep.write_manifest({**top, "complete": False})
    with progress_bar(enabled=console.is_terminal) as progress:
        task = progress.add_task(f"importing {method} ({len(picks)} α_r)", total=len(order) * len(picks))
        for a, pairs in picks.items():
            run = sweep.point(a)
            for sample, img in pairs:
                if not run.has_image(sample.sample_id):
                    run.write_image(sample.sample_id, open_image(results.eval_dir / img))
                progress.advance(task)
            run.write_manifest({**base, "alpha_r": a, "label": f"{label} (α_r={a:.1f})",
                                "versions": package_versions(), "models": None, "timings": None,
                                "counts": _counts(len(order)), "sample_ids": order, "complete": True})
    sweep.write_manifest(top)
    return top


def _counts(n: int) -> dict[str, int]:
    return {"n": n, "generated": 0, "skipped": 0, "imported": n}


def _check_target(sweep: Sweep, imported: dict[str, Any]) -> None:
    """Refuse an ``out`` that is neither empty nor an import of the same results."""
    sweep.check_empty_or_run()
    if sweep.exists() and sweep.manifest().get("imported") != imported:
        raise UserError(f"{sweep.path} holds another run (not an import of these results); use another --out "
                        "or delete it")
