"""What a study prints at its end and what ``review`` and ``report`` print: one place for both."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from autotune.cli._app import console, err_console
from autotune.tuning import StudyResults


def print_results(results: StudyResults, study_dir: Path, price: Optional[float] = None) -> None:
    """Notes, failures, quality, then the front (transposed on a narrow terminal) and each recommendation's command."""
    from autotune.report import failures_table, pareto_table, quality_table, transposed, write_configs

    for note in results.unreported():
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for extra in (failures_table(results), quality_table(results)):
        if extra is not None:
            console.print(extra)
    table = pareto_table(results, price)
    if table.row_count and console.measure(table, options=console.options.update_width(10_000)).maximum > console.width:
        table = transposed(table)  # a column per knob and figure would be cut to ellipses
    console.print(table)
    for rec in write_configs(results, study_dir):
        console.print(f"trial {rec.trial.number}: {rec.config_path}")
        console.print(f"  {rec.command}", highlight=False, soft_wrap=True)


def write_html_report(results: StudyResults, study_dir: Path, price: Optional[float]) -> None:
    try:
        from autotune.report import write_report
    except ImportError as exc:  # the report extra is optional; the study itself is complete
        console.print(f"report: skipped ({exc.name or exc} is not installed: pip install 'autotune[report]')",
                      highlight=False, markup=False)
        return
    try:
        html_path, png_path = write_report(results, study_dir, price_per_gpu_hour=price)
    except ImportError as exc:
        console.print(f"report: skipped ({exc.name or exc} is not installed: pip install 'autotune[report]')",
                      highlight=False, markup=False)
        return
    console.print(f"report: {html_path}  front: {png_path}", highlight=False, soft_wrap=True)
