"""Pigeon (§2.2): mask generator + personalization module + LoRA on a frozen LMM backbone.

``PigeonModel`` builds hybrid prompts for a batch of tokenized examples, scores target token sequences
(SFT and DPO losses) and generates personalized visual tokens at a reference mask ratio α_r.
Checkpoints hold only the trainable parts (mask generator, adapter, LoRA) as safetensors plus pigeon.json.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pigeon.backbone import Backbone
from pigeon.mask import REFERENCE_MASK_SCHEMES, MaskGenerator, masks_high_scores, topk_keep
from pigeon.personalization import Adapter, textual_tokens, visual_features
from pigeon.prompt import PromptBuilder, prompt_layout
from pigeon_bench import fileio
from pigeon_bench.errors import UserError

WEIGHTS, CONFIG = "pigeon.safetensors", "pigeon.json"


@dataclass(frozen=True)
class PigeonConfig:
    """Model options; the ablation switches of Table 3 and Fig. 4 are the booleans and ``reference_mask``."""

    alpha_h: float = 0.2  # history mask ratio
    history_mask: bool = True  # False: "w/o history mask"
    visual_feature: bool = True  # False: "w/o visual feature" (no r_v)
    textual_tokens: bool = True  # False: "w/o textual tokens" (no r_t)
    encoding: bool = True  # False: "w/o encoding" (masked reference tokens go to the LM directly)
    reference_mask: str = "dual"  # dual | low | high | none (see pigeon.mask.REFERENCE_MASK_SCHEMES)
    mask_heads: int = 4
    mask_layers: int = 1
    adapter_hidden: int = 512
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    dropout: float = 0.0  # mask generator + adapter (0: fastest on CPU)
    tau: float = 1.0  # Gumbel-softmax temperature
    gumbel: bool = True  # Gumbel noise in the training-phase masks (False: deterministic top-k)

    def __post_init__(self) -> None:
        if self.reference_mask not in REFERENCE_MASK_SCHEMES:
            raise UserError(f"unknown reference mask {self.reference_mask!r} "
                            f"(known: {', '.join(REFERENCE_MASK_SCHEMES)})")
        if not 0.0 <= self.alpha_h <= 1.0:
            raise UserError(f"alpha_h must lie in [0, 1], got {self.alpha_h}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PigeonConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown Pigeon option(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass
class Example:
    """One tokenized prompt: N history code sequences, reference codes, caption, optional target codes."""

    history: list[torch.Tensor]
    reference: torch.Tensor
    caption: str
    target: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class PigeonModel(nn.Module):
    def __init__(self, backbone: Backbone, config: PigeonConfig | None = None):
        super().__init__()
        self.config = config or PigeonConfig()
        self.backbone = backbone
        backbone.requires_grad_(False)
        backbone.add_lora(self.config.lora_r, self.config.lora_alpha, self.config.lora_dropout)
        d = backbone.hidden_size
        self.mask_generator = MaskGenerator(d, self.config.mask_heads, self.config.mask_layers,
                                            dropout=self.config.dropout)
        self.adapter = Adapter(backbone.feature_dim, self.config.adapter_hidden, d, self.config.dropout)
        self.mask_generator.to(backbone.device, backbone.dtype)
        self.adapter.to(backbone.device, backbone.dtype)
        self.prompts = PromptBuilder(backbone)

    # trainable parts ------------------------------------------------------------------------------------
    def lora_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.backbone.language_model.named_parameters() if "lora_" in n}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything a checkpoint holds: mask_generator.*, adapter.*, lora.<peft name>."""
        state = {f"mask_generator.{k}": v for k, v in self.mask_generator.state_dict().items()}
        state |= {f"adapter.{k}": v for k, v in self.adapter.state_dict().items()}
        state |= {f"lora.{k}": v.data for k, v in self.lora_parameters().items()}
        return state

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
    def masks(self, examples: Sequence[Example], alpha_r: Sequence[float], training: bool,
              alpha_h: float | None = None) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """History keep masks m_h (one (L_i,) per history image, straight-through) and reference masks m_r.

        Training draws Gumbel noise; inference is deterministic top-k on the scores.
        """
        cfg = self.config
        alpha_h = cfg.alpha_h if alpha_h is None else alpha_h
        bb = self.backbone
        unique = list({id(ex): ex for ex in examples}.values())  # an Example repeated at several α_r
        with torch.no_grad():
            hist_e = [[bb.embed_visual(c) for c in ex.history] for ex in unique]
            ref_e = [bb.embed_visual(ex.reference) for ex in unique]
        by_id = dict(zip(map(id, unique), self.mask_generator.scores(hist_e, ref_e), strict=True))
        scores = [by_id[id(ex)] for ex in examples]
        drop_high = masks_high_scores(cfg.reference_mask, training)
        noise = training and cfg.gumbel
        h_masks, r_masks = [], []
        for s, a in zip(scores, alpha_r, strict=True):
            if cfg.history_mask:
                h_masks.append([topk_keep(si, alpha_h, keep_high=True, gumbel=noise, tau=cfg.tau)
                                for si in s[:-1]])
            else:
                h_masks.append([torch.ones_like(si) for si in s[:-1]])
            ratio = 0.0 if (training and cfg.reference_mask == "none") else a
            ref_s = torch.rand_like(s[-1]) if cfg.reference_mask == "random" else s[-1]
            r_masks.append(topk_keep(ref_s, ratio, keep_high=not drop_high, gumbel=noise, tau=cfg.tau))
        return h_masks, r_masks

    def prompt_embeds(self, examples: Sequence[Example], alpha_r: Sequence[float], training: bool,
                      alpha_h: float | None = None) -> list[torch.Tensor]:
        """Hybrid prompts p(α_r) (Eq. 7), one (T_i, D) tensor per example, ending with "boi"."""
        cfg = self.config
        bb = self.backbone
        h_masks, r_masks = self.masks(examples, alpha_r, training, alpha_h)
        kept = [ex.reference[m > 0.5] for ex, m in zip(examples, r_masks, strict=True)]
        # without encoding the prompt holds the masked reference tokens themselves, not r_t / r_v
        captions = [ex.caption for ex in examples]
        r_t = textual_tokens(bb, captions) if cfg.encoding and cfg.textual_tokens else None
        r_v = visual_features(bb, self.adapter, kept) if cfg.encoding and cfg.visual_feature else None
        out = []
        for b, ex in enumerate(examples):
            with torch.no_grad():
                hist_e = [bb.embed_visual(c) for c in ex.history]
                ref_e = bb.embed_visual(ex.reference)
            tensors = {f"h{i}": e * m[:, None]
                       for i, (e, m) in enumerate(zip(hist_e, h_masks[b], strict=True))}
            tensors["ref"] = ref_e * r_masks[b][:, None]
            if r_t is not None:
                tensors["r_t"] = r_t[b]
            if r_v is not None:
                tensors["r_v"] = r_v[b : b + 1]
            layout = prompt_layout(len(ex.history), cfg.textual_tokens, cfg.visual_feature, cfg.encoding)
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
                 alpha_h: float | None = None, temperature: float = 1.0, top_k: int = 50,
                 training_masks: bool = False) -> list[torch.Tensor]:
        """Sample personalized target codes E_{N+1} (one LongTensor (L,) each) under the inference masks,
        in eval mode (no dropout), reproducibly for given seeds."""
        was_training = self.training
        self.eval()
        try:
            prompts = self.prompt_embeds(examples, alpha_r, training=training_masks, alpha_h=alpha_h)
            return sample_visual_tokens(self.backbone, prompts, seeds, temperature, top_k)
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


