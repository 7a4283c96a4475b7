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
keeps what it measured and the next run continues it. The configurations take
turns, one start each (a recommendation and the defaults it is compared with
are measured side by side in time, so a machine that drifts moves both), and
a wall time stops new starts, never one under way: a machine lent for ten
minutes at a time verifies over several runs. In a goodput study each
start's search begins at the study's reading of the configuration and steps
one resolution first, so a start that reads it again is done in two levels
(a verification stored before this began keeps the search it began with).
The raw files of each
start (engine log, requests, outcome) are in ``verify/trial-<n>/<start>/``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol

from autotune.cost import COST_KEY, cost_per_1k_tokens, gpus_used
from autotune.environment import missing, record
from autotune.errors import UserError
from autotune.figures import label
from autotune.json_safe import json_safe
from autotune.load.goodput import wilson_interval
from autotune.load.stats import Summary
from autotune.measure import KEY_FIGURES
from autotune.spec import Constraint, StudySpec
from autotune.spec.slo import figure_alternatives
from autotune.trial import TrialOutcome, TrialSetup, run_trial
from autotune.tuning import StudyResults, TrialRecord
from autotune.tuning.bill import fits_in_time, start_and_load

__all__ = ["Check", "Start", "Verification", "VerifyReporter", "candidates", "judge_starts", "save", "stored",
           "verify_study"]

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
    # A goodput search on each start begins at the study's reading of this configuration, one
    # resolution step first (None: the study's own search, as verifications stored before it began).
    search_from: float | None = None
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
        return {k: Summary.of([f[k] for f in figures if f.get(k) is not None]) for k in keys}

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
        out["summary"] = {k: s.to_json() for k, s in self.summary().items()}
        out["attainment"] = {k: {"met": m, "n": n, "wilson95": [lo, hi]} for k, (m, n, lo, hi) in self.attainment().items()}
        return json_safe(out)

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
    """A reporter that tells no one: every method of ``VerifyReporter`` does nothing."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *_args, **_kwargs: None


def candidates(
    results: StudyResults, *, top: int | None = None, trials: list[int] | None = None, defaults: bool = False,
) -> tuple[list[TrialRecord], list[str]]:
    """The recommendations to verify, and notes on the trials left out.

    By default the feasible Pareto front; ``top`` takes the best K measured trials
    by the first objective instead (feasible ones first); ``trials`` names them.
    A trial without its environment record is never recommended.
    """
    if trials:
        chosen = []
        for n in trials:
            record = results.trial(n)
            if record is None or not record.measured:
                raise UserError(f"trial {n} is not a measured trial of this study")
            chosen.append(record)
    elif top is not None:
        chosen = results.ranked()[:top]
    else:
        chosen = results.front()
    if defaults:  # the engine's own defaults: the other side of every ratio, verified the same way
        base = results.baseline()
        if base is None:
            raise UserError("--defaults: this study did not measure the engine's defaults")
        chosen = [base, *chosen]
    notes = [f"trial {r.number} left out: its result has no environment record "
             f"({', '.join(missing(r.attrs.get('environment')))})" for r in chosen if not r.reported]
    return [r for r in chosen if r.reported], notes


def stored(results: StudyResults) -> dict[int, Verification]:
    """Verifications kept in the study's storage, by trial number."""
    out = {}
    for number, value in results.verifications().items():
        try:
            out[number] = Verification.from_json(value)
        except (TypeError, ValueError):
            continue
    return out


def save(results: StudyResults, result: Verification) -> None:
    """Stored after every start, so an interrupted verification keeps what it measured."""
    result.updated_at = _now()
    results.save_verification(result.trial, result.to_json())


def verify_study(
    results_of: StudyResults,
    setup: TrialSetup,
    study_dir: Path,
    chosen: list[TrialRecord],
    *,
    repeats: int = DEFAULT_REPEATS,
    price_per_gpu_hour: float | None = None,
    fresh: bool = False,
    reporter: VerifyReporter | None = None,
    wall_time_s: float | None = None,
) -> list[Verification]:
    """Runs the missing starts of each chosen trial, judges it, stores it after every start.

    ``wall_time_s``: begin no start that would end after this many seconds, taking it to cost as much
    as the slowest start so far (the trial's own in the study before any); those still missing are left
    for the next call (each result then says how many of its starts were measured). On a machine lent
    for a fixed time, a start cut off mid-way is lost whole."""
    began = time.monotonic()
    reporter = reporter or _Silent()
    spec = results_of.spec
    env = record(setup.engine.name, setup.engine.version(), setup.device)
    price = price_per_gpu_hour if price_per_gpu_hour is not None else spec.hardware.price_per_gpu_hour
    kept = stored(results_of)
    unit = spec.goodput.unit if spec.goodput is not None else None
    results: list[Verification] = []
    for t in chosen:
        config = t.config
        previous = kept.get(t.number)
        result = Verification(
            trial=t.number, config=config, command=t.get("command"), repeats_wanted=repeats,
            environment=env, slo=spec.slo, price_per_gpu_hour=price,
            gpus=gpus_used(config, spec.hardware.gpu_count, setup.device),
            quality=dict((t.quality or {}).get("figures") or {}),
        )
        result.search_from = _search_from(spec, t)
        if previous is not None and not fresh:
            if previous.config == config and _same_place(previous.environment, env):
                result.starts = previous.starts
                result.search_from = previous.search_from if previous.starts else result.search_from
            else:
                result.notes.append("earlier starts were measured elsewhere or on another config: started over")
        results.append(result)
    total = sum(r.repeats_wanted for r in results)
    reporter.opened(total, sum(min(len(r.starts), r.repeats_wanted) for r in results))
    costs = [sum(start_and_load(s.figures)) for r in results for s in r.starts]
    costs += [sum(start_and_load(t.attrs)) for t in chosen]

    def out_of_time() -> bool:
        return wall_time_s is not None and not fits_in_time(wall_time_s - (time.monotonic() - began), costs)

    while not out_of_time() and (turn := [r for r in results if len(r.starts) < r.repeats_wanted]):
        for result in turn:
            if out_of_time():
                break
            index = len(result.starts)
            folder = study_dir / "verify" / f"trial-{result.trial}" / f"{index:02d}"
            reporter.start_begun(result.trial, index, result.repeats_wanted)
            begun = time.monotonic()
            outcome = run_trial(_searching_from(setup, result.search_from), result.config, folder,
                                status=reporter.status, progress=reporter.requests_progress)
            costs.append(time.monotonic() - begun)
            start = _start_from(outcome, setup, spec, result, folder)
            result.starts.append(start)
            judge_starts(result, spec.constraints, goodput_unit=unit)
            save(results_of, result)
            reporter.start_finished(result.trial, index, start)
    for result in results:
        judge_starts(result, spec.constraints, goodput_unit=unit)
        save(results_of, result)
        reporter.verified(result)
    return results


