"""Reports: Table 1 (and Table 3-style ablations) in Markdown, LaTeX, CSV and self-contained HTML, and
Fig. 4-style sweep plots.

Rows come from scored run folders (rows) and, with ``paper=True``, from the paper's own numbers shipped in
the package (paper), placed beside ours method by method; values are printed and marked by the metric
table's digits and directions (ranking); one renderer per format (render_md, render_latex, render_csv,
render_html with its gallery); tables assembles them (tables); sweeps plots metrics against a swept
parameter.
"""

from pigeon_bench.reports.paper import paper_rows, paper_table
from pigeon_bench.reports.ranking import Table, format_value, marks
from pigeon_bench.reports.rows import Row, load_run
from pigeon_bench.reports.sweeps import plot_sweeps
from pigeon_bench.reports.tables import (
    FORMATS,
    TABLE1_COLUMNS,
    TABLE3_COLUMNS,
    build_ablation,
    build_report,
    parse_named_run,
)

__all__ = ["FORMATS", "TABLE1_COLUMNS", "TABLE3_COLUMNS", "Row", "Table", "build_ablation", "build_report",
           "format_value", "load_run", "marks", "paper_rows", "paper_table", "parse_named_run", "plot_sweeps"]
