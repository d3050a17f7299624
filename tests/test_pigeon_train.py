"""Pigeon training and checkpoints on a tiny random backbone and a PIL-drawn fixture dataset."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from test_pigeon_modules import SMALL, _one_thread, small_backbone  # noqa: F401 - autouse fixture

from pigeon.model import PigeonConfig, PigeonModel, load_checkpoint, save_checkpoint
from pigeon.tiny import TinyBackbone, TinyConfig
from pigeon.train import (
    DPOSpec,
    TrainSpec,
    dpo_loss,
    item_texts,
    template_fields,
    train_dpo,
    train_sft,
    with_dataset_scenario,
)
from pigeon_bench.data.model import write_dataset
from pigeon_bench.errors import UserError
from pigeon_bench.generation import build_request, create_generator

COLORS = [(220, 40, 40), (40, 160, 60), (40, 60, 220), (230, 200, 40)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    (root / "img").mkdir()
    items = []
    for i in range(12):
        im = Image.new("RGB", (32, 32), "white")
        d = ImageDraw.Draw(im)
        (d.ellipse if i % 2 else d.rectangle)([4 + i % 3, 4, 26, 26 - i % 4], fill=COLORS[i % 4])
        im.save(root / "img" / f"{i}.png")
        items.append({"item_id": str(i), "image_path": f"img/{i}.png",
                      "semantics": f"a {['red', 'green', 'blue', 'yellow'][i % 4]} shape"})
    samples = []
    for u in range(3):
        seq = [str((u * 4 + k) % 12) for k in range(8)]
        for w in range(2):
            split = "test" if w == 1 else "train"
            ref = seq[w + 6] if split == "test" else seq[w + 5]
            samples.append({"sample_id": f"u{u}-{w}", "user_id": f"u{u}", "history": seq[w:w + 5],
                            "target_id": seq[w + 5], "reference_id": ref, "split": split,
                            "instruction": "make a shape"})
    write_dataset(root, pd.DataFrame(items), pd.DataFrame(samples), {"scenario": "sticker", "samples": 6})
    return root


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bb") / "tiny"
    small_backbone().save(out)
    return out


def flat(model: PigeonModel) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor of ``model`` as "<component>.<key>"."""
    return {f"{c}.{k}": v for c, sd in model.component_states().items() for k, v in sd.items()}


def spec(dataset: Path, backbone_dir: Path, out: Path, **kw) -> TrainSpec:
    args = {"steps": 2, "batch_size": 2, "lr": 1e-2, "save_every": 1, "progress": False,
            "config": PigeonConfig(adapter_hidden=16), "backbone_options": {"path": str(backbone_dir)}}
    return TrainSpec(data=dataset, out=out, **(args | kw))


