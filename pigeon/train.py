"""Two-stage preference alignment (§2.2.4): stage 1 SFT (masked preference reconstruction) and stage 2 DPO.

Both stages write a checkpoint folder in the authors' released layout (mask_generator/, adapter/, llama/, plus
our pigeon.json; pigeon/checkpoint.py) every ``save_every`` steps together with the optimizer state
(train_state.safetensors); a killed run resumes from the last saved step. DPO also writes its preference
pairs to CKPT/preferences.parquet.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pigeon.backbone import Backbone, build_backbone
from pigeon.checkpoint import checkpoint_dir, load_states, read_meta, write_checkpoint
from pigeon.model import Example, PigeonConfig, PigeonModel, load_checkpoint, swapped_lora
from pigeon.prompt import TEMPLATES, short_title
from pigeon_bench import fileio
from pigeon_bench.data import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.generation import ALPHA_R_GRID
from pigeon_bench.progress import progress as progress_bar

log = logging.getLogger(__name__)

STATE = "train_state.safetensors"
PREFERENCES = "preferences.parquet"

RewardFn = Callable[[list, list[list]], torch.Tensor]
"""(candidate images, per-candidate history images) -> rewards (n,)."""


@dataclass
class TrainSpec:
    data: Path
    out: Path
    backbone: str = "tiny"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-5
    seed: int = 0
    save_every: int = 50
    config: PigeonConfig = field(default_factory=PigeonConfig)
    trainable: str = "sft"  # "sft": mask generator + adapter + LoRA; "lora": LoRA only (the lavit baseline)
    device: str = "cpu"
    progress: bool = True


def backbone_for(name: str, data: Path, device: str = "cpu", **options: Any) -> Backbone:
    """Build the named backbone; the tiny one is pretrained on (and cached for) ``data`` unless ``path``."""
    return build_backbone(name, device=device, data=Dataset(data), **options)


def item_texts(dataset: Dataset) -> dict[str, dict[str, str]]:
    """Per item, the official templates' texts the items table has: "emotion" (stickers) and "title"
    (movies, without its year), from the optional columns of those names."""
    df = dataset.items_df
    cols = [c for c in ("emotion", "title") if c in df.columns]
    out: dict[str, dict[str, str]] = {}
    for row in df[["item_id", *cols]].to_dict("records"):
        texts = {c: str(row[c]) for c in cols if isinstance(row[c], str)}
        if "title" in texts:
            texts["title"] = short_title(texts["title"])
        out[str(row["item_id"])] = texts
    return out


def template_fields(texts: dict[str, dict[str, str]], history: Sequence[str], reference_id: str
                    ) -> dict[str, Any]:
    """Example fields of the official templates (``emotion``, ``title``, ``history_titles``) from
    ``item_texts``; None where the dataset lacks them."""
    ref = texts.get(reference_id, {})
    titles = [texts.get(h, {}).get("title") for h in history]
    return {"emotion": ref.get("emotion"), "title": ref.get("title"),
            "history_titles": titles if all(t is not None for t in titles) else None}


def with_dataset_scenario(config: PigeonConfig, data: Path) -> PigeonConfig:
    """``config`` with the prompt scenario of the dataset (its stats.json "scenario"), when it has one."""
    scenario = Dataset(data).stats.get("scenario")
    if scenario in TEMPLATES and scenario != config.scenario:
        log.info("prompt scenario %s (the dataset's)", scenario)
        return replace(config, scenario=scenario)
    return config


class TokenCache:
    """Visual codes of dataset items, each image through the visual tokenizer once (batched)."""

    def __init__(self, backbone: Backbone, dataset: Dataset, batch_size: int = 32):
        self.backbone, self.dataset, self.batch_size = backbone, dataset, batch_size
        self.codes: dict[str, torch.Tensor] = {}
        self.texts = item_texts(dataset)

    def ensure(self, item_ids: Sequence[str]) -> None:
        todo = sorted(set(item_ids) - set(self.codes))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            images = [fileio.load_rgb(self.dataset.image_path(t)) for t in chunk]
            self.codes.update(zip(chunk, self.backbone.tokenize_images(images), strict=True))

    def example(self, sample: Sample, reference_is_target: bool = True) -> Example:
        """Stage-1/2 example: the last interaction is the target and, by default, also the reference."""
        ref = sample.target_id if reference_is_target else sample.reference_id
        self.ensure([*sample.history, sample.target_id, ref])
        return Example(history=[self.codes[h] for h in sample.history], reference=self.codes[ref],
                       caption=self.dataset.item(ref).semantics, target=self.codes[sample.target_id],
                       meta={"sample_id": sample.sample_id},
                       **template_fields(self.texts, sample.history, ref))


def train_examples(backbone: Backbone, data: Path) -> list[Example]:
    dataset = Dataset(data)
    samples = dataset.samples("train")
    if not samples:
        raise UserError(f"{dataset.root}: no train samples")
    cache = TokenCache(backbone, dataset)
    cache.ensure([i for s in samples for i in (*s.history, s.target_id)])
    return [cache.example(s) for s in samples]


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (10): -log σ(β[(log π(E') - log π_ref(E')) - (log π(E'') - log π_ref(E''))]), mean over the
    batch, and the per-pair margins (the bracket without β)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean(), margin.detach()


# ---------------------------------------------------------------------------------------------- loops
def _save(model: PigeonModel, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], out: Path,
          meta: dict[str, Any]) -> None:
    """Optimizer state (exp_avg/exp_avg_sq/step per trainable parameter, for resuming), then the
    checkpoint, its pigeon.json last."""
    from safetensors.torch import save_file

    state: dict[str, torch.Tensor] = {}
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            state[f"{i}.{k}"] = v.detach().reshape(-1).contiguous().cpu() if k == "step" else v.detach().cpu()
    with fileio.atomic_path(out / STATE) as tmp:
        save_file(state or {"empty": torch.zeros(1)}, str(tmp))
    write_checkpoint(model, out, meta)


def _resume(model: PigeonModel, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], out: Path,
            identity: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Load the last saved step of ``out`` if it was made with the same ``identity``; (step, log)."""
    from safetensors.torch import load_file

    meta = read_meta(out) if out.is_dir() else {}
    if not meta:
        if out.exists() and any(p.name not in (STATE, PREFERENCES) for p in out.iterdir()):
            raise UserError(f"{out} exists and is not a pigeon-bench training checkpoint; "
                            "choose another --out")
        return 0, []
    checkpoint_dir(out)
    for key, want in identity.items():
        if meta.get(key) != want:
            raise UserError(f"{out} was trained with {key}={meta.get(key)!r}, not {want!r}; "
                            "use another --out or delete it")
    load_states(model, out)
    if (out / STATE).is_file():
        saved = load_file(str(out / STATE))
        for i, p in enumerate(params):
            st = {k.split(".", 1)[1]: v for k, v in saved.items() if k.split(".", 1)[0] == str(i)}
            if st:
                st["step"] = st["step"].reshape(())
                opt.state[p] = st
    step = int(meta.get("step", 0))
    log.warning("resuming %s from step %d (saved in %s)", meta.get("stage", "training"), step, out)
    return step, list(meta.get("log", []))


