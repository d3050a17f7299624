"""Pigeon (§2.2): mask generator + personalization module + LoRA on a frozen LMM backbone.

``PigeonModel`` builds hybrid prompts for a batch of tokenized examples, scores target token sequences
(SFT and DPO losses) and generates personalized visual tokens at a reference mask ratio α_r.
Checkpoints (pigeon/checkpoint.py) use the authors' released layout: mask_generator/, adapter/ and llama/
(a peft LoRA folder), plus our pigeon.json.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pigeon.backbone import Backbone
from pigeon.inference import InferenceSettings, default_settings
from pigeon.mask import (
    MASK_RULES,
    REFERENCE_MASK_SCHEMES,
    MaskGenerator,
    keep_logits,
    keep_masks,
    masks_high_scores,
)
from pigeon.personalization import Adapter, textual_tokens, visual_features
from pigeon.prompt import PROMPTS, TEMPLATES, PromptBuilder, prompt_layout, reference_text
from pigeon_bench.errors import UserError


@dataclass(frozen=True)
class PigeonConfig:
    """Model options; the ablation switches of Table 3 and Fig. 4 are the booleans and ``reference_mask``.

    Defaults follow the authors' code and run_sft.sh; ``mask_rules`` / ``prompt`` = "paper" select the
    paper's reading where the two differ (docs/pigeon-official.md).
    """

    alpha_h: float = 0.2  # history mask ratio
    history_mask: bool = True  # False: "w/o history mask"
    visual_feature: bool = True  # False: "w/o visual feature" (no r_v)
    textual_tokens: bool = True  # False: "w/o textual tokens" (no r_t)
    encoding: bool = True  # False: "w/o encoding" (masked reference tokens go to the LM directly)
    reference_mask: str = "dual"  # dual | low | high | none | random (pigeon.mask.REFERENCE_MASK_SCHEMES)
    mask_rules: str = "official"  # official | paper (pigeon.mask.MASK_RULES)
    prompt: str = "official"  # official (per-scenario templates) | paper (§2.2.2's single instruction)
    scenario: str = "sticker"  # the official template: sticker | movie
    mask_heads: int = 4
    mask_layers: int = 1
    mask_feedforward: int = 2048  # the encoder layer's feed-forward width
    mask_positions: int = 257  # rows of the sinusoid position table
    adapter_hidden: int = 512
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.2  # mask generator input/output and adapter dropout
    encoder_dropout: float = 0.1  # inside the mask generator's encoder layers
    tau: float = 1.0  # Gumbel-softmax temperature
    gumbel: bool = True  # Gumbel noise in the masks (False: plain top-k on the scores)

    def __post_init__(self) -> None:
        choices = {"reference_mask": REFERENCE_MASK_SCHEMES, "mask_rules": MASK_RULES, "prompt": PROMPTS,
                   "scenario": tuple(TEMPLATES)}
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise UserError(f"unknown {name} {getattr(self, name)!r} (known: {', '.join(known)})")
        if not 0.0 <= self.alpha_h <= 1.0:
            raise UserError(f"alpha_h must lie in [0, 1], got {self.alpha_h}")
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))

    def to_dict(self) -> dict[str, Any]:
        """The options as JSON holds them (lists for tuples); from_dict reads it back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PigeonConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown Pigeon option(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class Example:
    """One tokenized prompt: N history code sequences, reference codes, caption, optional target codes.

    ``emotion`` / ``title`` (the reference's) and ``history_titles`` fill the official templates.
    """

    history: list[torch.Tensor]
    reference: torch.Tensor
    caption: str
    target: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    emotion: str | None = None
    title: str | None = None
    history_titles: list[str] | None = None


class PigeonModel(nn.Module):
    def __init__(self, backbone: Backbone, config: PigeonConfig | None = None):
        super().__init__()
        cfg = self.config = config or PigeonConfig()
        self.backbone = backbone
        backbone.requires_grad_(False)
        if not hasattr(backbone.language_model, "peft_config"):
            backbone.lora_target_modules = cfg.lora_target_modules  # add_lora wraps these modules
        backbone.add_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        d = backbone.hidden_size
        self.mask_generator = MaskGenerator(d, cfg.mask_heads, cfg.mask_layers, cfg.mask_feedforward,
                                            cfg.dropout, cfg.encoder_dropout, cfg.mask_positions)
        self.adapter = Adapter(backbone.feature_dim, cfg.adapter_hidden, d, cfg.dropout)
        self.mask_generator.to(backbone.device, torch.float32)  # float32 whatever the LM's dtype, as released
        self.adapter.to(backbone.device, backbone.dtype)
        self.prompts = PromptBuilder(backbone)

    # trainable parts ------------------------------------------------------------------------------------
    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.backbone.language_model.named_parameters() if "lora_" in n}

    def component_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """What a checkpoint holds: the mask generator's and adapter's state dicts and the LoRA weights
        under peft's saved names (``base_model.model....lora_A.weight``)."""
        from peft import get_peft_model_state_dict

        return {"mask_generator": self.mask_generator.state_dict(), "adapter": self.adapter.state_dict(),
                "llama": get_peft_model_state_dict(self.backbone.language_model)}

    def set_trainable(self, stage: str) -> list[nn.Parameter]:
        """Stage "sft": mask generator + adapter + LoRA; stage "dpo": LoRA only. Returns those parameters."""
        sft = stage == "sft"
        self.mask_generator.requires_grad_(sft)
        self.adapter.requires_grad_(sft)
        lora = list(self.lora_parameters().values())
        for p in lora:
            p.requires_grad_(True)
        return [*self.mask_generator.parameters(), *self.adapter.parameters(), *lora] if sft else lora

    def merge_lora(self) -> PigeonModel:
        """Fold the LoRA weights into the frozen LM (inference only: faster, no longer trainable)."""
        self.backbone.language_model.merge_adapter()
        return self

    # masks and prompts ----------------------------------------------------------------------------------
    def _reference_entries(self, codes: torch.Tensor) -> torch.Tensor:
        """The reference sequence the mask generator ranks: its codes' embeddings, between the "boi" and
        "eoi" embeddings under the official rules."""
        bb = self.backbone
        e = bb.embed_visual(codes)
        if self.config.mask_rules == "paper":
            return e
        ids = torch.tensor([bb.special_ids["boi"], bb.special_ids["eoi"]], device=bb.device)
        boi, eoi = bb.embed_tokens(ids)
        return torch.cat([boi[None], e, eoi[None]])

    def masks(self, examples: Sequence[Example], alpha_r: Sequence[float], training: bool,
              alpha_h: float | None = None, generators: Sequence[torch.Generator] | None = None
              ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """History keep masks m_h (one (L_i,) per history image) and reference keep masks m_r (L_0,).

        Gumbel noise comes from ``generators`` (one per example) when given, else torch's global RNG.
        Official rules: one top-k over all history tokens of an example, the reference ranked with its
        "boi"/"eoi" entries, noise in both phases, hard masks. Paper rules: one top-k per history image,
        the codes alone, noise in training only, straight-through masks.
        """
        cfg = self.config
        official = cfg.mask_rules == "official"
        alpha_h = cfg.alpha_h if alpha_h is None else alpha_h
        bb = self.backbone
        unique = list({id(ex): ex for ex in examples}.values())  # an Example repeated at several α_r
        with torch.no_grad():
            hist_e = [[bb.embed_visual(c) for c in ex.history] for ex in unique]
            ref_e = [self._reference_entries(ex.reference) for ex in unique]
        by_id = dict(zip(map(id, unique), self.mask_generator.scores(hist_e, ref_e), strict=True))
        drop_high = masks_high_scores(cfg.reference_mask, training)
        noise = cfg.gumbel and (training or official)
        h_masks, r_masks = [], []
        for b, (ex, a) in enumerate(zip(examples, alpha_r, strict=True)):
            s = by_id[id(ex)]
            gen = None if generators is None else generators[b]
            if cfg.history_mask:
                h_masks.append(keep_masks(s[:-1], alpha_h, rules=cfg.mask_rules, joint=official, noise=noise,
                                          generator=gen, tau=cfg.tau))
            else:
                h_masks.append([torch.ones_like(si) for si in s[:-1]])
            ratio = 0.0 if (training and cfg.reference_mask == "none") else a
            random_ = cfg.reference_mask == "random"
            rank = torch.rand(s[-1].shape, generator=gen).to(s[-1]) if random_ else s[-1]
            drop = drop_high and not random_
            m = keep_masks([rank], ratio, drop_high=drop, rules=cfg.mask_rules, noise=noise and not random_,
                           generator=gen, tau=cfg.tau)[0]
            if official:
                m = m[1:-1]
                if not m.any():  # only "boi"/"eoi" kept: the decoder needs a code, keep the best-ranked one
                    m = m.clone()
                    m[keep_logits(rank, drop, cfg.mask_rules)[1:-1].argmax()] = 1.0
            r_masks.append(m)
        return h_masks, r_masks

    def reference_texts(self, examples: Sequence[Example]) -> list[str]:
        """What r_t is made of, per example (pigeon.prompt.reference_text)."""
        cfg = self.config
        return [reference_text(ex.caption, cfg.prompt, cfg.scenario, ex.emotion, ex.title) for ex in examples]

    def prompt_embeds(self, examples: Sequence[Example], alpha_r: Sequence[float], training: bool,
                      alpha_h: float | None = None, generators: Sequence[torch.Generator] | None = None
                      ) -> list[torch.Tensor]:
        """Hybrid prompts p(α_r) (Eq. 7), one (T_i, D) tensor per example, ending with "boi"."""
        cfg = self.config
        bb = self.backbone
        h_masks, r_masks = self.masks(examples, alpha_r, training, alpha_h, generators)
        kept = [ex.reference[m > 0.5] for ex, m in zip(examples, r_masks, strict=True)]
        # without encoding the prompt holds the masked reference tokens themselves, not r_t / r_v
        r_t = (textual_tokens(bb, self.reference_texts(examples))
               if cfg.encoding and cfg.textual_tokens else None)
        r_v = visual_features(bb, self.adapter, kept) if cfg.encoding and cfg.visual_feature else None
        out = []
        for b, ex in enumerate(examples):
            with torch.no_grad():
                hist_e = [bb.embed_visual(c) for c in ex.history]
                ref_e = bb.embed_visual(ex.reference)
            tensors = {f"h{i}": e * m[:, None].to(e.dtype)
                       for i, (e, m) in enumerate(zip(hist_e, h_masks[b], strict=True))}
            tensors["ref"] = ref_e * r_masks[b][:, None].to(ref_e.dtype)
            if r_t is not None:
                tensors["r_t"] = r_t[b]
            if r_v is not None:
                tensors["r_v"] = r_v[b : b + 1]
            layout = prompt_layout(len(ex.history), cfg.textual_tokens, cfg.visual_feature, cfg.encoding,
                                   cfg.prompt, cfg.scenario, ex.history_titles)
            out.append(self.prompts.build(layout, tensors))
        return out

    # likelihood -----------------------------------------------------------------------------------------
    def target_logprobs(self, prompts: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of log P(target tokens + "eoi" | prompt) per example (B,), and the token counts (B,)."""
        bb = self.backbone
        eoi = bb.special_ids["eoi"]
        seqs, labels = [], []
        for p, t in zip(prompts, targets, strict=True):
            t = t.to(bb.device)
            with torch.no_grad():
                te = bb.embed_visual(t)
            seqs.append(torch.cat([p, te]))
            labels.append(torch.cat([t + bb.visual_offset, torch.tensor([eoi], device=bb.device)]))
        embeds, mask = _left_pad(seqs)
        logits = self._lm(embeds, mask, logits_to_keep=max(lab.numel() for lab in labels) + 1)
        logps, counts = [], []
        for b, lab in enumerate(labels):
            n = lab.numel()  # logits at the last n positions (boi + all but the last target) predict lab
            lp = F.log_softmax(logits[b, -n - 1 : -1].float(), dim=-1)
            logps.append(lp.gather(-1, lab[:, None]).sum())
            counts.append(n)
        return torch.stack(logps), torch.tensor(counts, device=bb.device)

    def _lm(self, embeds: torch.Tensor, mask: torch.Tensor, **kw: Any):
        out = self.backbone.language_model(inputs_embeds=embeds, attention_mask=mask,
                                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0), **kw)
        return out.logits

    def sft_loss(self, examples: Sequence[Example], alpha_r: Sequence[float]) -> torch.Tensor:
        """Eq. (8): mean negative log-likelihood per target token under the training-phase masks."""
        logp, n = self.target_logprobs(self.prompt_embeds(examples, alpha_r, training=True),
                                       [ex.target for ex in examples])
        return -(logp.sum() / n.sum())

    # generation -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, examples: Sequence[Example], alpha_r: Sequence[float], seeds: Sequence[int],
                 alpha_h: float | None = None, temperature: float | None = None, top_k: int | None = None,
                 settings: InferenceSettings | None = None) -> list[torch.Tensor]:
        """Personalized target codes E_{N+1} (one LongTensor (L,) each) under the inference masks, in eval
        mode (no dropout). Each request draws its mask noise and its samples from its own generator seeded
        with its seed, so its output depends on nothing else in the batch. ``settings`` default to the
        backbone's (pigeon.inference.default_settings); ``alpha_h``, ``temperature``, ``top_k`` override."""
        settings = settings or default_settings(self.backbone.name)
        chosen = {"temperature": temperature, "top_k": top_k, "alpha_h": alpha_h}
        settings = replace(settings, **{k: v for k, v in chosen.items() if v is not None})
        was_training = self.training
        self.eval()
        try:
            gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
            prompts = self.prompt_embeds(examples, alpha_r, training=False, alpha_h=settings.alpha_h,
                                         generators=gens)
            return sample_visual_tokens(self.backbone, prompts, gens, settings)
        finally:
            self.train(was_training)


def _left_pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_i, D) tensors -> left-padded (B, T, D) and attention mask (B, T)."""
    t = max(s.shape[0] for s in seqs)
    embeds = seqs[0].new_zeros(len(seqs), t, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), t, dtype=torch.long, device=seqs[0].device)
    for b, s in enumerate(seqs):
        embeds[b, t - s.shape[0]:] = s
        mask[b, t - s.shape[0]:] = 1
    return embeds, mask


class _Stepper:
    """The LM over a growing batch with a KV cache; logits of the last position, as float."""

    def __init__(self, backbone: Backbone):
        self.bb = backbone
        self.cache = None
        self.mask: torch.Tensor | None = None

    def start(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.mask = mask
        return self._run(embeds)

    def step(self, ids: Sequence[int]) -> torch.Tensor:
        """Feed one LM id per row; returns the next logits (rows, V)."""
        assert self.mask is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(ids), 1)], dim=1)
        return self._run(self.bb.embed_tokens(torch.tensor(list(ids), device=self.bb.device))[:, None])

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (beam reordering) of the cache and the attention mask."""
        assert self.mask is not None
        self.cache.reorder_cache(rows.to(self.bb.device))
        self.mask = self.mask[rows.to(self.mask.device)]

    def repeat(self, n: int) -> None:
        """Each row n times in a row (one copy per beam)."""
        assert self.mask is not None
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, dim=0)

    def _run(self, e: torch.Tensor) -> torch.Tensor:
        m = self.mask
        pos = (m.cumsum(-1) - 1).clamp(min=0)[:, -e.shape[1]:]
        out = self.bb.language_model(inputs_embeds=e, attention_mask=m, use_cache=True, cache=self.cache,
                                     logits_to_keep=1, position_ids=pos)
        self.cache = out.cache
        return out.logits[:, -1].float()


