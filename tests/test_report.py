"""Table 1 / ablation / sweep reports: the paper's own table, marks, formats, notices, HTML, CLI errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_report_fixtures import (  # noqa: F401 - cli_fixture provides the cli fixture
    assert_one_line_error,
    base_scores,
    cli_fixture,
    make_dataset,
    write_run,
    write_sweep,
)

from pigeon_bench.errors import UserError
from pigeon_bench.profiles import TINY_NOTICE as TINY_PROFILE_NOTICE
from pigeon_bench.reports import (
    TABLE1_COLUMNS,
    Row,
    Table,
    build_ablation,
    build_report,
    format_value,
    load_run,
    marks,
    paper_table,
    plot_sweeps,
)
from pigeon_bench.reports.render_md import render_markdown

RESULTS_PAPER = Path(__file__).resolve().parents[1] / "results" / "paper"  # the tool's committed output

CSV_HEAD = ["method", "group", "overall", "p_cs", "p_cis", "p_dis", "p_lpips", "p_msssim", "a_cs", "a_cis",
            "a_dis", "fid", "n"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    data = make_dataset(root / "data")
    runs = {
        "ti": write_run(root / "ti", base_scores(seed=1), data=data),
        "pmg": write_run(root / "pmg", base_scores(seed=2, shift=2), method="pmg", label="PMG",
                         group="LLM-based", data=data, image_seed=1),
        "grd": write_run(root / "grd", base_scores(seed=3, shift=9), method="grd", label="Grd",
                         group="Reference", data=data, fid=None, image_seed=2),
        "hist": write_run(root / "hist", base_scores(seed=4, shift=8), method="hist", label="Hist",
                          group="Sanity", data=data, image_seed=3),
    }
    sweep = write_sweep(root / "pigeon", data)
    write_run(sweep / "selected", base_scores(seed=5, shift=1), method="pigeon", label="Pigeon",
              group="LMM-based", data=data, selection="test-time best of 11", image_seed=4)
    runs["pigeon"] = sweep
    runs["data"] = data
    return runs


def _md_rows(text: str, keep_n: bool = False) -> list[list[str]]:
    """The table's body rows as cells; without the n column unless ``keep_n``."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ")]
    at = lines[0].index("n")
    return [r if keep_n else r[:at] + r[at + 1:] for r in lines if r[0] not in ("Group", "Variant")]


@pytest.mark.parametrize("scenario", ["sticker", "movie"])
def test_paper_table1_reproduces_the_printed_overall(scenario):
    paper = paper_table("table1")
    paper = paper[paper["scenario"] == scenario]
    md = build_report([], scenario=scenario, fmt="md", paper=True)
    rows = {r[1]: r for r in _md_rows(md)}
    assert list(rows) == list(paper["method"])
    for p in paper.to_dict("records"):
        cells = [re.sub(r"\*\*|</?u>", "", c) for c in rows[p["method"]][2:]]
        assert cells[0] == f"{p['overall']:.2f}"  # recomputed from CIS and CS, printed as the paper prints it
        for m, cell in zip(TABLE1_COLUMNS[1:], cells[1:], strict=True):
            expected = "-" if pd.isna(p[m]) else format_value(p[m], 4 if m in ("p_lpips", "p_msssim") else 2)
            assert cell == expected
    latex = build_report([], scenario=scenario, fmt="latex", paper=True)
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert r"\multicolumn{5}{c}{Personalization}" in latex
    for p in paper.to_dict("records"):
        assert f"{p['overall']:.2f}" in latex


def test_paper_marks_follow_the_rule():
    md = build_report([], scenario="sticker", paper=True)
    rows = {r[1]: r for r in _md_rows(md)}
    assert rows["TI"][2] == "**36.91**" and rows["LaVIT*"][2] == "<u>34.56</u>"  # Overall
    assert rows["LaVIT*"][6] == "**0.6855**" and rows["LaVIT"][6] == "<u>0.7377</u>"  # LPIPS: lower is better
    assert rows["Grd"][10] == "100.00"  # Reference rows are never marked
    assert rows["Grd"][11] == "-"  # Grd has no FID


def test_format_value_rounds_half_up_like_the_paper():
    assert format_value(36.905, 2) == "36.91"
    assert format_value((40.90 + 32.91) / 2, 2) == "36.91"
    assert format_value(22.075, 2) == "22.08"
    assert format_value(0.68555, 4) == "0.6856"
    assert format_value(-0.004, 2) == "0.00" and format_value(-0.005, 2) == "-0.01"
    assert format_value(float("nan"), 2) == "-"


def _row(label, value, group="DM-based", source="ours"):
    return Row(label=label, method=label.lower(), group=group, scenario="sticker", source=source,
               mean={"p_cis": value, "p_lpips": value})


