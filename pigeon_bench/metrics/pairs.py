"""The pair table: one float per (generated image, paired image) for a pair metric (LPIPS, MS-SSIM), so that
rescoring, resuming and re-reporting a run compute no pair twice.

It lives in the feature store's technology and guarantees (``pigeon_bench.metrics.cache``: sqlite shards
under ``<cache>/pairs/<namespace>/``, checksummed rows, concurrent writers, the same budget and eviction).
A namespace is the metric with everything its value depends on besides the two images: the backbone's weights
fingerprint and the preprocessing id (``pair_namespace``). Keys are the two content digests, in order.

The scorer (``pigeon_bench.scoring``) walks a folder's samples in blocks of consecutive ones (sliding windows
share 4 of their 5 history images), asks for all of a block's pairs in one ``get_many`` (one query per
shard), computes the missing ones from feature maps and terms it holds in memory for the block only, and
writes them with one ``put_many``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

from pigeon_bench.metrics.cache import PAIRS, RowStore

Pair = tuple[str, str]  # (generated image digest, paired image digest)
_VALUE = struct.Struct("<d")


def pair_namespace(metric: str, fingerprint: str, preprocess_id: str) -> str:
    """``<metric>/<fingerprint[:16]>-<hash of preprocess_id>``: values of different weights or
    preprocessing never meet."""
    return f"{metric}/{fingerprint[:16]}-{hashlib.sha256(preprocess_id.encode()).hexdigest()[:12]}"


def _key(pair: Pair) -> str:
    return f"{pair[0]}:{pair[1]}"


class PairStore(RowStore):
    """Pair values keyed by (namespace, (generated digest, paired digest)); no in-memory layer (a caller
    keeps what it asked for)."""

    area = PAIRS

    def get_many(self, namespace: str, pairs: Iterable[Pair]) -> dict[Pair, float]:
        """The stored values of ``pairs`` (missing and garbled ones absent: compute and ``put_many`` them)."""
        wanted = {_key(p): p for p in pairs}
        if not wanted:
            return {}
        rows = self._read_rows(namespace, list(wanted))
        self._count(namespace).misses += len(wanted) - len(rows)
        self._tick()
        return {wanted[k]: _VALUE.unpack(data)[0] for k, data in rows.items()}

    def put_many(self, namespace: str, values: Mapping[Pair, float]) -> None:
        """Store values (one transaction per shard)."""
        if values:
            self._write_rows(namespace, {_key(p): _VALUE.pack(float(v)) for p, v in values.items()})
