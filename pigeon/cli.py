"""Pigeon commands (mounted as ``pigeon-bench pigeon ...``): ``inspect PATH``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pigeon_bench.errors import UserError

app = typer.Typer(name="pigeon", help="Pigeon checkpoints in the released layout.", no_args_is_help=True)


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
