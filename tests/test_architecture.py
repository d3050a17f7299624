"""The architecture's contracts: no import cycles, pigeon/ and baselines/ never import each other, one owner
per contract (run-folder file names, profile names), the artifact cache's guarantees, the Python API."""

from __future__ import annotations

import ast
import doctest
import os
import re
import stat
from pathlib import Path

import pytest

from pigeon_bench import artifacts

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pigeon_bench", "pigeon", "baselines")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str, known: set[str], top_level_only: bool) -> set[str]:
    """Project modules that ``path`` imports (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module:
            parent = module.split(".")[:-node.level]
            base = node.module if node.level == 0 else ".".join([*parent, node.module])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known}


def test_no_import_cycles_and_method_packages_import_only_the_toolkit():
    mods = modules()
    known = set(mods)
    graph = {m: imports(p, m, known, top_level_only=True) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join([*stack, m, n])}"
            if n not in state:
                visit(n, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    for m, p in mods.items():
        anywhere = imports(p, m, known, top_level_only=False)
        for a, b in (("pigeon", "baselines"), ("baselines", "pigeon")):
            if m == a or m.startswith(a + "."):
                assert not [n for n in anywhere if n == b or n.startswith(b + ".")], f"{m} imports {b}"
        if m.startswith("pigeon_bench"):  # the toolkit knows methods only through the registries
            assert not [n for n in imports(p, m, known, True) if n.split(".")[0] in ("pigeon", "baselines")]


def sources(exclude: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for m, p in modules().items():
        if not any(m == e or m.startswith(e + ".") for e in exclude):
            out[m] = p.read_text()
    return out


def test_only_the_run_folder_module_spells_run_folder_file_names():
    names = re.compile(r"manifest\.json|scores\.parquet|summary\.json|selection\.parquet|valid-chosen")
    hits = {m for m, text in sources(("pigeon_bench.runs.folder",)).items() if names.search(text)}
    assert not hits, f"run-folder file names spelled outside pigeon_bench.runs.folder: {sorted(hits)}"


def test_only_the_profile_module_interprets_profile_names():
    """No comparison with "tiny" anywhere, nor with "paper" on a line about profiles (Pigeon's own
    mask_rules/prompt="paper" options name the paper's reading of a rule, not a profile)."""
    compare = r"""((==|!=|\bin)\s*["']{0}["']|["']{0}["']\s*(==|!=))"""
    tiny, paper = re.compile(compare.format("tiny")), re.compile(compare.format("paper"))
    hits = {m for m, text in sources(("pigeon_bench.profiles",)).items()
            if any(tiny.search(line) or (paper.search(line) and "profile" in line)
                   for line in text.splitlines())}
    assert not hits, f"profile names compared outside pigeon_bench.profiles: {sorted(hits)}"


def test_artifact_is_built_once_whole_and_resumable(tmp_path, monkeypatch):
    monkeypatch.setenv("PIGEON_BENCH_CACHE", str(tmp_path))
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.bin").write_bytes(b"x" * 10)

    first = artifacts.ensure("models", "abc", build)
    assert artifacts.ensure("models", "abc", build) == first and len(calls) == 1
    assert first == tmp_path / "models" / "abc" and artifacts.is_done(first)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(first.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's 0700

    def killed(folder: Path) -> None:
        (folder / "step-1").write_text("saved")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.ensure("ckpt", "k", killed, resumable=True)
    assert not (tmp_path / "ckpt" / "k").exists()  # nothing half-made in place
    seen = []
    artifacts.ensure("ckpt", "k", lambda f: seen.append(sorted(p.name for p in f.iterdir())), resumable=True)
    assert seen == [["step-1"]]  # the resumable builder continues from what the killed one saved
    with pytest.raises(KeyboardInterrupt):
        artifacts.ensure("other", "k", killed)
    artifacts.ensure("other", "k", lambda f: seen.append(sorted(p.name for p in f.iterdir())))
    assert seen[-1] == []  # any other builder starts afresh


def test_update_json_keeps_every_writer_entry(tmp_path):
    path = tmp_path / "memo.json"
    artifacts.update_json(path, lambda m: {**m, "a": 1})
    artifacts.update_json(path, lambda m: {**m, "b": 2})
    assert artifacts.update_json(path, lambda m: m) == {"a": 1, "b": 2}
    path.write_text("{broken")
    assert artifacts.update_json(path, lambda m: {**m, "c": 3}) == {"c": 3}


def test_the_python_api_docstring_runs():
    import pigeon_bench

    result = doctest.testmod(pigeon_bench, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0
    with pytest.raises(AttributeError):
        pigeon_bench.nothing_here  # noqa: B018
