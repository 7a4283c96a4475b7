"""Verify: re-run the recommended configurations with fresh server starts.

A study measures each configuration once, and the best of many single
measurements is biased upward (the winner's curse). So each recommendation is
started again from nothing, ``repeats`` times (the methodology asks for at
least 10), and judged on what a user can rely on:

* an aggregate SLO (``p99(ttft)<2s``) holds only if the 95% Student-t bound of
  the figure's mean across starts is on the right side of the limit (the upper
  bound for ``<``, the lower bound for ``>``);
* an attainment SLO (``ttft<500ms@95%``) pools every request of every start and
  holds only if the Wilson 95% lower bound of the fraction reaches the target;
* every start must come up and measure: a configuration that fails to start one
  time in ten is not one to deploy.

Results are stored in the study's own storage, as the study user attribute
``verify:<trial number>``, after every start, so an interrupted verification
keeps what it measured and the next run continues it. The raw files of each
start (engine log, requests, outcome) are in ``verify/trial-<n>/<start>/``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autotune.cost import COST_KEY, cost_per_1k_tokens, format_cost, gpus_used
from autotune.environment import missing, record
from autotune.errors import UserError
from autotune.load.goodput import wilson_interval
from autotune.measure import KEY_FIGURES, Summary, summarise
from autotune.report import pareto_front
from autotune.slo import Constraint
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome, TrialSetup, run_trial

ATTR_PREFIX = "verify:"
DEFAULT_REPEATS = 10
METHODOLOGY_REPEATS = 10
SHOWN_FIGURES = [
    "goodput", "output_throughput", "request_throughput", COST_KEY, "p50_ttft_ms", "p99_ttft_ms",
    "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "startup_s",
]
# Environment fields that must agree before stored starts are pooled with new ones.
_SAME_PLACE = ("host", "engine", "engine_version", "device", "gpu", "gpu_count")


@dataclass
class Start:
    """One fresh start of the engine and one measurement on it."""

    status: str  # "ok" or "failed" (a failed start, a crash, every request failed)
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    attainment: dict[str, list[int]] = field(default_factory=dict)  # SLO text -> [met, requests]
    folder: str | None = None
    finished_at: str | None = None


@dataclass
class Check:
    """One SLO judged with confidence."""

    slo: str
    basis: str  # what was compared with the limit, in words
    value: float | None  # the bound compared (ms for latencies, a fraction for attainment)
    limit: float
    unit: str
    holds: bool
    reason: str | None = None


@dataclass
class Verification:
    trial: int
    config: dict[str, Any]
    command: str | None
    repeats_wanted: int
    starts: list[Start] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    slo: str = ""
    price_per_gpu_hour: float | None = None
    gpus: int = 1  # GPUs the configuration occupies, for its cost
    checks: list[Check] = field(default_factory=list)
    verified: bool = False
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    updated_at: str | None = None
    # Perplexity and pass-key figures of the configuration's quality setting, as the
    # study measured them once (they depend on the setting, not on the start).
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_starts(self) -> list[Start]:
        return [s for s in self.starts if s.status == "ok"]

    def summary(self) -> dict[str, Summary]:
        """Mean, std and 95% interval of each figure over the starts that measured.

        Cost comes from each start's throughput and the price given now, so a price
        added after the starts were measured still yields a cost with its interval.
        """
        ok = self.ok_starts
        figures = [dict(s.figures) for s in ok]
        for f in figures:
            cost = cost_per_1k_tokens(f.get("output_throughput"), self.gpus, self.price_per_gpu_hour)
            f.pop(COST_KEY, None)
            if cost is not None:
                f[COST_KEY] = cost
        keys = [k for k in [*SHOWN_FIGURES, *KEY_FIGURES] if any(k in f for f in figures)]
        keys = list(dict.fromkeys(keys))
        return {k: summarise([f[k] for f in figures if f.get(k) is not None]) for k in keys}

    def attainment(self) -> dict[str, tuple[int, int, float, float]]:
        """Per attainment SLO: requests met, requests, and the Wilson 95% interval, pooled."""
        out: dict[str, tuple[int, int, float, float]] = {}
        for text in dict.fromkeys(t for s in self.ok_starts for t in s.attainment):
            met = sum(s.attainment[text][0] for s in self.ok_starts if text in s.attainment)
            n = sum(s.attainment[text][1] for s in self.ok_starts if text in s.attainment)
            lo, hi = wilson_interval(met, n)
            out[text] = (met, n, lo, hi)
        return out

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = {
            k: {"mean": _num(s.mean), "std": _num(s.std), "ci95": [_num(s.ci95[0]), _num(s.ci95[1])], "n": s.n}
            for k, s in self.summary().items()
        }
        out["attainment"] = {k: {"met": m, "n": n, "wilson95": [lo, hi]} for k, (m, n, lo, hi) in self.attainment().items()}
        return _jsonable(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Verification":
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        fields["starts"] = [Start(**s) for s in data.get("starts", [])]
        fields["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**fields)


class VerifyReporter(Protocol):
    def opened(self, total_starts: int, already: int) -> None: ...
    def start_begun(self, trial: int, index: int, repeats: int) -> None: ...
    def status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def start_finished(self, trial: int, index: int, start: Start) -> None: ...
    def verified(self, result: Verification) -> None: ...


class _Silent:
    def opened(self, total_starts: int, already: int) -> None: ...
    def start_begun(self, trial: int, index: int, repeats: int) -> None: ...
    def status(self, message: str) -> None: ...
    def requests_progress(self, done: int, total: int) -> None: ...
    def start_finished(self, trial: int, index: int, start: Start) -> None: ...
    def verified(self, result: Verification) -> None: ...


# --------------------------------------------------------------------------- choosing what to verify


def candidates(
    study: optuna.Study, *, top: int | None = None, trials: list[int] | None = None
) -> tuple[list[FrozenTrial], list[str]]:
    """The recommendations to verify, and notes on the trials left out.

    By default the feasible Pareto front; ``top`` takes the best K measured trials
    by the first objective instead (feasible ones first); ``trials`` names them.
    A trial without its environment record is never recommended.
    """
    all_trials = study.get_trials(deepcopy=False)
    if trials:
        by_number = {t.number: t for t in all_trials}
        chosen = []
        for n in trials:
            t = by_number.get(n)
            if t is None or t.state != TrialState.COMPLETE:
                raise UserError(f"trial {n} is not a measured trial of this study")
            chosen.append(t)
    elif top is not None:
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        done = [t for t in all_trials if t.state == TrialState.COMPLETE and t.values]
        done.sort(key=lambda t: (not t.user_attrs.get("feasible", True), -t.values[0] if maximize else t.values[0]))
        chosen = done[:top]
    else:
        chosen = pareto_front(study)
    notes = []
    kept = []
    for t in chosen:
        lacking = missing(t.user_attrs.get("environment"))
        if lacking:
            notes.append(f"trial {t.number} left out: its result has no environment record ({', '.join(lacking)})")
        else:
            kept.append(t)
    return kept, notes


# --------------------------------------------------------------------------- storage


def stored(study: optuna.Study) -> dict[int, Verification]:
    """Verifications kept in the study's storage, by trial number."""
    out = {}
    for key, value in study.user_attrs.items():
        if key.startswith(ATTR_PREFIX) and isinstance(value, dict):
            try:
                out[int(key[len(ATTR_PREFIX):])] = Verification.from_json(value)
            except (TypeError, ValueError):
                continue
    return dict(sorted(out.items()))