@torch.no_grad()
def sample_visual_tokens(backbone: Backbone, prompts: Sequence[torch.Tensor], seeds: Sequence[int],
                         temperature: float = 1.0, top_k: int = 50) -> list[torch.Tensor]:
    """Autoregressive image-token generation with a KV cache, restricted to visual tokens (+ "eoi" once
    ``min_visual_tokens`` are out), per-example seeded sampling (greedy when temperature is 0)."""
    bb = backbone
    embeds, mask = _left_pad(prompts)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    k0, k = bb.visual_offset, bb.visual_vocab_size
    eoi = bb.special_ids["eoi"]

    def run(e, m, cache=None):
        pos = (m.cumsum(-1) - 1).clamp(min=0)[:, -e.shape[1]:]
        out = bb.language_model(inputs_embeds=e, attention_mask=m, use_cache=True, cache=cache,
                                logits_to_keep=1, position_ids=pos)
        return out.logits[:, -1].float(), out.cache

    logits, past = run(embeds, mask)
    codes: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(bb.max_visual_tokens + 1):
        cand = torch.cat([logits[:, k0 : k0 + k], logits[:, eoi : eoi + 1]], dim=-1)  # eoi = index k
        if step < bb.min_visual_tokens:
            cand[:, k] = float("-inf")
        if step == bb.max_visual_tokens:
            break
        nxt = _sample(cand, gens, temperature, top_k)
        for b, c in enumerate(nxt):
            if c == k:
                done[b] = True
            elif not done[b]:
                codes[b].append(c)
        if all(done):
            break
        ids = torch.tensor([c + k0 if c < k else eoi for c in nxt], device=bb.device)
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        logits, past = run(bb.embed_tokens(ids)[:, None], mask, past)
    return [torch.tensor(c, dtype=torch.long, device=bb.device) for c in codes]


