"""The feature store: content-addressed features on disk, checksummed, shared by concurrent processes, bounded
by a size budget, with an in-memory LRU in front. ``pigeon_bench.metrics.pairs`` keeps pair values (LPIPS,
MS-SSIM of one generated/history pair) in the same store.

Layout under the cache root (see docs/scale.md for the measurements behind it):

- ``features/<namespace>/<shard>.sqlite``: compact entries (embeddings, pooled features: at most
  COMPACT_MAX_BYTES each), rows of (key, safetensors bytes, checksum, last use), SHARDS files per namespace
  chosen by a hash of the key. A namespace is backbone id / weights fingerprint + preprocessing id.
- ``features/<namespace>/<key[:2]>/<key>.entry``: bulky entries (feature maps), one file each: a magic line,
  the checksum, the safetensors bytes.
- ``pairs/<namespace>/<shard>.sqlite``: pair values (``pairs.PairStore``).
- ``.store/``: running stores (sessions/), the last processes' counters (runs.json), the budget setting.

Guarantees:

- Atomic: a batch of rows is one sqlite transaction (WAL journal); a bulky entry is written to a temporary
  file and renamed into place. A kill mid-write leaves the store readable and at most a temporary file.
- Concurrent processes (torchrun ranks) read and write the same store; a busy database is waited for, never
  reported as an error; concurrent writers of one key write identical bytes.
- Every entry carries a 64-bit blake2b checksum of its key and bytes. An entry whose bytes do not match (or a
  database file sqlite finds malformed) is a miss: it is removed, recomputed by the caller and counted under
  ``corrupt``. A garbled entry is never returned.
- Bounded: when the store grows past its budget (``PIGEON_BENCH_CACHE_BUDGET``, else ``pigeon-bench cache
  budget``'s setting, else DEFAULT_BUDGET) the least recently used entries are removed down to LOW_WATER of
  it. Entries used since the oldest running store started are never removed (a running job keeps what it
  reads), so a store can stay over budget while the jobs using it run; the warning says so.
- Counters per namespace: hits (entries read from disk), misses, corrupt, bytes read and written; each
  process's totals are written to ``.store/runs.json`` (``pigeon-bench cache info`` shows the last one).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import socket
import sqlite3
import time
import uuid
import warnings
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pigeon_bench import fileio
from pigeon_bench.errors import UserError
from pigeon_bench.paths import cache_dir

# the in-memory layer: a working set (the scorer reads a namespace's entries in chunks), not the whole job's
DEFAULT_MEMORY_BYTES = 1 << 25
# Python and torch objects of one tensor loaded from an entry (tensor, storage, dict slot): ~0.8-1.4 KB
# measured with torch 2.14, beside its data
_TENSOR_OVERHEAD_BYTES = 1024
COMPACT_MAX_BYTES = 1 << 17  # larger entries (feature maps) are files of their own
# sqlite's page cache per open shard (its default is 2 MB): reads go in key batches through the OS's file
# cache, and a job holds ~40 shards open, so the default's 80 MB would only fill and stay as the store grows
_PAGE_CACHE_KIB = 512
SHARDS = 4  # sqlite files per namespace: concurrent writers of one namespace rarely wait for each other
BUDGET_ENV = "PIGEON_BENCH_CACHE_BUDGET"
DEFAULT_BUDGET = 50 * 10**9
LOW_WATER = 0.9  # eviction brings the store down to this fraction of its budget
FEATURES, PAIRS = "features", "pairs"
AREAS = (FEATURES, PAIRS)
STORE_DIR = ".store"
SESSION_STALE_SECONDS = 3600  # a store on another host that has not written for this long is not running
_RUNS_KEPT = 20
_FLUSH_SECONDS = 10.0
_SQL_CHUNK = 500  # keys per SELECT / DELETE
_MAGIC = b"pigeon-bench entry 1\n"
_ENTRY = ".entry"
_DB = ".sqlite"
_LEGACY = ".safetensors"  # the one-file-per-entry layout of earlier versions: never read, evicted first
_ROW_OVERHEAD = 48  # bytes a row costs besides its key and data (checksum, last use, b-tree cells)
_HOST = socket.gethostname()
Budget = int | None | Literal["config"]


# ---------------------------------------------------------------- sizes and the budget setting

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNBOUNDED = ("none", "unlimited", "off")


def parse_size(text: str | int) -> int | None:
    """Bytes of a size such as ``50GB``, ``512MiB``, ``1.5e9`` or 4096; ``none`` (no bound) is None."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower()
    if value in _UNBOUNDED:
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)", value)
    if not m or m.group(2) not in _UNITS:
        raise UserError(f"not a size: {text!r} (e.g. 50GB, 512MiB, 10000000, none)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_size(n: int | None) -> str:
    if n is None:
        return "unbounded"
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _settings_path(root: Path) -> Path:
    return root / STORE_DIR / "settings.json"


def budget(root: str | Path | None = None) -> int | None:
    """The store's size budget in bytes (None: unbounded): $PIGEON_BENCH_CACHE_BUDGET, else the saved setting
    (``set_budget``), else DEFAULT_BUDGET."""
    env = os.environ.get(BUDGET_ENV)
    if env:
        try:
            return parse_size(env)
        except UserError as exc:
            raise UserError(f"${BUDGET_ENV}: {exc}") from None
    path = _settings_path(cache_dir(root))
    with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
        settings = json.loads(path.read_text(encoding="utf-8"))
        if "budget" in settings:
            return settings["budget"]
    return DEFAULT_BUDGET


def set_budget(size: int | None, root: str | Path | None = None) -> None:
    """Save the store's budget (None: unbounded) in the cache; $PIGEON_BENCH_CACHE_BUDGET still wins."""
    from pigeon_bench.artifacts import update_json

    update_json(_settings_path(cache_dir(root)), lambda s: {**s, "budget": size})


# ---------------------------------------------------------------- checksums and counters

def _now() -> int:
    """The clock of last uses (whole seconds)."""
    return int(time.time())


def checksum(key: str, data: bytes) -> int:
    """64-bit blake2b of an entry's key and bytes, as a signed integer (sqlite's INTEGER)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(key.encode())
    h.update(b"\0")
    h.update(data)
    return int.from_bytes(h.digest(), "little", signed=True)


@dataclass
class Counters:
    """Lookups of one namespace: served from disk (hits; memory hits are not counted), not found or garbled
    (misses; garbled ones are also ``corrupt``), and the bytes read and written."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def add(self, other: Counters) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    @property
    def hit_rate(self) -> float | None:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


def total(counters: Mapping[str, Counters]) -> Counters:
    out = Counters()
    for c in counters.values():
        out.add(c)
    return out


# ---------------------------------------------------------------- one sqlite file

_SCHEMA = ("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, data BLOB NOT NULL, "
           "sum INTEGER NOT NULL, atime INTEGER NOT NULL)")


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit transactions), WAL journal, waiting up to a minute on locks.

    A new file gets incremental auto-vacuum, so that eviction gives the space back to the file system.
    """
    conn = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    for attempt in range(100):  # two processes creating one file: the journal-mode switch may be refused once
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{_PAGE_CACHE_KIB}")
            conn.execute("PRAGMA journal_size_limit=4194304")  # the WAL file is cut back to 4 MB after use
            conn.execute(_SCHEMA)
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


class _Db:
    """One sqlite file of (key, data, sum, atime) rows; a malformed file is removed (its rows are misses)."""

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self.dropped = 0  # times the file was found malformed and removed

    def _open(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if not create and not self.path.is_file():
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn, self._pid = _connect(self.path), os.getpid()
        return self._conn

    def _drop(self) -> None:
        """Remove a malformed file (it is a cache: its entries are recomputed)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.dropped += 1

    def _run(self, create: bool, work, empty):
        """``work(conn)`` with a malformed file dropped (then ``empty`` for a read; one retry for a write)."""
        for attempt in range(2):
            try:
                conn = self._open(create)
                return empty if conn is None else work(conn)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                self._drop()
                if not create or attempt:
                    return empty
        return empty

    def select(self, keys: list[str]) -> dict[str, tuple[bytes, int, int]]:
        def work(conn):
            out = {}
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start:start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, data, s, atime in conn.execute(
                        f"SELECT key, data, sum, atime FROM entries WHERE key IN ({marks})", chunk):
                    out[key] = (data, s, atime)
            return out

        return self._run(False, work, {})

    def upsert(self, rows: list[tuple[str, bytes, int, int]]) -> None:
        def work(conn):
            with _transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO entries (key, data, sum, atime) VALUES (?, ?, ?, ?)",
                                 rows)

        self._run(True, work, None)

    def touch(self, keys: list[str], now: int) -> None:
        def work(conn):
            with _transaction(conn):
                conn.executemany("UPDATE entries SET atime = ? WHERE key = ?", [(now, k) for k in keys])

        self._run(False, work, None)

    def delete(self, keys: list[str]) -> None:
        def work(conn):
            with _transaction(conn):
                conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k in keys])

        self._run(False, work, None)

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._run(False, lambda conn: conn.execute(sql, args).fetchall(), [])

    def evict_before(self, atime: int) -> int:
        """Remove the rows last used before ``atime`` and give their pages back; returns the rows removed."""
        def work(conn):
            with _transaction(conn):
                n = conn.execute("DELETE FROM entries WHERE atime < ?", (atime,)).rowcount
            conn.executescript("PRAGMA incremental_vacuum;")  # execute() would free a single page
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return n

        return self._run(False, work, 0)

    def checkpoint(self) -> None:
        """Move committed rows from the WAL into the database file and cut the WAL back."""
        self._run(False, lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall(), None)
        self.close()

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ---------------------------------------------------------------- sessions and per-process records