def _search_from(spec: StudySpec, trial: TrialRecord) -> float | None:
    """Where each start's goodput search begins: the study's reading of the configuration.

    A fresh start mostly reads what the study read, so a search that begins
    there and steps one resolution up or down first brackets it in two levels
    where the default search takes five; a start that reads otherwise widens
    to the spec's growth and bisects as usual. A trial stopped below the
    incumbent has a bound, not a reading, and searches as the spec says."""
    g = spec.goodput
    reading = trial.figures.get("goodput")
    if g is None or not isinstance(reading, (int, float)) or not math.isfinite(reading) or reading <= 0:
        return None
    return float(min(max(reading, g.min_load or 0.0), g.upper or math.inf))


def _searching_from(setup: TrialSetup, start: float | None) -> TrialSetup:
    if start is None or setup.goodput is None:
        return setup
    g = setup.goodput
    # just under one resolution step, so that a bracket of one step is closed (the search stops under it)
    step = 1 + 0.98 * g.resolution
    return replace(setup, goodput=g.model_copy(update={"start": start, "first_step": step}))


def _start_from(
    outcome: TrialOutcome, setup: TrialSetup, spec: StudySpec, result: Verification, folder: Path
) -> Start:
    if outcome.status != "ok":
        return Start("failed", outcome.reason or "failed", folder=str(folder), finished_at=_now())
    figures = {k: float(v) for k, v in outcome.figures.items() if _finite_number(v)}
    if outcome.startup_s is not None:
        figures["startup_s"] = outcome.startup_s
    if outcome.measure_s is not None:
        figures["measure_s"] = outcome.measure_s  # with the start: the engine time this start cost
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


def judge_starts(result: Verification, constraints: list[Constraint], *, goodput_unit: str | None = None) -> None:
    """Sets ``checks``, ``verified`` and ``reasons``: verified only when every SLO holds at 95%.

    ``goodput_unit``: each start searched its goodput (``autotune.load.goodput``) in this unit, so its
    SLOs were judged there, level by level (see ``_goodput_check``)."""
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
    checks = [
        _goodput_check(c, ok, goodput_unit) if goodput_unit and c.kind not in ("quality", "passkey")
        else _check(c, summary, pooled, result.quality)
        for c in constraints
    ] if ok else []
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
    s = next((summary[k] for k in (key, *figure_alternatives(key)) if k in summary), None)
    scale, unit = (1000.0, "ms") if c.kind == "latency" else (1.0, "")
    limit = c.threshold * scale
    upper = c.op in ("<", "<=")
    name = label(key)
    if s is None or s.n == 0:
        return Check(c.text, f"{name}: not measured", None, limit, unit, False, f"{c.text}: {name} was not measured")
    bound = s.ci95[1] if upper else s.ci95[0]
    basis = f"{'upper' if upper else 'lower'} 95% bound of mean {name} over {s.n} starts"
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


def _goodput_check(c: Constraint, ok: list[Start], unit: str) -> Check:
    """An SLO of a goodput search, judged on each start's own search.

    A start's figures are those of its highest load that held every SLO: a
    different load on each start, and at the bound by construction, so a
    confidence bound of their mean across starts would fail a configuration
    for being measured at its limit. What each start shows is that its level
    test held the SLO at its goodput; SLOs only get harder as load rises, so
    the lowest goodput of the starts is a load that held on every one. How
    far the goodput itself varies is the goodput figure's own interval.
    """
    goodputs = [float(s.figures.get("goodput") or 0.0) for s in ok]
    held = [g for g in goodputs if g > 0]
    holds = len(held) == len(goodputs)
    basis = f"each start's level test at its own goodput, {len(held)} of {len(goodputs)} starts; lowest goodput"
    reason = None if holds else (
        f"{c.text}: {len(goodputs) - len(held)} of {len(goodputs)} starts found no load at which every SLO held"
    )
    return Check(c.text, basis, min(held) if held else None, math.nan, unit, holds, reason)


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




def _fmt(value: float | None, unit: str) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    text = f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * 100:.1f}%"


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

def _same_place(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _SAME_PLACE)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