def _length_bounds(backbone: Backbone, settings: InferenceSettings) -> tuple[int, int]:
    """(fewest, most) visual tokens per image: the settings within the backbone's bounds."""
    hi = min(settings.max_new_tokens, backbone.max_visual_tokens)
    return min(max(settings.min_new_tokens, backbone.min_visual_tokens), hi), hi


def _candidates(backbone: Backbone, logits: torch.Tensor, step: int, lo: int) -> torch.Tensor:
    """Log-probabilities (rows, K + 1) of the visual codes and "eoi" (index K) under the full vocabulary;
    "eoi" is ruled out before ``lo`` tokens."""
    k0, k = backbone.visual_offset, backbone.visual_vocab_size
    eoi = backbone.special_ids["eoi"]
    logp = F.log_softmax(logits, dim=-1)
    cand = torch.cat([logp[:, k0 : k0 + k], logp[:, eoi : eoi + 1]], dim=-1)
    if step < lo:
        cand[:, k] = float("-inf")
    return cand


def _to_ids(backbone: Backbone, cand: Sequence[int]) -> list[int]:
    k = backbone.visual_vocab_size
    return [c + backbone.visual_offset if c < k else backbone.special_ids["eoi"] for c in cand]


@torch.no_grad()
def sample_visual_tokens(backbone: Backbone, prompts: Sequence[torch.Tensor],
                         generators: Sequence[torch.Generator], settings: InferenceSettings
                         ) -> list[torch.Tensor]:
    """Autoregressive image-token generation with a KV cache, restricted to visual tokens and "eoi"
    (allowed once the minimum length is out); row b draws only from ``generators[b]``.
    ``settings.num_beams`` > 1: beam search (sampled when ``do_sample``), else one sampled or greedy path."""
    if settings.num_beams > 1:
        codes = _beam_search(backbone, prompts, generators, settings)
    else:
        codes = _single_path(backbone, prompts, generators, settings)
    return [torch.tensor(c, dtype=torch.long, device=backbone.device) for c in codes]


