"""Time the baseline adapters (ti, pmg, llava*, llava) in the tiny profile on the demo world's test samples.

    python benchmarks/bench_baselines.py [--scenario sticker] [--n 20] [--methods ti,pmg,llava*,llava]

Prints, per method, the model loading time and the generation time (one request at a time, as `run` batches
them by 4); the first method also pays for building the tiny model folders and the imports.
Tiny-profile images are from random weights: not comparable with the paper.
"""

from __future__ import annotations

import argparse
import time

import baselines.llava
import baselines.pmg
import baselines.ti  # noqa: F401 - register the methods
from pigeon_bench.data.demo import ensure_demo_datasets
from pigeon_bench.data.model import Dataset
from pigeon_bench.generation import build_request, create_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="sticker", choices=["sticker", "movie"])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--methods", default="ti,pmg,llava*,llava")
    args = parser.parse_args()
    ds = Dataset(ensure_demo_datasets()[args.scenario])
    samples = ds.samples("test", args.n)
    requests = [build_request(ds, s, 0) for s in samples]
    print(f"{len(requests)} {args.scenario} test samples, tiny profile (not comparable with the paper)")
    for method in args.methods.split(","):
        gen = create_generator(method, "tiny")
        start = time.perf_counter()
        gen.load()
        loaded = time.perf_counter()
        for i in range(0, len(requests), 4):
            gen.generate(requests[i:i + 4])
        done = time.perf_counter()
        print(f"{method:7s} load {loaded - start:6.1f} s   generate {done - loaded:6.1f} s "
              f"({(done - loaded) / len(requests):.2f} s/image)")


if __name__ == "__main__":
    main()
