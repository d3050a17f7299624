"""The reference captioner: BLIP-2 or LLaVA from a saved folder, content-hash disk cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_baselines_tiny import draw, tiny_models  # noqa: F401

from baselines.captioner import Captioner
from pigeon_bench.artifacts import image_digest as image_hash
from pigeon_bench.errors import UserError

CPU = torch.device("cpu")


def test_captions_are_cached_by_content_and_fingerprint(tiny_models, tmp_path) -> None:  # noqa: F811
    cap = Captioner(
        str(tiny_models["blip2"]), CPU, torch.float32, max_new_tokens=8, min_new_tokens=3, cache_root=tmp_path
    )
    images = [draw(1), draw(2), draw(1).copy()]
    first = cap.caption(images)
    assert len(first) == 3 and first[0] == first[2] and all(first)
    assert image_hash(images[0]) == image_hash(images[2]) != image_hash(images[1])
    assert len(list(cap.folder.rglob("*.txt"))) == 2  # each distinct image captioned once

    def boom(_images):
        raise AssertionError("the model ran although every caption was cached")

    cap._run = boom
    assert cap.caption(images) == first
    longer = Captioner(
        str(tiny_models["blip2"]),
        CPU,
        torch.float32,
        max_new_tokens=12,
        min_new_tokens=3,
        cache_root=tmp_path,
    )
    assert longer.folder != cap.folder  # decoding settings are part of the fingerprint


def test_llava_captioner_and_errors(tiny_models, tmp_path) -> None:  # noqa: F811
    cap = Captioner(
        str(tiny_models["llava"]), CPU, torch.float32, max_new_tokens=6, min_new_tokens=2, cache_root=tmp_path
    )
    texts = cap.caption([draw(3), draw(4)])
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(UserError, match="expected a LLaVA or BLIP-2 model"):
        Captioner(str(tiny_models["llama"]), CPU, torch.float32, cache_root=tmp_path).caption([draw(5)])
    with pytest.raises(UserError, match="cannot load model"):
        Captioner(str(Path(tmp_path)), CPU, torch.float32, cache_root=tmp_path / "c").caption([draw(6)])