def _single_path(backbone: Backbone, prompts: Sequence[torch.Tensor], generators: Sequence[torch.Generator],
                 settings: InferenceSettings) -> list[list[int]]:
    k = backbone.visual_vocab_size
    lo, hi = _length_bounds(backbone, settings)
    lm = _Stepper(backbone)
    logits = lm.start(*_left_pad(prompts))
    temperature = settings.temperature if settings.do_sample else 0.0
    codes: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(hi):
        nxt = _sample(_candidates(backbone, logits, step, lo), generators, temperature, settings.top_k,
                      settings.top_p)
        for b, c in enumerate(nxt):
            if c == k:
                done[b] = True
            elif not done[b]:
                codes[b].append(c)
        if all(done) or step + 1 == hi:
            break
        logits = lm.step(_to_ids(backbone, nxt))
    return codes


def _warp(scores: torch.Tensor, temperature: float, top_k: int, top_p: float, min_keep: int = 1
          ) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of (rows, V) scores (-inf = removed)."""
    scores = scores / temperature
    k = max(top_k, min_keep)
    if 0 < k < scores.shape[-1]:
        kth = scores.topk(k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        p, order = F.softmax(scores, dim=-1).sort(dim=-1, descending=True)
        before = p.cumsum(-1) - p  # probability mass ranked above each entry
        drop = before >= top_p
        drop[:, :min_keep] = False
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def _sample(logits: torch.Tensor, gens: Sequence[torch.Generator], temperature: float, top_k: int,
            top_p: float = 1.0) -> list[int]:
    """One token per row of (B, V) logits: temperature, top-k, top-p, then inverse-CDF sampling with one
    uniform draw from each row's own generator (a row's token never depends on the other rows of its batch);
    greedy when temperature is 0."""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    logits = _warp(logits.float(), temperature, top_k, top_p)
    cdf = F.softmax(logits, dim=-1).double().cpu().cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens])
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp(max=logits.shape[-1] - 1).tolist()


@dataclass
class _Beams:
    """One request's beam state: running beams (codes, summed log-probability) and finished hypotheses."""

    running: list[tuple[list[int], float]]
    finished: list[tuple[float, list[int]]] = field(default_factory=list)  # (normalized score, codes)
    done: bool = False

    def finish(self, codes: list[int], score: float, n: int, length_penalty: float) -> None:
        """Keep the n best finished hypotheses by score / length ** length_penalty."""
        normed = score / max(len(codes), 1) ** length_penalty
        if len(self.finished) < n or normed > min(s for s, _ in self.finished):
            self.finished.append((normed, codes))
            self.finished.sort(key=lambda h: -h[0])
            del self.finished[n:]


