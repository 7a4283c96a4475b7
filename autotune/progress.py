"""Rich progress for a running study: one bar for trials, one for the current
trial's requests, and a line per finished trial, so a long study is never silent."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.cost import format_cost
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome


def _fmt_config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


class RichReporter:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._trials: Any = None
        self._requests: Any = None
        self._current = -1

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def study_opened(self, spec: StudySpec, done: int, total: int) -> None:
        if done:
            self.console.print(f"resuming study [bold]{spec.name}[/]: {done} of {total} trials already done")
        self._trials = self.progress.add_task("trials", total=total, completed=min(done, total))

    def trial_started(self, number: int, config: dict[str, Any]) -> None:
        self._current = number
        self.console.print(f"[bold]trial {number}[/] {_fmt_config(config)}")
        if self._requests is not None:
            self.progress.remove_task(self._requests)
        self._requests = self.progress.add_task(f"  trial {number}: starting engine", total=None)

    def trial_status(self, message: str) -> None:
        if self._requests is not None:
            self.progress.update(self._requests, description=f"  trial {self._current}: {message}")

    def requests_progress(self, done: int, total: int) -> None:
        if self._requests is not None:
            self.progress.update(self._requests, total=total, completed=done)

    def trial_finished(self, number: int, outcome: TrialOutcome, feasible: bool | None) -> None:
        if self._requests is not None:
            self.progress.remove_task(self._requests)
            self._requests = None
        if outcome.status == "infeasible":
            self.console.print(f"  [yellow]infeasible[/], not launched: {outcome.reason}")
            return
        if outcome.status != "ok":
            self.console.print(f"  [red]failed[/]: {outcome.reason}")
        else:
            f = outcome.figures
            verdict = "" if feasible is None else (" [green]SLO met[/]" if feasible else " [red]SLO missed[/]")
            self.console.print(
                f"  {f.get('output_throughput', 0):,.0f} out tok/s"
                + (f" ({format_cost(f['cost_per_1k_tokens'])}/1K tok)" if f.get("cost_per_1k_tokens") else "")  # cost
                + f", p99 TTFT {f.get('p99_ttft_ms', 0):,.0f} ms, "
                f"TPOT {f.get('mean_tpot_ms', 0):.1f} ms, engine up in {outcome.startup_s or 0:.0f}s{verdict}"
            )
        if self._trials is not None:
            self.progress.advance(self._trials)