def save(study: optuna.Study, result: Verification) -> None:
    result.updated_at = _now()
    study.set_user_attr(f"{ATTR_PREFIX}{result.trial}", result.to_json())


# --------------------------------------------------------------------------- running


def verify_study(
    study: optuna.Study,
    spec: StudySpec,
    setup: TrialSetup,
    study_dir: Path,
    chosen: list[FrozenTrial],
    *,
    repeats: int = DEFAULT_REPEATS,
    price_per_gpu_hour: float | None = None,
    fresh: bool = False,
    reporter: VerifyReporter | None = None,
) -> list[Verification]:
    """Runs the missing starts of each chosen trial, judges it, stores it after every start."""
    reporter = reporter or _Silent()
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    price = price_per_gpu_hour if price_per_gpu_hour is not None else spec.hardware.price_per_gpu_hour
    kept = stored(study)
    results: list[Verification] = []
    for t in chosen:
        config = dict(t.user_attrs.get("config", {}))
        previous = kept.get(t.number)
        result = Verification(
            trial=t.number, config=config, command=t.user_attrs.get("command"), repeats_wanted=repeats,
            environment=env, slo=spec.slo, price_per_gpu_hour=price,
            gpus=gpus_used(config, spec.hardware.gpu_count, setup.device),
            quality=dict((t.user_attrs.get("quality") or {}).get("figures") or {}),
        )
        if previous is not None and not fresh:
            if previous.config == config and _same_place(previous.environment, env):
                result.starts = previous.starts
            else:
                result.notes.append("earlier starts were measured elsewhere or on another config: started over")
        results.append(result)
    total = sum(r.repeats_wanted for r in results)
    reporter.opened(total, sum(min(len(r.starts), r.repeats_wanted) for r in results))
    for result in results:
        trial_root = study_dir / "verify" / f"trial-{result.trial}"
        while len(result.starts) < result.repeats_wanted:
            index = len(result.starts)
            reporter.start_begun(result.trial, index, result.repeats_wanted)
            outcome = run_trial(
                setup, result.config, trial_root / f"{index:02d}", status=reporter.status,
                progress=reporter.requests_progress,
            )
            start = _start_from(outcome, setup, spec, result, trial_root / f"{index:02d}")
            result.starts.append(start)
            judge(result, spec.constraints)
            save(study, result)
            reporter.start_finished(result.trial, index, start)
        judge(result, spec.constraints)
        save(study, result)
        reporter.verified(result)
    return results


