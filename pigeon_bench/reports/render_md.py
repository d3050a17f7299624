"""Markdown tables (GitHub-flavoured): marks as **bold** / <u>underline</u>, CIs beside the values."""

from __future__ import annotations

from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import Table, ci_text, printed, sweep_rows
from pigeon_bench.reports.rows import OURS, PAPER


def render_markdown(tables: list[Table], ci: bool) -> str:
    out: list[str] = []
    for t in tables:
        out.append(f"### {t.heading}")
        out.append("")
        out.extend(f"> **{n}**" for n in t.notices)
        if t.notices:
            out.append("")
        marked = t.marks()
        head = ["Group", "Method"] if t.show_group else ["Variant"]
        head += ["n"] + [f"{table.get(m).label} {table.get(m).arrow}" for m in t.columns]
        out.append("| " + " | ".join(head) + " |")
        n_text = len(head) - len(t.columns) - 1
        out.append("|" + "|".join(["---"] * n_text + ["--:"] * (len(t.columns) + 1)) + "|")
        previous_group = None
        for i, r in enumerate(t.rows):
            cells = []
            if t.show_group:
                cells.append(r.group if r.group != previous_group else "")
                previous_group = r.group
            cells.append(r.label.replace("|", "\\|"))
            cells.append(str(r.n) if r.n is not None else "-")
            for m in t.columns:
                text = printed(r, m)
                kind = marked.get((i, m))
                text = f"**{text}**" if kind == "best" else f"<u>{text}</u>" if kind == "second" else text
                extra = ci_text(r, m) if ci else ""
                cells.append(f"{text} {extra}" if extra else text)
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        legend = []
        if t.marked:
            unranked = "Reference and Sanity rows" + (" and fixed-α_r rows beside a selection"
                                                       if sweep_rows(t.rows) else "")
            legend.append(f"**bold**: best, <u>underlined</u>: second best ({unranked} excluded; ours and "
                          "the paper's ranked apart)")
        if ci and any(r.source == OURS for r in t.rows):
            legend.append("[lo, hi]: seeded bootstrap 95% CI")
            bare = [table.get(m).short for m in t.columns if table.get(m).kind == table.SET
                    and any(r.source == OURS and printed(r, m) != "-" and not ci_text(r, m) for r in t.rows)]
            if bare:
                legend.append(f"{', '.join(bare)} without [lo, hi]: summarized without its interval (a "
                              "sweep's α_r candidates; `--candidate-intervals` computes them)")
        if any(r.source == PAPER for r in t.rows):
            derived = [table.get(m) for m in t.columns if table.get(m).inputs]
            legend.append("paper rows: transcribed from the paper" + "".join(
                f", {m.short} recomputed as {m.formula}" for m in derived))
        if legend:
            out.append("; ".join(legend) + ".")
            out.append("")
    return "\n".join(out).rstrip() + "\n"
