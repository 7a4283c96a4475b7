"""What a study prints at its end and what ``review`` and ``report`` print: one place for both."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from autotune.cli._app import console, err_console
from autotune.tuning import StudyResults

if TYPE_CHECKING:
    from rich.table import Table


def print_results(results: StudyResults, study_dir: Path, price: Optional[float] = None) -> None:
    """Notes, failures, quality, then the front (transposed on a narrow terminal), the
    engine defaults' baseline, and each recommendation's config file and command."""
    from autotune.verify import stored
    from autotune.report import (
        baseline_line, failures_table, pareto_table, quality_table, verified_lines, workload_line, write_configs,
    )

    for note in results.unreported():
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(workload_line(results), highlight=False, soft_wrap=True)
    for extra in (failures_table(results), quality_table(results)):
        if extra is not None:
            console.print(extra)
    print_fitted(pareto_table(results, price))
    for line in (baseline_line(results), *verified_lines(stored(results), results.spec.objective_list),
                 results.engine_time_line()):
        if line:
            console.print(line, highlight=False, soft_wrap=True)
    for rec in write_configs(results, study_dir):
        console.print(f"trial {rec.trial.number}: {rec.config_path}", highlight=False, soft_wrap=True)
        console.print(f"  {rec.command}", highlight=False, soft_wrap=True)


def print_fitted(table: Table) -> None:
    """A table with a row per trial, turned to a column per trial where the terminal is too narrow
    for its columns: cut to ellipses, every figure would be lost."""
    from autotune.report import transposed

    if table.row_count and console.measure(table, options=console.options.update_width(10_000)).maximum > console.width:
        table = transposed(table)
        console.print(table.title, highlight=False)  # wrapped to the terminal, not to the narrow table
        table.title = None
    console.print(table)


def write_html_report(results: StudyResults, study_dir: Path, price: Optional[float], *, quiet: bool = False) -> None:
    """report.html and pareto.png, or one line saying why not (the report extra is optional)."""
    out = err_console if quiet else console
    try:
        from autotune.report import write_report

        html_path, png_path = write_report(results, study_dir, price_per_gpu_hour=price)
    except ImportError as exc:  # the study itself is complete without its report
        out.print(f"report: skipped ({exc.name or exc} is not installed: pip install 'autotune[report]')",
                  highlight=False, markup=False)
        return
    out.print(f"report: {html_path.resolve()}  front: {png_path.resolve()}", highlight=False, soft_wrap=True)
