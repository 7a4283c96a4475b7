"""How much engine time does a search need to find a near-best configuration?

Replays a response surface recorded on the real engine (``record_surface.py``:
every point of a grid, its goodput under the SLO and the engine-seconds it
cost) as a lookup objective, and runs several searches over it, each over
many seeds:

* ``grid``: every point in vLLM auto_tune's order (``benchmarks/auto_tune``
  loops over max_num_seqs, then max_num_batched_tokens; further knobs nest
  inside, in the surface's ``order``); deterministic, one run.
* ``random``, ``tpe``, ``nsga2``, ``gp``: Optuna's samplers, configured as
  ``autotune optimize`` configures them (``autotune.tuning.sampler.optuna_sampler``)
  but without the study's guard against repeats: they stand for the
  alternatives, as Optuna ships them.
* ``rounds+tpe``, ``rounds+gp``: the same samplers with autotune's rounds
  (``autotune.tuning.rounds``, default options): enqueue neighbours of the
  best trials (freezing knobs is off by default); where the surface recorded the engine's
  defaults (``record_surface.py --defaults``), they are measured first and
  paid for, as a study does.
* ``autotune``: what ``autotune optimize`` does by default, ``rounds+gp``
  with each trial's goodput search begun at the incumbent (the best feasible
  goodput so far, the defaults' included). A point below it stops there: the
  study learns only the bound (reported as the incumbent, with the stopped
  trial's constraint violated, as ``autotune.tuning.loop`` reports it) and
  pays the point's start and one level of its search, the mean of its
  recorded levels (the grid recorded each point searched in full, so a
  stopped trial's own level was not timed). Its sampler is the study's
  (``autotune.tuning.make_sampler``): a proposal that lands on a point
  already measured (after snapping to the grid) is drawn again at random
  (``autotune.tuning.no_repeat``).

The figure of merit: the trials, and the engine-minutes, spent until the best
feasible goodput found reaches ``--target`` (95%) of the grid's best. A grid
search only knows its best once it has measured every point, so its cost is
the whole grid; the table gives every method's cost as a fraction of it.

    .venv/bin/python benchmarks/search_efficiency.py [--surface FILE] [--seeds 20] [--jobs N]

The searches run one per process, as many at once as there are cores
(``--jobs``); each is seeded, so the table is the same on any number.

A numeric knob is suggested as an integer range (log-scaled when the grid is
geometric) and snapped to the nearest recorded value, as a real study would
suggest any value in the range; categorical and boolean knobs are suggested
as they are. Integer ranges cannot grow beyond the grid (there is nothing
recorded there), so the rounds' range extension never fires in a replay. A
point the engine failed on is a failed trial; a point where the SLO never
held is infeasible (an Optuna constraint), as in a real study. Every trial
costs its recorded engine-seconds, repeats included: a real study pays again
for a configuration it measures twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
if __name__ == "__main__":
    # One search per core (--jobs), each on one thread: NumPy's OpenBLAS threads would spin against the other
    # searches (and, with one search, against the GP's own work: a quarter of the time on 2 cores). Read at import.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import optuna  # noqa: E402
from optuna.trial import Trial  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.tuning import RoundPlanner  # noqa: E402
from autotune.space import Knob, SearchSpace  # noqa: E402
from autotune.spec import RoundsOptions, StudySpec  # noqa: E402
from autotune.tuning import make_sampler, suggest  # noqa: E402
from autotune.tuning.sampler import optuna_sampler  # noqa: E402
from autotune.tuning.baseline import INCUMBENT_CONSTRAINT  # noqa: E402
from _common import free_cores  # noqa: E402

FORMAT = "autotune-surface/1"
DEFAULT_SURFACE = REPO / "benchmarks" / "data" / "surface_cpu_smollm2.json"
SAMPLERS = ("random", "tpe", "nsga2", "gp")
METHODS = ("grid", "random", "tpe", "nsga2", "gp", "rounds+tpe", "rounds+gp", "autotune")


class ReplayFailed(Exception):
    """The engine failed on this point when the surface was recorded."""


# --------------------------------------------------------------------------- the surface


@dataclass
class Surface:
    """A recorded grid: the points, the space they span, and the order a grid search walks."""

    path: Path
    data: dict[str, Any]
    order: list[str]
    values: dict[str, list[Any]]
    types: dict[str, str]
    points: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, restrict: dict[str, list[Any]] | None = None) -> "Surface":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SystemExit(f"error: no surface file {path}") from None
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path} is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SystemExit(f"error: {path} is not a recorded grid ({FORMAT}); see benchmarks/data/README.md")
        space = data["space"]
        for name, values in (restrict or {}).items():
            if name not in space:
                raise SystemExit(f"error: --restrict {name}: not a knob of {path} (knobs: {', '.join(space)})")
            kept = [v for v in space[name]["values"] if v in values]
            if not kept:
                raise SystemExit(f"error: --restrict {name}: none of {values} was recorded ({space[name]['values']})")
            space[name] = {**space[name], "values": kept}
        order = list(data.get("order") or space)
        surface = cls(
            path=Path(path),
            data=data,
            order=order,
            values={k: list(space[k]["values"]) for k in order},
            types={k: space[k]["type"] for k in order},
        )
        for point in data["points"]:
            if all(point["config"].get(k) in surface.values[k] for k in order):
                surface.points[surface.key(point["config"])] = point
        missing = [c for c in surface.grid_order() if surface.key(c) not in surface.points]
        if missing:
            raise SystemExit(
                f"error: {path} is not a complete grid: {len(missing)} of {surface.size} points missing "
                f"(first: {missing[0]}); record them with benchmarks/record_surface.py"
            )
        return surface

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.values.values())

    def key(self, config: dict[str, Any]) -> str:
        return json.dumps([config[k] for k in self.order])

    def grid_order(self) -> list[dict[str, Any]]:
        """vLLM auto_tune's order: the first knob outermost, each list in its recorded order."""
        configs: list[dict[str, Any]] = [{}]
        for name in self.order:
            configs = [{**c, name: v} for c in configs for v in self.values[name]]
        return configs

    def goodput(self, config: dict[str, Any]) -> float:
        point = self.points[self.key(config)]
        return float(point["goodput"]) if point.get("feasible", point["goodput"] > 0) else 0.0

    def cost_s(self, config: dict[str, Any]) -> float:
        point = self.points[self.key(config)]
        return float(point.get("engine_s") or (point.get("startup_s", 0) + point.get("measure_s", 0)))

    def stopped_cost_s(self, config: dict[str, Any]) -> float:
        """A trial stopped at the incumbent's level: its start and one level, the mean of its recorded ones."""
        point = self.points[self.key(config)]
        levels = max(1, len(point.get("levels") or []))
        start = float(point.get("startup_s") or 0.0)
        measure = float(point.get("measure_s") or max(0.0, self.cost_s(config) - start))
        return start + measure / levels

    @property
    def best(self) -> float:
        return max(self.goodput(c) for c in self.grid_order())

    def at_least(self, threshold: float) -> int:
        """How many points reach the threshold: the fewer, the harder the search."""
        return sum(self.goodput(c) >= threshold for c in self.grid_order())

    def space(self) -> SearchSpace:
        """The replay's search space: what a study spec would give for these values."""
        knobs: dict[str, Knob] = {}
        for name in self.order:
            values, kind = self.values[name], self.types[name]
            if len(values) == 1:
                knobs[name] = Knob(type="categorical", fixed=values[0])
            elif kind == "bool":
                knobs[name] = Knob(type="bool")
            elif kind == "int" and len(values) > 1:
                lo, hi = min(values), max(values)
                knobs[name] = Knob(type="int", low=lo, high=hi, log=_geometric(values))
            else:
                knobs[name] = Knob(type="categorical", choices=values)
        return SearchSpace(engine=self.data.get("engine", "vllm"), knobs=knobs)

    def point_key(self, params: Mapping[str, Any]) -> str:
        """The recorded point a study's parameters land on: what makes two trials one configuration."""
        fixed = {name: values[0] for name, values in self.values.items() if len(values) == 1}
        return self.key(self.snap({**fixed, **params}))

    def snap(self, config: dict[str, Any]) -> dict[str, Any]:
        """The recorded point nearest to a suggested configuration."""
        out = {}
        for name in self.order:
            value, values = config[name], self.values[name]
            if self.types[name] == "int" and value not in values:
                scale = math.log if _geometric(values) else (lambda x: x)
                value = min(values, key=lambda v: (abs(scale(v) - scale(value)), v))
            out[name] = value
        return out


