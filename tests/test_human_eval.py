"""Human-evaluation kit: make (MTurk batch shape, paper questions, randomized sides, checks) and score."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_fixtures import (  # noqa: F401 - cli_fixture provides the cli fixture
    assert_one_line_error,
    base_scores,
    cli_fixture,
    make_dataset,
    write_run,
)

from pigeon_bench.errors import UserError
from pigeon_bench.human_eval import S_QUESTION, make_kit, question, render_table2, score_responses

N_CASES = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("he")
    data = make_dataset(root / "data", n_samples=N_CASES)
    pigeon = write_run(root / "pigeon", base_scores(n=N_CASES), method="pigeon", label="Pigeon",
                       group="LMM-based", data=data, image_seed=7)
    ti = write_run(root / "ti", base_scores(n=N_CASES), data=data, image_seed=8)
    pmg = write_run(root / "pmg", base_scores(n=N_CASES), method="pmg", label="PMG", group="LLM-based",
                    data=data, image_seed=9)
    return {"pigeon": pigeon, "ti": ti, "pmg": pmg, "root": root}


def test_questions_are_the_papers():
    assert question("personalization", "sticker") == ("When provided with someone’s five previously liked "
                                                      "stickers, please select the next sticker that is more "
                                                      "attractive to her/him.")
    movie = ("When provided with someone’s five previously liked movies, please select the next movie poster "
             "that is more attractive to her/him.")
    assert question("personalization", "movie") == movie
    assert question("semantic_alignment", "movie") == S_QUESTION
    assert S_QUESTION == "Which image aligns more closely with the semantics of the reference image?"


def test_make_kit_layout(world, tmp_path):
    out = tmp_path / "kit"
    info = make_kit(world["pigeon"], world["ti"], "personalization", out, n=12, checks=3, seed=1)
    assert info["cases"] == 12 and info["checks"] == 3 and info["labels"] == {"a": "Pigeon", "b": "TI"}
    batch = pd.read_csv(out / "batch.csv")
    history = [f"history_{i}" for i in range(1, 6)]
    assert list(batch.columns) == ["task_id", "question", *history, "left_image", "right_image"]
    assert len(batch) == 15 and batch["task_id"].is_unique
    assert (batch["question"] == question("personalization", "sticker")).all()
    images = set(batch.drop(columns=["task_id", "question"]).to_numpy().ravel())
    assert all((out / p).is_file() for p in images)
    assert all(re.fullmatch(r"images/[0-9a-f]{16}\.png", p) for p in images)  # names hide the methods
    key = pd.read_csv(out / "key.csv", keep_default_na=False)
    assert (key["kind"] == "check").sum() == 3
    cases = key[key["kind"] == "case"]
    assert set(cases["a_side"]) == {"left", "right"}  # sides randomized
    # The side recorded in the key really holds run A's image.
    for _, k in cases.iterrows():
        row = batch[batch["task_id"] == k["task_id"]].iloc[0]
        shown = (out / row[f"{k['a_side']}_image"]).read_bytes()
        assert shown == (world["pigeon"] / "images" / f"{k['sample_id']}.png").read_bytes()
    template = (out / "hit_template.html").read_text()
    assert "${history_1}" in template and "${left_image}" in template and 'name="choice"' in template
    assert len(list((out / "tasks").glob("*.html"))) == 15 and (out / "index.html").is_file()


def test_make_kit_is_seeded(world, tmp_path):
    for name in ("a", "b"):
        make_kit(world["pigeon"], world["ti"], "semantic_alignment", tmp_path / name, n=8, seed=4)
    assert (tmp_path / "a" / "batch.csv").read_text() == (tmp_path / "b" / "batch.csv").read_text()
    assert (tmp_path / "a" / "key.csv").read_text() == (tmp_path / "b" / "key.csv").read_text()
    make_kit(world["pigeon"], world["ti"], "semantic_alignment", tmp_path / "c", n=8, seed=5)
    assert (tmp_path / "a" / "key.csv").read_text() != (tmp_path / "c" / "key.csv").read_text()
    batch = pd.read_csv(tmp_path / "a" / "batch.csv")
    assert list(batch.columns) == ["task_id", "question", "reference", "left_image", "right_image"]


def _simulate(kit: Path, workers: dict[str, float], cheater: str | None, seed: int = 0) -> Path:
    """MTurk-shaped results: each worker answers every HIT, picking run A with the given probability."""
    key = pd.read_csv(kit / "key.csv", keep_default_na=False)
    rng = np.random.default_rng(seed)
    rows = []
    for w, p_a in workers.items():
        for _, k in key.iterrows():
            if k["kind"] == "check":
                choice = k["gold"] if w != cheater else ("left" if k["gold"] == "right" else "right")
            else:
                a = k["a_side"]
                b = "right" if a == "left" else "left"
                choice = a if rng.random() < p_a else b
            rows.append({"HITId": f"H{k['task_id']}", "WorkerId": w, "AssignmentStatus": "Submitted",
                         "Input.task_id": k["task_id"], "Answer.choice": choice})
    path = kit / "responses.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_round_trip_make_answer_score(world, tmp_path):
    kit_ti = tmp_path / "ti"
    kit_pmg = tmp_path / "pmg"
    make_kit(world["pigeon"], world["ti"], "personalization", kit_ti, n=10, checks=2, seed=0)
    make_kit(world["pigeon"], world["pmg"], "personalization", kit_pmg, n=10, checks=2, seed=0)
    # Four honest workers always prefer Pigeon over TI; a fifth fails the checks and always picks TI.
    r_ti = _simulate(kit_ti, {"w1": 1.0, "w2": 1.0, "w3": 1.0, "w4": 1.0, "bad": 0.0}, cheater="bad")
    r_pmg = _simulate(kit_pmg, {"w1": 0.0, "w2": 0.0, "w3": 1.0, "w4": 1.0}, cheater=None)
    df = score_responses([r_ti, r_pmg], seed=0, n_boot=300)
    ti = df[df["versus"] == "TI"].iloc[0]
    assert ti["preferred_rate"] == 1.0 and ti["n_judgments"] == 40 and ti["n_cases"] == 10
    assert ti["excluded_workers"] == 1 and ti["excluded_judgments"] == 10
    assert ti["checks_failed"] == 2 and ti["checks_answered"] == 10
    pmg = df[df["versus"] == "PMG"].iloc[0]
    assert pmg["preferred_rate"] == 0.5 and pmg["excluded_judgments"] == 0 and pmg["checks_failed"] == 0
    # Every case is split 2-2, so resampling cases (not single judgments) cannot move the rate.
    assert pmg["lo"] == pmg["hi"] == 0.5
    assert pmg["ci95_pct"] == pytest.approx((pmg["hi"] - pmg["lo"]) * 50)
    md = render_table2(df, paper=True)
    assert md.splitlines()[0] == "| Pigeon | | TI | PMG |"
    assert ("| Personalization | sticker | 1.00±0.00% (paper 0.91±2.19%) | 0.50±0.00% (paper 0.89±1.79%) |"
            in md)
    assert "Attention checks failed: 2 of 18" in md and "excluded (workers who failed a check): 10" in md
    csv = pd.read_csv(pd.io.common.StringIO(render_table2(df, fmt="csv")))
    assert {"method", "aspect", "scenario", "versus", "preferred_rate", "ci95_pct"} <= set(csv.columns)


def test_cli_make_and_score(cli, world, tmp_path):
    kit = tmp_path / "kit"
    r = cli("human-eval", "make", world["pigeon"], world["ti"], "--aspect", "semantic_alignment", "--n", 6,
            "--out", kit, "--base-url", "https://example.org/kit/")
    assert r.exit_code == 0, r.stderr
    assert pd.read_csv(kit / "batch.csv")["left_image"].str.startswith("https://example.org/kit/images/").all()
    responses = _simulate(kit, {"w1": 1.0, "w2": 0.5}, cheater=None, seed=3)
    r = cli("human-eval", "score", responses, "--format", "csv")
    assert r.exit_code == 0 and "semantic_alignment,sticker,TI" in r.stdout


def test_failed_make_leaves_no_kit(world, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(world["ti"], broken)
    (broken / "images" / "s03.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="corrupt or unreadable image"):
        make_kit(world["pigeon"], broken, "semantic_alignment", tmp_path / "kit", n=N_CASES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no kit, no temporary folder


@pytest.mark.parametrize("args, message", [
    (["make", "{pigeon}", "{ti}", "--aspect", "beauty", "--out", "{tmp}/k"], "unknown aspect 'beauty'"),
    (["make", "{pigeon}", "{ti}", "--aspect", "personalization", "--n", "0", "--out", "{tmp}/k"],
     "--n must be at least 1"),
    (["make", "{pigeon}", "{ti}", "--aspect", "personalization", "--out", "{full}"], "is not empty"),
    (["score", "{tmp}/nothing.csv"], "missing"),
    (["score", "{bad_choice}"], "is neither left nor right"),
    (["score", "{unknown_task}"], "is not in the answer key"),
    (["score", "{no_worker}"], "no WorkerId / worker_id column"),
    (["score", "{good}", "--format", "pdf"], "unknown format 'pdf'"),
])
def test_usage_errors(cli, world, tmp_path, args, message):
    kit = tmp_path / "kit"
    make_kit(world["pigeon"], world["ti"], "personalization", kit, n=4, checks=1)
    key = pd.read_csv(kit / "key.csv")
    tid = key["task_id"].iloc[0]
    files = {}
    for name, frame in {
        "bad_choice": pd.DataFrame({"Input.task_id": [tid], "WorkerId": ["w"], "Answer.choice": ["middle"]}),
        "unknown_task": pd.DataFrame({"Input.task_id": ["z-0"], "WorkerId": ["w"],
                                      "Answer.choice": ["left"]}),
        "no_worker": pd.DataFrame({"Input.task_id": [tid], "Answer.choice": ["left"]}),
    }.items():
        files[name] = kit / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    files["good"] = _simulate(kit, {"w": 1.0}, cheater=None)
    fill = {"pigeon": world["pigeon"], "ti": world["ti"], "tmp": tmp_path, "full": kit, **files}
    assert_one_line_error(cli("human-eval", *[a.format(**fill) for a in args]), message)


def test_relative_image_urls_warn_and_header_only_answers_are_one_line(world, tmp_path):
    with pytest.warns(UserWarning, match="image URLs in batch.csv are relative"):
        make_kit(world["pigeon"], world["ti"], "personalization", tmp_path / "kit", n=4, checks=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an absolute --base-url: no warning
        make_kit(world["pigeon"], world["ti"], "personalization", tmp_path / "kit2", n=4, checks=1,
                 base_url="https://example.org/kit2/")
    empty = tmp_path / "kit" / "results.csv"
    empty.write_text("task_id,worker_id,choice\n")
    with pytest.raises(UserError, match=r"no answers in .*a header only"):
        score_responses([empty])