def _start_from(
    outcome: TrialOutcome, setup: TrialSetup, spec: StudySpec, result: Verification, folder: Path
) -> Start:
    if outcome.status != "ok":
        return Start("failed", outcome.reason or "failed", folder=str(folder), finished_at=_now())
    figures = {k: float(v) for k, v in outcome.figures.items() if _finite_number(v)}
    if outcome.startup_s is not None:
        figures["startup_s"] = outcome.startup_s
    cost = cost_per_1k_tokens(figures.get("output_throughput"), result.gpus, result.price_per_gpu_hour)
    if cost is not None:
        figures[COST_KEY] = cost  # for the progress line; the summary recomputes it at the price given then
    attainment = {}
    for c in spec.constraints:
        if c.attainment is not None:
            n = len(outcome.per_request)
            met = round(c.achieved_fraction(outcome.per_request) * n) if n else 0
            attainment[c.text] = [met, n]
    return Start("ok", figures=figures, attainment=attainment, folder=str(folder), finished_at=_now())


# --------------------------------------------------------------------------- judging


def judge(result: Verification, constraints: list[Constraint]) -> None:
    """Sets ``checks``, ``verified`` and ``reasons``: verified only when every SLO holds at 95%."""
    ok = result.ok_starts
    failed = [s for s in result.starts if s.status != "ok"]
    reasons: list[str] = []
    notes = [n for n in result.notes if not n.startswith("only ")]
    if len(result.starts) < result.repeats_wanted:
        reasons.append(f"only {len(result.starts)} of {result.repeats_wanted} starts measured so far")
    if failed:
        reasons.append(f"{len(failed)} of {len(result.starts)} fresh starts failed (first: {failed[0].reason})")
    if not ok:
        reasons.append("no start produced a measurement")
    if result.repeats_wanted < METHODOLOGY_REPEATS:
        notes.append(f"only {result.repeats_wanted} repeats: the methodology asks for at least {METHODOLOGY_REPEATS}")
    summary = result.summary()
    pooled = result.attainment()
    checks = [_check(c, summary, pooled, result.quality) for c in constraints] if ok else []
    reasons += [c.reason for c in checks if not c.holds and c.reason]
    result.checks = checks
    result.reasons = reasons
    result.notes = notes
    result.verified = not reasons


