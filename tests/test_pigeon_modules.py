"""Pigeon's modules on a tiny random backbone: keep counts, dual-phase masks, gradients, prompt layout
(tests/test_pigeon_official.py pins the rules that follow the authors' code)."""

from __future__ import annotations

import pytest
import torch

from pigeon.mask import keep_count, keep_logits, masks_high_scores, topk_keep
from pigeon.model import Example, PigeonConfig, PigeonModel
from pigeon.prompt import INSTRUCTION, TEMPLATES, prompt_layout
from pigeon.tiny import TinyBackbone, TinyConfig

SMALL = TinyConfig(image_size=32, grid=4, codebook_size=32, code_dim=16, feature_dim=16, hidden_size=32,
                   layers=1, heads=2, intermediate_size=64, max_positions=512)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest single-threaded (and do not fight other processes for the cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_backbone(seed: int = 0) -> TinyBackbone:
    bb = TinyBackbone.new(SMALL, [INSTRUCTION, "a red circle", "a blue square"], seed=seed)
    bb.requires_grad_(False)
    return bb.eval()


def examples(n: int = 2, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    codes = lambda: torch.randint(0, SMALL.codebook_size, (16,), generator=g)  # noqa: E731
    return [Example(history=[codes() for _ in range(5)], reference=codes(), caption="a red circle",
                    target=codes()) for _ in range(n)]


@pytest.mark.parametrize("rules", ["official", "paper"])
@pytest.mark.parametrize(("n", "ratio", "want"), [
    (64, 0.2, 51), (64, 0.0, 64), (64, 1.0, 1), (10, 0.5, 5), (3, 0.9, 1), (256, 0.3, 179), (7, 0.7, 2),
])
def test_keep_count(n: int, ratio: float, want: int, rules: str) -> None:
    assert keep_count(n, ratio, rules) == want  # cases where both rules agree


@pytest.mark.parametrize("rules", ["official", "paper"])
def test_topk_keep_values_and_direction(rules: str) -> None:
    s = torch.tensor([0.9, -0.5, 0.1, 0.7, -0.2])
    hi = topk_keep(keep_logits(s, drop_high=False, rules=rules), 2)
    lo = topk_keep(keep_logits(s, drop_high=True, rules=rules), 2)
    assert hi.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]  # keep 2 of 5: the highest scores
    assert lo.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]  # the lowest
    noisy = topk_keep(keep_logits(s, False, rules), 2, noise=torch.randn(5), straight_through=True)
    assert noisy.sum().item() == pytest.approx(2.0) and noisy.requires_grad is False  # s needs no grad


def test_dual_phase_direction() -> None:
    assert masks_high_scores("dual", training=True) and not masks_high_scores("dual", training=False)
    assert not masks_high_scores("low", True) and not masks_high_scores("low", False)
    assert masks_high_scores("high", True) and masks_high_scores("high", False)
    with pytest.raises(ValueError):
        masks_high_scores("sideways", True)


@pytest.mark.parametrize("rules", ["official", "paper"])
def test_reference_mask_keeps_high_scores_at_inference_and_drops_them_in_training(rules: str) -> None:
    torch.manual_seed(0)
    cfg = PigeonConfig(adapter_hidden=16, gumbel=False, mask_rules=rules)
    model = PigeonModel(small_backbone(), cfg).eval()
    exs = examples(1)
    bb = model.backbone
    with torch.no_grad():
        entries = model._reference_entries(exs[0].reference)  # official: boi, 16 codes, eoi
        scores = model.mask_generator.scores([[bb.embed_visual(c) for c in exs[0].history]], [entries])[0][-1]
        _, inf = model.masks(exs, [0.75], training=False)
        _, tr = model.masks(exs, [0.75], training=True)
    n = scores.numel()
    assert n == (18 if rules == "official" else 16)
    k = keep_count(n, 0.75, rules)
    assert k == 4  # int(18 * 0.25) = 4; floor(16 * 0.25) = 4
    order = scores.argsort(descending=True).tolist()
    codes = (lambda idx: {i - 1 for i in idx if 0 < i < 17}) if rules == "official" else set
    assert set(inf[0].nonzero().flatten().tolist()) == codes(order[:k])
    assert set(tr[0].nonzero().flatten().tolist()) == codes(order[-k:])  # training drops high scores
    assert inf[0].shape == tr[0].shape == (16,)


def test_history_mask_keeps_top_share_per_image_and_gradients_reach_the_generator() -> None:
    """The paper's rules: a top-k per history image, straight-through masks (Gumbel-softmax, §2.2.1)."""
    torch.manual_seed(0)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16, alpha_h=0.25, mask_rules="paper"))
    params = model.set_trainable("sft")
    model.train()
    exs = examples(2)
    h, _ = model.masks(exs, [0.5, 0.5], training=True)
    assert all(int(m.detach().round().sum()) == keep_count(16, 0.25, "paper") == 12 for per in h for m in per)
    loss = model.sft_loss(exs, [0.3, 0.8])
    loss.backward()
    gen_grad = sum(p.grad.abs().sum() for p in model.mask_generator.parameters() if p.grad is not None)
    assert gen_grad > 0  # straight-through: the hard top-k mask passes gradients to the generator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)