def _beam_search(backbone: Backbone, prompts: Sequence[torch.Tensor], generators: Sequence[torch.Generator],
                 settings: InferenceSettings) -> list[list[int]]:
    """Beam search over visual codes, per request, as transformers' beam (sample) search does it: beam
    scores are summed log-probabilities, warped (temperature, top-k, top-p) before 2 x beams candidates are
    sampled without replacement (or taken greedily) from all beams of a request, an "eoi" among the first
    ``beams`` candidates finishes a hypothesis, and a request is done once ``beams`` hypotheses are finished
    and none of its running beams can beat them; at the length limit running beams finish as they are."""
    nb, kv = settings.num_beams, backbone.visual_vocab_size + 1
    eoi = kv - 1
    lo, hi = _length_bounds(backbone, settings)
    lp = settings.length_penalty
    lm = _Stepper(backbone)
    logits = lm.start(*_left_pad(prompts)).repeat_interleave(nb, dim=0)
    lm.repeat(nb)
    beams = [_Beams([([], 0.0)] + [([], float("-inf"))] * (nb - 1)) for _ in prompts]
    for step in range(hi):
        cand = _candidates(backbone, logits, step, lo)
        prev = torch.tensor([s for bm in beams for _, s in bm.running], dtype=cand.dtype, device=cand.device)
        scores = _warp(cand + prev[:, None], settings.temperature, settings.top_k, settings.top_p, min_keep=2)
        rows, feed = [], []
        for b, bm in enumerate(beams):
            if bm.done:
                rows += [b * nb + i for i in range(nb)]
                feed += [eoi] * nb
                continue
            flat = scores[b * nb : (b + 1) * nb].reshape(-1).double().cpu()
            picks = _pick(flat, 2 * nb, generators[b] if settings.do_sample else None)
            nxt: list[tuple[int, int, float]] = []
            for rank, i in enumerate(picks):
                beam, tok = divmod(i, kv)
                if tok == eoi:
                    if rank < nb:
                        bm.finish(bm.running[beam][0], float(flat[i]), nb, lp)
                    continue
                nxt.append((beam, tok, float(flat[i])))
                if len(nxt) == nb:
                    break
            best = max(float(flat[i]) for i in picks)
            bm.done = not nxt or (len(bm.finished) == nb and bm.finished[-1][0] >= best / max(step, 1) ** lp)
            if not nxt:  # no continuation left (only "eoi" was drawn)
                rows += [b * nb + i for i in range(nb)]
                feed += [eoi] * nb
                continue
            nxt += [(nxt[0][0], nxt[0][1], float("-inf"))] * (nb - len(nxt))
            bm.running = [(bm.running[beam][0] + [tok], s) for beam, tok, s in nxt]
            rows += [b * nb + beam for beam, _, _ in nxt]
            feed += [tok for _, tok, _ in nxt]
        if all(bm.done for bm in beams) or step + 1 == hi:
            break
        lm.reorder(torch.tensor(rows))
        logits = lm.step(_to_ids(backbone, feed))
    out = []
    for bm in beams:
        if not bm.done or not bm.finished:
            for codes, s in bm.running:
                bm.finish(codes, s, nb, lp)
        out.append(bm.finished[0][1])
    return out