class _Session:
    """A running store, registered so that eviction (by any process) spares the entries it uses."""

    def __init__(self, root: Path):
        self.start = _now()
        self.path = root / STORE_DIR / "sessions" / f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        fileio.write_json(self.path, {"host": _HOST, "pid": os.getpid(), "start": self.start})
        self._end = weakref.finalize(self, self.path.unlink, missing_ok=True)

    def heartbeat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def end(self) -> None:
        self._end()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_sessions(root: str | Path | None = None) -> list[dict]:
    """The stores running on this cache (a dead process's registration is removed)."""
    folder = cache_dir(root) / STORE_DIR / "sessions"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            age = time.time() - path.stat().st_mtime
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        alive = _pid_alive(info["pid"]) if info.get("host") == _HOST else age < SESSION_STALE_SECONDS
        if alive:
            out.append(info)
        else:
            path.unlink(missing_ok=True)
    return out


def _protected_since(root: Path) -> int:
    """Entries last used at or after this time are in use by a running store and are never evicted."""
    starts = [s["start"] for s in live_sessions(root)]
    return min(starts) if starts else _now() + 1


class _ProcessRecord:
    """This process's counters on one cache (all its stores, live and finished), written to runs.json."""

    def __init__(self, root: Path):
        self.root = root
        self.id = f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self.stores: weakref.WeakSet[RowStore] = weakref.WeakSet()
        self.finished: dict[str, dict[str, Counters]] = {a: {} for a in AREAS}
        self.last_write = 0.0
        atexit.register(self.write)

    def retire(self, area: str, counters: dict[str, Counters]) -> None:
        for ns, c in counters.items():
            self.finished[area].setdefault(ns, Counters()).add(c)

    def merged(self) -> dict[str, dict[str, Counters]]:
        out = {a: {ns: Counters(**asdict(c)) for ns, c in by_ns.items()}
               for a, by_ns in self.finished.items()}
        for store in list(self.stores):
            for ns, c in store.counters.items():
                out[store.area].setdefault(ns, Counters()).add(c)
        return out

    def write(self) -> None:
        from pigeon_bench.artifacts import update_json

        merged = self.merged()
        if not any(merged.values()) or not self.root.is_dir():  # nothing counted, or the cache is gone
            return
        record = {"id": self.id, "pid": os.getpid(), "host": _HOST, "started": self.started,
                  "updated": time.time(),
                  **{a: {ns: asdict(c) for ns, c in sorted(by_ns.items())} for a, by_ns in merged.items()}}

        def change(doc: dict) -> dict:
            runs = [r for r in doc.get("runs", []) if r.get("id") != self.id] + [record]
            return {"runs": sorted(runs, key=lambda r: r["updated"])[-_RUNS_KEPT:]}

        with contextlib.suppress(OSError):
            update_json(self.root / STORE_DIR / "runs.json", change)
        self.last_write = time.time()


