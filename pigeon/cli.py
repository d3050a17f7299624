"""The method package's command groups (mounted by pigeon_bench.cli): `pigeon-bench train sft|dpo` and
`pigeon-bench pigeon inspect PATH`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pigeon_bench.errors import UserError

train_app = typer.Typer(help="Train Pigeon: stage 1 (SFT) and stage 2 (DPO).", no_args_is_help=True,
                        rich_markup_mode=None)


def _pigeon_config(alpha_h: float, history_mask: bool, visual_feature: bool, textual_tokens: bool,
                   encoding: bool, reference_mask: str):
    from pigeon.model import PigeonConfig

    return PigeonConfig(alpha_h=alpha_h, history_mask=history_mask, visual_feature=visual_feature,
                        textual_tokens=textual_tokens, encoding=encoding, reference_mask=reference_mask)


def _train_summary(meta: dict, out: Path, key: str) -> str:
    from pigeon.train import margin_summary

    first, last = margin_summary(meta["log"], key)
    return (f"{meta['stage']}: {meta['step']} steps, {key} {first:.4f} -> {last:.4f} (mean of first/last 10 "
            f"steps), {meta.get('seconds', 0):.1f} s; checkpoint {out}")


_TrainData = Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")]
_TrainOut = Annotated[Path, typer.Option(help="Checkpoint folder (resumes from its last saved step).")]
_TrainBackbone = Annotated[str, typer.Option(help="LMM backbone: lavit or tiny.")]
_BackbonePath = Annotated[str | None, typer.Option(
    help="Backbone weights (LaVIT folder or hub id; tiny: a saved tiny folder). Default: lavit's release; "
         "tiny: pretrained on --data and cached.")]


@train_app.command("sft")
def train_sft_cmd(
    data: _TrainData,
    out: _TrainOut,
    backbone: _TrainBackbone = "tiny",
    backbone_path: _BackbonePath = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate (paper: 1e-5).")] = 1e-5,
    seed: Annotated[int, typer.Option(help="Seed of batches, α_r draws and Gumbel noise.")] = 0,
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 50,
    alpha_h: Annotated[float, typer.Option(help="History mask ratio α_h.")] = 0.2,
    history_mask: Annotated[bool, typer.Option(help="Ablation: --no-history-mask (Fig. 4(a)).")] = True,
    visual_feature: Annotated[bool, typer.Option(help="Ablation: --no-visual-feature (Table 3).")] = True,
    textual_tokens: Annotated[bool, typer.Option(help="Ablation: --no-textual-tokens (Table 3).")] = True,
    encoding: Annotated[bool, typer.Option(help="Ablation: --no-encoding (Table 3).")] = True,
    reference_mask: Annotated[str, typer.Option(
        help="dual (Pigeon), low, high (Fig. 4(d)), none (Fig. 4(c)), random.")] = "dual",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Stage 1: masked preference reconstruction (SFT of mask generator, adapter and LoRA)."""
    from pigeon.train import TrainSpec, train_sft

    if steps < 1 or batch_size < 1 or save_every < 1:
        raise UserError("--steps, --batch-size and --save-every must be at least 1")
    spec = TrainSpec(data=data, out=out, backbone=backbone,
                     backbone_options={"path": backbone_path} if backbone_path else {}, steps=steps,
                     batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, device=device,
                     config=_pigeon_config(alpha_h, history_mask, visual_feature, textual_tokens, encoding,
                                           reference_mask))
    typer.echo(_train_summary(train_sft(spec), out, "loss"))


