"""Human-evaluation kit (Table 2): binary-choice tasks with the paper's questions, and scoring of the answers.

``make_kit`` writes a folder ready for a crowdsourcing platform (MTurk batch shape: one row per HIT):

    DIR/batch.csv           upload this: task_id, question, image URLs (history_1..5 or reference),
                            left_image, right_image
    DIR/hit_template.html   the HIT layout (${...} placeholders; answer field "choice" = left / right)
    DIR/images/             every image, named by content hash (names reveal neither method nor side)
    DIR/tasks/*.html        static previews of every task; DIR/index.html lists them
    DIR/key.csv             the answer key (which run is on which side, attention-check gold): keep private
    DIR/kit.json            runs, labels, seed, counts

Attention checks are extra tasks whose answer is unambiguous: one side is an exact copy of the reference
(semantic alignment) or of the latest liked image (personalization), the other side is random noise.
``score`` reads the platform's results CSV (MTurk: Input.task_id, Answer.choice, WorkerId), drops every answer
of a worker who failed an attention check of that kit, and reports the share of choices won by the first run
with a 95% CI that resamples cases (all answers on one case move together).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.reports import load_run, paper_table
from pigeon_bench.runs.folder import RunFolder
from pigeon_bench.schema import scored_run
from pigeon_bench.stats import DEFAULT_N_BOOT, cluster_bootstrap_mean
from pigeon_bench.templates import render

ASPECTS = ("personalization", "semantic_alignment")
ASPECT_TITLES = {"personalization": "Personalization", "semantic_alignment": "Semantic alignment"}
# §3.3 of the paper, verbatim; the scenario picks the words in the paper's parentheses.
_P_QUESTION = ("When provided with someone’s five previously liked {liked}, please select the next {item} "
               "that is more attractive to her/him.")
S_QUESTION = "Which image aligns more closely with the semantics of the reference image?"
_NOUNS = {"sticker": ("stickers", "sticker"), "movie": ("movies", "movie poster")}
SIDES = ("left", "right")
N_HISTORY = 5
SCORE_FORMATS = ("md", "csv")


def question(aspect: str, scenario: str) -> str:
    """The paper's question for an aspect in a scenario."""
    if aspect == "semantic_alignment":
        return S_QUESTION
    liked, item = _NOUNS.get(scenario, ("items", "item"))
    return _P_QUESTION.format(liked=liked, item=item)


def _check_aspect(aspect: str) -> None:
    if aspect not in ASPECTS:
        raise UserError(f"unknown aspect {aspect!r} (known: {', '.join(ASPECTS)})")


class _ImageStore:
    """Writes images into DIR/images under content-hash names and returns their kit-relative paths."""

    def __init__(self, root: Path):
        self.root = root

    def _put(self, data: bytes) -> str:
        name = f"images/{hashlib.sha256(data).hexdigest()[:16]}.png"
        if not (self.root / name).is_file():
            fileio.write_bytes(self.root / name, data)
        return name

    def add(self, source: Path) -> str:
        """A readable PNG as is (byte for byte); any other format re-encoded as PNG."""
        image = fileio.load_rgb(source)  # a missing or corrupt image stops here, named
        if source.suffix.lower() == ".png":
            return self._put(source.read_bytes())
        return self.add_image(image)

    def add_image(self, image: Image.Image) -> str:
        buf = BytesIO()
        image.save(buf, format="PNG")
        return self._put(buf.getvalue())


