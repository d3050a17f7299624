"""The rules Pigeon follows from the authors' code (docs/pigeon-official.md), pinned at tiny size without it:
keep counts, the mask generator (sinusoid positions from 1, post-norm encoder, tanh head, key names), joint
history top-k, <img>/</img> inside the reference top-k, the log(1 - softmax) training rule, inference
noise, the adapter, prompts, inference settings, beam search and the released checkpoint layout."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from test_pigeon_modules import SMALL, _one_thread, examples, small_backbone  # noqa: F401 - autouse fixture
from typer.testing import CliRunner

from pigeon.checkpoint import checkpoint_info, inspect_checkpoint, write_checkpoint
from pigeon.inference import PAPER, TINY, InferenceSettings, resolve
from pigeon.mask import MaskGenerator, keep_count, keep_logits, keep_masks, sinusoid_table, topk_keep
from pigeon.model import Example, PigeonConfig, PigeonModel, load_checkpoint, sample_visual_tokens
from pigeon.personalization import Adapter
from pigeon.prompt import TEMPLATES, prompt_layout, reference_text, short_title
from pigeon.train import _alpha_r
from pigeon_bench.errors import UserError

GRID = [(n, round(i * 0.1, 1)) for n in range(1, 300) for i in range(11)]


# keep counts ---------------------------------------------------------------------------------------------
def test_keep_counts_where_the_rules_disagree() -> None:
    """int(n (1 - r)) truncates a float product that can fall just below an integer; the paper's count is
    the exact floor. Over n = 1..299, r = 0.0..1.0 they disagree in 89 of 3,289 cases."""
    exact = {(n, r): max(1, math.floor(Fraction(n) * (1 - Fraction(str(r))))) for n, r in GRID}
    below = {(n, r) for n, r in GRID if n * (1 - r) < exact[n, r] > 1}  # the float product under the floor
    assert len(GRID) == 3289 and len(below) == 89
    assert (10, 0.8) in below and (20, 0.9) in below  # 10 * 0.2 -> 1.9999999999999996, 20 * 0.1 -> 1.99...
    for n, r in GRID:
        assert keep_count(n, r, "paper") == exact[n, r]
        assert keep_count(n, r, "official") == (exact[n, r] - 1 if (n, r) in below else exact[n, r])
    assert (keep_count(10, 0.8), keep_count(10, 0.8, "paper")) == (1, 2)
    assert (keep_count(20, 0.9), keep_count(20, 0.9, "paper")) == (1, 2)


# mask generator ------------------------------------------------------------------------------------------
def test_sinusoid_position_table() -> None:
    t = sinusoid_table(5, 4)  # ω = (1, 10000^(-1/2)) = (1, 0.01)
    assert t[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    want = [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]
    assert t[1].tolist() == pytest.approx(want, abs=1e-7)
    assert t[3, 2].item() == pytest.approx(math.sin(0.03), abs=1e-7)
    assert t[4, 1].item() == pytest.approx(math.cos(4), abs=1e-7)
    mg = MaskGenerator(8)
    assert "position_embedding.pe" in mg.state_dict() and not any("position" in n for n, _ in
                                                                 mg.named_parameters())
    assert torch.equal(mg.position_embedding.pe, sinusoid_table(257, 8))
    far = mg.position_embedding(torch.tensor([300]))  # past the table: the same formula
    assert far[0].tolist() == pytest.approx(sinusoid_table(301, 8)[300].tolist(), abs=1e-6)


def test_positions_count_from_one_within_each_image() -> None:
    mg = MaskGenerator(8).eval()
    seen = []
    mg.position_embedding.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    e = lambda n: torch.randn(n, 8)  # noqa: E731
    mg.scores([[e(3), e(2)], [e(1)]], [e(4), e(2)])
    assert seen[0].tolist() == [[1, 2, 3, 1, 2, 1, 2, 3, 4], [1, 1, 2, 0, 0, 0, 0, 0, 0]]  # pads: 0


def test_encoder_is_post_norm_with_the_default_feed_forward() -> None:
    """A post-norm layer ends in LayerNorm: whatever the input, each output token has mean 0 and std 1 (at
    the initial norm weights); a pre-norm layer would keep the input's offset of 100."""
    mg = MaskGenerator(8).eval()
    layer = mg.encoder.layers[0]
    assert layer.norm_first is False and layer.linear1.out_features == 2048 and len(mg.encoder.layers) == 1
    x = 100 + torch.arange(24, dtype=torch.float).reshape(1, 3, 8)
    with torch.no_grad():
        h = mg.encoder(x, src_key_padding_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert h.mean(-1).abs().max() < 1e-5
    assert h.std(-1, unbiased=False).sub(1).abs().max() < 1e-3


def test_head_is_the_input_layernorm_again_then_linear_then_tanh() -> None:
    torch.manual_seed(0)
    mg = MaskGenerator(8).eval()
    e, pos, types = torch.randn(1, 5, 8), torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[1, 1, 1, 2, 2]])
    with torch.no_grad():
        x = mg.LayerNorm(e + sinusoid_table(4, 8)[pos] + mg.type_embedding(types))
        h = mg.encoder(x, src_key_padding_mask=types == 0)
        z = torch.tanh(mg.dense(mg.LayerNorm(h)))
        assert torch.allclose(mg.hidden(e, pos, types), z, atol=1e-6)
        assert torch.allclose(mg(e, pos, types), torch.cosine_similarity(z, e, dim=-1), atol=1e-6)
        mg.dense.weight.mul_(1e3)
        big = mg.hidden(e, pos, types)
    assert big.abs().max() <= 1.0 and big.abs().max() > 0.99  # tanh bounds the head in (-1, 1)