def _threads(spec: TrainSpec):
    """Tiny backbones on CPU train single-threaded (the tiny profile's compute setting)."""
    from pigeon.tiny import TinyBackbone
    from pigeon_bench.profiles import PAPER, TINY

    return (TINY if spec.backbone == TinyBackbone.name else PAPER).compute_threads(spec.device)


def _step_rng(seed: int, step: int) -> random.Random:
    """The step's own seeds (batch choice and α_r from the returned RNG, torch's Gumbel noise and dropout from
    the global one), so a resumed run draws exactly what an uninterrupted one would."""
    torch.manual_seed(seed * 1_000_003 + step)
    return random.Random(seed * 1_000_003 + step)


def _alpha_r(rng: random.Random, n: int, config: PigeonConfig) -> list[float]:
    """The step's reference mask ratios: one U(0, 1) draw for the whole batch (official), or one per example
    (paper)."""
    if config.mask_rules == "official":
        return [rng.random()] * n
    return [rng.random() for _ in range(n)]


def train_sft(spec: TrainSpec, backbone: Backbone | None = None) -> dict[str, Any]:
    """Stage 1 (Eq. 8): target = last interaction, reference = the target under the training mask with
    α_r ~ U(0, 1) (one draw per step under the official rules, one per example under the paper's); the
    prompt scenario is the dataset's. Returns the final checkpoint meta (with the loss log)."""
    with _threads(spec):
        return _train_sft(spec, backbone)


