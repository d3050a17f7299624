"""TI (Textual Inversion on SDXL), tiny profile, loaded from saved folders like the paper's checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_baselines_tiny import assert_images, pixels, test_requests, tiny_dataset, tiny_models  # noqa: F401

from baselines import loading as models
from baselines.captioner import Captioner
from baselines.ti import PLACEHOLDER, TextualInversion
from pigeon_bench.errors import UserError
from pigeon_bench.generation import create_generator


def make(tiny_models: dict[str, Path], **options) -> TextualInversion:  # noqa: F811
    return create_generator("ti", "tiny", options={"sdxl": str(tiny_models["sdxl"]),
                                                   "captioner": str(tiny_models["blip2"]), **options})


def test_ti_images_prompts_and_determinism(tiny_models, tiny_dataset) -> None:  # noqa: F811
    requests = test_requests(tiny_dataset)[:3]
    results = make(tiny_models).generate(requests)
    assert_images(results, 3, 64)
    captions = Captioner(
        str(tiny_models["blip2"]), torch.device("cpu"), torch.float32, max_new_tokens=8, min_new_tokens=3
    ).caption([r.reference_image for r in requests])
    for r, c in zip(results, captions, strict=True):
        assert c and r.metadata["prompt"] == f"{c}, in the style of {PLACEHOLDER}"
    again = make(tiny_models).generate(requests)  # a fresh generator: inversion and sampling repeat exactly
    assert all((pixels(a.image) == pixels(b.image)).all() for a, b in zip(results, again, strict=True))
    alone = make(tiny_models).generate(requests[2:])  # batch composition does not change an image (resume)
    assert (pixels(alone[0].image) == pixels(results[2].image)).all()
    requests[0].seed += 1
    other = make(tiny_models).generate(requests[:1])
    assert (pixels(other[0].image) != pixels(results[0].image)).any()


def test_ti_learns_one_token_per_history(tiny_models, tiny_dataset) -> None:  # noqa: F811
    gen = make(tiny_models)
    gen.load()
    a, b = test_requests(tiny_dataset)[:2]
    assert a.sample.history != b.sample.history
    va = gen.invert(a.history_images, a.sample.history)
    vb = gen.invert(b.history_images, b.sample.history)
    init_id = gen.pipe.tokenizer("style", add_special_tokens=False).input_ids[0]
    init = gen.pipe.text_encoder.get_input_embeddings().weight[init_id]
    assert not torch.allclose(va[0], init) and not torch.allclose(va[0], vb[0])
    assert gen.invert(a.history_images, a.sample.history) is va  # cached per history
    # The learned vector really conditions the text encoder where the user token appears.
    with torch.inference_mode():
        ea, _ = gen._encode([f"a cat, in the style of {PLACEHOLDER}"], va)
        eb, _ = gen._encode([f"a cat, in the style of {PLACEHOLDER}"], vb)
    assert not torch.allclose(ea, eb)


def test_ti_pools_at_end_of_text_with_legacy_clip_configs(tiny_models) -> None:  # noqa: F811
    gen = make(tiny_models)
    gen.load()
    enc, tok = gen.pipe.text_encoder_2, gen.pipe.tokenizer_2
    ids = tok(f"a cat, in the style of {PLACEHOLDER}", return_tensors="pt").input_ids
    with torch.inference_mode():
        pooled = enc(ids).text_embeds
        pooler = getattr(enc, "text_model", enc)
        pooler.eos_token_id = 2  # as in SDXL's released config
        legacy = enc(ids).text_embeds
        gen.pipe = None
        gen.load()  # load() repairs the shared encoder
        assert pooler.eos_token_id == tok.eos_token_id
        assert torch.equal(enc(ids).text_embeds, pooled) and not torch.equal(legacy, pooled)


def test_ti_semantics_option_and_paper_defaults(tiny_models, tiny_dataset) -> None:  # noqa: F811
    requests = test_requests(tiny_dataset)[:1]
    with torch.inference_mode():  # a caller in inference mode: the inversion still trains
        result = make(tiny_models, reference_text="semantics").generate(requests)[0]
    assert result.metadata["prompt"] == f"{requests[0].reference_text}, in the style of {PLACEHOLDER}"
    paper = create_generator("ti", "paper")
    assert isinstance(paper, TextualInversion) and (paper.opt("size"), paper.opt("steps")) == (1024, 50)
    assert create_generator("ti", "paper", options={"steps": "30"}).opt("steps") == 30  # CLI strings cast


def test_ti_bad_input_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="model folder not found"):
        create_generator("ti", "tiny", options={"sdxl": str(tmp_path / "missing")}).load()
    with pytest.raises(UserError, match="option steps"):
        create_generator("ti", "tiny", options={"steps": "many"})
    with pytest.raises(UserError, match="cannot load model"):  # a folder that is not a pipeline
        models.load_pipeline("sdxl", str(tmp_path), torch.device("cpu"), torch.float32)