def test_mask_generator_state_dict_uses_the_official_names() -> None:
    layer = [f"encoder.layers.0.{k}" for k in (
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")]
    want = {*layer, "position_embedding.pe", "type_embedding.weight", "dense.weight", "dense.bias",
            "LayerNorm.weight", "LayerNorm.bias"}
    sd = MaskGenerator(8).state_dict()
    assert set(sd) == want
    assert sd["type_embedding.weight"].shape == (3, 8) and sd["position_embedding.pe"].shape == (257, 8)


# token selection -----------------------------------------------------------------------------------------
def test_history_top_k_is_one_over_all_history_tokens() -> None:
    a, b = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([-0.9, -0.8, -0.7, -0.6])
    joint = keep_masks([a, b], 0.5, joint=True, noise=False)  # 4 of 8, all from the first image
    assert [m.tolist() for m in joint] == [[1.0] * 4, [0.0] * 4]
    per_image = keep_masks([a, b], 0.5, rules="paper", noise=False)  # 2 of each image
    assert [m.tolist() for m in per_image] == [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(("rules", "kept"), [("official", 51), ("paper", 50)])
def test_reference_top_k_ranks_the_img_tokens_too(rules: str, kept: int) -> None:
    """Official: the reference entries are <img>, 100 codes, </img> and int(102 * 0.5) = 51 of them are kept;
    kept <img>/</img> entries take places no code gets. Paper: 50 of the 100 codes."""
    s = torch.linspace(-1, 1, 102 if rules == "official" else 100)
    assert int(keep_masks([s], 0.5, rules=rules, noise=False)[0].sum()) == kept
    torch.manual_seed(0)
    cfg = PigeonConfig(adapter_hidden=16, gumbel=False, mask_rules=rules)
    model = PigeonModel(small_backbone(), cfg).eval()
    g = torch.Generator().manual_seed(1)
    ex = Example(history=[torch.randint(0, 32, (16,), generator=g) for _ in range(5)],
                 reference=torch.randint(0, 32, (100,), generator=g), caption="a red circle")
    bb = model.backbone
    with torch.no_grad():
        entries = model._reference_entries(ex.reference)
        scores = model.mask_generator.scores([[bb.embed_visual(c) for c in ex.history]], [entries])[0][-1]
        _, ref = model.masks([ex], [0.5], training=False)
    if rules == "official":
        assert entries.shape[0] == 102
        assert torch.equal(entries[0], bb.embed_tokens(torch.tensor(bb.special_ids["boi"])))
        assert torch.equal(entries[-1], bb.embed_tokens(torch.tensor(bb.special_ids["eoi"])))
        top = set(scores.topk(51).indices.tolist())
        assert int(ref[0].sum()) == 51 - len(top & {0, 101})
        assert set(ref[0].nonzero().flatten().tolist()) == {i - 1 for i in top - {0, 101}}
    else:
        assert entries.shape[0] == 100 and int(ref[0].sum()) == 50


def test_training_drops_high_scores_by_log_one_minus_softmax() -> None:
    s = torch.tensor([0.0, math.log(3)])  # softmax = (1/4, 3/4)
    assert keep_logits(s, drop_high=True).tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    # softmax([0, 0, ln 8]) = (.1, .1, .8): official logits log(.9), log(.9), log(.2) (gap 1.50), paper
    # logits -s (gap ln 8 = 2.08); noise +1.8 on the last entry lifts it over the others only in the first
    s, noise = torch.tensor([0.0, 0.0, math.log(8)]), torch.tensor([0.0, 0.0, 1.8])
    official = topk_keep(keep_logits(s, True, "official"), 2, noise)
    paper = topk_keep(keep_logits(s, True, "paper"), 2, noise)
    assert official[2] == 1.0 and paper.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("rules", ["official", "paper"])
def test_inference_masks_draw_gumbel_noise_under_the_official_rules(rules: str) -> None:
    torch.manual_seed(0)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16, mask_rules=rules)).eval()
    ex = examples(1)

    def masks(seed: int) -> list[list[float]]:
        h, r = model.masks(ex, [0.5], training=False, alpha_h=0.5,
                           generators=[torch.Generator().manual_seed(seed)])
        return [m.tolist() for m in [*h[0], r[0]]]

    with torch.no_grad():
        first, again, others = masks(0), masks(0), [masks(s) for s in range(1, 6)]
    assert first == again  # the request's own generator: reproducible
    if rules == "official":
        assert any(o != first for o in others)
    else:
        assert all(o == first for o in others)  # the paper's inference masks are the plain top-k


def test_official_training_draws_one_alpha_r_per_batch() -> None:
    assert len(set(_alpha_r(random.Random(0), 4, PigeonConfig()))) == 1
    assert len(set(_alpha_r(random.Random(0), 4, PigeonConfig(mask_rules="paper")))) == 4


# adapter and prompts -------------------------------------------------------------------------------------
def test_adapter_is_linear_linear_tanh_with_official_keys() -> None:
    torch.manual_seed(0)
    ad = Adapter(6, 5, 4).eval()
    assert set(ad.state_dict()) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert torch.allclose(ad(x), torch.tanh(ad.decoder(ad.encoder(x))), atol=1e-7)
        ad.decoder.weight.mul_(1e3)
        assert ad(x).abs().max() <= 1.0


def test_official_prompt_layouts() -> None:
    sticker = prompt_layout(5)
    assert sticker[0][0] == "text" and sticker[0][1].startswith("Below is an instruction")
    assert sticker[0][1].endswith("The user likes the following stickers:")  # stripped next to the image
    assert sticker[1:] == [*(("embeds", f"h{i}") for i in range(5)), ("embeds", "r_t"), ("embeds", "r_v"),
                           ("text", "Response:"), ("special", "boi")]
    movie = prompt_layout(2, scenario="movie", history_titles=["Heat", "Alien"])
    assert movie[0][0] == "words" and movie[0][1].endswith("The user likes the following movies: \nHeat")
    assert movie[1:4] == [("embeds", "h0"), ("words", "Alien"), ("embeds", "h1")]
    joy = "The target sticker info: a sticker with the emotion of joy. x"
    assert reference_text("x", emotion="joy") == joy
    assert reference_text("x") == "The target sticker info: x"
    assert reference_text("x", scenario="movie", title="Heat") == "The target movie is titled 'Heat'. x"
    assert reference_text("x", prompt="paper", emotion="joy") == "x"
    assert short_title("Heat (1995)") == "Heat" and short_title("Heat") == "Heat"
    assert TEMPLATES["movie"].task.startswith("Instruction: You are a helpful personalized assistant.")


# inference settings and beam search ----------------------------------------------------------------------
def test_inference_settings_of_the_official_script() -> None:
    assert (PAPER.dtype, PAPER.llm_8bit, PAPER.do_sample, PAPER.top_k, PAPER.top_p, PAPER.temperature,
            PAPER.num_beams, PAPER.min_new_tokens, PAPER.guidance_scale, PAPER.num_inference_steps,
            PAPER.size, PAPER.seed) == ("bf16", True, True, 50, 1.0, 1.0, 4, 20, 7.0, 25, (1024, 1024), 123)
    assert PAPER.backbone_options("lavit") == {"output_size": 1024, "num_inference_steps": 25,
                                               "guidance_scale": 7.0, "load_in_8bit": True}
    assert TINY.num_beams == 1 and TINY.backbone_options("tiny") == {}
    assert InferenceSettings.from_dict({"num_beams": 2}).num_beams == 2
    with pytest.raises(UserError, match="num_bems"):
        InferenceSettings.from_dict({"num_bems": 2})
    settings, notes = resolve(PAPER, "cpu")
    assert settings.llm_8bit is False and len(notes) == 1 and "not a GPU" in notes[0]


def test_deterministic_beam_search_matches_transformers() -> None:
    """With sampling off, our beam search over the visual codes returns what transformers' beam search does
    on the same LM (16 tokens, every id but the visual codes suppressed)."""
    from transformers import GenerationConfig

    torch.manual_seed(0)
    bb = small_backbone()
    prompt = bb.embed_tokens(torch.randint(0, bb.visual_offset, (12,)))
    settings = InferenceSettings.from_dict({"num_beams": 3, "do_sample": False}, TINY)
    ours = sample_visual_tokens(bb, [prompt], [torch.Generator()], settings)[0]
    vocab = bb.language_model.config.vocab_size
    k0 = bb.visual_offset
    suppress = [i for i in range(vocab) if not k0 <= i < k0 + SMALL.codebook_size]
    cfg = GenerationConfig(num_beams=3, do_sample=False, min_new_tokens=16, max_new_tokens=16,
                           suppress_tokens=suppress, eos_token_id=bb.special_ids["eoi"], pad_token_id=0,
                           length_penalty=1.0)
    theirs = bb.language_model.generate(inputs_embeds=prompt[None], attention_mask=torch.ones(1, 12,
                                        dtype=torch.long), generation_config=cfg)[0]
    assert (ours + k0).tolist() == theirs.tolist()[-16:]


def test_beam_sampling_is_seeded_and_batch_independent() -> None:
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16))
    settings = InferenceSettings.from_dict({"num_beams": 2}, TINY)
    exs = examples(2)
    batch = model.generate(exs, [0.3, 0.6], [4, 5], settings=settings)
    solo = [model.generate([ex], [a], [s], settings=settings)[0] for ex, a, s in zip(exs, [0.3, 0.6], [4, 5],
                                                                                   strict=True)]
    assert all(torch.equal(x, y) for x, y in zip(batch, solo, strict=True))
    assert all(x.shape == (16,) for x in batch)
    other = model.generate(exs, [0.3, 0.6], [6, 7], settings=settings)
    assert any(not torch.equal(x, y) for x, y in zip(batch, other, strict=True))


