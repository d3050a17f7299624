"""PMG (captions -> LLM preference keywords -> Stable Diffusion 1.5) in the tiny profile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_baselines_tiny import assert_images, pixels, test_requests, tiny_dataset, tiny_models  # noqa: F401
from typer.testing import CliRunner

from baselines import loading as models
from baselines.captioner import Captioner
from baselines.pmg import PMG, SoftPreference, preference_prompt
from pigeon_bench.cli import app
from pigeon_bench.errors import UserError
from pigeon_bench.generation import create_generator


def make(tiny_models: dict[str, Path], **options) -> PMG:  # noqa: F811
    folders = {"sd": tiny_models["sd"], "llm": tiny_models["llama"], "captioner": tiny_models["blip2"]}
    return create_generator("pmg", "tiny", options={**{k: str(v) for k, v in folders.items()}, **options})


def test_pmg_prompt_is_caption_plus_the_llms_keywords(tiny_models, tiny_dataset) -> None:  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requests = test_requests(tiny_dataset)[:2]
    results = make(tiny_models, soft=False).generate(requests)
    assert_images(results, 2, 64)
    cap = Captioner(
        str(tiny_models["blip2"]), torch.device("cpu"), torch.float32, max_new_tokens=8, min_new_tokens=3
    )
    llm = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    banned = [[i] for i in tok.all_special_ids if i != tok.eos_token_id]
    for req, res in zip(requests, results, strict=True):
        history = cap.caption(req.history_images)
        assert res.metadata["history_captions"] == history
        batch = tok([preference_prompt(history)], return_tensors="pt")
        out = llm.generate(**batch, max_new_tokens=8, min_new_tokens=3, do_sample=False, bad_words_ids=banned)
        keywords = models.clean_text(
            tok.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        )
        reference = cap.caption([req.reference_image])[0]
        assert res.metadata["keywords"] == keywords != ""
        assert res.metadata["prompt"] == f"{reference}, {keywords}"
    again = make(tiny_models, soft="false").generate(requests)  # as the command line passes it
    assert all((pixels(a.image) == pixels(b.image)).all() for a, b in zip(results, again, strict=True))
    assert not any(r.metadata["soft_embeddings"] for r in results)


def test_finetune_pmg_command_and_its_soft_tokens(tiny_models, tiny_dataset, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "adapter"
    args = [
        "baselines",
        "finetune-pmg",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--steps",
        "3",
        "--lr",
        "0.01",
        "--n-soft",
        "3",
        "--profile",
        "tiny",
        "--llm",
        str(tiny_models["llama"]),
        "--sd",
        str(tiny_models["sd"]),
        "--captioner",
        str(tiny_models["blip2"]),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    adapter, meta = SoftPreference.load(out)
    assert meta["steps"] == 3 and len(meta["losses"]) == 3 and meta["n_soft"] == 3
    assert adapter.soft.shape == (3, meta["llm_hidden"]) and adapter.proj.out_features == meta["text_dim"]

    requests = test_requests(tiny_dataset)[:2]
    gen = make(tiny_models, adapter=str(out))
    soft = gen.generate(requests)
    plain = make(tiny_models, soft=False).generate(requests)
    assert_images(soft, 2, 64)
    assert all(r.metadata["soft_embeddings"] for r in soft) and gen.describe()["adapter"] == str(out)
    assert [r.metadata["prompt"] for r in soft] == [r.metadata["prompt"] for r in plain]
    # Same prompt and seed: the soft preference tokens alone change the image.
    assert all((pixels(a.image) != pixels(b.image)).any() for a, b in zip(soft, plain, strict=True))
    cond = gen.conditioning(["a cat"], [soft[0].metadata["history_captions"]])
    assert cond["prompt_embeds"].shape[1] == 77 + 3 == cond["negative_prompt_embeds"].shape[1]


def test_pmg_default_tiny_profile_and_semantics(tiny_dataset) -> None:  # noqa: F811
    requests = test_requests(tiny_dataset)[:1]
    # Tiny folders materialised in the cache; the adapter trained on the fly from data_dir (cached).
    gen = create_generator("pmg", "tiny",
                           options={"reference_text": "semantics", "data_dir": str(tiny_dataset)})
    result = gen.generate(requests)[0]
    assert result.image.size == (64, 64)
    assert result.metadata["history_captions"] == requests[0].history_texts
    assert result.metadata["prompt"].startswith(requests[0].reference_text + ", ")
    described = gen.describe()
    assert described["soft_embeddings"] is True and Path(described["sd"]).is_dir()
    assert Path(described["adapter"]).parent.name == "pmg-adapter"


def test_pmg_bad_input_is_a_user_error(tiny_models, tiny_dataset, tmp_path) -> None:  # noqa: F811
    with pytest.raises(UserError, match="model folder not found"):
        make(tiny_models, llm=str(tmp_path / "missing")).load()
    with pytest.raises(UserError, match="reference_text"):
        make(tiny_models, reference_text="title", soft=False)
    with pytest.raises(UserError, match="unknown profile"):
        create_generator("pmg", "huge")
    with pytest.raises(UserError, match="not a PMG adapter folder"):
        make(tiny_models, adapter=str(tmp_path)).generate(test_requests(tiny_dataset)[:1])
    folders = {"sd": tiny_models["sd"], "llm": tiny_models["llama"], "captioner": tiny_models["blip2"]}
    gen = create_generator("pmg", "paper", options={k: str(v) for k, v in folders.items()},
                           dataset=tiny_dataset)
    with pytest.raises(UserError, match="needs its soft-preference adapter"):  # paper: never guessed
        gen.prepare()
