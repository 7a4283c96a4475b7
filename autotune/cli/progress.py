"""Rich progress for long work: a study (a bar for trials, one for the current trial's requests,
a line per finished trial) and a verification (a bar over every fresh start), so neither is ever silent."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.cost import format_cost
from autotune.cost import COST_KEY
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome
from autotune.verify import Start, Verification


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


class RichVerifyReporter:
    """One bar over every start of every configuration (with the time left), one for the requests."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console,
        )
        self._all: Any = None
        self._now: Any = None
        self._label = ""

    def __enter__(self) -> "RichVerifyReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def opened(self, total_starts: int, already: int) -> None:
        if already:
            self.console.print(f"continuing: {already} of {total_starts} starts already measured")
        self._all = self.progress.add_task("fresh starts", total=total_starts, completed=already)

    def start_begun(self, trial: int, index: int, repeats: int) -> None:
        self._label = f"  trial {trial} start {index + 1}/{repeats}"
        self._now = self.progress.add_task(f"{self._label}: starting engine", total=None)

    def status(self, message: str) -> None:
        if self._now is not None:
            self.progress.update(self._now, description=f"{self._label}: {message}")

    def requests_progress(self, done: int, total: int) -> None:
        if self._now is not None:
            self.progress.update(self._now, total=total, completed=done)

    def start_finished(self, trial: int, index: int, start: Start) -> None:
        if self._now is not None:
            self.progress.remove_task(self._now)
            self._now = None
        if start.status == "ok":
            f = start.figures
            self.console.print(
                f"{self._label.strip()}: {f.get('output_throughput', 0):,.0f} out tok/s, "
                f"p99 TTFT {f.get('p99_ttft_ms', 0):,.0f} ms, cost {format_cost(f.get(COST_KEY))}/1K, "
                f"up in {f.get('startup_s', 0):.0f}s"
            )
        else:
            self.console.print(f"{self._label.strip()}: [red]failed[/]: {start.reason}")
        if self._all is not None:
            self.progress.advance(self._all)

    def verified(self, result: Verification) -> None:
        pass


