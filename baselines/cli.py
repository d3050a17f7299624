"""The baselines' command group: `pigeon-bench baselines finetune-llava|finetune-pmg`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pigeon_bench.errors import UserError
from pigeon_bench.profiles import DEFAULT as DEFAULT_PROFILE
from pigeon_bench.profiles import HELP as PROFILE_HELP

baselines_app = typer.Typer(help="Train baseline adapters (LLaVA LoRA, PMG soft tokens).",
                            no_args_is_help=True, rich_markup_mode=None)


@baselines_app.command("finetune-llava")
def baselines_finetune_llava(
    data: Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")],
    out: Annotated[Path, typer.Option(help="Output folder for the LoRA (PEFT adapter + finetune.json).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps (batch 1); 0: one pass over train.")] = 0,
    lr: Annotated[float, typer.Option(help="Learning rate (the paper tunes every baseline at 1e-5).")] = 1e-5,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Use at most this many training samples.")] = None,
    base: Annotated[str | None, typer.Option(help="LLaVA hub id or folder (default: the profile's).")] = None,
    captioner: Annotated[str | None, typer.Option(help="Captioner hub id or folder (BLIP-2).")] = None,
    profile: Annotated[str, typer.Option(help=PROFILE_HELP)] = DEFAULT_PROFILE.name,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Shuffling and initialisation seed.")] = 0,
) -> None:
    """Fine-tune LLaVA with LoRA on the train split: prompt (history + reference) -> the target's caption."""
    from baselines.llava import finetune_llava
    from pigeon_bench.generation import parse_device, parse_dtype
    from pigeon_bench.profiles import get_profile

    if steps < 0 or (limit is not None and limit < 1):
        raise UserError("--steps must be >= 0 and --limit >= 1")
    meta = finetune_llava(data, out, base_model=base, profile=get_profile(profile), steps=steps, lr=lr,
                          rank=rank, alpha=alpha, limit=limit, seed=seed, captioner_ref=captioner,
                          device=str(parse_device(device)), dtype=parse_dtype(dtype))
    typer.echo(f"LoRA written to {out} ({meta['steps']} steps on {meta['n_train']} training samples, "
               f"final loss {meta['losses'][-1]:.4f}); use it with --option lora={out} for method 'llava'")


@baselines_app.command("finetune-pmg")
def baselines_finetune_pmg(
    data: Annotated[Path, typer.Option(help="Dataset folder; its train split is the training data.")],
    out: Annotated[Path, typer.Option(help="Output folder (pmg_adapter.safetensors + pmg_adapter.json).")],
    steps: Annotated[int, typer.Option(help="Optimizer steps (batch 1); 0: one pass over train.")] = 0,
    lr: Annotated[float, typer.Option(help="Learning rate (the paper tunes every baseline at 1e-5).")] = 1e-5,
    n_soft: Annotated[int, typer.Option(help="Number of soft preference tokens.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Use at most this many training samples.")] = None,
    llm: Annotated[str | None, typer.Option(help="LLM hub id or folder (default: the profile's).")] = None,
    sd: Annotated[str | None, typer.Option(help="Stable Diffusion hub id or folder.")] = None,
    captioner: Annotated[str | None, typer.Option(help="Captioner hub id or folder (BLIP-2).")] = None,
    profile: Annotated[str, typer.Option(help=PROFILE_HELP)] = DEFAULT_PROFILE.name,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
    seed: Annotated[int, typer.Option(help="Shuffling, noise and initialisation seed.")] = 0,
) -> None:
    """Train PMG's soft preference tokens (LLM and SD frozen) on the train split's target images."""
    from baselines.pmg import finetune_pmg
    from pigeon_bench.generation import create_generator

    if steps < 0 or n_soft < 1 or (limit is not None and limit < 1):
        raise UserError("--steps must be >= 0, --n-soft >= 1 and --limit >= 1")
    models = {k: v for k, v in {"llm": llm, "sd": sd, "captioner": captioner}.items() if v}
    gen = create_generator("pmg", profile, device, dtype, models)
    meta = finetune_pmg(gen, data, out, steps=steps, lr=lr, n_soft=n_soft, limit=limit, seed=seed)
    typer.echo(f"PMG adapter written to {out} ({meta['steps']} steps on {meta['n_train']} training samples, "
               f"final loss {meta['losses'][-1]:.4f}); use it with --option adapter={out} for method 'pmg'")


COMMANDS = {"baselines": baselines_app}