def _geometric(values: Sequence[Any]) -> bool:
    nums = sorted(v for v in values if isinstance(v, (int, float)))
    return len(nums) > 2 and nums[0] > 0 and nums[-1] / nums[0] >= 8


# --------------------------------------------------------------------------- one search


@dataclass
class Run:
    """One search over the surface: the goodput and cost of each trial, in order."""

    method: str
    seed: int
    goodputs: list[float]
    costs_s: list[float]

    def reached(self, threshold: float) -> int | None:
        """Trials until the best feasible goodput so far reaches the threshold (1-based), or None."""
        for i, g in enumerate(self.goodputs, start=1):
            if g >= threshold:
                return i
        return None

    def cost_until(self, trials: int) -> float:
        return sum(self.costs_s[:trials])


def replay_objective(
    surface: Surface, record: Run, from_incumbent: bool = False
) -> Callable[[Trial, SearchSpace], float]:
    """The Optuna objective: look the configuration up, record what it cost, report as a study would."""

    def objective(trial: Trial, space: SearchSpace) -> float:
        config = surface.snap(suggest(trial, space))
        trial.set_user_attr("config", config)
        point = surface.points[surface.key(config)]
        if point.get("status", "ok") != "ok":
            record.costs_s.append(surface.cost_s(config))
            record.goodputs.append(0.0)
            trial.set_user_attr("status", "failed")
            raise ReplayFailed(point.get("reason") or "engine failed")
        goodput = surface.goodput(config)
        incumbent = max(record.goodputs, default=0.0) if from_incumbent else 0.0
        if incumbent > 0 and goodput < incumbent:  # fails at the incumbent's level: a bound, not a figure
            record.costs_s.append(surface.stopped_cost_s(config))
            record.goodputs.append(0.0)
            trial.set_constraint("slo", 1.0)
            trial.set_constraint(INCUMBENT_CONSTRAINT, 1.0)
            trial.set_user_attr("feasible", False)
            return incumbent
        record.costs_s.append(surface.cost_s(config))
        feasible = goodput > 0
        trial.set_constraint("slo", -1.0 if feasible else 1.0)
        if from_incumbent:
            trial.set_constraint(INCUMBENT_CONSTRAINT, -1.0)
        trial.set_user_attr("feasible", feasible)
        record.goodputs.append(goodput if feasible else 0.0)
        return goodput

    return objective


