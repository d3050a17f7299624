"""The shared generation interface: every method (Pigeon, baselines, references) answers the same request.

A method is a :class:`Generator` subclass registered under a name, either with
``@generators.register("name")`` in a module listed in ``builtin_modules`` below, or by a third-party package
through the entry-point group ``pigeon_bench.generators`` (the entry point names the method and points at
the class). Its life has three explicit steps, each given the :class:`MethodContext` (profile, device, dtype,
options, the run's dataset, the cache):

- ``prepare(samples)``: train or fetch what the method needs before generating (TI's inversions, PMG's soft
  tokens, LLaVA's LoRA, Pigeon's stage-1 checkpoint): logged, cached, skipped when cached;
- ``load()``: load models (lazily, once);
- ``generate(requests)``: answer a batch of requests, one image each, in order.

Options are declared as a table of :class:`Option` (name, type, default, help): ``pigeon-bench methods``
lists them, and a value the type cannot parse is a one-line error before anything runs.
Adapter modules import heavy libraries (diffusers, transformers models) lazily.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from pigeon_bench import fileio
from pigeon_bench.data.model import Dataset, Sample
from pigeon_bench.errors import UserError
from pigeon_bench.profiles import ByProfile, Profile, get_profile
from pigeon_bench.registry import Registry

ALPHA_R_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}

log = logging.getLogger("pigeon_bench")


@dataclass
class GenerationRequest:
    """One personalized-generation request (paper §2.1): history H, reference x_0, instruction txt."""

    sample: Sample
    history_images: list[Image.Image]  # 5, oldest first, RGB
    history_texts: list[str]
    reference_image: Image.Image
    reference_text: str
    instruction: str
    seed: int = 0
    alpha_r: float | None = None  # reference mask ratio, for methods that have one


@dataclass
class GenerationResult:
    image: Image.Image
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"prompt": "..."}


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Option:
    """One method option: ``pigeon-bench generate -o NAME=VALUE`` (or ``run -o METHOD.NAME=VALUE``).

    ``default`` may be a :class:`~pigeon_bench.profiles.ByProfile`; ``None`` means "not set" (the method
    decides, e.g. a checkpoint's own setting). ``kind`` is str, int, float, bool or "path".
    """

    name: str
    kind: type | str
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()

    def default_for(self, profile: Profile) -> Any:
        return self.default.get(profile) if isinstance(self.default, ByProfile) else self.default

    def parse(self, value: Any, method: str) -> Any:
        """The value as this option's kind; a one-line UserError naming the option otherwise."""
        if value is None:
            return None
        what = self.kind if isinstance(self.kind, str) else self.kind.__name__
        try:
            if self.kind is bool:
                if isinstance(value, bool):
                    return value
                text = str(value).strip().lower()
                if text not in _TRUE | _FALSE:
                    raise ValueError(value)
                return text in _TRUE
            if self.kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                return int(value)
            if self.kind is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
                if out != out:
                    raise ValueError(value)
                return out
            text = str(value)
        except (TypeError, ValueError):
            raise UserError(f"method {method!r}: option {self.name}={value!r} is not a valid {what}"
                            ) from None
        if self.choices and text not in self.choices:
            raise UserError(f"method {method!r}: option {self.name}={text!r} is not one of "
                            f"{', '.join(self.choices)}")
        return text


@dataclass
class MethodContext:
    """What a method is given: its profile, device, dtype, parsed options, the run's dataset (whose train
    split trains what it needs) and a logger. The cache is ``pigeon_bench.artifacts``."""

    profile: Profile
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    options: dict[str, Any] = field(default_factory=dict)  # as given (parsed), defaults not filled in
    dataset: Dataset | None = None
    log: Callable[[str], None] = log.warning


class Generator(ABC):
    """Base class of every method. Subclasses set ``name``/``group``, declare ``options`` and implement
    ``generate``; ``prepare`` and ``load`` are optional."""

    name: ClassVar[str] = ""
    group: ClassVar[str] = ""  # Table 1 group: DM-based, LLM-based, LMM-based, Reference, Sanity
    label: ClassVar[str] = ""  # display name in reports, e.g. "LLaVA*"; defaults to name
    supports_alpha_r: ClassVar[bool] = False
    options: ClassVar[tuple[Option, ...]] = ()
    default_dtype: ClassVar[ByProfile | None] = None  # dtype when none is given (None: float32)

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx

    @property
    def profile(self) -> Profile:
        return self.ctx.profile

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def dtype(self) -> torch.dtype:
        return self.ctx.dtype

    def opt(self, name: str) -> Any:
        """An option's value: as given, else its default in this profile."""
        if name in self.ctx.options:
            return self.ctx.options[name]
        return self.option(name).default_for(self.profile)

    @classmethod
    def option(cls, name: str) -> Option:
        for o in cls.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def settings(self) -> dict[str, Any]:
        """Every option's effective value (recorded in the run manifest)."""
        return {o.name: self.opt(o.name) for o in self.options}

    @classmethod
    def unavailable(cls, dataset: Dataset | None) -> str | None:
        """Why the method cannot run on ``dataset`` (None: it can). ``run`` leaves such a method out of its
        default method list; creating it anyway is the method's own one-line error."""
        return None

    @classmethod
    def implied_profile(cls, options: dict[str, Any]) -> str | None:
        """The profile that ``options`` imply (e.g. a checkpoint records its backbone), or None."""
        return None

    def prepare(self, samples: Sequence[Sample]) -> None:  # noqa: B027 - optional hook
        """Train or fetch what generating ``samples`` needs (cached; a no-op for most methods)."""

    def load(self) -> None:  # noqa: B027 - optional hook
        """Load models (lazily, once). Called before the first ``generate``."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Answer a batch of requests, one result each, in order."""

    def describe(self) -> dict[str, Any]:
        """Model ids and weight fingerprints for the run manifest."""
        return {"method": self.name, "profile": self.profile.name}

    def training_data(self) -> Dataset | None:
        """The dataset whose train split trains this method: option ``data_dir``, else the run's dataset
        where the profile trains what is missing; None otherwise."""
        if "data_dir" in {o.name for o in self.options} and self.opt("data_dir"):
            return Dataset(self.opt("data_dir"))
        return self.ctx.dataset if self.profile.trains_missing else None


generators: Registry[type[Generator]] = Registry(
    "method", entry_point_group="pigeon_bench.generators",
    builtin_modules=("baselines.methods", "pigeon.generators"),
)


def display_label(cls: type[Generator]) -> str:
    return cls.label or cls.name


def method_dirname(name: str) -> str:
    """Folder name of a method's run: ``llava*`` -> ``llava-star``."""
    return name.replace("*", "-star")


def check_alpha_r(alpha_r: float | None) -> None:
    if alpha_r is not None and not 0.0 <= alpha_r <= 1.0:
        raise UserError(f"alpha_r must lie in [0, 1], got {alpha_r}")


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    return DTYPES[dtype]


def parse_device(device: str | torch.device) -> torch.device:
    """A torch device that exists here (``cuda`` without a GPU is a one-line error)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= n_cuda:
        raise UserError(f"device {device!r} is not available here ({n_cuda} CUDA devices)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} is not available here")
    return dev


def parse_options(cls: type[Generator], options: dict[str, Any] | None) -> dict[str, Any]:
    """Options given for method ``cls``, checked against its table and parsed (one-line errors)."""
    known = {o.name: o for o in cls.options}
    out = {}
    for key, value in (options or {}).items():
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise UserError(f"method {cls.name!r} has no option {key!r} (its options: {names})")
        out[key] = known[key].parse(value, cls.name)
    return out


def create_generator(name: str, profile: str | Profile | None = None, device: str | torch.device = "cpu",
                     dtype: str | torch.dtype | None = None, options: dict[str, Any] | None = None,
                     dataset: Dataset | str | Path | None = None) -> Generator:
    """Instantiate a registered method; unknown names, dtypes, devices and options are one-line UserErrors.

    ``profile`` None means the one the options imply (e.g. a checkpoint's), else the default; a given
    profile that contradicts the options is refused. ``dtype`` None means the method's default.
    """
    cls = generators.get(name)
    parsed = parse_options(cls, options)
    implied = cls.implied_profile(parsed)
    if profile is None:
        chosen = get_profile(implied)
    else:
        chosen = get_profile(profile)
        if implied is not None and implied != chosen.name:
            raise UserError(f"method {name!r}: the given options imply the {implied} profile (e.g. a "
                            f"{implied}-profile checkpoint), but --profile {chosen.name} was given")
    if isinstance(dataset, str | Path):
        dataset = Dataset(dataset)
    if dtype is None:
        dtype = cls.default_dtype.get(chosen) if cls.default_dtype else torch.float32
    ctx = MethodContext(profile=chosen, device=parse_device(device), dtype=parse_dtype(dtype), options=parsed,
                        dataset=dataset)
    return cls(ctx)


def request_seed(run_seed: int, sample_id: str) -> int:
    """Per-request seed from the run seed and the sample id: batching and resuming never change an image."""
    digest = hashlib.sha256(f"{run_seed}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def build_request(dataset: Dataset, sample: Sample, run_seed: int = 0,
                  alpha_r: float | None = None) -> GenerationRequest:
    """Load one sample's images and texts into a request."""
    check_alpha_r(alpha_r)
    history = [dataset.item(i) for i in sample.history]
    reference = dataset.item(sample.reference_id)
    return GenerationRequest(
        sample=sample,
        history_images=[fileio.load_rgb(dataset.image_path(i.item_id)) for i in history],
        history_texts=[i.semantics for i in history],
        reference_image=fileio.load_rgb(dataset.image_path(reference.item_id)),
        reference_text=reference.semantics,
        instruction=sample.instruction,
        seed=request_seed(run_seed, sample.sample_id),
        alpha_r=alpha_r,
    )


def option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``["checkpoint=/x", "steps=4"]`` -> ``{"checkpoint": "/x", "steps": 4}`` (JSON values parse)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects key=value, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out