def make_kit(run_a: str | Path, run_b: str | Path, aspect: str, out: str | Path, n: int = 50,
             checks: int | None = None, seed: int = 0, base_url: str = "") -> dict:
    """Write a binary-choice kit comparing run A (e.g. Pigeon) with run B on ``n`` shared cases."""
    from pigeon_bench.data import Dataset

    _check_aspect(aspect)
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    checks = max(1, n // 10) if checks is None else checks
    if checks < 0:
        raise UserError(f"--checks must be >= 0, got {checks}")
    runs = [scored_run(r) for r in (run_a, run_b)]
    rows = [load_run(r) for r in runs]
    if rows[0].scenario != rows[1].scenario:
        raise UserError(f"runs are on different scenarios: {rows[0].scenario!r} vs {rows[1].scenario!r}")
    manifest = runs[0].manifest()
    if not manifest.get("data"):
        raise UserError(f"{runs[0].manifest_path}: no \"data\" (the dataset folder with history images)")
    dataset = Dataset(manifest["data"])
    samples = {s.sample_id: s for s in dataset.samples()}
    common = sorted(runs[0].image_ids() & runs[1].image_ids() & set(samples))
    if not common:
        raise UserError(f"{runs[0]} and {runs[1]} share no generated sample of dataset {dataset.root}")
    final = Path(out)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UserError(f"output folder {final} is not empty")
    if not base_url.startswith(("http://", "https://")):
        warnings.warn(f"image URLs in batch.csv are relative ({base_url or 'no --base-url'}): MTurk workers "
                      f"see the images only if --base-url names where {final.name}/ is hosted (https://...)",
                      stacklevel=2)
    with fileio.atomic_dir(final) as tmp:
        return _write_kit(tmp, runs, rows, dataset, samples, common, aspect, n, checks, seed, base_url)


def _write_kit(out: Path, runs: list[RunFolder], rows: list, dataset, samples: dict, common: list[str],
               aspect: str, n: int, checks: int, seed: int, base_url: str) -> dict:
    """The kit's files, written into ``out`` (a fresh folder)."""
    scenario = rows[0].scenario
    rng = np.random.default_rng(seed)
    cases = sorted(rng.choice(common, size=min(n, len(common)), replace=False).tolist())
    store = _ImageStore(out)
    kit_id = hashlib.sha256(f"{runs[0]}|{runs[1]}|{aspect}|{seed}|{n}".encode()).hexdigest()[:8]
    labels = [r.label for r in rows]

    def context_images(s) -> dict[str, str]:
        if aspect == "personalization":
            return {f"history_{i + 1}": store.add(dataset.image_path(h)) for i, h in enumerate(s.history)}
        return {"reference": store.add(dataset.image_path(s.reference_id))}

    tasks, keys = [], []
    for sid in cases:
        s = samples[sid]
        a_side = SIDES[int(rng.integers(0, 2))]
        img_a, img_b = (store.add(run.image_path(sid)) for run in runs)
        left, right = (img_a, img_b) if a_side == "left" else (img_b, img_a)
        tasks.append({**context_images(s), "left_image": left, "right_image": right})
        keys.append({"kind": "case", "sample_id": sid, "a_side": a_side, "gold": ""})
    noise = store.add_image(Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8), "RGB"))
    for sid in rng.choice(cases, size=checks, replace=True).tolist() if checks else []:
        s = samples[sid]
        images = context_images(s)
        copy = images["history_5"] if aspect == "personalization" else images["reference"]
        gold = SIDES[int(rng.integers(0, 2))]
        left, right = (copy, noise) if gold == "left" else (noise, copy)
        tasks.append({**images, "left_image": left, "right_image": right})
        keys.append({"kind": "check", "sample_id": sid, "a_side": "", "gold": gold})
    order = rng.permutation(len(tasks))
    tasks, keys = [tasks[i] for i in order], [keys[i] for i in order]
    text = question(aspect, scenario)
    image_cols = ([f"history_{i + 1}" for i in range(N_HISTORY)] if aspect == "personalization"
                  else ["reference"]) + ["left_image", "right_image"]
    batch, key_rows = [], []
    for i, (task, key) in enumerate(zip(tasks, keys, strict=True)):
        task_id = f"{kit_id}-{i:03d}"
        batch.append({"task_id": task_id, "question": text, **{c: base_url + task[c] for c in image_cols}})
        key_rows.append({"task_id": task_id, **key, "aspect": aspect, "scenario": scenario,
                         "a_label": labels[0], "b_label": labels[1]})
        page = render("human_eval_task.html.j2", aspect=aspect, question=text, mturk=False, title=task_id,
                      images={c: "../" + task[c] for c in image_cols})
        fileio.write_text(out / "tasks" / f"{task_id}.html", page)
    fileio.write_text(out / "batch.csv", pd.DataFrame(batch).to_csv(index=False, lineterminator="\n"))
    fileio.write_text(out / "key.csv", pd.DataFrame(key_rows).to_csv(index=False, lineterminator="\n"))
    fileio.write_text(out / "hit_template.html", render(
        "human_eval_task.html.j2", aspect=aspect, question="${question}", mturk=True, title="HIT",
        images={c: "${" + c + "}" for c in image_cols}))
    fileio.write_text(out / "index.html", render("human_eval_index.html.j2", question=text, aspect=aspect,
                                             task_ids=[b["task_id"] for b in batch]))
    info = {"kit_id": kit_id, "aspect": aspect, "scenario": scenario, "question": text, "seed": seed,
            "runs": {"a": str(runs[0]), "b": str(runs[1])}, "labels": {"a": labels[0], "b": labels[1]},
            "cases": len(cases), "checks": checks, "tasks": len(batch), "requested": n,
            "notices": sorted({r.notice for r in rows if r.notice})}
    fileio.write_json(out / "kit.json", info)
    return info