# checkpoints ---------------------------------------------------------------------------------------------
def trained_model() -> PigeonModel:
    """A model whose every checkpoint tensor is random (LoRA B starts at zero otherwise)."""
    torch.manual_seed(3)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16))
    with torch.no_grad():
        for p in [*model.lora_parameters().values(), *model.adapter.parameters()]:
            p.normal_(0, 0.1)
    return model


def released_folder(model: PigeonModel, out: Path) -> Path:
    """The authors' layout as their trainer writes it without safetensors: torch.save'd state dicts and
    peft's own adapter folder, no pigeon.json."""
    for name, module in (("mask_generator", model.mask_generator), ("adapter", model.adapter)):
        (out / name).mkdir(parents=True)
        torch.save(module.state_dict(), out / name / "pytorch_model.bin")
    model.backbone.language_model.save_pretrained(out / "llama", safe_serialization=False)
    return out


def states(model: PigeonModel) -> dict[str, torch.Tensor]:
    return {f"{c}.{k}": v for c, sd in model.component_states().items() for k, v in sd.items()}


def test_released_layout_loads_strictly_in_both_formats(tmp_path: Path) -> None:
    model = trained_model()
    ours, theirs = tmp_path / "ours", released_folder(model, tmp_path / "checkpoint-25")
    write_checkpoint(model, ours, {"stage": "sft"})
    assert (theirs / "llama" / "adapter_model.bin").is_file() and not (theirs / "pigeon.json").exists()
    want = states(model)
    for folder in (ours, theirs):
        back = load_checkpoint(folder, small_backbone())
        got = states(back)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    released = load_checkpoint(theirs, small_backbone())
    assert (released.config.adapter_hidden, released.config.lora_target_modules) == (16, ("q_proj", "v_proj"))
    a = load_checkpoint(ours, small_backbone()).generate(examples(1), [0.5], [9])
    assert torch.equal(a[0], released.generate(examples(1), [0.5], [9])[0])
    assert checkpoint_info(ours) | {"path": None} == {"path": None, "layout": "pigeon-bench",
                                                      "backbone": "tiny", "profile_hint": "tiny"}
    assert checkpoint_info(theirs)["layout"] == "released" and checkpoint_info(theirs)["backbone"] is None
    report = inspect_checkpoint(theirs)
    assert report["missing"] == [] and report["problems"] == []
    assert report["components"]["llama"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.05,
                                                     "target_modules": ["q_proj", "v_proj"]}
    assert report["components"]["mask_generator"]["feedforward"] == 2048
    assert report["components"]["adapter"]["file"] == "adapter/pytorch_model.bin"
    assert report["components"]["adapter"]["tensors"] == 4
    with pytest.raises(UserError, match=r"holds training checkpoints \(checkpoint-25\)"):
        load_checkpoint(tmp_path, small_backbone())


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_one_unexpected_key_is_refused_in_one_line(tmp_path: Path, fmt: str) -> None:
    model = trained_model()
    write_checkpoint(model, tmp_path, safetensors=fmt == "safetensors")
    state = {**model.mask_generator.state_dict(), "extra.weight": torch.zeros(2)}
    name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    path = tmp_path / "mask_generator" / name
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_checkpoint(tmp_path, small_backbone())
    assert "unexpected key 'extra.weight'" in str(err.value) and "\n" not in str(err.value)
    result = CliRunner().invoke(__import__("pigeon.cli", fromlist=["app"]).app, ["inspect", str(tmp_path)])
    assert isinstance(result.exception, UserError) and "extra.weight" in str(result.exception)