def test_marks_ties_reference_sources_and_direction():
    rows = [_row("a", 10.001), _row("b", 10.004), _row("c", 9.0), _row("d", 8.0),
            _row("ref", 99.0, "Reference"), _row("sane", 98.0, "Sanity"), _row("nan", float("nan")),
            _row("p1", 5.0, source="paper"), _row("p2", 4.0, source="paper")]
    got = marks(rows, "p_cis")
    # a and b print the same (10.00): both best; the next distinct printed value is second.
    assert got == {0: "best", 1: "best", 2: "second", 7: "best", 8: "second"}
    low = marks(rows, "p_lpips")  # lower is better
    assert low[3] == "best" and low[2] == "second" and 0 not in low
    assert marks([_row("x", 1.0), _row("y", 1.0)], "p_cis") == {0: "best", 1: "best"}


def test_fixed_alpha_rows_beside_a_selection_are_not_ranked():
    from dataclasses import replace

    pigeon = _row("pigeon", 20.0, "LMM-based")
    rows = [replace(pigeon, selection="test-time best of 11"),
            replace(pigeon, mean={"p_cis": 30.0}, alpha_r=0.3),
            _row("ti", 10.0), replace(_row("lavit", 25.0, "LMM-based"), alpha_r=0.5)]
    # the α_r=0.3 row is Pigeon's own sweep (not ranked); LaVIT's fixed α_r run has no selection: ranked
    assert marks(rows, "p_cis") == {3: "best", 0: "second"}
    table = Table(title="Sticker", scenario="sticker", columns=("p_cis",), rows=rows)
    assert "fixed-α_r rows beside a selection excluded" in render_markdown([table], ci=False)
    assert "beside a selection" not in render_markdown([replace(table, rows=rows[2:])], ci=False)


def test_report_of_runs_with_paper_rows_beside(world):
    runs = [world[k] for k in ("ti", "pmg", "grd", "hist", "pigeon")]
    md = build_report(runs, paper=True)
    assert TINY_PROFILE_NOTICE in md
    assert "Movie poster" not in md  # the paper's rows of the runs' scenarios only
    labels = [r[1] for r in _md_rows(md)]
    assert labels.index("TI (paper)") == labels.index("TI") + 1
    assert labels.index("PMG (paper)") == labels.index("PMG") + 1
    assert "Pigeon (test-time best of 11)" in labels  # a sweep folder stands for its selected run
    assert labels.index("Hist") == len(labels) - 1  # Sanity goes last
    rows = {r[1]: r for r in _md_rows(md)}
    assert re.fullmatch(r"\S+ \[\S+, \S+\]", rows["TI"][3])  # value and its CI
    # Grd (Reference) and Hist (Sanity) have the highest values but are never marked.
    assert "**" not in "".join(rows["Grd"]) and "**" not in "".join(rows["Hist"])
    assert rows["Recon (paper)"][0] == "Reference" and rows["Hist"][0] == "Sanity"


def test_a_folder_of_runs_and_a_sweep_stand_for_their_scored_runs(world, tmp_path):
    runs = [world[k] for k in ("ti", "pmg", "grd", "hist", "pigeon")]
    labels = [r[1] for r in _md_rows(build_report(runs))]
    assert labels[labels.index("Pigeon (test-time best of 11)") + 1:][:3] == [
        "Pigeon (α_r=0.0)", "Pigeon (α_r=0.5)", "Pigeon (α_r=1.0)"]  # a sweep: its selection, then its α_r
    assert [r[1] for r in _md_rows(build_report([world["ti"].parent]))] == labels  # what `run` writes
    again = build_report([world["pigeon"], world["pigeon"] / "selected", world["pigeon"] / "alpha_r=0.5"])
    assert len(_md_rows(again)) == 4  # each run once
    valid = tmp_path / "runs"
    shutil.copytree(world["ti"], valid / "ti")
    write_run(valid / "ti-valid", base_scores(seed=9), data=world["data"])
    manifest = valid / "ti-valid" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"split": "test"', '"split": "valid"'))
    assert [r[1] for r in _md_rows(build_report([valid]))] == ["TI"]  # valid-split runs only select


def test_sweep_rows_order_and_labels(world, tmp_path):
    sweep = tmp_path / "pigeon"
    shutil.copytree(world["pigeon"], sweep)
    write_run(sweep / "valid-chosen", base_scores(seed=6), method="pigeon", label="Pigeon", group="LMM-based",
              data=world["data"], selection="fixed α_r=0.5 chosen on valid", alpha_r=0.5)
    runs = [sweep / "alpha_r=1.0", sweep / "alpha_r=0.0", sweep / "valid-chosen", sweep / "selected",
            sweep / "alpha_r=0.5", world["ti"]]
    labels = [r[1] for r in _md_rows(build_report(runs))]
    assert labels == ["TI", "Pigeon (test-time best of 11)", "Pigeon (fixed α_r=0.5 chosen on valid)",
                      "Pigeon (α_r=0.0)", "Pigeon (α_r=0.5)", "Pigeon (α_r=1.0)"]