def test_official_masks_are_hard_and_joint() -> None:
    """The official rules: one top-k over the 5 x 16 history tokens together, and no gradient through the
    masks, so the loss does not reach the mask generator (the authors' code uses the masks as indices)."""
    torch.manual_seed(0)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16, alpha_h=0.25))
    model.set_trainable("sft")
    model.train()
    exs = examples(2)
    h, _ = model.masks(exs, [0.5, 0.5], training=True)
    assert all(int(sum(m.sum() for m in per)) == keep_count(80, 0.25) == 60 for per in h)
    assert not any(m.requires_grad for per in h for m in per)
    model.sft_loss(exs, [0.3, 0.8]).backward()
    assert all(p.grad is None for p in model.mask_generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.parameters())


def test_no_history_mask_cuts_the_generator_out_of_the_loss() -> None:
    torch.manual_seed(0)
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16, history_mask=False,
                                                       mask_rules="paper"))
    model.set_trainable("sft")
    model.sft_loss(examples(2), [0.5, 0.5]).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.mask_generator.parameters())


def test_prompt_layout() -> None:
    full = prompt_layout(5, prompt="paper")
    assert full[0] == ("special", "bos") and full[1] == ("text", INSTRUCTION)
    assert full[-1] == ("special", "boi")
    embeds = [v for k, v in full if k == "embeds"]
    assert embeds == ["h0", "h1", "h2", "h3", "h4", "r_t", "r_v"]
    for i in range(5):  # each history image is wrapped in boi ... eoi
        j = full.index(("embeds", f"h{i}"))
        assert full[j - 1] == ("special", "boi") and full[j + 1] == ("special", "eoi")
    no_rt = prompt_layout(5, textual_tokens=False, prompt="paper")
    assert [v for k, v in no_rt if k == "embeds"][-1:] == ["r_v"]
    assert "r_v" not in [v for _, v in prompt_layout(5, visual_feature=False, prompt="paper")]
    raw = [v for k, v in prompt_layout(5, encoding=False, prompt="paper") if k == "embeds"]
    assert raw[-1] == "ref" and "r_t" not in raw and "r_v" not in raw
    assert INSTRUCTION.startswith("Instruction: You are a helpful personalized assistant.")
    assert INSTRUCTION.endswith("the semantics in a specified reference image.")


@pytest.mark.parametrize("prompt", ["official", "paper"])
def test_prompt_embeddings_follow_the_layout(prompt: str) -> None:
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16, prompt=prompt)).eval()
    exs = examples(1)
    with torch.no_grad():
        p = model.prompt_embeds(exs, [0.5], training=False)[0]
    bb = model.backbone
    layout = prompt_layout(5, prompt=prompt)
    n_text = sum(len(bb.tokenize_text([v])[0]) for k, v in layout if k == "text")
    n_special = sum(1 for k, _ in layout if k == "special")
    r_t = model.reference_texts(exs)[0]
    assert r_t == ("a red circle" if prompt == "paper" else "The target sticker info: a red circle")
    n_rt = len(bb.tokenize_text([r_t])[0])
    assert p.shape == (n_text + n_special + 5 * 16 + n_rt + 1, SMALL.hidden_size)
    first = bb.tokenize_text([TEMPLATES["sticker"].preamble])[0][0] if prompt == "official" else None
    want0 = bb.embed_tokens(torch.tensor(bb.special_ids["bos"]) if first is None else first)
    assert torch.equal(p[0], want0)  # the official prompt has no BOS
    assert torch.equal(p[-1], bb.embed_tokens(torch.tensor(bb.special_ids["boi"])))


def test_generation_is_seeded_and_visual_only() -> None:
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16))
    exs = examples(2)
    a = model.generate(exs, [0.2, 0.9], [1, 2])
    b = model.generate(exs, [0.2, 0.9], [1, 2])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.shape == (16,) and int(x.min()) >= 0 and int(x.max()) < SMALL.codebook_size for x in a)
    images = model.backbone.render(a, [1, 2])
    assert [im.size for im in images] == [(32, 32), (32, 32)]


def test_generation_does_not_depend_on_the_batch() -> None:
    """A sweep sends one Example at several α_r in one batch: each row must equal its solo generation."""
    model = PigeonModel(small_backbone(), PigeonConfig(adapter_hidden=16))
    exs = examples(2)
    batch = model.generate([exs[0], exs[0], exs[1], exs[0]], [0.0, 0.5, 0.5, 1.0], [7, 7, 8, 7])
    solo = [model.generate([ex], [a], [s])[0] for ex, a, s in
            [(exs[0], 0.0, 7), (exs[0], 0.5, 7), (exs[1], 0.5, 8), (exs[0], 1.0, 7)]]
    assert all(torch.equal(x, y) for x, y in zip(batch, solo, strict=True))
    assert not torch.equal(batch[0], batch[2])  # other example, other seed: other tokens


def test_sampling_follows_top_k_and_the_per_row_generator() -> None:
    from pigeon.model import _sample

    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0], [3.0, 0.0, 0.0, 2.0]])
    gens = lambda s: [torch.Generator().manual_seed(s + i) for i in range(2)]  # noqa: E731
    assert _sample(logits, gens(0), 0.0, 2) == [1, 0]  # greedy
    draws = torch.tensor([_sample(logits, gens(s), 1.0, 2) for s in range(400)])
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 3}  # top-2 only
    share = (draws[:, 0] == 1).float().mean().item()  # softmax([5, 4]) gives token 1 p = 0.731
    assert 0.66 < share < 0.80
    assert _sample(logits, gens(3), 1.0, 2) == _sample(logits, gens(3), 1.0, 2)
    assert _sample(logits[1:], gens(3)[1:], 1.0, 2) == _sample(logits, gens(3), 1.0, 2)[1:]