def run_grid(surface: Surface) -> Run:
    run = Run("grid", 0, [], [])
    for config in surface.grid_order():
        run.goodputs.append(surface.goodput(config))
        run.costs_s.append(surface.cost_s(config))
    return run


def run_sampler(
    surface: Surface,
    method: str,
    seed: int,
    budget: int,
    study_trials: int,
    stop_at: float | None = None,
    rounds: RoundsOptions | None = None,
) -> Run:
    """One seeded search of up to ``budget`` trials; stops early once ``stop_at`` is reached."""
    own = method == "autotune"  # autotune's default search: rounds, GP, the defaults first, losers stopped
    with_rounds = own or method.startswith("rounds+")
    sampler_name = "gp" if own else method.split("+")[-1]
    spec = StudySpec.model_validate({"sampler": sampler_name, "seed": seed, "budget": {"trials": study_trials}})
    sampler = make_sampler(spec, 0, key=surface.point_key) if own else optuna_sampler(spec, 0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    run = Run(method, seed, [], [])
    defaults = surface.data.get("defaults")
    if with_rounds and defaults:
        # autotune's own search measures the engine's defaults first: their start and search are paid too.
        run.goodputs.append(float(defaults.get("goodput") or 0.0))
        run.costs_s.append(float(defaults.get("engine_s") or defaults.get("startup_s", 0) + defaults.get("measure_s", 0)))
    objective = replay_objective(surface, run, from_incumbent=own)
    base = surface.space()
    planner = RoundPlanner(study, base, base, rounds or RoundsOptions(), study_trials) if with_rounds else None
    best = max(run.goodputs, default=0.0)
    for i in range(budget - len(run.goodputs)):
        space = base
        if planner is not None:
            planner.advance(i)
            space = planner.space()
        study.optimize(lambda t: objective(t, space), n_trials=1, catch=(ReplayFailed,))
        best = max(best, run.goodputs[-1])
        if stop_at is not None and best >= stop_at:
            break
    return run


def run_all(
    surface: Surface,
    methods: Sequence[str],
    seeds: int,
    jobs: int,
    budget: int,
    study_trials: int,
    stop_at: float,
    rounds: RoundsOptions,
) -> dict[str, list[Run]]:
    """Every seed of every sampler method, over ``jobs`` processes: the searches are seeded, so the runs are
    those of one process, whichever core ran them."""
    tasks = [(m, seed) for m in methods if m != "grid" for seed in range(seeds)]
    search = partial(run_sampler, surface, budget=budget, study_trials=study_trials, stop_at=stop_at, rounds=rounds)
    if jobs <= 1:
        done = {task: search(*task) for task in tasks}
    else:
        # The GP's searches first: the longest, they would otherwise finish last on one core while the others idle.
        slow_first = sorted(tasks, key=lambda task: not uses_gp(task[0]))
        with ProcessPoolExecutor(min(jobs, len(tasks))) as pool:
            futures = {task: pool.submit(search, *task) for task in slow_first}
            done = {task: future.result() for task, future in futures.items()}
    return {m: [done[(m, seed)] for seed in range(seeds)] for m in methods if m != "grid"}


def uses_gp(method: str) -> bool:
    return method.endswith("gp") or method == "autotune"  # autotune's search is rounds+gp


def gp_available() -> str | None:
    """Why the GP sampler cannot run here, or None when it can."""
    try:
        import scipy  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"GPSampler needs {e.name}"
    return None


# --------------------------------------------------------------------------- summary


@dataclass
class Summary:
    method: str
    runs: int
    reached: int
    trials: list[float]
    minutes: list[float]


def summarize(runs: Sequence[Run], threshold: float, budget: int) -> Summary:
    """Trials and engine-minutes to the threshold; a run that never got there counts its whole budget."""
    trials, minutes, reached = [], [], 0
    for run in runs:
        n = run.reached(threshold)
        if n is not None:
            reached += 1
        n = n or min(budget, len(run.goodputs))
        trials.append(float(n))
        minutes.append(run.cost_until(n) / 60)
    return Summary(runs[0].method, len(runs), reached, trials, minutes)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


COLUMNS = ("method", "reached", "trials to target (mean ± std)", "engine-min to target (mean ± std)",
           "trials / grid", "engine-min / grid", "engine-min / grid, median")


def rows(summaries: Sequence[Summary], full_trials: int, full_minutes: float) -> list[tuple[str, ...]]:
    """One row of figures per method, for the terminal and for the docs alike.

    The median beside the mean: a few seeds that never reach the target pay the
    whole budget and pull the mean, while what a user meets most often is the median.
    """
    out = []
    for s in summaries:
        t_mean, t_std = mean_std(s.trials)
        m_mean, m_std = mean_std(s.minutes)
        out.append((
            s.method, f"{s.reached}/{s.runs}", f"{t_mean:.1f} ± {t_std:.1f}", f"{m_mean:.1f} ± {m_std:.1f}",
            f"{t_mean / full_trials:.0%}", f"{m_mean / full_minutes:.0%}",
            f"{statistics.median(s.minutes) / full_minutes:.0%}",
        ))
    return out


def build_table(surface: Surface, summaries: Sequence[Summary], grid: Run, threshold: float, seeds: int) -> Table:
    full_trials = surface.size
    full_minutes = grid.cost_until(full_trials) / 60
    env = surface.data.get("environment", {})
    title = (
        f"Search efficiency on {surface.path.name}: {full_trials} points, best goodput {surface.best:g} "
        f"{surface.data.get('goodput_unit') or ''} under {surface.data.get('slo')}; target {threshold:g} "
        f"({100 * threshold / surface.best:.0f}%), met by {surface.at_least(threshold)} point(s); {seeds} seeds; "
        f"{env.get('engine', '')} {env.get('engine_version', '')}, recorded {surface.data.get('date', '?')}"
    )
    table = Table(title=title, title_justify="left")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows(summaries, full_trials, full_minutes):
        table.add_row(*row)
    table.caption = (
        f"grid = all {full_trials} points in vLLM auto_tune's order ({full_minutes:.1f} engine-min); "
        "ratios against the whole grid, which a grid search must finish to know its best"
    )
    return table


def markdown(surface: Surface, summaries: Sequence[Summary], grid: Run, threshold: float, seeds: int) -> str:
    """The same table as Markdown, with the environment it was measured in, for docs/benchmarks.md."""
    full_trials = surface.size
    full_minutes = grid.cost_until(full_trials) / 60
    env = surface.data.get("environment", {})
    lines = [
        f"Surface `{surface.path.name}`: {full_trials} points recorded {surface.data.get('date', '?')} on "
        f"{env.get('engine', '?')} {env.get('engine_version', '?')}, {env.get('device', '?')}"
        f" ({env.get('gpu') or str(env.get('cpu_count', '?')) + ' CPU cores'}, host {env.get('host', '?')}); "
        f"SLO `{surface.data.get('slo')}`; best goodput {surface.best:g} {surface.data.get('goodput_unit') or ''}; "
        f"target {threshold:g} ({100 * threshold / surface.best:.0f}% of the best), met by "
        f"{surface.at_least(threshold)} point(s); {seeds} seeds; "
        f"the whole grid costs {full_trials} trials, {full_minutes:.1f} engine-minutes.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(summaries, full_trials, full_minutes)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surface", type=Path, default=DEFAULT_SURFACE, help="a recorded grid (JSON)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--target", type=float, default=0.95, help="fraction of the grid's best goodput to reach")
    parser.add_argument("--study-trials", type=int, default=12,
                        help="the budget the samplers and rounds are configured for, as `optimize --trials`")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-run results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    parser.add_argument("--rounds", action="append", default=[], metavar="OPTION=VALUE",
                        help="a rounds option for the rounds+ methods and autotune (spec.rounds), e.g. neighbours=0")
    parser.add_argument("--jobs", type=int, default=len(free_cores()),
                        help="searches run at once, one per process (default: the cores available); 1 runs them here")
    parser.add_argument("--restrict", action="append", default=[], metavar="KNOB=V1,V2",
                        help="replay only the sub-grid with these values of a knob (repeatable)")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})", file=sys.stderr)
        return 2
    if args.seeds < 1 or args.jobs < 1 or not 0 < args.target <= 1:
        print("error: --seeds and --jobs must be >= 1 and --target in (0, 1]", file=sys.stderr)
        return 2
    restrict: dict[str, list[Any]] = {}
    for item in args.restrict:
        name, sep, text = item.partition("=")
        if not sep or not text:
            print(f"error: --restrict {item!r}: expected knob=v1,v2", file=sys.stderr)
            return 2
        restrict[name] = [json.loads(v) if v not in ("True", "False") else v == "True" for v in text.split(",")]
    surface = Surface.load(args.surface, restrict)
    try:
        rounds = RoundsOptions.model_validate(dict(item.split("=", 1) for item in args.rounds))
    except ValueError as e:
        print(f"error: --rounds: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    console = Console(width=None if sys.stdout.isatty() else 160)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    threshold = args.target * surface.best
    budget = surface.size
    grid = run_grid(surface)
    notes = []
    needs_gp = {m for m in methods if uses_gp(m)}
    if needs_gp and (why := gp_available()):
        methods = [m for m in methods if m not in needs_gp]
        notes.append(f"gp skipped: {why}")
    notes.append(
        "AutoSampler (OptunaHub) not compared: it is fetched from the hub's repository at run time, "
        "not installed from PyPI, and this benchmark runs without network"
    )

    t0 = time.monotonic()
    searched = run_all(surface, methods, args.seeds, args.jobs, budget, args.study_trials, threshold, rounds)
    all_runs = {m: [grid] if m == "grid" else searched[m] for m in methods}
    summaries = [summarize(runs, threshold, budget) for runs in all_runs.values()]
    console.print(build_table(surface, summaries, grid, threshold, args.seeds))
    for note in notes:
        console.print(f"note: {note}")
    console.print(f"replay time: {time.monotonic() - t0:.0f} s ({args.jobs} job(s))")
    if args.markdown is not None:
        args.markdown.write_text(markdown(surface, summaries, grid, threshold, args.seeds))
    if args.json is not None:
        out = {
            "surface": str(surface.path),
            "best_goodput": surface.best,
            "threshold": threshold,
            "points_at_target": surface.at_least(threshold),
            "grid_points": surface.size,
            "grid_engine_min": grid.cost_until(surface.size) / 60,
            "seeds": args.seeds,
            "study_trials": args.study_trials,
            "notes": notes,
            "methods": {
                s.method: {
                    "reached": s.reached, "runs": s.runs,
                    "trials": mean_std(s.trials), "engine_min": mean_std(s.minutes),
                    "per_seed_trials": s.trials, "per_seed_engine_min": s.minutes,
                }
                for s in summaries
            },
        }
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
