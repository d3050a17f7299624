"""Tiny-model builders (baselines/tiny.py) and the shared fixtures of the baseline adapter tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from baselines import tiny
from pigeon_bench.data.model import Dataset, write_dataset
from pigeon_bench.generation import GenerationRequest, build_request


def draw(i: int, size: int = 40) -> Image.Image:
    """A distinct little picture per index (colour and shape vary)."""
    im = Image.new("RGB", (size, size - 4), ((37 * i) % 256, (91 * i) % 256, (53 * i + 100) % 256))
    d = ImageDraw.Draw(im)
    box = (4 + i % 5, 4 + i % 3, size - 6 - i % 4, size - 10)
    (d.ellipse if i % 2 else d.rectangle)(box, fill=((200 + 17 * i) % 256, (13 * i) % 256, 90))
    return im


def write_tiny_dataset(root: Path, n_items: int = 14) -> Path:
    """A dataset folder: 14 items, 2 users, 3 train and 4 test samples, semantics text per item."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n_items):
        draw(i).save(root / "images" / f"{i}.png")
        items.append({"item_id": str(i), "image_path": f"images/{i}.png", "semantics": f"item number {i}"})
    samples = []
    for k in range(7):
        user = k % 2
        hist = [str((user * 5 + k + j) % n_items) for j in range(5)]
        samples.append(
            {
                "sample_id": f"s{k}",
                "user_id": f"u{user}",
                "history": hist,
                "target_id": str((k + 10) % n_items),
                "reference_id": str((k + 11) % n_items),
                "split": "train" if k < 3 else "test",
                "instruction": "Make a sticker for this user.",
            }
        )
    write_dataset(root, pd.DataFrame(items), pd.DataFrame(samples), {"scenario": "sticker"})
    return root


@functools.cache
def _saved_models(root: Path) -> dict[str, Path]:
    return {name: tiny.materialize(name, root) for name in tiny.SAVERS}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny model saved with save_pretrained into one session folder (loaded like hub checkpoints)."""
    return _saved_models(tmp_path_factory.getbasetemp() / "tiny-models")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.getbasetemp() / "tiny-dataset"
    return root if (root / "stats.json").is_file() else write_tiny_dataset(root)


def test_requests(tiny_dataset: Path, split: str = "test") -> list[GenerationRequest]:
    ds = Dataset(tiny_dataset)
    return [build_request(ds, s, run_seed=0) for s in ds.samples(split)]


test_requests.__test__ = False  # a helper, not a test


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


def assert_images(results, n: int, size: int) -> None:
    """``n`` RGB images of ``size`` x ``size`` that are not blank."""
    assert len(results) == n
    for r in results:
        assert r.image.mode == "RGB" and r.image.size == (size, size)
        assert pixels(r.image).std() > 0


# ---------------------------------------------------------------- tiny.py itself


def test_clip_tokenizer_is_the_clip_bpe() -> None:
    tok = tiny.clip_tokenizer()
    assert len(tok) == tiny.CLIP_VOCAB_SIZE
    ids = tok("a photo of a cat").input_ids
    # The OpenAI CLIP BPE: <|startoftext|> a photo of a cat <|endoftext|>
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_llama_tokenizer_round_trips_ascii_and_saves(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = tiny.llama_tokenizer()
    text = "Zebra at 42 <image> ok!"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.convert_tokens_to_ids("<image>") in ids
    assert tok.decode(ids, skip_special_tokens=False) == "<s>" + text
    assert tok.unk_token_id in tok("über").input_ids  # outside the printable-ASCII alphabet
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text).input_ids == ids and again.eos_token == "</s>" and again.pad_token == "<pad>"


def test_tiny_llama_is_seeded_and_loads_from_its_folder(tiny_models: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    a, b = tiny.llama(), tiny.llama()
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    loaded = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert torch.equal(loaded.lm_head.weight, a.lm_head.weight)


def test_materialize_reuses_the_folder_and_rejects_unknown_names(tmp_path: Path) -> None:
    from pigeon_bench.errors import UserError

    first = tiny.materialize("llama", tmp_path)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert tiny.materialize("llama", tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="unknown tiny model"):
        tiny.materialize("gpt-5", tmp_path)