@train_app.command("dpo")
def train_dpo_cmd(
    data: _TrainData,
    out: _TrainOut,
    init: Annotated[Path, typer.Option(help="The stage-1 (SFT) checkpoint; also the frozen DPO reference.")],
    backbone: _TrainBackbone = "tiny",
    backbone_path: _BackbonePath = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Preference pairs per step.")] = 4,
    lr: Annotated[float, typer.Option(help="Learning rate (paper: 1e-5).")] = 1e-5,
    beta: Annotated[float, typer.Option(help="DPO β.")] = 0.1,
    prompts: Annotated[int, typer.Option(help="Train prompts to build preference pairs from (11 candidates "
                                              "each, α_r = 0.0..1.0).")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of prompts, candidates, batches and α_r draws.")] = 0,
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps.")] = 25,
    scorer_profile: Annotated[str, typer.Option(help="Scoring profile of the CLIP reward: tiny or paper.")]
        = "tiny",
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Stage 2: DPO on chosen/rejected candidates ranked by CLIP similarity to the history (LoRA only)."""
    from pigeon.train import PREFERENCES, DPOSpec, train_dpo

    if steps < 1 or batch_size < 1 or save_every < 1 or prompts < 1:
        raise UserError("--steps, --batch-size, --save-every and --prompts must be at least 1")
    spec = DPOSpec(data=data, out=out, init=init, backbone=backbone,
                   backbone_options={"path": backbone_path} if backbone_path else {}, steps=steps,
                   batch_size=batch_size, lr=lr, seed=seed, save_every=save_every, device=device, beta=beta,
                   prompts=prompts, scorer_profile=scorer_profile)
    meta = train_dpo(spec)
    typer.echo(_train_summary(meta, out, "margin") + f"; preference pairs in {out / PREFERENCES}")


app = typer.Typer(name="pigeon", help="Pigeon checkpoints in the released layout.", no_args_is_help=True,
                  rich_markup_mode=None)


@app.callback()
def _group() -> None:
    """Pigeon checkpoints in the released layout (a command group even with one command)."""


def summary(report: dict[str, Any]) -> str:
    """A few lines of what ``inspect_checkpoint`` found."""
    lines = [f"{report['path']}: {report['layout']} checkpoint, backbone {report['backbone'] or 'unknown'}"
             f" (profile {report['profile_hint'] or 'unknown'})"]
    for name, comp in report["components"].items():
        sizes = {k: comp[k] for k in ("dim", "layers", "feedforward", "positions", "in", "hidden", "out",
                                      "adapted_modules") if k in comp}
        extra = ", ".join(f"{k} {v}" for k, v in sizes.items())
        lines.append(f"  {name}: {comp['file']}, {comp['tensors']} tensors, {comp['values']:,} values "
                     f"({'/'.join(comp['dtypes'])}){', ' + extra if extra else ''}")
        if "lora" in comp:
            lora = comp["lora"]
            lines.append(f"    LoRA r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}, "
                         f"targets {', '.join(lora['target_modules'])}")
    if report["training"]:
        lines.append("  trained: " + ", ".join(f"{k} {v}" for k, v in report["training"].items()))
    lines += [f"  missing: {m}" for m in report["missing"]] + [f"  problem: {p}" for p in report["problems"]]
    return "\n".join(lines)


@app.command("inspect")
def inspect_cmd(
    path: Annotated[Path, typer.Argument(help="A checkpoint folder (ours or the authors' checkpoint-N).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """What a Pigeon checkpoint holds: components, tensor shapes and counts, LoRA config, missing pieces."""
    from pigeon.checkpoint import inspect_checkpoint

    report = inspect_checkpoint(path)
    typer.echo(json.dumps(report, indent=2, sort_keys=True) if as_json else summary(report))
    bad = report["missing"] + report["problems"]
    if bad:
        raise UserError(f"{report['path']} is not a usable Pigeon checkpoint: "
                        f"{'missing ' + bad[0] if report['missing'] else bad[0]}")


reproduce_app = typer.Typer(help="The paper's experiments in one command (Table 1, Table 3, Fig. 4 (a)-(e)).",
                            rich_markup_mode=None, invoke_without_command=True)


@reproduce_app.callback()
def reproduce_cmd(
    scenario: Annotated[str | None, typer.Option(help="sticker or movie (or the config's).")] = None,
    config: Annotated[Path | None, typer.Option(help="Experiment TOML file (as for `run`).")] = None,
    data: Annotated[Path | None, typer.Option(
        help="Dataset folder; default: the offline demo world (tiny profile).")] = None,
    profile: Annotated[str | None, typer.Option(help="paper or tiny (default as for `run`).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many samples per split.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output root (default runs); the report folder is "
                                                  "OUT/reproduce/<scenario>/.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device.")] = None,
    stage2: Annotated[Path | None, typer.Option(
        help="Pigeon's stage-2 (DPO) checkpoint for Fig. 4 (e); default: trained from stage 1 where the "
             "profile trains what is missing.")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        help="NAME=CKPT (repeatable): a training variant's stage-1 checkpoint, e.g. "
             "'w/o encoding=ckpt/noenc' (needed where the profile does not train what is missing).")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="METHOD.KEY=VALUE or KEY=VALUE, as for `run`.")] = None,
) -> None:
    """Run the paper's experiments and write one report folder (tables, Fig. 4 plots, paired CIs)."""
    from pigeon.reproduce import reproduce
    from pigeon_bench.runs import experiment

    exp = experiment(config, option or [], scenario=scenario, data=data, profile=profile, limit=limit,
                     out=out, device=device)
    from pigeon_bench.reports import parse_named_run

    checkpoints = dict(parse_named_run(v) for v in variant or [])
    result = reproduce(exp, stage2=stage2, checkpoints=checkpoints)
    typer.echo("\n".join(str(f) for f in result.files))
    typer.echo(f"report folder: {result.folder}", err=True)


COMMANDS = {"train": train_app, "pigeon": app, "reproduce": reproduce_app}