def _pick(scores: torch.Tensor, n: int, generator: torch.Generator | None) -> list[int]:
    """Indices of n candidates of one request's flattened beam scores, best score first: sampled without
    replacement from softmax(scores) with ``generator``, or the n best when it is None."""
    if generator is None:
        return scores.topk(min(n, int(torch.isfinite(scores).sum()))).indices.tolist()
    probs = F.softmax(scores, dim=-1)
    idx = torch.multinomial(probs, min(n, int((probs > 0).sum())), replacement=False, generator=generator)
    order = scores[idx].argsort(descending=True, stable=True)
    return idx[order].tolist()


# checkpoints --------------------------------------------------------------------------------------------
def save_checkpoint(model: PigeonModel, out: str | Path, meta: dict[str, Any]) -> None:
    """Write ``model`` in the released layout + pigeon.json (config, backbone spec, ``meta``)."""
    from pigeon.checkpoint import write_checkpoint

    write_checkpoint(model, out, meta)


def load_checkpoint(ckpt: str | Path, backbone: Backbone, **overrides: Any) -> PigeonModel:
    """A PigeonModel on ``backbone`` with a checkpoint's weights (ours or the authors' release, loaded
    strictly); ``overrides`` change options that do not change shapes (e.g. alpha_h, reference_mask)."""
    from pigeon.checkpoint import read_checkpoint

    return read_checkpoint(ckpt, backbone, **overrides)


@contextmanager
def swapped_lora(model: PigeonModel, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily load other LoRA weights (the frozen stage-1 reference model in DPO)."""
    params = model.lora_parameters()
    saved = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k])
    try:
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