# ---------------------------------------------------------------- scoring


def _column(df: pd.DataFrame, names: Sequence[str], path: Path) -> str:
    for c in names:
        if c in df.columns:
            return c
    raise UserError(f"{path}: no {' / '.join(names)} column")


def read_responses(path: Path) -> pd.DataFrame:
    """A results CSV as task_id, worker_id, choice (MTurk's Input./Answer. columns or plain ones)."""
    if not path.is_file():
        raise UserError(f"missing file: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read CSV {path}: {exc}") from None
    task = _column(df, ["Input.task_id", "task_id"], path)
    choice = _column(df, ["Answer.choice", "choice"], path)
    worker = _column(df, ["WorkerId", "worker_id"], path)
    if "AssignmentStatus" in df.columns:
        df = df[df["AssignmentStatus"] != "Rejected"]
    out = pd.DataFrame({"task_id": df[task].str.strip(), "worker_id": df[worker].str.strip(),
                        "choice": df[choice].str.strip().str.lower()})
    bad = out[~out["choice"].isin(SIDES)]
    if len(bad):
        raise UserError(f"{path}: answer {bad['choice'].iloc[0]!r} for task {bad['task_id'].iloc[0]} "
                        "is neither left nor right")
    return out


def _read_key(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"missing answer key: {path} (pass --key KIT/key.csv)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("task_id", "kind", "a_side", "gold", "aspect", "scenario", "a_label", "b_label",
                           "sample_id") if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def score_responses(responses: Sequence[str | Path], keys: Sequence[str | Path] = (), seed: int = 0,
                    n_boot: int = DEFAULT_N_BOOT) -> pd.DataFrame:
    """Preference rate of run A per (aspect, scenario, comparison), CIs over cases, exclusions counted."""
    if not responses:
        raise UserError("give at least one responses CSV")
    key_paths = [Path(k) for k in keys] or [Path(r).parent / "key.csv" for r in responses]
    key = pd.concat([_read_key(p) for p in dict.fromkeys(key_paths)], ignore_index=True)
    key = key.drop_duplicates("task_id").set_index("task_id")
    answers = pd.concat([read_responses(Path(r)) for r in responses], ignore_index=True)
    if answers.empty:
        raise UserError(f"no answers in {', '.join(map(str, responses))} (a header only?)")
    unknown = answers[~answers["task_id"].isin(key.index)]
    if len(unknown):
        raise UserError(f"task {unknown['task_id'].iloc[0]!r} is not in the answer key "
                        f"({', '.join(str(p) for p in dict.fromkeys(key_paths))})")
    answers = answers.join(key, on="task_id")
    answers["kit"] = answers["task_id"].str.rsplit("-", n=1).str[0]
    checks = answers[answers["kind"] == "check"]
    failed = checks[checks["choice"] != checks["gold"]]
    bad_workers = set(zip(failed["kit"], failed["worker_id"], strict=True))
    cases = answers[answers["kind"] == "case"].copy()
    if cases.empty:
        raise UserError("the answers hold attention checks only: no case to score")
    cases["excluded"] = [(k, w) in bad_workers for k, w in zip(cases["kit"], cases["worker_id"], strict=True)]
    cases["won"] = (cases["choice"] == cases["a_side"]).astype(float)
    records = []
    groups = cases.groupby(["aspect", "scenario", "a_label", "b_label"], sort=False)
    for (aspect, scenario, a, b), g in groups:
        kept = g[~g["excluded"]]
        rate, lo, hi = cluster_bootstrap_mean(kept["won"].to_numpy(), kept["sample_id"].to_numpy(),
                                              n_boot=n_boot, seed=seed)
        kits = set(g["kit"])
        kit_checks = checks[checks["kit"].isin(kits)]
        records.append({
            "method": a, "aspect": aspect, "scenario": scenario, "versus": b, "preferred_rate": rate,
            "ci95_pct": (hi - lo) / 2 * 100 if math.isfinite(lo) else float("nan"), "lo": lo, "hi": hi,
            "n_judgments": len(kept), "n_cases": kept["sample_id"].nunique(),
            "n_workers": kept["worker_id"].nunique(),
            "excluded_judgments": int(g["excluded"].sum()),
            "excluded_workers": len({w for k, w in bad_workers if k in kits}),
            "checks_answered": len(kit_checks),
            "checks_failed": int((kit_checks["choice"] != kit_checks["gold"]).sum()),
        })
    return pd.DataFrame.from_records(records)


