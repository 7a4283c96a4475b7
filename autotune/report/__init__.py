"""What a study hands back: console tables, report.html, pareto.png and ready-to-run configs.

Everything here draws from ``autotune.tuning.StudyResults``, where the front,
the best trial and the importances are computed once.
"""

from autotune.report.configs import Recommendation, launch_options, serve_command, write_configs
from autotune.report.console import (
    SHOWN,
    failures_table,
    fmt_value,
    importance_table,
    pareto_table,
    quality_table,
    rounds_table,
    startup_table,
    transposed,
    trial_cost,
)
from autotune.report.context import baseline_line, environment_text, workload_line, workload_text
from autotune.report.html import HTML_NAME, PLOTLY_NAME, PNG_NAME, pareto_figure, write_report
from autotune.report.png import write_pareto_png
from autotune.report.verification import figure_rows, verdict_lines, verified_lines, verify_table, versus_line

__all__ = [
    "HTML_NAME",
    "PLOTLY_NAME",
    "PNG_NAME",
    "SHOWN",
    "Recommendation",
    "baseline_line",
    "environment_text",
    "failures_table",
    "figure_rows",
    "fmt_value",
    "importance_table",
    "launch_options",
    "pareto_figure",
    "pareto_table",
    "quality_table",
    "rounds_table",
    "serve_command",
    "startup_table",
    "transposed",
    "trial_cost",
    "verdict_lines",
    "verified_lines",
    "verify_table",
    "versus_line",
    "workload_line",
    "workload_text",
    "write_configs",
    "write_pareto_png",
    "write_report",
]
