"""LaTeX booktabs tables through pandas' Styler (needs \\usepackage{booktabs,multirow,makecell}); with CIs,
each CI sits on a second line of its cell in a smaller font, so Table 1 keeps one page's width."""

from __future__ import annotations

import pandas as pd

from pigeon_bench.metrics import table
from pigeon_bench.reports.ranking import Table, ci_text, printed

_LATEX_SPECIALS = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
})


def latex_escape(text: str) -> str:
    return text.translate(_LATEX_SPECIALS)


def render_latex(tables: list[Table], ci: bool) -> str:
    out = ["% pigeon-bench report: needs \\usepackage{booktabs}, \\usepackage{multirow} and "
           "\\usepackage{makecell} in the preamble"]
    for t in tables:
        marked = t.marks()
        metrics = [table.get(m) for m in t.columns]
        columns = pd.MultiIndex.from_tuples([("", "n")] + [(m.family.name if m.family else "",
                                                            f"{m.short} {m.latex_arrow}") for m in metrics])
        index_tuples = [(latex_escape(r.group), latex_escape(r.label)) if t.show_group
                        else (latex_escape(r.label),) for r in t.rows]
        index = pd.MultiIndex.from_tuples(index_tuples)
        body = []
        for i, r in enumerate(t.rows):
            line = [str(r.n) if r.n is not None else "-"]
            for m in t.columns:
                text = printed(r, m)
                kind = marked.get((i, m))
                if kind:
                    text = rf"\{'textbf' if kind == 'best' else 'underline'}{{{text}}}"
                extra = ci_text(r, m) if ci else ""
                line.append(rf"\makecell[r]{{{text}\\ {{\tiny {extra}}}}}" if extra else text)
            body.append(line)
        df = pd.DataFrame(body, index=index, columns=columns)
        caption = t.title + "".join(f" ({n})" for n in t.notices) + (
            ". Best in bold, second best underlined (Reference rows excluded)" if t.marked else "")
        out.append(df.style.to_latex(hrules=True, multicol_align="c", multirow_align="t",
                                     column_format="l" * index.nlevels + "r" * (len(t.columns) + 1),
                                     caption=latex_escape(caption), position="t"))
    return "\n".join(out)