def test_lavit_sized_release_is_a_paper_profile_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "adapter").mkdir()
    save_file({"encoder.weight": torch.zeros(512, 2048), "encoder.bias": torch.zeros(512),
               "decoder.weight": torch.zeros(4096, 512), "decoder.bias": torch.zeros(4096)},
              str(tmp_path / "adapter" / "model.safetensors"))
    assert checkpoint_info(tmp_path) | {"path": None} == {"path": None, "layout": "released",
                                                          "backbone": "lavit", "profile_hint": "paper"}
    with pytest.raises(UserError, match=r"missing mask_generator/model.safetensors\|pytorch_model.bin"):
        load_checkpoint(tmp_path, small_backbone())


def test_cli_inspect_prints_what_it_found(tmp_path: Path) -> None:
    from pigeon.cli import app

    write_checkpoint(trained_model(), tmp_path, {"stage": "sft", "step": 2})
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "LoRA r 8, alpha 16, dropout 0.05, targets q_proj, v_proj" in result.output
    assert "trained: stage sft, step 2" in result.output
    (tmp_path / "adapter" / "model.safetensors").unlink()
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)])
    assert isinstance(result.exception, UserError)
    assert "missing adapter/model.safetensors|pytorch_model.bin" in str(result.exception)


def test_reference_keeps_a_code_when_only_img_tokens_survive() -> None:
    """At α_r = 1.0 the official count keeps one of 18 entries; when that is <img> or </img> the decoder
    would get no code, so the best-ranked code stays."""
    torch.manual_seed(0)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16)).eval()
    ex = examples(1)
    kept = []
    with torch.no_grad():
        for seed in range(40):
            _, ref = model.masks(ex, [1.0], training=False, generators=[torch.Generator().manual_seed(seed)])
            kept.append(int(ref[0].sum()))
    assert set(kept) == {1}
