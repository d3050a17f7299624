"""Baseline adapters, one module per method (importing ``baselines.methods`` registers them all; see
``pigeon_bench.generation``), their shared plumbing (base, loading, captioner, tiny) and their command group
(cli)."""