def _check(
    c: Constraint,
    summary: dict[str, Summary],
    pooled: dict[str, tuple[int, int, float, float]],
    quality: Mapping[str, Any] | None = None,
) -> Check:
    if c.kind in ("quality", "passkey"):
        return _quality_check(c, quality or {})
    if c.attainment is not None:
        met, n, lo, _hi = pooled.get(c.text, (0, 0, 0.0, 1.0))
        holds = n > 0 and lo >= c.attainment - 1e-12
        reason = None
        if not holds:
            reason = (
                f"{c.text}: {met} of {n} requests met it ({_pct(met / n) if n else '-'}), 95% lower bound "
                f"{_pct(lo)} is under the {_pct(c.attainment)} target by {_pct(c.attainment - lo)}"
            )
            if n and met == n:
                reason += f" (every request met it; {n} requests are too few to show {_pct(c.attainment)})"
        return Check(c.text, f"Wilson 95% lower bound of attainment over {n} requests", lo, c.attainment, "",
                     holds, reason)
    key = c.figure_key()
    s = summary.get(key) or summary.get(_alternative(key) or "")
    scale, unit = (1000.0, "ms") if c.kind == "latency" else (1.0, "")
    limit = c.threshold * scale
    upper = c.op in ("<", "<=")
    label = _label(key)
    if s is None or s.n == 0:
        return Check(c.text, f"{label}: not measured", None, limit, unit, False, f"{c.text}: {label} was not measured")
    bound = s.ci95[1] if upper else s.ci95[0]
    basis = f"{'upper' if upper else 'lower'} 95% bound of mean {label} over {s.n} starts"
    if s.n < 2 or not math.isfinite(bound):
        return Check(c.text, basis, None, limit, unit, False,
                     f"{c.text}: one start gives no confidence interval (mean {_fmt(s.mean, unit)})")
    if upper:
        holds = bound < limit if c.op == "<" else bound <= limit
    else:
        holds = bound > limit if c.op == ">" else bound >= limit
    reason = None
    if not holds:
        gap = abs(bound - limit)
        rel = f" ({gap / abs(limit):.0%})" if limit else ""
        reason = (
            f"{c.text}: {basis} is {_fmt(bound, unit)}, {'over' if upper else 'under'} the limit "
            f"{_fmt(limit, unit)} by {_fmt(gap, unit)}{rel} (mean {_fmt(s.mean, unit)} ± {_fmt(s.std, unit)})"
        )
    return Check(c.text, basis, bound, limit, unit, holds, reason)


def _quality_check(c: Constraint, quality: Mapping[str, Any]) -> Check:
    """A quality bound is judged on the study's one measurement of the setting.

    Perplexity and greedy pass-key answers are the same on every start of the same
    engine, model and setting (the same token ids in, the same logprobs out), so
    fresh starts add nothing to them; a speed figure is what varies between starts.
    """
    key = c.figure_key()
    value = quality.get(key)
    basis = f"{key} measured once for this setting in the study"
    if not _finite_number(value):
        return Check(c.text, basis, None, c.threshold, "", False,
                     f"{c.text}: {key} was not measured for this configuration's setting in the study")
    holds = c.violation({key: value}) <= 0
    reason = None if holds else f"{c.text}: {key} is {value:.4g}, beyond the bound {c.threshold:g}"
    return Check(c.text, basis, float(value), c.threshold, "", holds, reason)


