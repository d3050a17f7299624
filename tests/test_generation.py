"""The generation interface: requests, grd/hist, seeds, options, the registry and its entry point."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from pigeon_bench.data.model import Dataset, write_dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import (
    ALPHA_R_GRID,
    GenerationRequest,
    GenerationResult,
    Generator,
    Option,
    build_request,
    create_generator,
    generators,
    method_dirname,
    request_seed,
)

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200),
          (120, 120, 120), (250, 140, 0), (90, 40, 160), (10, 10, 10)]


def make_dataset(root: Path, scenario: str = "sticker") -> Path:
    """A tiny dataset folder: 10 drawn 32 px images, 2 test samples, 2 valid, 1 train."""
    (root / "images").mkdir(parents=True)
    items = []
    for i, color in enumerate(COLORS):
        im = Image.new("RGB", (32, 32), color)
        ImageDraw.Draw(im).ellipse((4 + i, 4, 20 + i, 24), fill=(255, 255, 255))
        im.save(root / "images" / f"i{i}.png")
        items.append({"item_id": f"i{i}", "image_path": f"images/i{i}.png", "semantics": f"sticker {i}"})
    rows = [("s0", "u0", 0, "test"), ("s1", "u1", 1, "test"), ("v0", "u0", 2, "valid"),
            ("v1", "u1", 3, "valid"), ("t0", "u2", 4, "train")]
    samples = [{"sample_id": sid, "user_id": uid, "history": [f"i{(k + j) % 10}" for j in range(5)],
                "target_id": f"i{(k + 5) % 10}", "reference_id": f"i{(k + 7) % 10}", "split": split,
                "instruction": "generate a sticker"} for sid, uid, k, split in rows]
    write_dataset(root, pd.DataFrame(items), pd.DataFrame(samples),
                  {"scenario": scenario, "users": 3, "items": 10, "samples": len(samples)})
    return root


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


class NoiseGenerator(Generator):
    """A cheap seeded generator with a reference mask ratio: noise from the request seed, tinted by α_r."""

    name = "noise"
    group = "Test"
    supports_alpha_r = True

    options = (Option("size", int, "image side in pixels", 16),)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        out = []
        size = self.opt("size")
        for r in requests:
            g = torch.Generator().manual_seed(r.seed)
            noise = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
            noise[..., 0] = int(255 * (r.alpha_r or 0.0))
            out.append(GenerationResult(Image.fromarray(noise), {"alpha_r": r.alpha_r}))
        return out


@contextlib.contextmanager
def registered(name: str, cls: type[Generator]) -> Iterator[str]:
    """Register a test generator for the duration of a block."""
    generators.register(name, cls)
    try:
        yield name
    finally:
        generators.unregister(name)


@pytest.fixture
def noise_method() -> Iterator[str]:
    with registered("noise", NoiseGenerator) as name:
        yield name


def request_for(dataset_dir: Path, sample_id: str = "s0", **kw) -> GenerationRequest:
    ds = Dataset(dataset_dir)
    sample = next(s for s in ds.samples() if s.sample_id == sample_id)
    return build_request(ds, sample, **kw)


def test_build_request_loads_history_reference_and_texts(dataset_dir):
    r = request_for(dataset_dir, "s1", run_seed=3, alpha_r=0.4)
    assert r.sample.history == ("i1", "i2", "i3", "i4", "i5")
    assert r.history_texts == [f"sticker {i}" for i in range(1, 6)]
    assert [im.getpixel((0, 0)) for im in r.history_images] == COLORS[1:6]
    assert r.reference_text == "sticker 8" and r.reference_image.getpixel((0, 0)) == COLORS[8]
    assert r.instruction == "generate a sticker" and r.alpha_r == 0.4
    assert r.seed == request_seed(3, "s1")


def test_build_request_rejects_alpha_out_of_range(dataset_dir):
    with pytest.raises(UserError, match=r"alpha_r must lie in \[0, 1\]"):
        request_for(dataset_dir, alpha_r=1.5)


def test_request_seed_depends_on_run_seed_and_sample_only():
    assert request_seed(0, "s0") == request_seed(0, "s0")
    assert len({request_seed(0, "s0"), request_seed(1, "s0"), request_seed(0, "s1")}) == 3
    assert 0 <= request_seed(7, "x") < 2**63


def test_grd_returns_the_reference_and_hist_the_most_recent_history_image(dataset_dir):
    r = request_for(dataset_dir, "s0")
    grd = create_generator("grd")
    hist = create_generator("hist")
    [g] = grd.generate([r])
    [h] = hist.generate([r])
    assert np.array_equal(np.asarray(g.image), np.asarray(r.reference_image))
    assert np.array_equal(np.asarray(h.image), np.asarray(r.history_images[-1]))
    assert g.metadata == {"source": "i7"} and h.metadata == {"source": "i4"}
    assert (type(grd).group, type(hist).group) == ("Reference", "Sanity")


def test_every_method_of_table_1_is_registered():
    names = set(generators.names())
    assert {"grd", "hist", "ti", "pmg", "llava*", "llava", "lavit*", "lavit", "recon", "pigeon"} <= names


def test_unknown_method_and_option_and_dtype_are_user_errors(noise_method):
    with pytest.raises(UserError, match="unknown method 'nope'"):
        create_generator("nope")
    with pytest.raises(UserError, match=r"has no option 'colour'.*size"):
        create_generator(noise_method, options={"colour": 1})
    with pytest.raises(UserError, match="unknown dtype"):
        create_generator(noise_method, dtype="int8")
    with pytest.raises(UserError, match=r"option size='big' is not a valid int"):
        create_generator(noise_method, options={"size": "big"})
    gen = create_generator(noise_method, dtype="bfloat16", options={"size": "8"})
    assert gen.opt("size") == 8 and gen.dtype == torch.bfloat16


def test_method_dirname():
    assert method_dirname("llava*") == "llava-star" and method_dirname("pigeon") == "pigeon"
    assert ALPHA_R_GRID == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def test_third_party_entry_point_registers_a_method(tmp_path, monkeypatch, dataset_dir):
    """A package installed elsewhere adds a method through the `pigeon_bench.generators` entry-point group."""
    site = tmp_path / "site"
    (site / "pb_thirdparty").mkdir(parents=True)
    (site / "pb_thirdparty" / "__init__.py").write_text(textwrap.dedent("""
        from pigeon_bench.generation import GenerationResult, Generator

        class Mirror(Generator):
            name = "mirror"
            group = "Third party"

            def generate(self, requests):
                return [GenerationResult(r.reference_image.transpose(0)) for r in requests]
    """))
    dist = site / "pb_thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pb-thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pigeon_bench.generators]\nmirror = pb_thirdparty:Mirror\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(generators, "_items", dict(generators._items))
    monkeypatch.setattr(generators, "_loaded", False)
    assert "mirror" in generators.names()
    [res] = create_generator("mirror").generate([request_for(dataset_dir)])
    assert res.image.getpixel((0, 0)) == COLORS[7]
    monkeypatch.delitem(sys.modules, "pb_thirdparty")