def test_csv_contract(world):
    text = build_report([world["ti"], world["grd"]], fmt="csv", paper=True)
    df = pd.read_csv(pd.io.common.StringIO(text))
    assert list(df.columns[:13]) == CSV_HEAD
    for m in TABLE1_COLUMNS:
        assert f"{m}_lo" in df.columns and f"{m}_hi" in df.columns
    ti = df[df["method"] == "TI"].iloc[0]
    scores = pd.read_parquet(world["ti"] / "scores.parquet")
    assert ti["p_cis"] == pytest.approx(scores["p_cis"].mean())
    assert ti["overall"] == pytest.approx((scores["p_cis"].mean() + scores["a_cs"].mean()) / 2)
    assert ti["p_cis_lo"] < ti["p_cis"] < ti["p_cis_hi"] and ti["n"] == len(scores)
    assert ti["notice"] == TINY_PROFILE_NOTICE
    grd = df[df["method"] == "Grd"].iloc[0]
    assert pd.isna(grd["fid"])
    assert set(df[df["source"] == "paper"]["method"]) >= {"TI (paper)", "Recon (paper)"}


def test_latex_booktabs_and_notice(world):
    latex = build_report([world["ti"], world["pmg"]], fmt="latex", ci=False)
    assert r"\toprule" in latex and r"\midrule" in latex and "tiny profile" in latex
    assert r"\textbf{" in latex and r"\underline{" in latex and r"\scriptsize" not in latex


def test_html_is_self_contained_with_cases(world):
    html = build_report([world["ti"], world["pmg"], world["pigeon"]], fmt="html", n_cases=3)
    assert TINY_PROFILE_NOTICE in html
    assert not re.search(r"(src|href)=\"(https?:|/|file:)", html)  # nothing outside the file
    assert html.count('class="case"') == 3
    assert html.count("data:image/jpeg;base64,") == 3 * (5 + 1 + 3)  # history, reference, 3 outputs per case
    assert "Pers. CIS" in html and "Pigeon (test-time best of 11)" in html


