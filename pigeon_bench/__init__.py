"""pigeon-bench: evaluation and benchmarking toolkit for personalized image generation.

The Python API, for notebooks and scripts (everything the command line does goes through these)::

    >>> import pigeon_bench as pb
    >>> data = pb.demo_dataset("sticker")                 # the offline demo world, built once into the cache
    >>> samples = data.samples("test")
    >>> gen = pb.create_generator("hist", profile="tiny", dataset=data)
    >>> results = gen.generate([pb.build_request(data, s) for s in samples])
    >>> results[0].image.size
    (256, 256)
    >>> scores = pb.score_samples([pb.sample_inputs(data, s, r.image) for s, r in zip(samples, results)],
    ...                           profile="tiny")
    >>> bool(scores["p_cis"].mean() > scores["a_cis"].mean())  # Hist: personalized, not aligned
    True

- ``create_generator(name, profile, device, dtype, options, dataset)``: a registered method
  (``generators.names()`` lists them; ``pigeon-bench methods`` shows their options).
- ``generate(GenerateSpec(...), out)``: one method's run folder (or α_r sweep), resumable.
- ``score_samples(samples, profile)``: per-sample metrics of ``SampleInputs`` as a DataFrame;
  ``score_run(path, profile)``: score a run folder (writes its per-sample scores and summary);
  ``score_folders(generated, history, reference, profile)``: any images (see ``pigeon_bench.inputs``).
- ``run(Experiment(scenario=...))`` / ``experiment(config, pairs, **flags)``: the whole ``pigeon-bench run``.
- ``build_report(run_folders, fmt="md")``: Table 1 as Markdown, LaTeX, CSV or HTML.
- ``RunFolder`` / ``Sweep``: read what a run wrote (manifest, images, scores, summary).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Dataset": "pigeon_bench.data.model",
    "demo_dataset": "pigeon_bench.data.demo",
    "create_generator": "pigeon_bench.generation",
    "build_request": "pigeon_bench.generation",
    "generators": "pigeon_bench.generation",
    "Generator": "pigeon_bench.generation",
    "GenerateSpec": "pigeon_bench.runs.generate",
    "generate": "pigeon_bench.runs.generate",
    "Experiment": "pigeon_bench.runs.config",
    "experiment": "pigeon_bench.runs.config",
    "run": "pigeon_bench.runs.pipeline",
    "RunFolder": "pigeon_bench.runs.folder",
    "Sweep": "pigeon_bench.runs.folder",
    "Scorer": "pigeon_bench.scoring",
    "SampleInputs": "pigeon_bench.scoring",
    "sample_inputs": "pigeon_bench.scoring",
    "score_samples": "pigeon_bench.scoring",
    "score_run": "pigeon_bench.scoring",
    "score_folders": "pigeon_bench.inputs",
    "build_report": "pigeon_bench.reports",
    "get_profile": "pigeon_bench.profiles",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (``import pigeon_bench`` stays light)."""
    if name not in _API:
        raise AttributeError(f"module 'pigeon_bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
