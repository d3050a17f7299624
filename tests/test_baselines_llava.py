"""llava* (pretrained LLaVA writes the SDXL prompt) and llava (+ LoRA from `baselines finetune-llava`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_baselines_tiny import assert_images, test_requests, tiny_dataset, tiny_models  # noqa: F401
from typer.testing import CliRunner

from baselines import loading as models
from baselines.llava import instruction_text
from pigeon_bench.cli import app
from pigeon_bench.errors import UserError
from pigeon_bench.generation import create_generator


def options(tiny_models: dict[str, Path]) -> dict[str, str]:  # noqa: F811
    return {"sdxl": str(tiny_models["sdxl"]), "captioner": str(tiny_models["blip2"])}


def test_llava_star_prompt_is_llavas_own_generation(tiny_models, tiny_dataset) -> None:  # noqa: F811
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    requests = test_requests(tiny_dataset)[:2]
    gen = create_generator("llava*", "tiny", options={"llava": str(tiny_models["llava"]),
                                                      **options(tiny_models)})
    results = gen.generate(requests)
    assert_images(results, 2, 64)
    # Recompute LLaVA's answer independently, one request at a time, from the saved folder.
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["llava"])
    processor = AutoProcessor.from_pretrained(tiny_models["llava"])
    for req, res in zip(requests, results, strict=True):
        text = instruction_text(processor.image_token, res.metadata["reference_caption"], req.instruction)
        batch = processor(images=[*req.history_images, req.reference_image], text=[text], return_tensors="pt")
        banned = [[i] for i in processor.tokenizer.all_special_ids if i != processor.tokenizer.eos_token_id]
        out = model.generate(
            **batch, max_new_tokens=12, min_new_tokens=4, do_sample=False, bad_words_ids=banned
        )
        answer = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        assert res.metadata["prompt"] == models.clean_text(answer) != ""
    again = create_generator("llava*", "tiny", options={"llava": str(tiny_models["llava"]),
                                                        **options(tiny_models)})
    assert [r.image.tobytes() for r in again.generate(requests)] == [r.image.tobytes() for r in results]


def test_finetune_llava_command_and_its_lora_in_llava(tiny_models, tiny_dataset, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "lora"
    result = CliRunner().invoke(
        app,
        [
            "baselines",
            "finetune-llava",
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
            "--steps",
            "3",
            "--lr",
            "0.01",
            "--profile",
            "tiny",
            "--base",
            str(tiny_models["llava"]),
            "--captioner",
            str(tiny_models["blip2"]),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["steps"] == 3 and meta["n_train"] == 3 and len(meta["losses"]) == 3
    assert meta["base"] == str(tiny_models["llava"])

    tuned = create_generator("llava", "tiny", options={"lora": str(out), **options(tiny_models)})
    # base read from finetune.json
    results = tuned.generate(test_requests(tiny_dataset)[:2])
    assert_images(results, 2, 64)
    assert tuned.describe()["llava"] == str(tiny_models["llava"]) and tuned.describe()["lora"] == str(out)
    base, _ = models.load_lmm(str(tiny_models["llava"]), torch.device("cpu"), torch.float32)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    merged = dict(tuned.model.named_parameters())[name]
    assert not torch.allclose(merged, dict(base.named_parameters())[name])  # the LoRA was merged in
    vision = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(dict(tuned.model.named_parameters())[vision], dict(base.named_parameters())[vision])


def test_finetune_llava_depends_on_its_seed_only(tiny_models, tiny_dataset, tmp_path) -> None:  # noqa: F811
    """The LoRA's random initialisation must not depend on what the process drew before (run order)."""
    from baselines.llava import finetune_llava

    outs = []
    for i, draws in enumerate((0, 5)):
        torch.rand(draws)
        outs.append(tmp_path / f"lora{i}")
        finetune_llava(tiny_dataset, outs[-1], base_model=str(tiny_models["llava"]), profile="tiny", steps=2,
                       lr=0.01, captioner_ref=str(tiny_models["blip2"]))
    a, b = ((o / "adapter_model.safetensors").read_bytes() for o in outs)
    assert a == b


def test_llava_fine_tunes_from_data_option_once(tiny_models, tiny_dataset) -> None:  # noqa: F811
    opts = {"data_dir": str(tiny_dataset), "llava": str(tiny_models["llava"]), **options(tiny_models)}
    gen = create_generator("llava", "tiny", options=opts)
    gen.prepare()
    lora = gen.lora_dir
    assert (Path(lora) / "adapter_config.json").is_file()
    stamp = (Path(lora) / "adapter_model.safetensors").stat().st_mtime_ns
    again = create_generator("llava", "tiny", options=opts)
    again.prepare()
    assert again.lora_dir == lora
    assert (Path(lora) / "adapter_model.safetensors").stat().st_mtime_ns == stamp


def test_llava_bad_input_is_a_user_error(tiny_models, tiny_dataset, tmp_path) -> None:  # noqa: F811
    requests = test_requests(tiny_dataset)[:1]
    with pytest.raises(UserError, match="needs its fine-tuned LoRA"):
        create_generator("llava", "paper").generate(requests)
    with pytest.raises(UserError, match="not a LoRA folder"):
        create_generator("llava", "tiny", options={"lora": str(tmp_path)}).generate(requests)
    with pytest.raises(UserError, match="model folder not found"):
        create_generator("llava*", "tiny", options={"llava": str(tmp_path / "missing")}).generate(requests)
    with pytest.raises(UserError, match="expected a LLaVA or BLIP-2 model"):
        models.load_lmm(str(tiny_models["llama"]), torch.device("cpu"), torch.float32)
    runner = CliRunner()
    missing = runner.invoke(
        app,
        [
            "baselines",
            "finetune-llava",
            "--data",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
            "--profile",
            "tiny",
        ],
    )
    assert missing.exit_code == 2 and "dataset folder not found" in missing.output
    bad_base = runner.invoke(
        app,
        [
            "baselines",
            "finetune-llava",
            "--data",
            str(tiny_dataset),
            "--out",
            str(tmp_path / "o"),
            "--base",
            str(tmp_path / "no-model"),
        ],
    )
    assert bad_base.exit_code == 2 and "model folder not found" in bad_base.output