def test_html_renders_in_headless_chromium(world, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): render check skipped")
    page = tmp_path / "report.html"
    page.write_text(build_report([world["ti"], world["pmg"]], fmt="html", n_cases=2), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # rendered text, table and thumbnails, not a blank page


def test_ablation_table(world):
    named = [("Pigeon", world["pigeon"]), ("w/o encoding", world["ti"])]
    md = build_ablation(named, fmt="md", paper=True)
    rows = {r[0]: r for r in _md_rows(md)}
    assert set(rows) >= {"Pigeon", "w/o encoding", "w/o encoding (paper)", "Pigeon (paper)"}
    assert rows["Pigeon (paper)"][1:] == ["61.64", "0.6800", "25.74"]
    assert "| Variant | n | Pers. CIS ↑ | Pers. LPIPS ↓ | Sem. CS ↑ |" in md and "Overall" not in md
    n = {r[0]: r[1] for r in _md_rows(md, keep_n=True)}
    assert n["Pigeon (paper)"] == "-" and n["Pigeon"] == str(load_run(world["pigeon"]).n)
    csv = pd.read_csv(pd.io.common.StringIO(build_ablation(named, fmt="csv", columns=("p_cis", "fid"))))
    assert list(csv.columns[:3]) == ["variant", "p_cis", "fid"] and len(csv) == 2


def test_plot_sweeps(world, tmp_path):
    other = write_sweep(tmp_path / "other", world["data"], label="Pigeon stage 1")
    out = plot_sweeps([world["pigeon"], other], tmp_path / "fig4.png", ("p_cis", "a_cs", "p_lpips"))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 2 * im.height
    named = plot_sweeps([f"stage 1={world['pigeon']}", f"stage 2={other}"], tmp_path / "named.png")
    assert named.is_file()
    movie_data = make_dataset(tmp_path / "mdata", scenario="movie")
    movie = write_sweep(tmp_path / "movie", movie_data, scenario="movie")
    with pytest.raises(UserError, match="sweeps of different scenarios"):
        plot_sweeps([world["pigeon"], movie], tmp_path / "mixed.png")
    hsweep = write_sweep(tmp_path / "h", world["data"], param="alpha_h")
    with pytest.raises(Exception, match="different parameters"):
        plot_sweeps([world["pigeon"], hsweep], tmp_path / "x.png")


def test_cli_paper_only_report(cli, tmp_path):
    r = cli("report", "--paper", "--scenario", "sticker")
    assert r.exit_code == 0 and "**36.91**" in r.stdout and "Movie" not in r.stdout
    r = cli("report", "--paper", "--format", "latex", "--out", tmp_path / "t1.tex")
    assert r.exit_code == 0 and r"\toprule" in (tmp_path / "t1.tex").read_text()


def test_cli_ablation_and_plot(cli, world, tmp_path):
    r = cli("report", "--ablation", f"Pigeon={world['pigeon']}", "--ablation", f"w/o x={world['ti']}")
    assert r.exit_code == 0 and "w/o x" in r.stdout
    r = cli("plot-sweep", world["pigeon"], "--out", tmp_path / "f.png", "--metric", "overall")
    assert r.exit_code == 0 and (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["report"], "nothing to report"),
    (["report", "--paper", "--format", "docx"], "unknown format 'docx'"),
    (["report", "--paper", "--scenario", "comics"], "unknown scenario 'comics'"),
    (["report", "{tmp}/nowhere"], "run folder not found"),
    (["report", "{ti}", "--scenario", "movie"], "scenario 'sticker', not 'movie'"),
    (["report", "{ti}", "--ablation", "a={ti}"], "not both"),
    (["report", "--ablation", "no-equals-sign"], "expected NAME=RUN"),
    (["report", "--ablation", "a={ti}", "--metric", "psnr"], "unknown metric(s) psnr"),
    (["report", "{ti}", "--metric", "p_cis"], "--ablation tables only"),
    (["report", "{empty}"], "no scored run there"),
    (["report", "{broken}"], "missing metric(s) fid"),
    (["plot-sweep", "{ti}", "--out", "{tmp}/x.png"], "no sub-runs"),
    (["plot-sweep", "{pigeon}", "--out", "{tmp}/x.svg"], "PNG"),
])
def test_cli_usage_errors_are_one_line(cli, world, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(world["ti"], broken)
    text = (broken / "summary.json").read_text().replace('"fid"', '"fidx"')
    (broken / "summary.json").write_text(text)
    fill = {"tmp": tmp_path, "ti": world["ti"], "empty": tmp_path / "empty", "broken": broken,
            "pigeon": world["pigeon"]}
    assert_one_line_error(cli(*[a.format(**fill) for a in args]), message)


@pytest.mark.parametrize("fmt, name", [("md", "table1.md"), ("latex", "table1.tex")])
def test_committed_paper_table_is_the_tools_output(fmt, name):
    assert (RESULTS_PAPER / name).read_text(encoding="utf-8") == build_report([], fmt=fmt, paper=True)


def test_the_paper_tables_and_templates_ship_inside_the_package():
    from importlib import resources

    from pigeon_bench.reports.paper import PAPER_TABLES, paper_table_file

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    package = Path(str(resources.files("pigeon_bench"))).resolve()
    for name in ("table1", "table2", "table3", "table4"):
        source = paper_table_file(name)
        assert source.is_file() and Path(str(source)).resolve().is_relative_to(package), name
    assert not list(RESULTS_PAPER.glob("*.csv"))  # one source of truth: the package's copy
    pyproject = tomllib.loads((RESULTS_PAPER.parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pigeon_bench"]
    shipped = {p.relative_to(package).as_posix() for pattern in patterns for p in package.glob(pattern)}
    needed = {p.relative_to(package).as_posix() for folder in (PAPER_TABLES, "templates")
              for p in (package / folder).iterdir() if p.suffix in (".csv", ".j2")}
    assert needed and needed <= shipped


def test_runs_of_different_sample_counts_are_refused_or_ranked_on_the_shared_samples(world, tmp_path):
    full = base_scores(seed=1)
    small = write_run(tmp_path / "pmg", base_scores(seed=2, shift=2).head(3), method="pmg", label="PMG",
                      group="LLM-based", data=world["data"])
    with pytest.raises(UserError, match=r"different numbers of samples \(n = 3: PMG; n = 12: TI\)"):
        build_report([world["ti"], small])
    md = build_report([world["ti"], small], common_samples=True, ci=False)
    rows = {r[1]: r for r in _md_rows(md, keep_n=True)}
    assert rows["TI"][2] == rows["PMG"][2] == "3"  # both on the 3 shared samples, n shown
    cis = TABLE1_COLUMNS.index("p_cis") + 3
    assert re.sub(r"\*\*|</?u>", "", rows["TI"][cis]) == format_value(full["p_cis"].head(3).mean(), 2)
    assert rows["TI"][TABLE1_COLUMNS.index("fid") + 3] == "-"  # FID cannot be recomputed without features