_RECORDS: dict[tuple[Path, int], _ProcessRecord] = {}


def _record(root: Path) -> _ProcessRecord:
    key = (root.resolve(), os.getpid())
    if key not in _RECORDS:
        _RECORDS[key] = _ProcessRecord(root)
    return _RECORDS[key]


def last_runs(root: str | Path | None = None) -> list[dict]:
    """The counters of the last processes that used this cache's store, oldest first."""
    path = cache_dir(root) / STORE_DIR / "runs.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("runs", [])
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []


# ---------------------------------------------------------------- the common part of both stores

class RowStore:
    """Sharded sqlite rows under ``<cache>/<area>/<namespace>/``: verified reads, batched writes, counters,
    the session that protects what this store uses, and the budget check after writes."""

    area = FEATURES

    def __init__(self, root: str | Path | None = None, budget: Budget = "config"):
        self.cache_root = cache_dir(root)
        self.root = self.cache_root / self.area
        self.counters: dict[str, Counters] = {}
        self._budget_arg = budget
        self._dbs: dict[Path, _Db] = {}
        self._session: _Session | None = None
        self._record: _ProcessRecord | None = None
        self._usage: int | None = None  # bytes on disk of the whole store, measured at the first write
        self._recheck_at = 0

    # -- bookkeeping

    def _count(self, namespace: str) -> Counters:
        c = self.counters.get(namespace)
        if c is None:
            c = self.counters[namespace] = Counters()
        return c

    def _begin(self) -> _Session:
        """Register this store as running (at its first disk access)."""
        if self._record is None:
            self._record = _record(self.cache_root)
            self._record.stores.add(self)
            retire = weakref.finalize(self, self._record.retire, self.area, self.counters)
            retire.atexit = False  # at exit the record still counts this store as live
        if self._session is None:
            self._session = _Session(self.cache_root)
        return self._session

    def _tick(self) -> None:
        """Write this process's counters now and then (and at exit), and refresh the session's heartbeat."""
        if self._record is not None and time.time() - self._record.last_write > _FLUSH_SECONDS:
            self._record.write()
            if self._session is not None:
                self._session.heartbeat()

    def flush(self) -> None:
        """Write this process's counters to the store now (they are also written at exit)."""
        if self._record is not None:
            self._record.write()

    def close(self) -> None:
        """Write the counters, close the database files and end the session (its entries become evictable;
        using the store again starts a new one)."""
        self.flush()
        for db in self._dbs.values():
            db.close()
        if self._session is not None:
            self._session.end()
            self._session = None

    def _db(self, namespace: str, key: str) -> _Db:
        shard = zlib.crc32(key.encode()) % SHARDS
        path = self.root / namespace / f"{shard}{_DB}"
        db = self._dbs.get(path)
        if db is None:
            db = self._dbs[path] = _Db(path)
        return db

    def _by_db(self, namespace: str, keys: Iterable[str]) -> dict[_Db, list[str]]:
        groups: dict[_Db, list[str]] = {}
        for key in keys:
            groups.setdefault(self._db(namespace, key), []).append(key)
        return groups

    # -- rows

    def _read_rows(self, namespace: str, keys: list[str]) -> dict[str, bytes]:
        """Verified bytes of the rows of ``keys`` present; garbled rows are removed and counted as corrupt."""
        session = self._begin()
        counts = self._count(namespace)
        out: dict[str, bytes] = {}
        for db, group in self._by_db(namespace, keys).items():
            dropped = db.dropped
            rows = db.select(group)
            counts.corrupt += db.dropped - dropped
            bad, stale = [], []
            for key, (data, s, atime) in rows.items():
                if checksum(key, data) != s:
                    bad.append(key)
                    continue
                out[key] = data
                counts.hits += 1
                counts.bytes_read += len(data)
                if atime < session.start:
                    stale.append(key)
            if bad:
                counts.corrupt += len(bad)
                db.delete(bad)
            if stale:
                db.touch(stale, _now())
        return out

    def _write_rows(self, namespace: str, items: Mapping[str, bytes]) -> None:
        self._begin()
        now = _now()
        written = 0
        for db, group in self._by_db(namespace, items).items():
            db.upsert([(k, items[k], checksum(k, items[k]), now) for k in group])
            written += sum(len(items[k]) + len(k) + _ROW_OVERHEAD for k in group)
        self._wrote(namespace, written)

    def _wrote(self, namespace: str, nbytes: int) -> None:
        """Count written bytes; past the budget, evict down to LOW_WATER of it."""
        self._count(namespace).bytes_written += nbytes
        if self._budget_arg == "config":
            self._budget_arg = budget(self.cache_root)
        limit = self._budget_arg
        if limit is not None:
            if self._usage is None:
                self._usage = disk_usage(self.cache_root)
            self._usage += nbytes
            if self._usage > max(limit, self._recheck_at):
                result = evict(self.cache_root, int(limit * LOW_WATER))
                self._usage = result.after
                if result.after > limit:  # the rest is in use: look again after another tenth of the budget
                    self._recheck_at = result.after + limit // 10
                    warnings.warn(
                        f"feature cache {self.cache_root}: {format_size(result.after)} on disk, over its "
                        f"budget of {format_size(limit)}; the rest is in use by running jobs (raise it with "
                        f"${BUDGET_ENV} or `pigeon-bench cache budget`)", stacklevel=3)
                else:
                    self._recheck_at = 0
        self._tick()


