"""`pigeon-bench reproduce`: every experiment of the paper runs and lands in one report folder, resumably."""

from __future__ import annotations

import pytest
from PIL import Image
from test_pigeon_train import backbone_dir, dataset, spec  # noqa: F401 - fixtures

from pigeon.reproduce import reproduce
from pigeon_bench.runs import Experiment


def stage2_checkpoint(dataset, backbone_dir, tmp_path):  # noqa: F811
    """A 2-step DPO checkpoint (as tests/test_pigeon_train.py: with encoding off, α_r changes the prompt of a
    barely trained model enough for its candidates to differ; reward: brightness)."""
    import torch

    from pigeon.model import PigeonConfig
    from pigeon.train import DPOSpec, train_dpo, train_sft

    def brightness(images, histories):
        return torch.tensor([float(sum(im.convert("L").tobytes())) for im in images])

    raw = PigeonConfig(adapter_hidden=16, encoding=False)
    train_sft(spec(dataset, backbone_dir, tmp_path / "sft", config=raw))
    d = DPOSpec(**spec(dataset, backbone_dir, tmp_path / "dpo", steps=2).__dict__, init=tmp_path / "sft",
                prompts=3, alpha_grid=(0.0, 0.5, 1.0), beta=0.5, temperature=0.3)
    train_dpo(d, reward=brightness)
    return tmp_path / "dpo"


@pytest.mark.slow
def test_reproduce_writes_every_table_and_figure_and_resumes(dataset, backbone_dir, tmp_path):  # noqa: F811
    exp = Experiment("sticker", data=dataset, profile="tiny", methods=["grd", "hist", "pigeon"], valid=False,
                     options={"pigeon": {"backbone_path": str(backbone_dir), "sft_steps": 2}}, out=tmp_path)
    lines: list[str] = []
    stage2 = stage2_checkpoint(dataset, backbone_dir, tmp_path)
    result = reproduce(exp, stage2=stage2, log=lines.append)
    names = sorted(f.name for f in result.files)
    assert names == sorted(["table1.md", "table1-paper.md", "table3.md", "fig4a.png", "fig4b.png",
                            "fig4c.png", "fig4d.png", "fig4e.png", "fig4.md", "README.md"])
    for f in result.files:
        if f.suffix == ".png":
            with Image.open(f) as im:
                assert im.format == "PNG"
    table3 = (result.folder / "table3.md").read_text()
    for variant in ("w/o visual feature", "w/o textual tokens", "w/o encoding", "Pigeon (paper)"):
        assert variant in table3
    fig4 = (result.folder / "fig4.md").read_text()
    for title in ("Fig. 4 (a)", "Fig. 4 (c)", "Fig. 4 (d)", "Fig. 4 (e)", "low-score", "stage 2"):
        assert title in fig4
    assert "tiny profile: not comparable with the paper" in (result.folder / "README.md").read_text()
    before = {f: f.read_bytes() for f in result.files if f.suffix == ".md"}
    lines.clear()
    again = reproduce(exp, stage2=stage2, log=lines.append)
    assert all(" 0 images generated" in line for line in lines), lines  # everything resumed from disk
    assert {f: f.read_bytes() for f in again.files if f.suffix == ".md"} == before