def _train_sft(spec: TrainSpec, backbone: Backbone | None) -> dict[str, Any]:
    out = Path(spec.out)
    bb = backbone or backbone_for(spec.backbone, spec.data, spec.device, **spec.backbone_options)
    config = with_dataset_scenario(spec.config, spec.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # initial mask generator, adapter and LoRA: from the seed only
        model = PigeonModel(bb, config)
    params = model.set_trainable(spec.trainable)
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    from pigeon.tiny import dataset_key

    identity = {"stage": "sft", "data_key": dataset_key(spec.data), "config": config.to_dict(),
                "batch_size": spec.batch_size, "lr": spec.lr, "seed": spec.seed, "trainable": spec.trainable}
    start_step, history = _resume(model, opt, params, out, identity)
    examples = train_examples(bb, spec.data)
    model.train()
    meta = {**identity, "steps": spec.steps, "data": str(Path(spec.data).resolve())}
    t0 = time.perf_counter()
    with progress_bar(info=True, transient=False, enabled=spec.progress) as bar:
        task = bar.add_task("pigeon sft", total=spec.steps, completed=min(start_step, spec.steps), info="")
        for step in range(start_step, spec.steps):
            rng = _step_rng(spec.seed, step)
            batch = [examples[rng.randrange(len(examples))] for _ in range(spec.batch_size)]
            loss = model.sft_loss(batch, _alpha_r(rng, len(batch), config))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step + 1, "loss": round(loss.item(), 5)})
            bar.update(task, advance=1, info=f"loss {loss.item():.4f}")
            if (step + 1) % spec.save_every == 0 or step + 1 == spec.steps:
                meta.update(step=step + 1, log=history)
                _save(model, opt, params, out, meta)
    meta.update(step=max(start_step, spec.steps), log=history, seconds=round(time.perf_counter() - t0, 2))
    return meta


@dataclass
class DPOSpec(TrainSpec):
    init: Path | None = None  # the stage-1 checkpoint
    beta: float = 0.1
    prompts: int = 16  # train prompts to build preference pairs from
    alpha_grid: tuple[float, ...] = ALPHA_R_GRID
    temperature: float = 1.0
    top_k: int = 50
    scorer_profile: str = "tiny"


def clip_reward(profile: str, device: str = "cpu") -> RewardFn:
    """Eq. (9): mean CLIP image similarity of each candidate to its history images (the scoring engine)."""
    from pigeon_bench.scoring import Scorer

    scorer = Scorer(profile=profile, device=device, progress=False)

    def reward(candidates: list, histories: list[list]) -> torch.Tensor:
        c = scorer.clip_image_embeddings(candidates)
        h = scorer.clip_image_embeddings([im for hist in histories for im in hist])
        h = h.reshape(len(candidates), -1, h.shape[-1])
        return torch.einsum("nd,nkd->nk", c.float(), h.float()).mean(-1)

    return reward


def build_preferences(model: PigeonModel, examples: Sequence[Example], histories: Sequence[list],
                      reward: RewardFn, alpha_grid: Sequence[float], seed: int, temperature: float,
                      top_k: int, progress: bool = True):
    """Preference pairs: candidates at every α_r of the grid (inference masks, the same sampling seed for
    all), chosen = highest reward, rejected = lowest. Returns a DataFrame, one row per prompt whose chosen
    and rejected token sequences differ."""
    import pandas as pd

    rows = []
    with progress_bar(info=True, transient=False, enabled=progress) as bar:
        task = bar.add_task("pigeon dpo: preference pairs", total=len(examples), info="")
        for n, (ex, hist) in enumerate(zip(examples, histories, strict=True)):
            k = len(alpha_grid)
            seeds = [seed * 1_000_003 + n] * k  # same noise for every α_r: only the mask differs
            codes = model.generate([ex] * k, list(alpha_grid), seeds, temperature=temperature, top_k=top_k)
            images = model.backbone.render(codes, seeds)
            r = reward(images, [hist] * k)
            hi, lo = int(r.argmax()), int(r.argmin())
            if torch.equal(codes[hi], codes[lo]):  # no preference to learn (e.g. all candidates alike)
                bar.update(task, advance=1, info="tie, skipped")
                continue
            rows.append({"sample_id": ex.meta["sample_id"], "alpha_chosen": alpha_grid[hi],
                         "alpha_rejected": alpha_grid[lo], "reward_chosen": float(r[hi]),
                         "reward_rejected": float(r[lo]), "rewards": [float(x) for x in r],
                         "chosen": codes[hi].tolist(), "rejected": codes[lo].tolist()})
            bar.update(task, advance=1, info=f"Δreward {float(r[hi] - r[lo]):.4f}")
    return pd.DataFrame(rows)


def train_dpo(spec: DPOSpec, backbone: Backbone | None = None, reward: RewardFn | None = None
              ) -> dict[str, Any]:
    """Stage 2: DPO on preference pairs from the stage-1 model (the frozen reference); only LoRA trains."""
    with _threads(spec):
        return _train_dpo(spec, backbone, reward)


