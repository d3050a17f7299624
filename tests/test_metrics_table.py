"""The metric table: complete entries, and the one source of the results schema and of the reports' and
compare's labels, digits and directions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pigeon_bench import schema, weights
from pigeon_bench.compare import parse_gate
from pigeon_bench.errors import UserError
from pigeon_bench.metrics import backbones as B
from pigeon_bench.metrics import table
from pigeon_bench.reports import Row, Table
from pigeon_bench.reports.render_md import render_markdown


def test_every_metric_has_a_function_a_direction_and_its_inputs():
    assert set(table.NAMES) == {"overall", "p_cs", "p_cis", "p_dis", "p_lpips", "p_msssim", "a_cs", "a_cis",
                                "a_dis", "fid"}
    for m in table.TABLE:
        assert callable(m.function), m.name
        assert isinstance(m.higher_is_better, bool) and m.digits in (2, 4), m.name
        assert m.short and m.label.endswith(m.short) and m.arrow in ("↑", "↓"), m.name
        if m.kind == table.DERIVED:
            assert m.inputs and m.formula and all(table.get(i).per_sample for i in m.inputs), m.name
            assert m.backbone is None and m.pairing is None
            continue
        assert m.pairing in (table.HISTORY, table.REFERENCE), m.name
        assert m.against in (table.IMAGE, table.TEXT), m.name
        if m.kind == table.PIXELS:
            assert m.backbone is None, m.name  # MS-SSIM needs no weights
        else:
            assert weights.get(m.backbone).role == weights.SCORING and m.backbone in B.backbones, m.name
    # the paper: p_ against the history, a_ against the reference; LPIPS and FID lower is better
    assert all(table.get(n).pairing == table.HISTORY for n in table.NAMES if n.startswith("p_"))
    assert all(table.get(n).pairing == table.REFERENCE for n in table.NAMES if n.startswith("a_"))
    assert {m.name for m in table.TABLE if not m.higher_is_better} == {"p_lpips", "fid"}
    assert table.get("overall").function(40.0, 30.0) == 35.0
    with pytest.raises(UserError, match="unknown metric 'psnr'"):
        table.get("psnr")


def test_backbones_and_schema_are_derived_from_the_tables():
    assert set(table.BACKBONES) == set(B.BACKBONE_IDS) == set(weights.ids(weights.SCORING))
    # scores.parquet's column order
    assert schema.PER_SAMPLE_METRICS == ("p_cs", "p_cis", "p_dis", "p_lpips", "p_msssim", "a_cs", "a_cis",
                                         "a_dis")
    assert schema.METRICS == table.NAMES and table.NAMES[0] == "overall" and table.NAMES[-1] == "fid"


def _block(columns: tuple[str, ...]) -> Table:
    rows = [Row(label=name, method=name, group="DM-based", scenario="sticker", source="ours",
                mean={"p_cis": value, "fid": value}) for name, value in (("a", 10.12345), ("b", 20.5))]
    return Table(title="Sticker", scenario="sticker", columns=columns, rows=rows)


def test_the_table_drives_report_labels_digits_arrows_and_marks_and_gate_signs(monkeypatch):
    md = render_markdown([_block(("p_cis", "fid"))], ci=False)
    assert "| Pers. CIS ↑ | FID ↓ |" in md
    assert "| a | - | <u>10.12</u> | **10.12** |" in md and "| b | - | **20.50** | <u>20.50</u> |" in md
    monkeypatch.setitem(table.METRICS, "p_cis", replace(table.get("p_cis"), short="XIS", digits=3,
                                                         higher_is_better=False))
    md = render_markdown([_block(("p_cis", "fid"))], ci=False)
    assert "| Pers. XIS ↓ | FID ↓ |" in md
    assert "| a | - | **10.123** | **10.12** |" in md and "| b | - | <u>20.500</u> | <u>20.50</u> |" in md
    assert parse_gate("p_cis:+1") == ("p_cis", 1.0)  # now lower is better: the tolerance is a rise
