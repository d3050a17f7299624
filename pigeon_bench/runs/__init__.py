"""Runs: the run folder contract (folder), generation with resume (generate), α_r selection (selection), the
experiment config (config) and ``pigeon-bench run`` end to end (pipeline)."""

from pigeon_bench.runs.config import Experiment, experiment
from pigeon_bench.runs.folder import RunFolder, Sweep, open_run, report_runs, scoreable
from pigeon_bench.runs.generate import GenerateSpec, MethodSession, generate
from pigeon_bench.runs.pipeline import run
from pigeon_bench.runs.selection import select

__all__ = ["Experiment", "GenerateSpec", "MethodSession", "RunFolder", "Sweep", "experiment", "generate",
           "open_run", "report_runs", "run", "scoreable", "select"]