def _sample(logits: torch.Tensor, gens: Sequence[torch.Generator], temperature: float, top_k: int
            ) -> list[int]:
    """One token per row of (B, V) logits: top-k, temperature, then inverse-CDF sampling with one uniform
    draw from each row's own generator (a row's token never depends on the other rows of its batch)."""
    if temperature <= 0:
        return logits.argmax(-1).tolist()
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = F.softmax(logits, dim=-1).double().cpu().cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens])
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return idx.clamp(max=logits.shape[-1] - 1).tolist()


# checkpoints --------------------------------------------------------------------------------------------
def save_checkpoint(model: PigeonModel, out: str | Path, meta: dict[str, Any]) -> None:
    """CKPT/pigeon.safetensors (trainable parts) + CKPT/pigeon.json (config, backbone spec, ``meta``)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(out / WEIGHTS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.trainable_state().items()}, str(tmp))
    fileio.write_json(out / CONFIG,
                      {"config": asdict(model.config), "backbone": model.backbone.spec(), **meta})


def read_checkpoint_meta(ckpt: str | Path) -> dict[str, Any]:
    ckpt = Path(ckpt)
    if not (ckpt / CONFIG).is_file() or not (ckpt / WEIGHTS).is_file():
        raise UserError(f"not a Pigeon checkpoint: {ckpt} (needs {CONFIG} and {WEIGHTS})")
    return fileio.read_json(ckpt / CONFIG)


def check_compatible(meta: dict[str, Any], backbone: Backbone, ckpt: str | Path) -> None:
    """UserError naming the first backbone property the checkpoint was not built for."""
    want = meta.get("backbone", {})
    have = backbone.spec()
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            raise UserError(f"checkpoint {ckpt} does not fit backbone {have.get('backbone')!r}: {key} is "
                            f"{want.get(key)!r} in the checkpoint but {have.get(key)!r} in the backbone")


def load_checkpoint(ckpt: str | Path, backbone: Backbone, **overrides: Any) -> PigeonModel:
    """A PigeonModel on ``backbone`` with the checkpoint's trainable parts; ``overrides`` change options
    that do not change shapes (e.g. alpha_h, reference_mask at inference)."""
    from safetensors.torch import load_file

    meta = read_checkpoint_meta(ckpt)
    check_compatible(meta, backbone, ckpt)
    config = PigeonConfig.from_dict({**meta["config"], **overrides})
    model = PigeonModel(backbone, config)
    load_trainable(model, load_file(str(Path(ckpt) / WEIGHTS)), ckpt)
    return model.eval()


def load_trainable(model: PigeonModel, state: dict[str, torch.Tensor], source: str | Path) -> None:
    own = model.trainable_state()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UserError(f"checkpoint {source} lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    with torch.no_grad():
        for k, v in own.items():
            if v.shape != state[k].shape:
                raise UserError(f"checkpoint {source}: {k} has shape {tuple(state[k].shape)}, "
                                f"the model expects {tuple(v.shape)}")
            v.copy_(state[k].to(v.dtype))


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