def _train_dpo(spec: DPOSpec, backbone: Backbone | None, reward: RewardFn | None) -> dict[str, Any]:
    if spec.init is None:
        raise UserError("train dpo needs --init, the stage-1 (SFT) checkpoint")
    out = Path(spec.out)
    bb = backbone or backbone_for(spec.backbone, spec.data, spec.device, **spec.backbone_options)
    model = load_checkpoint(spec.init, bb)
    config = model.config
    reference = {k: v.detach().clone() for k, v in model.lora_parameters().items()}
    params = model.set_trainable("dpo")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    from pigeon.tiny import dataset_key

    identity = {"stage": "dpo", "data_key": dataset_key(spec.data), "config": config.to_dict(),
                "batch_size": spec.batch_size, "lr": spec.lr, "seed": spec.seed, "beta": spec.beta,
                "init": str(Path(spec.init).resolve())}
    start_step, history = _resume(model, opt, params, out, identity)
    pairs, by_id = _preferences(spec, model, bb, out, reward)
    meta = {**identity, "steps": spec.steps, "data": str(Path(spec.data).resolve()), "pairs": len(pairs)}
    model.train()
    t0 = time.perf_counter()
    with progress_bar(info=True, transient=False, enabled=spec.progress) as bar:
        task = bar.add_task("pigeon dpo", total=spec.steps, completed=min(start_step, spec.steps), info="")
        for step in range(start_step, spec.steps):
            rng = _step_rng(spec.seed, step)
            rows = [pairs[rng.randrange(len(pairs))] for _ in range(spec.batch_size)]
            batch = [by_id[r["sample_id"]] for r in rows]
            with torch.no_grad():  # α_r ~ U(0, 1) in the prompt (Eq. 10)
                prompts = model.prompt_embeds(batch, _alpha_r(rng, len(rows), config), training=True)
            chosen = [torch.tensor(r["chosen"], dtype=torch.long) for r in rows]
            rejected = [torch.tensor(r["rejected"], dtype=torch.long) for r in rows]
            with torch.no_grad(), swapped_lora(model, reference):  # before the policy pass builds its graph
                ref, _ = model.target_logprobs(prompts + prompts, chosen + rejected)
            pol, _ = model.target_logprobs(prompts + prompts, chosen + rejected)
            n = len(rows)
            loss, margin = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], spec.beta)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append({"step": step + 1, "loss": round(loss.item(), 5),
                            "margin": round(margin.mean().item(), 5)})
            bar.update(task, advance=1, info=f"loss {loss.item():.4f} margin {margin.mean().item():.3f}")
            if (step + 1) % spec.save_every == 0 or step + 1 == spec.steps:
                meta.update(step=step + 1, log=history)
                _save(model, opt, params, out, meta)
    meta.update(step=max(start_step, spec.steps), log=history, seconds=round(time.perf_counter() - t0, 2))
    return meta


def _preferences(spec: DPOSpec, model: PigeonModel, bb: Backbone, out: Path, reward: RewardFn | None):
    """The preference pairs (built once, then read back from CKPT/preferences.parquet) and their examples."""
    dataset = Dataset(spec.data)
    samples = dataset.samples("train")
    if not samples:
        raise UserError(f"{dataset.root}: no train samples")
    chosen_samples = random.Random(spec.seed).sample(samples, min(spec.prompts, len(samples)))
    cache = TokenCache(bb, dataset)
    by_id = {s.sample_id: cache.example(s) for s in chosen_samples}
    path = out / PREFERENCES
    if path.is_file():
        df = fileio.read_parquet(path, ["sample_id", "chosen", "rejected"])
        missing = sorted(set(df["sample_id"]) - set(by_id))
        if missing:
            raise UserError(f"{path}: sample {missing[0]} is not among this run's prompts; delete the file")
    else:
        histories = [[fileio.load_rgb(dataset.image_path(h)) for h in s.history] for s in chosen_samples]
        fn = reward or clip_reward(spec.scorer_profile, spec.device)
        df = build_preferences(model, list(by_id.values()), histories, fn, spec.alpha_grid, spec.seed,
                               spec.temperature, spec.top_k, spec.progress)
        out.mkdir(parents=True, exist_ok=True)
        fileio.write_parquet(path, df)
    if df.empty:
        raise UserError(f"{path}: no preference pairs (every prompt's candidates tied); try more --prompts")
    return df.to_dict("records"), by_id


def margin_summary(log_: Sequence[dict[str, Any]], key: str, window: int = 10) -> tuple[float, float]:
    """Mean of ``key`` over the first and the last ``window`` logged steps."""
    vals = [r[key] for r in log_ if key in r]
    if not vals:
        return math.nan, math.nan
    w = max(1, min(window, len(vals) // 2 or 1))
    return sum(vals[:w]) / w, sum(vals[-w:]) / w
