"""The feature store and the pair table: layout at scale, checksums (a garbled entry is a miss, recomputed and
counted, never read), concurrent processes, kills mid-write, the budget's LRU eviction, counters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pigeon_bench.metrics import cache as C
from pigeon_bench.scoring import SampleInputs, Scorer

ROOT = Path(__file__).resolve().parents[1]
NS = "clip/0123456789abcdef-test"


def _entries(n: int, seed: int = 0, dim: int = 384) -> dict[str, dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return {rng.bytes(32).hex(): {"emb": torch.from_numpy(rng.standard_normal(dim, dtype=np.float32))}
            for _ in range(n)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _garble_bytes(root: Path, payload: bytes) -> int:
    """Invert ``payload`` wherever a file under ``root`` holds it (headers and structure stay intact)."""
    hits = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = bytearray(path.read_bytes())
        at = data.find(payload)
        while at >= 0:
            data[at:at + len(payload)] = bytes(b ^ 0xFF for b in payload)
            hits += 1
            at = data.find(payload, at + len(payload))
        if hits:
            path.write_bytes(bytes(data))
    return hits


def _run(code: str, *args: str) -> subprocess.Popen:
    """A second Python process on this checkout, one torch thread."""
    prelude = "import sys, torch; torch.set_num_threads(1)\n"
    return subprocess.Popen([sys.executable, "-c", prelude + code, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_entries_round_trip_in_a_bounded_number_of_files(tmp_path):
    store = C.FeatureStore(tmp_path, budget=None)
    items = _entries(20000)
    store.put_many(NS, items)
    maps = {"l0": torch.randn(64, 32, 32).half(), "l1": torch.randn(8, 16, 16).half()}  # a bulky entry
    store.put("lpips-vgg/0123456789abcdef-test", "m" * 64, maps)
    fresh = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    got = fresh.get_many(NS, list(items))
    assert len(got) == len(items) and all(_same(got[k], items[k]) for k in list(items)[:: 997])
    assert fresh.has(NS, next(iter(items))) and not fresh.has(NS, "f" * 64)
    assert _same(fresh.get("lpips-vgg/0123456789abcdef-test", "m" * 64), maps)
    c = C.total(fresh.counters)
    assert (c.hits, c.misses, c.corrupt) == (len(items) + 2, 1, 0)
    # 20,000 compact entries are a few database files, not one file each
    files = [p for p in (tmp_path / "features" / NS).rglob("*") if p.is_file()]
    assert len(files) <= 3 * C.SHARDS
    info = {ns.namespace: ns for ns in C.store_info(tmp_path).namespaces}
    assert info[NS].entries == len(items) and info["lpips-vgg/0123456789abcdef-test"].files == 1


def test_the_memory_layer_serves_repeated_reads_without_counting_them(tmp_path):
    store = C.FeatureStore(tmp_path, budget=None)
    items = _entries(3)
    store.put_many(NS, items)
    key = next(iter(items))
    assert store.get(NS, key) is not None and C.total(store.counters).hits == 0  # put keeps it in memory
    store.clear_memory()
    store.get(NS, key)
    store.get(NS, key)
    assert C.total(store.counters).hits == 1


def test_the_memory_layer_holds_small_entries_within_its_bound_objects_included(tmp_path):
    store = C.FeatureStore(tmp_path, memory_bytes=1 << 20, budget=None)
    items = _entries(5000, dim=16)  # 64 bytes of data each: their tensor objects weigh more than the data
    store.put_many(NS, items)
    held = list(store._memory.values())
    # at most 1 MiB over data and objects: ~800 small entries, not the 16,384 their data alone would allow
    assert 400 < len(held) < (1 << 20) // (64 + 512)
    assert sum(t.numel() * t.element_size() for e in held for t in e.values()) < (1 << 20) // 8


def test_a_garbled_row_is_a_counted_miss_and_is_removed(tmp_path):
    store = C.FeatureStore(tmp_path, budget=None)
    items = _entries(50)
    store.put_many(NS, items)
    key = list(items)[7]
    store.close()
    assert _garble_bytes(tmp_path / "features", items[key]["emb"].numpy().tobytes()[16:48]) >= 1
    fresh = C.FeatureStore(tmp_path, budget=None)
    assert fresh.get(NS, key) is None
    c = C.total(fresh.counters)
    assert (c.corrupt, c.misses) == (1, 1)
    assert len(fresh.get_many(NS, list(items))) == 49  # the others are intact; the garbled row is gone
    fresh.put(NS, key, items[key])
    fresh.clear_memory()
    assert _same(fresh.get(NS, key), items[key])


def test_a_garbled_or_truncated_bulky_entry_is_a_counted_miss(tmp_path):
    ns = "lpips-vgg/0123456789abcdef-test"
    store = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    maps = {"l0": torch.randn(64, 40, 40)}
    store.put(ns, "a" * 64, maps)
    store.put(ns, "b" * 64, {"l0": maps["l0"] + 1})
    path_a, path_b = store.bulky_path(ns, "a" * 64), store.bulky_path(ns, "b" * 64)
    raw = bytearray(path_a.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of the tensor bytes
    path_a.write_bytes(bytes(raw))
    path_b.write_bytes(path_b.read_bytes()[:1000])
    (path_a.parent / f".{path_a.name}.123.tmp.entry").write_bytes(b"partial")  # a kill mid-write
    assert store.get(ns, "a" * 64) is None and store.get(ns, "b" * 64) is None
    assert C.total(store.counters).corrupt == 2 and not path_a.exists() and not path_b.exists()
    assert C.store_info(tmp_path).temporaries[0] == 1


def test_a_malformed_database_file_is_dropped_and_the_store_goes_on(tmp_path):
    store = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    items = _entries(40)
    store.put_many(NS, items)
    store.close()
    for db in (tmp_path / "features" / NS).glob("*.sqlite"):
        db.write_bytes(b"this is not a database" * 300)
    fresh = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    assert fresh.get_many(NS, list(items)) == {}
    assert C.total(fresh.counters).corrupt >= 1
    fresh.put_many(NS, items)
    assert len(fresh.get_many(NS, list(items))) == 40


def _samples(n: int = 3) -> list[SampleInputs]:
    def drawing(i: int) -> Image.Image:
        rng = np.random.default_rng(i)
        im = Image.new("RGB", (80, 80), tuple(int(v) for v in rng.integers(0, 256, 3)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        ImageDraw.Draw(im).ellipse([10, 10, 50 + i % 20, 40], fill=fill)
        return im

    return [SampleInputs(f"s{i}", drawing(100 + i), [drawing(j) for j in range(i, i + 5)],
                         [f"shape {j}" for j in range(i, i + 5)], drawing(50 + i), f"reference {i}")
            for i in range(n)]


def test_a_garbled_cached_embedding_is_recomputed_not_scored(tmp_path):
    """A CLIP embedding whose bytes changed on disk (its header intact) must not reach p_cis: the entry is a
    miss, the image goes through CLIP again, the scores are the clean ones (up to the rounding of another
    batch composition), and the store counts it."""
    samples = _samples()
    first = Scorer(profile="tiny", resize=176, cache_dir=tmp_path, progress=False)
    clean = first.score_samples(samples).frame
    emb = first.clip_image_embeddings([samples[1].generated])[0]
    first.store.close()
    assert _garble_bytes(tmp_path / "features", emb.numpy().tobytes()[:32]) >= 1
    fresh = Scorer(profile="tiny", resize=176, cache_dir=tmp_path, progress=False)
    again = fresh.score_samples(samples).frame
    np.testing.assert_allclose(again.drop(columns="sample_id").to_numpy(),
                               clean.drop(columns="sample_id").to_numpy(), rtol=1e-4, atol=1e-4)
    assert fresh.forward_counts()["clip"] == 1
    assert C.total(fresh.store.counters).corrupt == 1


_WRITER = """
from pigeon_bench.metrics import cache as C
from pigeon_bench.scoring import SampleInputs, Scorer
import numpy as np
root, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
store = C.FeatureStore(root, memory_bytes=0, budget=None)
shared = {f"{i:064x}": {"emb": torch.full((300,), float(i))} for i in range(n)}  # both write these
own = {f"{seed}{i:063x}": {"emb": torch.full((300,), float(-i))} for i in range(n)}
keys = list(shared) + list(own)
for start in range(0, 2 * n, 16):
    chunk = keys[start:start + 16]
    store.put_many("clip/x", {k: shared.get(k) or own[k] for k in chunk})
    seen = store.get_many("clip/x", [f"{i:064x}" for i in rng.integers(0, n, 8)])
    assert all(torch.equal(v["emb"], shared[k]["emb"]) for k, v in seen.items())
