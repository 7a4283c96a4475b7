"""Running a verification: fresh starts of each chosen configuration, in turns, within a wall time."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Protocol

from autotune.cost import COST_KEY, cost_per_1k_tokens, gpus_used
from autotune.environment import missing, record
from autotune.errors import UserError
from autotune.spec import StudySpec
from autotune.trial import TrialOutcome, TrialSetup, run_trial
from autotune.tuning import StudyResults, TrialRecord
from autotune.tuning.bill import fits_in_time, start_and_load
from autotune.verify.judge import judge_starts
from autotune.verify.records import Start, Verification, _finite_number, _now, save, stored

DEFAULT_REPEATS = 10
# Start i's seed offset is (i + 1) times this: clear of a study's own schedule (0), of a start's
# goodput levels (+1, +2, ...), its re-check (+500) and its repeats (+1000 each).
SCHEDULE_STRIDE = 100_000
# Environment fields that must agree before stored starts are pooled with new ones.
_SAME_PLACE = ("host", "engine", "engine_version", "device", "gpu", "gpu_count")


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
    results: list[Verification] = []
    for t in chosen:
        config = t.config
        previous = kept.get(t.number)
        result = Verification(
            trial=t.number, config=config, command=t.get("command"), repeats_wanted=repeats,
            environment=env, slo=spec.slo, price_per_gpu_hour=price,
            gpus=gpus_used(config, spec.hardware.gpu_count, setup.device),
            quality=dict((t.quality or {}).get("figures") or {}),
            search_from=_search_from(spec, t), goodput_unit=spec.goodput.unit if spec.goodput is not None else None,
            own_schedules=True,
        )
        if previous is not None and not fresh:
            if previous.config == config and _same_place(previous.environment, env):
                result.starts = previous.starts
                if previous.starts:  # a verification goes on with the search and the schedules it began with
                    result.search_from = previous.search_from
                    result.own_schedules = previous.own_schedules
                    result.notes = list(previous.notes)
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
            offset = schedule_of(index) if result.own_schedules else 0
            outcome = run_trial(_searching_from(setup, result.search_from), result.config, folder,
                                status=reporter.status, progress=reporter.requests_progress, seed_offset=offset)
            costs.append(time.monotonic() - begun)
            start = _start_from(outcome, setup, spec, result, folder, offset)
            result.starts.append(start)
            judge_starts(result, spec.constraints)
            save(results_of, result)
            reporter.start_finished(result.trial, index, start)
    for result in results:
        judge_starts(result, spec.constraints)
        save(results_of, result)
        reporter.verified(result)
    return results


def schedule_of(index: int) -> int:
    """The seed offset of a verification's start ``index``: not the study's (0), which picked the
    configuration and would flatter it again, and the same for every configuration verified, so
    that their ratio compares them under the same traffic."""
    return SCHEDULE_STRIDE * (index + 1)


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
    outcome: TrialOutcome, setup: TrialSetup, spec: StudySpec, result: Verification, folder: Path, seed_offset: int
) -> Start:
    kept_with = {"folder": str(folder), "finished_at": _now(), "seed_offset": seed_offset}
    if outcome.status != "ok":
        return Start("failed", outcome.reason or "failed", **kept_with)
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
    return Start("ok", figures=figures, attainment=attainment, **kept_with)


def _same_place(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in _SAME_PLACE)
