"""`pigeon-bench cache info|prune|clear|budget`: the feature and pair stores and the artifact folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pigeon_bench.cli import group
from pigeon_bench.errors import UserError

cache_app = group("Show, prune and clear the cache (features, pair values, artifact folders) and set its "
                  "size budget.")

_ROOT = Annotated[Path | None, typer.Option("--cache-dir",
                                            help="Cache root (default: $PIGEON_BENCH_CACHE or the user cache "
                                                 "dir).")]


def _rate(counters: dict) -> str:
    lookups = counters["hits"] + counters["misses"]
    return f"{counters['hits'] / lookups:.1%}" if lookups else "-"


def _last_run(root: Path | None) -> dict | None:
    """The last process's counters per area, summed over namespaces (and per namespace)."""
    from pigeon_bench.metrics import cache as C

    runs = C.last_runs(root)
    if not runs:
        return None
    run = runs[-1]
    out = {"pid": run["pid"], "host": run["host"], "updated": run["updated"]}
    for area in C.AREAS:
        by_ns = run.get(area, {})
        totals = C.total({ns: C.Counters(**c) for ns, c in by_ns.items()})
        out[area] = {"total": {**vars(totals), "hit_rate": totals.hit_rate}, "namespaces": by_ns}
    return out


@cache_app.command()
def info(root: _ROOT = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False
         ) -> None:
    """Size per backbone and namespace, entries, the budget, the last run's hit rate, the artifact folders."""
    from pigeon_bench.metrics import cache as C

    store = C.store_info(root)
    folders = C.cache_folders(root)
    last = _last_run(root)
    if as_json:
        typer.echo(json.dumps({
            "root": str(store.root), "budget": store.budget, "bytes": store.usage,
            "namespaces": [vars(ns) for ns in store.namespaces], "by_backbone": store.by_backbone(),
            "legacy_files": store.legacy[0], "legacy_bytes": store.legacy[1],
            "temporary_files": store.temporaries[0], "running_stores": store.sessions, "last_run": last,
            "folders": [vars(f) for f in folders]}, indent=2, sort_keys=True))
        return
    size = C.format_size
    typer.echo(f"cache: {store.root}")
    typer.echo(f"store: {size(store.usage)} of a {size(store.budget)} budget, "
               f"{sum(ns.entries for ns in store.namespaces)} entries, {store.sessions} running store(s)")
    for name, nbytes in sorted(store.by_backbone().items()):
        typer.echo(f"  {name}: {size(nbytes)}")
    for ns in store.namespaces:
        files = f" ({ns.files} in files of their own)" if ns.files else ""
        typer.echo(f"    {ns.area}/{ns.namespace}: {ns.entries} entries{files}, {size(ns.bytes)}")
    if store.legacy[0]:
        typer.echo(f"  earlier layout: {store.legacy[0]} files, {size(store.legacy[1])} (never read; "
                   "`pigeon-bench cache prune` removes them)")
    if last is None:
        typer.echo("last run: none recorded")
    else:
        parts = []
        for area in C.AREAS:
            t = last[area]["total"]
            if t["hits"] + t["misses"]:
                parts.append(f"{area} {_rate(t)} hits of {t['hits'] + t['misses']} lookups"
                             + (f", {t['corrupt']} corrupt" if t["corrupt"] else ""))
        typer.echo(f"last run (pid {last['pid']} on {last['host']}): " + ("; ".join(parts) or "no lookups"))
    if folders:
        typer.echo("folders:")
        for f in folders:
            what = {"artifact": "", "incomplete": " (unfinished build)", "other": ""}[f.state]
            name = f"{f.kind}/{f.key}" if f.key else f.kind
            typer.echo(f"  {name}: {size(f.bytes)}{what}")


@cache_app.command()
def prune(root: _ROOT = None,
          to: Annotated[str | None, typer.Option(help="Target size, e.g. 20GB (default: the budget).")] = None
          ) -> None:
    """Remove the least recently used entries down to the target; entries running jobs use are kept."""
    from pigeon_bench.metrics import cache as C

    target = C.parse_size(to) if to is not None else C.budget(root)
    if target is None:
        raise UserError("the budget is unbounded: give --to SIZE")
    result = C.evict(root, target)
    typer.echo(f"{C.format_size(result.before)} -> {C.format_size(result.after)} "
               f"({result.entries} entries removed; target {C.format_size(target)})")
    if result.after > target:
        typer.echo(f"the rest is in use by {len(C.live_sessions(root))} running store(s)")


@cache_app.command()
def clear(root: _ROOT = None,
          pairs_only: Annotated[bool, typer.Option("--pairs", help="Only the pair values.")] = False,
          features_only: Annotated[bool, typer.Option("--features", help="Only the features.")] = False,
          force: Annotated[bool, typer.Option(help="Clear even while jobs use the store.")] = False) -> None:
    """Remove the feature and pair stores (artifact folders stay: remove one by hand to rebuild it)."""
    from pigeon_bench.metrics import cache as C

    areas = tuple(a for a, only in ((C.FEATURES, features_only), (C.PAIRS, pairs_only))
                  if only or not (features_only or pairs_only))
    running = C.live_sessions(root)
    if running and not force:
        pids = ", ".join(f"{s['host']}:{s['pid']}" for s in running)
        raise UserError(f"the store is in use by running processes ({pids}); stop them or pass --force")
    typer.echo(f"removed {' and '.join(areas)}: {C.format_size(C.clear(root, areas))}")


@cache_app.command()
def budget(size: Annotated[str | None, typer.Argument(
               help="New budget, e.g. 50GB or none (unbounded); omit to show the current one.")] = None,
           root: _ROOT = None) -> None:
    """Show or set the store's size budget ($PIGEON_BENCH_CACHE_BUDGET overrides the saved one)."""
    import os

    from pigeon_bench.metrics import cache as C

    if size is not None:
        C.set_budget(C.parse_size(size), root)
    source = f"${C.BUDGET_ENV}" if os.environ.get(C.BUDGET_ENV) else "saved setting or default"
    typer.echo(f"budget: {C.format_size(C.budget(root))} ({source})")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