assert C.total(store.counters).corrupt == 0
print("ok")
"""


def test_two_processes_write_the_same_store_at_once_and_lose_nothing(tmp_path):
    n = 400
    procs = [_run(_WRITER, str(tmp_path), str(seed), str(n)) for seed in (1, 2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert out.strip() == "ok"
    store = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    got = store.get_many("clip/x", [f"{i:064x}" for i in range(n)]
                         + [f"{s}{i:063x}" for s in (1, 2) for i in range(n)])
    assert len(got) == 3 * n and C.total(store.counters).corrupt == 0
    assert torch.equal(got[f"{5:064x}"]["emb"], torch.full((300,), 5.0))
    # each process left its counters
    assert {p.pid for p in procs} <= {r["pid"] for r in C.last_runs(tmp_path)}


_KILLED = """
from pigeon_bench.metrics import cache as C
from pigeon_bench.scoring import SampleInputs, Scorer
store = C.FeatureStore(sys.argv[1], memory_bytes=0, budget=None)
i = 0
while True:
    store.put_many("clip/x", {f"{i * 16 + j:064x}": {"emb": torch.full((300,), float(i * 16 + j))}
                              for j in range(16)})
    store.put("lpips-vgg/x", f"{i:064x}", {"l0": torch.full((64, 32, 32), float(i))})
    i += 1
    if i == 5:
        print("writing", flush=True)
