"""The experiment config of ``pigeon-bench run``: one object from a TOML file and the command line.

```toml
scenario = "sticker"
data = "datasets/sticker"          # a built dataset; omit for the offline demo world
profile = "paper"                  # default: the one the method options imply, else paper (demo: tiny)
methods = ["grd", "hist", "pigeon"]
device = "cuda"
dtype = "bfloat16"
limit = 100
seed = 0
batch_size = 4
valid = true
out = "runs"

[weights]                          # scoring backbones' local weights (see `pigeon-bench models list`)
clip = "/models/open_clip_pytorch_model.bin"

[models]                           # a model folder for every method with an option of that name
sdxl = "/models/stable-diffusion-xl-base-1.0"

[options.pigeon]                   # per-method options (see `pigeon-bench methods`)
checkpoint = "checkpoints/pigeon-sft/checkpoint-1000"
```

On the command line, ``--config FILE`` reads the file and every other flag overrides it;
``-o METHOD.KEY=VALUE`` sets one method's option, ``-o KEY=VALUE`` every selected method that has it.
The resolved experiment is recorded in each run manifest.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pigeon_bench.errors import UserError
from pigeon_bench.generation import generators, option_pairs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class Experiment:
    """Everything ``run`` needs; ``None`` fields take their defaults when the run starts."""

    scenario: str
    data: Path | None = None
    profile: str | None = None
    methods: list[str] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> {option: value}
    models: dict[str, str] = field(default_factory=dict)  # option name -> model folder, for every method
    weights: dict[str, str] = field(default_factory=dict)  # scoring backbone id -> local weights
    device: str = "cpu"
    dtype: str | None = None  # None: each method's default
    limit: int | None = None
    seed: int = 0
    batch_size: int = 4
    valid: bool = True
    candidate_intervals: bool = False  # FID intervals for a sweep's fixed-α_r test candidates too
    out: Path = Path("runs")

    def method_options(self, method: str) -> dict[str, Any]:
        """The options of one method: the ``[models]`` entries it has an option for, then its own."""
        names = {o.name for o in generators.get(method).options}
        return {**{k: v for k, v in self.models.items() if k in names}, **self.options.get(method, {})}

    def check(self) -> None:
        """Unknown methods, and options no selected method has, are one-line errors."""
        methods = self.methods or generators.names()
        for m in (*methods, *self.options):
            generators.get(m)
        for m in self.options:
            if m not in methods:
                raise UserError(f"options given for method {m!r}, which this run does not select")
        if self.models and not any(set(self.models) & {o.name for o in generators.get(m).options}
                                   for m in methods):
            raise UserError(f"[models] {', '.join(self.models)}: no selected method has such an option")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


_FIELDS = {f.name for f in dataclasses.fields(Experiment)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """The fields of an experiment TOML file (relative paths resolve against the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    for key in ("options", "models", "weights"):
        if key in raw and not isinstance(raw[key], dict):
            raise UserError(f"{path}: [{key}] must be a table")
    if any(not isinstance(v, dict) for v in raw.get("options", {}).values()):
        raise UserError(f"{path}: [options] holds one table per method, e.g. [options.pigeon]")
    for key in ("data", "out"):
        if key in raw:
            raw[key] = path.parent / Path(raw[key]).expanduser()
    return raw


def merge_option_pairs(options: dict[str, dict[str, Any]], pairs: list[str],
                       methods: list[str]) -> dict[str, dict[str, Any]]:
    """Apply ``-o METHOD.KEY=VALUE`` / ``-o KEY=VALUE`` pairs to per-method options."""
    out = {m: dict(v) for m, v in options.items()}
    for key, value in option_pairs(pairs).items():
        method, dot, name = key.rpartition(".")
        if dot and method:
            generators.get(method)
            out.setdefault(method, {})[name] = value
            continue
        having = [m for m in methods if name in {o.name for o in generators.get(m).options}]
        if not having:
            raise UserError(f"-o {key}=...: none of the selected methods has an option {name!r}")
        for m in having:
            out.setdefault(m, {})[name] = value
    return out


def experiment(config: str | Path | None = None, option_pairs_: list[str] | None = None,
               **flags: Any) -> Experiment:
    """An Experiment from an optional TOML file, command-line flags (None: not given) and ``-o`` pairs."""
    fields = load_toml(config) if config is not None else {}
    fields.update({k: v for k, v in flags.items() if v is not None})
    if "scenario" not in fields:
        raise UserError("no scenario: give --scenario or scenario = ... in the config file")
    exp = Experiment(**{k: Path(v) if k in ("data", "out") and v is not None else v
                        for k, v in fields.items()})
    if option_pairs_:
        exp.options = merge_option_pairs(exp.options, option_pairs_, exp.methods or generators.names())
    exp.check()
    return exp