def _alternative(key: str) -> str | None:
    if key.startswith("p50_"):
        return "median_" + key[4:]
    if key.startswith("median_"):
        return "p50_" + key[7:]
    return "request_goodput" if key == "goodput" else None


# --------------------------------------------------------------------------- presentation


FIGURE_LABELS = {
    "goodput": "goodput", "output_throughput": "out tok/s", "request_throughput": "req/s",
    COST_KEY: "$ / 1K tokens", "p50_ttft_ms": "p50 TTFT ms", "median_ttft_ms": "p50 TTFT ms",
    "p99_ttft_ms": "p99 TTFT ms", "mean_ttft_ms": "mean TTFT ms", "mean_tpot_ms": "TPOT ms",
    "p99_tpot_ms": "p99 TPOT ms", "p99_itl_ms": "p99 ITL ms", "p99_e2el_ms": "p99 E2E ms",
    "startup_s": "start s",
}


def _label(key: str) -> str:
    return FIGURE_LABELS.get(key, key)


def figure_rows(result: Verification) -> list[tuple[str, str, str, str]]:
    """(figure, mean ± std, 95% CI, n) for the figures a user reads, cost included."""
    rows = []
    summary = result.summary()
    for key in SHOWN_FIGURES:
        s = summary.get(key)
        if key == COST_KEY and s is None and result.ok_starts:
            rows.append((_label(key), "-", "-", "-"))  # no price: no cost, not a free 0
            continue
        if s is None:
            continue
        if key == COST_KEY:
            rows.append((_label(key), f"{format_cost(s.mean)} ± {format_cost(s.std)}",
                         f"{format_cost(s.ci95[0])} .. {format_cost(s.ci95[1])}", str(s.n)))
        else:
            fmt = "{:,.2f}" if abs(s.mean) < 100 else "{:,.0f}"
            rows.append((_label(key), s.text(fmt), _ci_text(s, fmt), str(s.n)))
    for text, (met, n, lo, hi) in result.attainment().items():
        rows.append((f"attainment {text}", _pct(met / n) if n else "-", f"{_pct(lo)} .. {_pct(hi)}", f"{n} req"))
    return rows


def verify_table(results: list[Verification]) -> Table:
    table = Table(title="Verification: fresh starts, mean ± std and 95% interval", title_justify="left")
    for col, justify in (("trial", "right"), ("starts", "right"), ("figure", "left"), ("mean ± std", "right"),
                         ("95% CI", "right"), ("n", "right"), ("verdict", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        rows = figure_rows(r)
        ok = f"{len(r.ok_starts)}/{len(r.starts)} ok"
        verdict = "[green]verified[/]" if r.verified else "[red]not verified[/]"
        if not rows:
            table.add_row(str(r.trial), ok, "-", "-", "-", "-", verdict, end_section=True)
            continue
        for i, row in enumerate(rows):
            table.add_row(str(r.trial) if i == 0 else "", ok if i == 0 else "", *row, verdict if i == 0 else "",
                          end_section=i == len(rows) - 1)
    return table


def verdict_lines(result: Verification) -> list[str]:
    head = f"trial {result.trial}: " + ("VERIFIED" if result.verified else "NOT VERIFIED")
    holds = [f"{c.slo} holds ({c.basis}: {_fmt(c.value, c.unit) if c.unit else _pct(c.value)})"
             for c in result.checks if c.holds]
    lines = [head + (f" - {'; '.join(holds)}" if result.verified and holds else "")]
    lines += [f"  - {r}" for r in result.reasons]
    lines += [f"  note: {n}" for n in result.notes]
    return lines


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


# --------------------------------------------------------------------------- helpers


def _ci_text(s: Summary, fmt: str) -> str:
    if not math.isfinite(s.ci95[0]):
        return "-"
    return f"{fmt.format(s.ci95[0])} .. {fmt.format(s.ci95[1])}"


def _fmt(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:.1f}%"


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(value: Any) -> Any:
    # Optuna keeps user attributes as JSON, and NaN is not JSON.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _same_place(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _SAME_PLACE)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