"""


def test_a_kill_mid_write_leaves_a_readable_store(tmp_path):
    p = _run(_KILLED, str(tmp_path))
    assert p.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    store = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    rows = store.get_many("clip/x", [f"{i:064x}" for i in range(100000)])
    maps = store.get_many("lpips-vgg/x", [f"{i:064x}" for i in range(10000)])
    assert len(rows) >= 80 and len(maps) >= 5
    assert all(torch.equal(v["emb"], torch.full((300,), float(int(k, 16)))) for k, v in rows.items())
    assert all(float(v["l0"][0, 0, 0]) == int(k, 16) for k, v in maps.items())
    assert C.total(store.counters).corrupt == 0
    store.put_many("clip/x", _entries(10))  # and it takes new entries
    # the killed process's registration is recognised as dead
    assert [s["pid"] for s in C.live_sessions(tmp_path)] == [os.getpid()]


class _Clock:
    def __init__(self, start: int):
        self.now = start

    def __call__(self) -> int:
        return self.now


def test_the_budget_evicts_least_recently_used_entries_of_finished_stores(tmp_path, monkeypatch):
    clock = _Clock(1_000_000)
    monkeypatch.setattr(C, "_now", clock)
    old, used, new = _entries(300, 1), _entries(300, 2), _entries(300, 3)
    a = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    a.put_many(NS, old)
    clock.now += 60
    a.put_many(NS, used)
    bulky = {"l0": torch.randn(64, 32, 32)}  # a bulky entry (256 KB), the least recently used of all
    a.put("lpips-vgg/x", "c" * 64, bulky)
    os.utime(a.bulky_path("lpips-vgg/x", "c" * 64), (clock.now - 600, clock.now - 600))
    a.close()
    clock.now += 60
    reader = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    assert len(reader.get_many(NS, list(used))) == 300  # read again: now the most recently used
    reader.close()
    size = C.disk_usage(tmp_path)
    clock.now += 60
    # room for what is there and half of the new entries: the oldest entries and the bulky one must go
    limit = int(size * 1.15)
    b = C.FeatureStore(tmp_path, memory_bytes=0, budget=limit)
    b.put_many(NS, new)
    assert C.disk_usage(tmp_path) <= limit
    check = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    assert len(check.get_many(NS, list(new))) == 300  # the running store's own entries stay
    assert len(check.get_many(NS, list(used))) == 300  # recently read ones too
    assert len(check.get_many(NS, list(old))) < 300  # the least recently used went
    assert check.get("lpips-vgg/x", "c" * 64) is None


def test_entries_a_running_store_uses_are_never_evicted(tmp_path, monkeypatch):
    clock = _Clock(2_000_000)
    monkeypatch.setattr(C, "_now", clock)
    running = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    first = _entries(200, 1)
    running.put_many(NS, first)  # still running: its session protects these
    clock.now += 60
    other = C.FeatureStore(tmp_path, memory_bytes=0, budget=100_000)
    second = _entries(200, 2)
    with pytest.warns(UserWarning, match="over its budget"):
        other.put_many(NS, second)
    assert C.store_info(tmp_path).namespaces[0].entries == 400  # nothing evicted: both stores run
    running.close()  # ended: its entries are evictable now, the other store's still are not
    C.evict(tmp_path, 0)
    assert C.store_info(tmp_path).namespaces[0].entries == 200
    assert len(C.FeatureStore(tmp_path, budget=None).get_many(NS, list(second))) == 200
    other.close()
    result = C.evict(tmp_path, 0)
    assert result.after < result.before and C.store_info(tmp_path).namespaces[0].entries == 0


def test_a_closed_store_used_again_is_running_again(tmp_path):
    store = C.FeatureStore(tmp_path, budget=None)
    store.put_many(NS, _entries(2))
    assert len(C.live_sessions(tmp_path)) == 1
    store.close()
    assert C.live_sessions(tmp_path) == []
    store.get(NS, "0" * 64)
    assert [s["pid"] for s in C.live_sessions(tmp_path)] == [os.getpid()]


def test_the_budget_comes_from_the_environment_then_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(C.BUDGET_ENV, raising=False)
    assert C.budget(tmp_path) == C.DEFAULT_BUDGET
    C.set_budget(C.parse_size("2GiB"), tmp_path)
    assert C.budget(tmp_path) == 2 * 2**30
    C.set_budget(None, tmp_path)
    assert C.budget(tmp_path) is None
    monkeypatch.setenv(C.BUDGET_ENV, "1.5GB")
    assert C.budget(tmp_path) == 1_500_000_000
    monkeypatch.setenv(C.BUDGET_ENV, "lots")
    with pytest.raises(C.UserError, match=C.BUDGET_ENV):
        C.budget(tmp_path)
    assert C.parse_size("none") is None and C.parse_size("4096") == 4096


def test_counters_of_the_last_run_are_persisted(tmp_path):
    store = C.FeatureStore(tmp_path, memory_bytes=0, budget=None)
    items = _entries(10)
    store.put_many(NS, items)
    store.get_many(NS, [*items, "0" * 64])
    store.flush()
    run = C.last_runs(tmp_path)[-1]
    assert run["pid"] == os.getpid()
    assert run["features"][NS]["hits"] == 10 and run["features"][NS]["misses"] == 1


# ---------------------------------------------------------------- the pair table

def _pairs():
    from pigeon_bench.metrics.pairs import PairStore, pair_namespace

    return PairStore, pair_namespace


def test_pair_values_round_trip_per_namespace(tmp_path):
    PairStore, pair_namespace = _pairs()
    lpips = pair_namespace("p_lpips", "f" * 64, "rgb-512-bilinear")
    other = pair_namespace("p_lpips", "e" * 64, "rgb-512-bilinear")
    assert lpips != other != pair_namespace("p_lpips", "f" * 64, "rgb-192-bilinear")
    rng = np.random.default_rng(0)
    gens, hists = [rng.bytes(32).hex() for _ in range(200)], [rng.bytes(32).hex() for _ in range(204)]
    # sliding windows: sample i pairs its generated image with history images i..i+4
    values = {(g, hists[i + j]): float(rng.random()) for i, g in enumerate(gens) for j in range(5)}
    store = PairStore(tmp_path, budget=None)
    store.put_many(lpips, values)
    fresh = PairStore(tmp_path, budget=None)
    asked = [*values, ("0" * 64, "1" * 64)]
    got = fresh.get_many(lpips, asked)
    assert got == values  # bit-exact floats; the unknown pair is absent
    assert fresh.get_many(other, list(values)[:10]) == {}
    c = C.total(fresh.counters)
    assert (c.hits, c.misses) == (1000, 11)
    assert {ns.namespace for ns in C.store_info(tmp_path).namespaces if ns.area == C.PAIRS} == {lpips}


def test_a_garbled_pair_value_is_absent(tmp_path):
    PairStore, pair_namespace = _pairs()
    ns = pair_namespace("p_msssim", "f" * 64, "rgb-512-bilinear")
    store = PairStore(tmp_path, budget=None)
    value = 0.123456789012345
    store.put_many(ns, {("a" * 64, "b" * 64): value, ("a" * 64, "c" * 64): 0.5})
    store.close()
    import struct

    assert _garble_bytes(tmp_path / "pairs", struct.pack("<d", value)) == 1
    fresh = PairStore(tmp_path, budget=None)
    assert fresh.get_many(ns, [("a" * 64, "b" * 64), ("a" * 64, "c" * 64)]) == {("a" * 64, "c" * 64): 0.5}
    assert C.total(fresh.counters).corrupt == 1


def test_pairs_count_against_the_same_budget(tmp_path):
    PairStore, pair_namespace = _pairs()
    ns = pair_namespace("p_lpips", "f" * 64, "x")
    store = PairStore(tmp_path, budget=None)
    store.put_many(ns, {(f"{i:064x}", "b" * 64): float(i) for i in range(2000)})
    store.close()
    before = C.disk_usage(tmp_path)
    assert before > 2000 * 128
    result = C.evict(tmp_path, 0)
    assert result.before == before and result.after < before / 4
    assert C.store_info(tmp_path).namespaces[0].entries == 0