def _cell(rate: float, pct: float) -> str:
    return "-" if not math.isfinite(rate) else f"{rate:.2f}±{pct:.2f}%"


def check_format(fmt: str) -> None:
    if fmt not in SCORE_FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(SCORE_FORMATS)})")


def render_table2(df: pd.DataFrame, fmt: str = "md", paper: bool = False) -> str:
    """Table 2's layout: rows aspect x scenario, one column per compared method; or the flat CSV."""
    check_format(fmt)
    if fmt == "csv":
        return df.to_csv(index=False, lineterminator="\n")
    theirs = paper_table("table2") if paper else None
    lines = []
    for method, g in df.groupby("method", sort=False):
        versus = list(dict.fromkeys(g["versus"]))
        lines += [f"| {method} | | " + " | ".join(versus) + " |", "|---|---|" + "--:|" * len(versus)]
        for (aspect, scenario), rows in g.groupby(["aspect", "scenario"], sort=False):
            cells = []
            for v in versus:
                hit = rows[rows["versus"] == v]
                cell = _cell(hit["preferred_rate"].iloc[0], hit["ci95_pct"].iloc[0]) if len(hit) else "-"
                if theirs is not None:
                    ref = theirs[(theirs["aspect"] == aspect) & (theirs["scenario"] == scenario)
                                 & (theirs["versus"].str.lower() == v.lower())]
                    if len(ref):
                        printed = _cell(ref["pigeon_preferred_rate"].iloc[0], ref["ci95_pct"].iloc[0])
                        cell += f" (paper {printed})"
                cells.append(cell)
            lines.append(f"| {ASPECT_TITLES.get(aspect, aspect)} | {scenario} | " + " | ".join(cells) + " |")
        lines.append("")
    excl = df[["excluded_judgments", "checks_failed", "checks_answered"]].sum()
    lines.append(f"Share of binary choices won by the first method, ± half the 95% CI (percentage points, "
                 f"bootstrap over cases). Attention checks failed: {int(excl['checks_failed'])} of "
                 f"{int(excl['checks_answered'])}; judgments excluded (workers who failed a check): "
                 f"{int(excl['excluded_judgments'])}.")
    return "\n".join(lines) + "\n"

