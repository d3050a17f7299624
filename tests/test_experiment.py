"""The experiment config of `run` (TOML + command line + -o METHOD.KEY), the method context and options,
and a checkpoint's profile read from the checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_generation import NoiseGenerator, make_dataset, registered
from test_pigeon_train import backbone_dir, dataset, spec  # noqa: F401 - fixtures

from pigeon.train import train_sft
from pigeon_bench import paths
from pigeon_bench.cli import main
from pigeon_bench.errors import UserError
from pigeon_bench.generation import Option, create_generator
from pigeon_bench.runs import RunFolder, experiment, generate
from pigeon_bench.runs.generate import GenerateSpec


@pytest.fixture
def noise_method():
    with registered("noise", NoiseGenerator) as name:
        yield name


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_config_flags_and_option_pairs(tmp_path, noise_method):
    cfg = write(tmp_path / "exp.toml", f"""
scenario = "sticker"
data = "ds"
methods = ["grd", "{noise_method}"]
limit = 3
[options.{noise_method}]
size = 8
""")
    exp = experiment(cfg, [f"{noise_method}.size=12"], limit=None, seed=7)
    assert exp.data == tmp_path / "ds" and exp.limit == 3 and exp.seed == 7  # relative to the file; flags win
    assert exp.method_options(noise_method) == {"size": 12} and exp.method_options("grd") == {}
    exp = experiment(cfg, ["size=4"])  # a bare KEY=VALUE: every selected method that has it
    assert exp.options == {noise_method: {"size": 4}}
    with pytest.raises(UserError, match="none of the selected methods has an option 'colour'"):
        experiment(cfg, ["colour=red"])
    with pytest.raises(UserError, match="unknown method 'nope'"):
        experiment(cfg, ["nope.size=1"])
    with pytest.raises(UserError, match="unknown key 'metods'"):
        experiment(write(tmp_path / "bad.toml", 'scenario = "sticker"\nmetods = ["grd"]\n'))
    with pytest.raises(UserError, match="not valid TOML"):
        experiment(write(tmp_path / "broken.toml", "scenario = \n"))
    with pytest.raises(UserError, match="which this run does not select"):
        experiment(write(tmp_path / "other.toml", 'scenario = "sticker"\nmethods = ["grd"]\n'
                                                 "[options.hist]\nx = 1\n"))
    with pytest.raises(UserError, match="no scenario"):
        experiment(None, [])


def test_options_are_parsed_by_their_table_before_anything_runs(noise_method):
    opt = Option("fast", bool, "x")
    assert [opt.parse(v, "m") for v in ("true", "0", True, "Off")] == [True, False, True, False]
    with pytest.raises(UserError, match="option fast='maybe' is not a valid bool"):
        opt.parse("maybe", "m")
    with pytest.raises(UserError, match="is not a valid int"):
        Option("n", int, "x").parse(3.5, "m")
    with pytest.raises(UserError, match="is not a valid float"):
        Option("t", float, "x").parse("nan", "m")
    with pytest.raises(UserError, match="is not one of a, b"):
        Option("c", str, "x", choices=("a", "b")).parse("z", "m")
    with pytest.raises(UserError, match="temperature='hot' is not a valid float"):
        create_generator("pigeon", "tiny", options={"temperature": "hot"})
    with pytest.raises(UserError, match="device 'cuda:7' is not available"):
        create_generator(noise_method, device="cuda:7")


class FailingPrepare(NoiseGenerator):
    """A method whose preparation needs an option (like a checkpoint) before its first image."""

    options = (*NoiseGenerator.options, Option("ready", bool, "prepared?", False))

    def prepare(self, samples):
        if not self.opt("ready"):
            raise UserError("needs -o ready=true")


def test_a_failed_start_leaves_nothing_that_refuses_the_corrected_command(tmp_path):
    data = make_dataset(tmp_path / "data")
    with registered("failing", FailingPrepare) as name:
        out = tmp_path / "run"
        with pytest.raises(UserError, match="needs -o ready=true"):
            generate(GenerateSpec(data=data, method=name, profile="tiny"), out)
        m = generate(GenerateSpec(data=data, method=name, profile="tiny", options={"ready": True}), out)
        assert m["counts"]["generated"] == 2 and RunFolder(out).manifest()["options"] == {"ready": True}


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["pigeon-bench", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_uses_the_configured_checkpoint_and_its_profile(dataset, backbone_dir, tmp_path,  # noqa: F811
                                                            monkeypatch, capsys):
    ckpt = tmp_path / "sft"
    train_sft(spec(dataset, backbone_dir, ckpt))
    cfg = write(tmp_path / "exp.toml", f"""
scenario = "sticker"
data = "{dataset}"
methods = ["pigeon"]
valid = false
out = "runs"
[options.pigeon]
checkpoint = "{ckpt}"
backbone_path = "{backbone_dir}"
""")
    code, out, err = cli(monkeypatch, capsys, "run", "--config", str(cfg))
    assert code == 0, err
    manifest = RunFolder(tmp_path / "runs" / "sticker" / "pigeon" / "alpha_r=0.5").manifest()
    assert manifest["profile"] == "tiny"  # the checkpoint's backbone is the tiny one
    assert manifest["models"]["checkpoint"] == str(ckpt) and "auto_trained" not in manifest["models"]
    assert manifest["experiment"]["options"]["pigeon"]["checkpoint"] == str(ckpt)
    assert not (paths.cache_dir() / "pigeon" / "checkpoints").exists()  # no other checkpoint was trained
    assert "Pigeon" in out and "tiny profile" in out
    # The same from -o, which overrides the file; a contradicting --profile is one line, exit 2.
    code, _, err = cli(monkeypatch, capsys, "run", "--config", str(cfg), "--profile", "paper")
    assert code == 2 and err.count("\n") == 1 and "imply the tiny profile" in err
    code, _, err = cli(monkeypatch, capsys, "run", "--config", str(cfg), "-o",
                       f"pigeon.checkpoint={tmp_path}")
    assert code == 2 and "not a Pigeon checkpoint" in err


def test_generate_reads_the_profile_from_the_checkpoint(dataset, backbone_dir, tmp_path):  # noqa: F811
    ckpt = tmp_path / "sft"
    train_sft(spec(dataset, backbone_dir, ckpt))
    opts = {"checkpoint": str(ckpt), "backbone_path": str(backbone_dir)}
    m = generate(GenerateSpec(data=dataset, method="pigeon", alpha_r=0.5, options=opts), tmp_path / "g")
    assert m["profile"] == "tiny" and m["settings"]["checkpoint"] == str(ckpt)
    with pytest.raises(UserError, match="imply the tiny profile"):
        generate(GenerateSpec(data=dataset, method="pigeon", profile="paper", options=opts), tmp_path / "h")
    assert not (tmp_path / "h").exists()