def test_dpo_loss_matches_hand_computation() -> None:
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -2.5])
    loss, margin = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # margins: (-10+11) - (-12+11) = 2 ; (-4+5) - (-3+2.5) = 1.5
    assert margin.tolist() == [2.0, 1.5]
    want = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(-0.75)))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_sft_checkpoint_round_trip_and_resume(dataset: Path, backbone_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sft"
    first = train_sft(spec(dataset, backbone_dir, out))
    assert [r["step"] for r in first["log"]] == [1, 2]
    for comp, name in (("mask_generator", "model.safetensors"), ("adapter", "model.safetensors"),
                       ("llama", "adapter_model.safetensors"), ("llama", "adapter_config.json")):
        assert (out / comp / name).is_file()  # the authors' released layout
    model = load_checkpoint(out, TinyBackbone.load(backbone_dir))
    fresh = flat(PigeonModel(TinyBackbone.load(backbone_dir), PigeonConfig(adapter_hidden=16)))
    loaded = flat(model)
    assert set(loaded) == set(fresh)
    assert {k.split(".")[0] for k in loaded} == {"mask_generator", "adapter", "llama"}
    assert any(not torch.equal(loaded[k], fresh[k]) for k in loaded if "lora_B" in k)  # LoRA B starts at 0
    # the official rules pass no gradient to the mask generator: it keeps its seeded initial weights
    bb = TinyBackbone.load(backbone_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the spec's seed: train_sft initialises from it alone
        init = flat(PigeonModel(bb, PigeonConfig(adapter_hidden=16)))
    assert all(torch.equal(loaded[k], init[k]) for k in loaded if k.startswith("mask_generator."))
    assert any(not torch.equal(loaded[k], init[k]) for k in loaded if k.startswith("adapter."))
    # resuming continues from the saved step and keeps the earlier log
    more = train_sft(spec(dataset, backbone_dir, out, steps=3))
    assert [r["step"] for r in more["log"]] == [1, 2, 3] and more["log"][:2] == first["log"]
    with pytest.raises(UserError, match="lr"):
        train_sft(spec(dataset, backbone_dir, out, steps=4, lr=1e-3))


def test_sft_initialisation_depends_on_the_seed_only(dataset: Path, backbone_dir: Path, tmp_path: Path
                                                     ) -> None:
    """The same spec trains the same checkpoint whatever the process drew from the global RNG before."""
    weights = []
    for i, draws in enumerate((0, 5)):
        torch.rand(draws)
        train_sft(spec(dataset, backbone_dir, tmp_path / f"sft{i}"))
        weights.append([(tmp_path / f"sft{i}" / c / f).read_bytes() for c, f in (
            ("mask_generator", "model.safetensors"), ("adapter", "model.safetensors"),
            ("llama", "adapter_model.safetensors"))])
    assert weights[0] == weights[1]


def test_checkpoint_save_load_is_exact_and_checks_the_backbone(tmp_path: Path) -> None:
    bb = small_backbone()
    model = PigeonModel(bb, PigeonConfig(adapter_hidden=16))
    with torch.no_grad():
        for p in model.lora_parameters().values():
            p.normal_()
    save_checkpoint(model, tmp_path / "ck", {"stage": "sft"})
    back = load_checkpoint(tmp_path / "ck", small_backbone())
    a, b = flat(model), flat(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    other = TinyBackbone.new(TinyConfig(**{**SMALL.__dict__, "hidden_size": 48}), ["x"]).eval()
    with pytest.raises(UserError, match="hidden_size"):
        load_checkpoint(tmp_path / "ck", other)
    with pytest.raises(UserError, match="not a Pigeon checkpoint"):
        load_checkpoint(tmp_path, small_backbone())


def test_dpo_trains_lora_only_and_writes_pairs(dataset: Path, backbone_dir: Path, tmp_path: Path) -> None:
    raw = PigeonConfig(adapter_hidden=16, encoding=False)  # α_r then zeroes prompt tokens: candidates differ
    train_sft(spec(dataset, backbone_dir, tmp_path / "sft", config=raw))
    init = flat(load_checkpoint(tmp_path / "sft", TinyBackbone.load(backbone_dir)))

    def brightness(images, histories):  # a stand-in reward: any ranking of the candidates will do
        return torch.tensor([float(torch.tensor(list(im.convert("L").tobytes())).sum()) for im in images])

    # sharp sampling (temperature 0.3): the barely trained model's candidates then differ across α_r
    d = DPOSpec(**spec(dataset, backbone_dir, tmp_path / "dpo", steps=2).__dict__, init=tmp_path / "sft",
                prompts=3, alpha_grid=(0.0, 0.5, 1.0), beta=0.5, temperature=0.3)
    meta = train_dpo(d, reward=brightness)
    pairs = pd.read_parquet(tmp_path / "dpo" / "preferences.parquet")
    assert 1 <= len(pairs) <= 3 and set(pairs["alpha_chosen"]) <= {0.0, 0.5, 1.0}
    assert (pairs["reward_chosen"] >= pairs["reward_rejected"]).all()
    assert all(list(c) != list(r) for c, r in zip(pairs["chosen"], pairs["rejected"], strict=True))
    assert [r["step"] for r in meta["log"]] == [1, 2] and "margin" in meta["log"][0]
    after = flat(load_checkpoint(tmp_path / "dpo", TinyBackbone.load(backbone_dir)))
    assert all(torch.equal(after[k], init[k]) for k in init if not k.startswith("llama."))
    assert any(not torch.equal(after[k], init[k]) for k in init if k.startswith("llama."))


def test_generators_answer_requests(dataset: Path, backbone_dir: Path, tmp_path: Path) -> None:
    from pigeon_bench.data import Dataset

    train_sft(spec(dataset, backbone_dir, tmp_path / "sft"))
    ds = Dataset(dataset)
    reqs = [build_request(ds, s, 0, alpha_r=0.3) for s in ds.samples("test")]
    gen = create_generator("pigeon", "tiny", options={"checkpoint": str(tmp_path / "sft"),
                                                      "backbone_path": str(backbone_dir), "alpha_h": 0.5})
    out = gen.generate(reqs)
    assert len(out) == 3 and all(r.image.size == (32, 32) and r.metadata["alpha_r"] == 0.3 for r in out)
    again = gen.generate(reqs)
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(out, again, strict=True))
    assert gen.describe()["checkpoint"] == str(tmp_path / "sft")
    recon = create_generator("recon", "tiny", options={"backbone_path": str(backbone_dir)}).generate(reqs)
    assert [r.image.size for r in recon] == [(32, 32)] * 3
    with pytest.raises(UserError, match="checkpoint"):
        create_generator("pigeon", "paper", options={"backbone_path": str(backbone_dir),
                                                     "backbone": "tiny"}).generate(reqs)
    with pytest.raises(UserError, match="no option"):
        create_generator("pigeon", "tiny", options={"alpha_x": 1})


def test_official_template_fields_come_from_the_items_table(tmp_path: Path) -> None:
    from pigeon_bench.data import Dataset

    items = pd.DataFrame({"item_id": ["1", "2", "3"], "image_path": ["a.png"] * 3, "semantics": ["s"] * 3,
                          "title": ["Heat (1995)", "Alien (1979)", "Up"], "emotion": ["joy", None, "anger"]})
    samples = pd.DataFrame([{"sample_id": "x", "user_id": "u", "history": ["1"] * 5, "target_id": "2",
                             "reference_id": "3", "split": "train", "instruction": "i"}])
    write_dataset(tmp_path, items, samples, {"scenario": "movie"})
    texts = item_texts(Dataset(tmp_path))
    assert texts["1"] == {"title": "Heat", "emotion": "joy"} and texts["2"] == {"title": "Alien"}
    fields = template_fields(texts, ["1", "2", "1", "2", "3"], "3")
    assert fields == {"emotion": "anger", "title": "Up",
                      "history_titles": ["Heat", "Alien", "Heat", "Alien", "Up"]}
    assert template_fields(texts, ["1", "9"], "9") == {"emotion": None, "title": None, "history_titles": None}
    assert with_dataset_scenario(PigeonConfig(), tmp_path).scenario == "movie"


def test_a_resumed_training_says_from_which_step(dataset: Path, backbone_dir: Path, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "sft"
    train_sft(spec(dataset, backbone_dir, out))
    with caplog.at_level("WARNING", logger="pigeon.train"):
        meta = train_sft(spec(dataset, backbone_dir, out, steps=3))
    assert meta["step"] == 3 and f"resuming sft from step 2 (saved in {out})" in caplog.text