# ---------------------------------------------------------------- the feature store

def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """The memory an entry holds: its data and, per tensor, the objects around it (a small embedding's
    dominate: a loaded 256-byte tensor holds ~1.7 KB)."""
    return sum(t.numel() * t.element_size() + _TENSOR_OVERHEAD_BYTES for t in tensors.values())


def _entry_file(data: bytes, s: int) -> bytes:
    return _MAGIC + s.to_bytes(8, "little", signed=True) + data


class FeatureStore(RowStore):
    """Tensor dicts keyed by (namespace, key) on disk (compact ones in sqlite shards, bulky ones in files),
    with an in-memory LRU (bounded in bytes) in front."""

    area = FEATURES

    def __init__(self, root: str | Path | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 budget: Budget = "config"):
        super().__init__(root, budget)
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self._memory_used = 0

    def bulky_path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / key[:2] / f"{key}{_ENTRY}"

    def has(self, namespace: str, key: str) -> bool:
        """Present and intact (checksum verified; the entry is then kept in memory for the next ``get``)."""
        return self.get(namespace, key) is not None

    def get(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        return self.get_many(namespace, [key]).get(key)

    def get_many(self, namespace: str, keys: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
        """The entries of ``keys`` that are present and intact (garbled ones are removed and counted)."""
        from safetensors.torch import load

        out: dict[str, dict[str, torch.Tensor]] = {}
        todo = []
        for key in dict.fromkeys(keys):
            hit = self._memory.get((namespace, key))
            if hit is None:
                todo.append(key)
            else:
                self._memory.move_to_end((namespace, key))
                out[key] = hit
        if not todo:
            return out
        found = {k: load(v) for k, v in self._read_rows(namespace, todo).items()}
        for key in todo:
            tensors = found.get(key)
            if tensors is None:
                tensors = self._read_bulky(namespace, key)
            if tensors is None:
                self._count(namespace).misses += 1
                continue
            out[key] = tensors
            self._remember(namespace, key, tensors)
        self._tick()
        return out

    def _read_bulky(self, namespace: str, key: str) -> dict[str, torch.Tensor] | None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.bulky_path(namespace, key)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError:
            return None
        counts = self._count(namespace)
        head = len(_MAGIC) + 8
        data = raw[head:]
        intact = raw.startswith(_MAGIC) and int.from_bytes(raw[len(_MAGIC):head], "little", signed=True) == \
            checksum(key, data)
        try:
            tensors = load(data) if intact else None
        except SafetensorError:
            tensors = None
        if tensors is None:
            counts.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        counts.hits += 1
        counts.bytes_read += len(raw)
        if mtime < self._begin().start:
            with contextlib.suppress(OSError):
                os.utime(path, (_now(), _now()))
        return tensors

    def put(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.put_many(namespace, {key: tensors})

    def put_many(self, namespace: str, items: Mapping[str, dict[str, torch.Tensor]]) -> None:
        """Write entries (one transaction per shard for the compact ones) and keep them in memory."""
        from safetensors.torch import save

        rows: dict[str, bytes] = {}
        bulky = 0
        for key, tensors in items.items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}  # pass clones, not views
            data = save(tensors)
            if len(data) <= COMPACT_MAX_BYTES:
                rows[key] = data
            else:
                self._begin()
                path = self.bulky_path(namespace, key)
                with fileio.atomic_path(path) as tmp:
                    tmp.write_bytes(_entry_file(data, checksum(key, data)))
                with contextlib.suppress(OSError):  # its last use, on the clock of the rows' last uses
                    os.utime(path, (_now(), _now()))
                bulky += len(data) + len(_MAGIC) + 8
            self._remember(namespace, key, tensors)
        if rows:
            self._write_rows(namespace, rows)
        if bulky:
            self._wrote(namespace, bulky)

    def _remember(self, namespace: str, key: str, tensors: dict[str, torch.Tensor]) -> None:
        size = _nbytes(tensors)
        if size > self.memory_bytes:
            return
        old = self._memory.pop((namespace, key), None)
        if old is not None:
            self._memory_used -= _nbytes(old)
        self._memory[(namespace, key)] = tensors
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._memory_used -= _nbytes(evicted)

    def clear_memory(self) -> None:
        """Drop the in-memory layer (the disk store stays)."""
        self._memory.clear()
        self._memory_used = 0


# ---------------------------------------------------------------- what is on disk: usage, eviction, info

@dataclass
class _File:
    area: str
    namespace: str
    kind: str  # db (with its -wal/-shm), entry, legacy, temporary, other (counted, never removed)
    path: Path
    size: int  # allocated bytes
    mtime: float


def _allocated(st: os.stat_result) -> int:
    return getattr(st, "st_blocks", 0) * 512 or st.st_size


def _files(root: Path) -> Iterator[_File]:
    """Every file of both stores under the cache root, classified."""
    for area in AREAS:
        base = root / area
        for folder, _, names in os.walk(base):
            here = Path(folder)
            for name in names:
                path = here / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                rel = here.relative_to(base)
                if name.startswith("."):
                    kind, ns = "temporary", rel
                elif name.endswith(_DB) or name.endswith(_DB + "-wal") or name.endswith(_DB + "-shm"):
                    kind, ns = "db", rel
                elif name.endswith(_ENTRY):
                    kind, ns = "entry", rel.parent
                elif name.endswith(_LEGACY):
                    kind, ns = "legacy", rel.parent
                else:
                    kind, ns = "other", rel
                yield _File(area, ns.as_posix(), kind, path, _allocated(st), st.st_mtime)


def disk_usage(root: str | Path | None = None) -> int:
    """Bytes the feature and pair stores take on disk."""
    return sum(f.size for f in _files(cache_dir(root)))


@dataclass
class Evicted:
    before: int
    after: int
    entries: int = 0
    protected_since: int = 0


def evict(root: str | Path | None = None, target: int = 0) -> Evicted:
    """Remove least recently used entries until the store takes at most ``target`` bytes, sparing entries used
    since the oldest running store started. Temporaries of killed writes (an hour old) and files of the
    earlier layout go first."""
    from filelock import FileLock

    root = cache_dir(root)
    lock_path = root / STORE_DIR / "evict.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        for f in _files(root):  # committed rows into the database files: the sizes are the data's
            if f.kind == "db" and f.path.suffix == _DB:
                _Db(f.path).checkpoint()
        before = usage = disk_usage(root)
        result = Evicted(before, before, protected_since=_protected_since(root))
        cutoff = result.protected_since
        for _ in range(3):  # row sizes only estimate file sizes: look again after each round
            if usage <= target:
                break
            removed = _evict_round(root, usage - target, cutoff)
            if not removed:
                break
            result.entries += removed
            usage = disk_usage(root)
        result.after = usage
    return result


def _evict_round(root: Path, need: int, cutoff: int) -> int:
    """Remove about ``need`` bytes of the oldest entries last used before ``cutoff``; returns how many."""
    files = list(_files(root))
    stale_temp = time.time() - 3600
    removed = 0
    for f in files:
        if f.kind == "legacy" or (f.kind == "temporary" and f.mtime < stale_temp):
            f.path.unlink(missing_ok=True)
            need -= f.size
            removed += 1
    if need <= 0:
        return removed
    dbs = [_Db(f.path) for f in files if f.kind == "db" and f.path.suffix == _DB]
    uses: list[tuple[int, int]] = []  # (last use, bytes)
    for db in dbs:
        uses += db.query(f"SELECT atime, SUM(length(data) + length(key) + {_ROW_OVERHEAD}) FROM entries "
                         "WHERE atime < ? GROUP BY atime", (cutoff,))
    entries = [f for f in files if f.kind == "entry" and f.mtime < cutoff]
    uses += [(int(f.mtime), f.size) for f in entries]
    if not uses:
        return removed
    uses.sort()
    threshold, freed = uses[-1][0], 0
    for atime, nbytes in uses:
        freed += nbytes
        if freed >= need:
            threshold = atime
            break
    for f in entries:
        if int(f.mtime) <= threshold:
            f.path.unlink(missing_ok=True)
            removed += 1
    for db in dbs:
        removed += db.evict_before(min(threshold + 1, cutoff))
        db.close()
    return removed


def clear(root: str | Path | None = None, areas: tuple[str, ...] = AREAS) -> int:
    """Remove the stores of ``areas`` entirely; returns the bytes freed."""
    import shutil

    root = cache_dir(root)
    freed = sum(f.size for f in _files(root) if f.area in areas)
    for area in areas:
        if (root / area).exists():
            shutil.rmtree(root / area)
    return freed


@dataclass
class NamespaceInfo:
    area: str
    namespace: str
    entries: int = 0
    bytes: int = 0
    files: int = 0  # bulky entry files (in ``entries`` too)


@dataclass
class StoreInfo:
    root: Path
    budget: int | None
    usage: int
    namespaces: list[NamespaceInfo] = field(default_factory=list)
    legacy: tuple[int, int] = (0, 0)  # files, bytes of the earlier one-file-per-entry layout
    temporaries: tuple[int, int] = (0, 0)
    sessions: int = 0

    def by_backbone(self) -> dict[str, int]:
        """Bytes per backbone (the namespace's first part; text towers separately)."""
        out: dict[str, int] = {}
        for ns in self.namespaces:
            name = f"{ns.area}:{ns.namespace.split('/')[0]}"
            out[name] = out.get(name, 0) + ns.bytes
        return out


def store_info(root: str | Path | None = None) -> StoreInfo:
    """What the stores hold: entries and bytes per namespace, files of the earlier layout, running stores."""
    root = cache_dir(root)
    by_ns: dict[tuple[str, str], NamespaceInfo] = {}
    legacy, temporaries = [0, 0], [0, 0]
    files = list(_files(root))
    for f in files:
        if f.kind == "legacy":
            legacy[0] += 1
            legacy[1] += f.size
            continue
        if f.kind == "temporary":
            temporaries[0] += 1
            temporaries[1] += f.size
            continue
        info = by_ns.setdefault((f.area, f.namespace), NamespaceInfo(f.area, f.namespace))
        info.bytes += f.size
        if f.kind == "entry":
            info.entries += 1
            info.files += 1
        elif f.path.suffix == _DB:
            db = _Db(f.path)
            info.entries += (db.query("SELECT COUNT(*) FROM entries") or [(0,)])[0][0]
            db.close()
    return StoreInfo(root, budget(root), sum(f.size for f in files), sorted(by_ns.values(),
                     key=lambda i: (i.area, i.namespace)), tuple(legacy), tuple(temporaries),
                     len(live_sessions(root)))


@dataclass
class Folder:
    """A top-level part of the cache besides the stores: an artifact (``pigeon_bench.artifacts``), a build
    that did not finish, or anything else."""

    kind: str  # the artifact kind (its folder path), or the folder's own name for other content
    key: str
    bytes: int
    state: str  # artifact, incomplete, other


def _tree_size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return _allocated(path.lstat())
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += _allocated((Path(folder) / name).lstat())
    return total


def cache_folders(root: str | Path | None = None, depth: int = 3) -> list[Folder]:
    """The artifact folders (tiny models, checkpoints, adapters, the demo world...) and other content of the
    cache root, with their sizes; the stores and their bookkeeping are not listed."""
    from pigeon_bench.artifacts import is_done

    root = cache_dir(root)
    out: list[Folder] = []

    def walk(folder: Path, level: int) -> bool:
        """Add the artifacts under ``folder``; False when there are none."""
        found = False
        for child in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []:
            if not child.is_dir() or child.is_symlink():
                continue
            kind = child.parent.relative_to(root).as_posix()
            if is_done(child):
                out.append(Folder(kind, child.name, _tree_size(child), "artifact"))
                found = True
            elif child.name.startswith("."):
                out.append(Folder(kind, child.name, _tree_size(child), "incomplete"))
                found = True
            elif level < depth:
                found = walk(child, level + 1) or found
        return found

    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name in (*AREAS, STORE_DIR):
            continue
        if not (entry.is_dir() and not entry.is_symlink() and walk(entry, 1)):
            out.append(Folder(entry.name, "", _tree_size(entry), "other"))
    return out
