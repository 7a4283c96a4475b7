"""Rich progress for long work, so it is never silent: a bar over the whole job (trials of a
study, fresh starts of a verification), a bar for the current piece's requests, a line per piece."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autotune.cost import COST_KEY, format_cost
from autotune.figures import trial_name
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome
from autotune.verify import Start, Verification


def _fmt_config(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


class _TwoBars:
    """The whole job's bar, and the current piece's (its status as description, its requests as progress)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=False,
        )
        self._whole: Any = None
        self._piece: Any = None
        self._label = ""

    def __enter__(self) -> Any:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _open(self, what: str, total: int, done: int) -> None:
        self._whole = self.progress.add_task(what, total=total, completed=min(done, total))

    def _begin(self, label: str) -> None:
        self._end()
        self._label = label
        self._piece = self.progress.add_task(f"{label}: starting engine", total=None)

    def _end(self) -> None:
        if self._piece is not None:
            self.progress.remove_task(self._piece)
            self._piece = None

    def _advance(self) -> None:
        if self._whole is not None:
            self.progress.advance(self._whole)

    def status(self, message: str) -> None:
        if self._piece is not None:
            self.progress.update(self._piece, description=f"{self._label}: {message}")

    def requests_progress(self, done: int, total: int) -> None:
        if self._piece is not None:
            self.progress.update(self._piece, total=total, completed=done)


class RichReporter(_TwoBars):
    """A study: one line per finished trial with its figures or its reason."""

    def study_opened(self, spec: StudySpec, done: int, total: int) -> None:
        if done:
            self.console.print(f"resuming study [bold]{spec.name}[/]: {done} of {total} trials already done")
        self._open("trials", total, done)

    def trial_started(self, number: int, config: dict[str, Any]) -> None:
        if number < 0:  # the engine's own defaults, measured first
            self.console.print("[bold]engine defaults[/] (no knob set): the reference every trial is read against")
            self._begin("  defaults")
            return
        self.console.print(f"[bold]trial {number}[/] {_fmt_config(config)}")
        self._begin(f"  trial {number}")

    def trial_status(self, message: str) -> None:
        self.status(message)

    def note(self, message: str) -> None:
        """A line said between trials: waiting for the devices, for other workers."""
        self.console.print(f"  {message}", highlight=False)

    def trial_finished(self, number: int, outcome: TrialOutcome, feasible: bool | None) -> None:
        self._end()
        if outcome.status == "infeasible":
            self.console.print(f"  [yellow]infeasible[/], not launched: {outcome.reason}")
        elif outcome.status != "ok":
            self.console.print(f"  [red]failed[/]: {outcome.reason}")
        else:
            f = outcome.figures
            verdict = "" if feasible is None else (" [green]SLO met[/]" if feasible else " [red]SLO missed[/]")
            if f.get("goodput_upper_bound") is not None:
                verdict = f", goodput < {f['goodput_upper_bound']:g}: below the best so far, not searched further"
            elif f.get("goodput") is not None:
                verdict = f", goodput {f['goodput']:g}" + verdict
            self.console.print(
                f"  {f.get('output_throughput', 0):,.0f} out tok/s"
                + (f" ({format_cost(f[COST_KEY])}/1K tok)" if f.get(COST_KEY) else "")
                + f", p99 TTFT {f.get('p99_ttft_ms', 0):,.0f} ms, "
                f"TPOT {f.get('mean_tpot_ms', 0):.1f} ms, engine up in {outcome.startup_s or 0:.0f}s{verdict}"
            )
        if number >= 0:  # the defaults are measured on top of the budget
            self._advance()


class RichVerifyReporter(_TwoBars):
    """A verification: one bar over every start of every configuration (with the time left)."""

    def opened(self, total_starts: int, already: int) -> None:
        if already:
            self.console.print(f"continuing: {already} of {total_starts} starts already measured")
        self._open("fresh starts", total_starts, already)

    def start_begun(self, trial: int, index: int, repeats: int) -> None:
        self._begin(f"  {trial_name(trial)} start {index + 1}/{repeats}")

    def start_finished(self, trial: int, index: int, start: Start) -> None:
        self._end()
        if start.status == "ok":
            f = start.figures
            self.console.print(
                f"{self._label.strip()}: {f.get('output_throughput', 0):,.0f} out tok/s, "
                f"p99 TTFT {f.get('p99_ttft_ms', 0):,.0f} ms, cost {format_cost(f.get(COST_KEY))}/1K, "
                f"up in {f.get('startup_s', 0):.0f}s"
            )
        else:
            self.console.print(f"{self._label.strip()}: [red]failed[/]: {start.reason}")
        self._advance()

    def verified(self, result: Verification) -> None:
        pass
