"""The report of `selfcorrect compare`: the paper's tables, figures, report.md and report.html.

    from selfcorrect.report import write_report
    md_path, html_path = write_report("runs/compare")

`collect` reads a comparison folder (finished or still running) into `Comparison`;
`write_report` draws the figures into <compare_dir>/figures/ and writes both reports.
"""

from .collect import Comparison, Method, Run, collect
from .render import write_report

__all__ = ["Comparison", "Method", "Run", "collect", "write_report"]
