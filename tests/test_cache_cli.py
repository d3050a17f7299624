"""`pigeon-bench cache info|prune|clear|budget`."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from pigeon_bench import artifacts
from pigeon_bench.cli import App
from pigeon_bench.cli import cache as cache_cli
from pigeon_bench.metrics import cache as C
from pigeon_bench.metrics.pairs import PairStore, pair_namespace

NS = "clip/0123456789abcdef-test"


@pytest.fixture
def cli():
    app = typer.Typer(cls=App, rich_markup_mode=None)
    cache_cli.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["cache", *map(str, args)])


@pytest.fixture
def filled(tmp_path):
    """A cache with features (compact and bulky), pair values, one artifact and the last run's counters."""
    store = C.FeatureStore(tmp_path, budget=None, memory_bytes=0)
    store.put_many(NS, {f"{i:064x}": {"emb": torch.randn(256)} for i in range(30)})
    store.put("lpips-vgg/0123456789abcdef-test", "a" * 64, {"l0": torch.randn(64, 32, 32)})
    store.get_many(NS, [f"{i:064x}" for i in range(40)])  # 30 hits, 10 misses
    pairs = PairStore(tmp_path, budget=None)
    pairs.put_many(pair_namespace("p_lpips", "f" * 64, "rgb"), {("a" * 64, "b" * 64): 0.25})
    store.close()
    pairs.close()
    artifacts.ensure("tiny-models", "clip-v1", lambda work: (work / "model.bin").write_bytes(b"x" * 5000),
                     root=tmp_path)
    return tmp_path


def test_info_shows_sizes_entries_the_last_runs_hit_rate_and_the_artifacts(cli, filled):
    out = cli("info", "--cache-dir", filled)
    assert out.exit_code == 0, out.output
    assert f"features/{NS}: 30 entries" in out.output
    assert "features/lpips-vgg/0123456789abcdef-test: 1 entries (1 in files of their own)" in out.output
    assert "features:clip:" in out.output and "pairs:p_lpips:" in out.output
    assert "features 75.0% hits of 40 lookups" in out.output
    assert "tiny-models/clip-v1:" in out.output
    data = json.loads(cli("info", "--cache-dir", filled, "--json").output)
    assert {ns["namespace"]: ns["entries"] for ns in data["namespaces"]}[NS] == 30
    assert data["last_run"]["features"]["total"]["hits"] == 30
    assert data["last_run"]["features"]["total"]["hit_rate"] == pytest.approx(0.75)
    assert [f["state"] for f in data["folders"]] == ["artifact"]
    assert data["bytes"] == C.disk_usage(filled)


def test_prune_removes_what_no_running_job_uses(cli, filled):
    out = cli("prune", "--cache-dir", filled, "--to", "0")
    assert out.exit_code == 0, out.output
    assert sum(ns.entries for ns in C.store_info(filled).namespaces) == 0
    assert artifacts.is_done(filled / "tiny-models" / "clip-v1")  # artifacts are not the store's


def test_clear_refuses_while_a_store_runs_unless_forced(cli, filled):
    running = C.FeatureStore(filled, budget=None)
    running.get(NS, "0" * 64)
    out = cli("clear", "--cache-dir", filled)
    assert out.exit_code == 2 and out.output.startswith("error: the store is in use")
    out = cli("clear", "--cache-dir", filled, "--pairs", "--force")
    assert out.exit_code == 0 and "removed pairs" in out.output
    assert not (filled / C.PAIRS).exists() and (filled / C.FEATURES).exists()
    running.close()
    assert cli("clear", "--cache-dir", filled).exit_code == 0
    assert C.disk_usage(filled) == 0 and artifacts.is_done(filled / "tiny-models" / "clip-v1")


def test_budget_is_saved_and_the_environment_wins(cli, tmp_path, monkeypatch):
    monkeypatch.delenv(C.BUDGET_ENV, raising=False)
    assert "budget: 5.0 GB" in cli("budget", "5GB", "--cache-dir", tmp_path).output
    assert C.budget(tmp_path) == 5 * 10**9
    monkeypatch.setenv(C.BUDGET_ENV, "7GB")
    assert f"budget: 7.0 GB (${C.BUDGET_ENV})" in cli("budget", "--cache-dir", tmp_path).output
    out = cli("budget", "lots", "--cache-dir", tmp_path)
    assert out.exit_code == 2 and out.output.startswith("error: not a size")
    monkeypatch.delenv(C.BUDGET_ENV)
    cli("budget", "none", "--cache-dir", tmp_path)
    out = cli("prune", "--cache-dir", tmp_path)
    assert out.exit_code == 2 and "unbounded" in out.output
