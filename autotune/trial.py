"""One trial, start to finish: check, launch, measure, tear down.

Knows nothing of Optuna, so that ``measure``, ``verify`` and ``worker`` reuse
it unchanged. Whatever happens, the engine's process group is gone when
``run_trial`` returns, and the outcome says why a trial did not produce
figures, in the engine's own words where it has any.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from autotune.engines.base import EngineAdapter, LaunchPlan, ModelRef
from autotune.spec import GoodputOptions
from autotune.engines.launcher import EngineServer, free_port, reason_from_log
from autotune.errors import EngineStartError, UserError
from autotune.feasibility import Assessment, Capacity, assess, deployment_from_argv
from autotune.load.goodput import endpoint_measure, search_goodput
from autotune.load.runner import run_load
from autotune.load.stats import per_request_view, summarize
from autotune.load.workload import Workload, build_requests, load_tokenizer
from autotune.search_space import SearchSpace
from autotune.slo import Constraint

Status = Literal["ok", "failed", "infeasible"]


@dataclass
class TrialSetup:
    """Everything fixed across the trials of one study."""

    engine: EngineAdapter
    space: SearchSpace
    model: ModelRef
    workload: Workload
    device: str
    hardware: dict[str, float]
    host: str = "127.0.0.1"
    startup_timeout_s: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    launch_template: list[str] | None = None
    constraints: list[Constraint] = field(default_factory=list)
    goodput: GoodputOptions | None = None
    api_key: str | None = None
    # --- feasibility inputs: the hardware one trial may use, the model's config.json (begin) ---
    capacity: Capacity | None = None
    model_config: dict[str, Any] | None = None
    # --- feasibility (end) ---
    repeats: int = 1  # measurements on the same server; see measure_repeated


@dataclass
class TrialOutcome:
    status: Status
    reason: str | None = None
    figures: dict[str, float] = field(default_factory=dict)
    per_request: list[dict[str, Any]] = field(default_factory=list)
    command: str | None = None
    config_file: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    startup_s: float | None = None
    measure_s: float | None = None
    goodput: dict[str, Any] | None = None
    # GPU (NVML) and engine-metrics figures of the measured window, plus "notes" (autotune.telemetry)
    telemetry: dict[str, Any] | None = None
    # the feasibility verdict and its figures (tp, pp, weights and KV per GPU), launched or not
    feasibility: dict[str, Any] | None = None
    # with repeats > 1: mean, std and 95% interval of every figure, and each run's figures
    repeats: dict[str, Any] | None = None
    # perplexity and pass-key accuracy of this configuration's quality setting, and how they were got
    quality: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_request")
        return out


def check(setup: TrialSetup, config: Mapping[str, Any]) -> list[str]:
    """Reasons this configuration cannot run, found without starting anything:
    the search space's rules between knobs, then the model-and-hardware arithmetic."""
    return setup.space.check(config, setup.hardware) + feasibility(setup, config).reasons


def feasibility(setup: TrialSetup, config: Mapping[str, Any]) -> Assessment:
    """Reads TP, PP, dtypes and lengths from the exact command that would be launched,
    so knobs, extra arguments and templates are all counted."""
    launch = plan(setup, config, port=0)
    capacity = setup.capacity or Capacity(device=setup.device, gpu_count=int(setup.hardware.get("gpu_count", 1)))
    return assess(setup.model_config, deployment_from_argv(launch.argv, launch.env), capacity)


def plan(setup: TrialSetup, config: Mapping[str, Any], port: int) -> LaunchPlan:
    env = dict(setup.extra_env)
    if Path(setup.model.source).exists():
        env.setdefault("HF_HUB_OFFLINE", "1")
    launch = setup.engine.plan(
        setup.model,
        setup.space.knob_specs(),
        config,
        host=setup.host,
        port=port,
        device=setup.device,
        extra_args=setup.extra_args,
        extra_env=env,
    )
    if setup.launch_template:
        launch.argv = apply_template(setup.launch_template, launch.argv, setup.host, port)
    return launch


def apply_template(template: list[str], argv: list[str], host: str, port: int) -> list[str]:
    """Wraps argv (``docker run ... {argv}``); placeholders fill list items, never a shell string.

    ``{argv}`` is the whole command; ``{args}`` is its options without the program
    (this machine's interpreter and module mean nothing inside a container image,
    whose own entry point or command then comes first: ``IMAGE {args}``).
    """
    out: list[str] = []
    for item in template:
        if item == "{argv}":
            out += argv
        elif item == "{args}":
            out += argv[_program_length(argv):]
        else:
            out.append(item.replace("{port}", str(port)).replace("{host}", host))
    if "{argv}" not in template and "{args}" not in template:
        raise UserError("launch_template must contain the item '{argv}' or '{args}'")
    return out


def _program_length(argv: list[str]) -> int:
    """How many leading items name the program: ``python -m module`` is three, a binary one."""
    return 3 if len(argv) >= 3 and argv[1] == "-m" else 1


def run_trial(
    setup: TrialSetup,
    config: Mapping[str, Any],
    trial_dir: Path,
    *,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    quality: QualityHook | None = None,
) -> TrialOutcome:
    """``quality``, when given, is called with the server's URL once the load is measured
    and returns ``{"figures": ..., ...}``: its figures join the trial's (see ``QualityHook``)."""
    say = status or (lambda _msg: None)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    verdict = feasibility(setup, config)
    reasons = setup.space.check(config, setup.hardware) + verdict.reasons
    if reasons:
        return _finish(trial_dir, TrialOutcome("infeasible", "; ".join(reasons), feasibility=verdict.to_json()))

    port = free_port(setup.host)
    launch = plan(setup, config, port)
    log_path = trial_dir / "engine.log"
    outcome = TrialOutcome(
        "failed",
        command=launch.command_line(),
        config_file=launch.config_file,
        env={k: v for k, v in launch.env.items() if k != "HF_HUB_OFFLINE"},
        log_path=str(log_path),
        feasibility=verdict.to_json(),
    )
    # --- client-side knobs, and endpoints autotune does not start (begin) ---
    setup = with_workload(setup, config)
    if setup.engine.capabilities.launches:
        server: EngineServer | _Endpoint = EngineServer(launch, log_path, startup_timeout_s=setup.startup_timeout_s)
    else:
        server = _Endpoint(launch, setup.api_key)
    # --- (end) ---
    try:
        say("starting engine")
        server.start()
        outcome.startup_s = server.wait_healthy(on_wait=lambda s: say(f"starting engine ({s:.0f}s)"))
        t0 = time.monotonic()
        measured = measure_repeated(
            setup, launch.base_url, trial_dir, status=say, progress=progress, gpu_limit=_gpus_used(config)
        )
        outcome.measure_s = time.monotonic() - t0
        if launch.metrics_path:
            _save_metrics(launch.base_url + launch.metrics_path, trial_dir / "metrics.txt")
        if not server.alive():
            outcome.reason = f"engine died during measurement: {reason_from_log(log_path)}"
            return _finish(trial_dir, outcome)
        outcome.figures, outcome.per_request, outcome.goodput = measured
        outcome.telemetry = outcome.figures.pop("telemetry", None)
        outcome.repeats = outcome.figures.pop("repeats", None)
        if not outcome.figures.get("completed"):
            outcome.reason = f"all requests failed: {outcome.figures.get('first_error', 'no error given')}"
            return _finish(trial_dir, outcome)
        # --- quality of this configuration, on the same server (begin) ---
        if quality is not None:
            say("measuring quality")
            try:
                outcome.quality = dict(quality(launch.base_url))
            except Exception as e:  # an HTTP error, no logprobs: the trial has no quality figure
                outcome.reason = f"quality measurement failed: {type(e).__name__}: {e}"
                return _finish(trial_dir, outcome)
            outcome.figures.update(outcome.quality.get("figures", {}))
        # --- quality (end) ---
        outcome.status = "ok"
        return _finish(trial_dir, outcome)
    except EngineStartError as e:
        outcome.reason = e.reason
        return _finish(trial_dir, outcome)
    finally:
        say("stopping engine")
        server.stop()


# --- quality: a hook after the load, and a start that measures quality only (begin) ---
#: Called with the running server's base URL; returns {"figures": {...}, ...}.
QualityHook = Callable[[str], Mapping[str, Any]]


def run_quality_only(
    setup: TrialSetup, config: Mapping[str, Any], out_dir: Path, measure_quality: QualityHook,
    *, status: Callable[[str], None] | None = None,
) -> Mapping[str, Any]:
    """Starts the engine with ``config``, measures quality on it, tears it down.

    For the study's quality baseline when no trial runs the baseline setting:
    no load is driven. Raises ``EngineStartError`` when the engine does not come up.
    """
    say = status or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str))
    launch = plan(setup, config, free_port(setup.host))
    server = EngineServer(launch, out_dir / "engine.log", startup_timeout_s=setup.startup_timeout_s)
    try:
        say("starting engine for the quality baseline")
        server.start()
        server.wait_healthy(on_wait=lambda s: say(f"starting engine for the quality baseline ({s:.0f}s)"))
        say("measuring the quality baseline")
        return measure_quality(launch.base_url)
    finally:
        server.stop()
# --- quality (end) ---


# --- client-side knobs, and endpoints autotune does not start (begin) ---
def with_workload(setup: TrialSetup, config: Mapping[str, Any]) -> TrialSetup:
    """The setup with the workload fields this configuration sets (the engine says which)."""
    overrides = setup.engine.workload_overrides(config)
    if not overrides:
        return setup
    workload = type(setup.workload).model_validate({**setup.workload.model_dump(), **overrides})
    return replace(setup, workload=workload)


class _Endpoint:
    """Stands in for EngineServer where the server is already running: nothing to start
    or stop. Any HTTP answer from its models path counts as up (some servers answer that
    path with an error of their own); refused connections, DNS and TLS failures do not."""

    def __init__(self, launch: LaunchPlan, api_key: str | None) -> None:
        self.url = launch.base_url + launch.health_path
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def start(self) -> None:
        pass

    def wait_healthy(self, on_wait: Callable[[float], None] | None = None) -> float:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, headers=self.headers), timeout=10):
                return time.monotonic() - t0
        except urllib.error.HTTPError:
            return time.monotonic() - t0  # it answered; the requests themselves will tell the rest
        except OSError as e:  # URLError: nothing answered
            raise EngineStartError(f"endpoint {self.url} did not answer: {e}", "") from None

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        pass
# --- (end) ---


Measured = tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any] | None]


def measure(
    setup: TrialSetup,
    base_url: str,
    out_dir: Path | None,
    *,
    status: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    seed_offset: int = 0,
    gpu_limit: int | None = None,
) -> Measured:
    """Drives the workload at a running server: one fixed load, or a goodput search.

    Returns the figures, the per-request view and, for a goodput search, the
    levels tried. For goodput the figures are those of the best level that held.
    ``figures["telemetry"]`` holds the telemetry of that window (GPU and engine
    metrics, see autotune.telemetry); ``gpu_limit`` is how many GPUs the engine uses.
    """
    say = status or (lambda _msg: None)
    windows: list[dict[str, Any]] = []
    tokenizer, vocab = _tokenizer(setup.model.tokenizer_dir or setup.model.source)
    workload = setup.workload
    if setup.goodput is None:
        say("measuring")
        requests = build_requests(
            workload, tokenizer, vocab, count=workload.warmup_requests + workload.num_requests,
            seed_offset=seed_offset,
        )
        with _telemetry_window(setup, base_url, gpu_limit, say) as tel:
            result = run_load(
                base_url, setup.engine.request_model(setup.model), requests, workload,
                ignore_eos=setup.engine.capabilities.ignore_eos, api_key=setup.api_key, progress=progress,
            )
        figures = dict(summarize(result))
        figures["telemetry"] = _telemetry_figures(tel, figures, windows, None, out_dir)
        if out_dir is not None:
            _write_requests(out_dir / "requests.jsonl", [r.as_dict() for r in result.records])
        _first_error(figures, [r.error for r in result.records])
        return figures, per_request_view(result.records), None

    g = setup.goodput
    probe = endpoint_measure(
        base_url, setup.engine.request_model(setup.model), tokenizer, vocab, workload, unit=g.unit,
        ignore_eos=setup.engine.capabilities.ignore_eos, api_key=setup.api_key, progress=progress,
        min_duration_s=g.min_duration_s, seed_offset=seed_offset,
    )
    tried = 0

    def level(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
        nonlocal tried
        tried += 1
        say(f"goodput level {tried}/{g.max_levels}: {load:g} {g.unit}")
        with _telemetry_window(setup, base_url, gpu_limit, say) as tel:
            level_figures, per_request = probe(load)
        level_figures = dict(level_figures)
        level_figures["telemetry"] = _telemetry_figures(tel, level_figures, windows, load, out_dir)
        return level_figures, per_request

    result_g = search_goodput(
        level, [c for c in setup.constraints if c.kind in ("latency", "throughput")], unit=g.unit, start=g.start, max_levels=g.max_levels, upper=g.upper,
        min_load=g.min_load, resolution=g.resolution, conservative=g.conservative, growth=g.growth,
    )
    chosen = result_g.best or result_g.levels[0]
    figures = dict(chosen.figures)
    figures["goodput"] = result_g.goodput
    summary = result_g.to_json()
    if out_dir is not None:
        (out_dir / "goodput.json").write_text(json.dumps(summary, indent=2))
    _first_error(figures, [r.get("error") for r in chosen.per_request])
    return figures, chosen.per_request, summary


# --- repeats: several measurements on one server (begin) ---
def measure_repeated(
    setup: TrialSetup,
    base_url: str,
    out_dir: Path | None,
    *,
    status: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Measured:
    """``measure`` ``setup.repeats`` times; the figures are the means across runs.

    Each run draws fresh prompts (its own seed offset), so a prefix cache
    cannot serve a later run from an earlier one, and keeps its artefacts in
    ``out_dir/repeat-N``.  ``figures["repeats"]`` holds every numeric
    figure's mean, sample std and Student-t 95% interval (``autotune.measure``),
    and each run's figures.  ``loadgen_saturated`` is the worst run's, not the
    mean: one distorted run taints the mean.  The per-request view pools all
    runs, so attainment SLOs are judged on every request measured.
    """
    if setup.repeats <= 1:
        return measure(setup, base_url, out_dir, status=status, **kwargs)
    say = status or (lambda _msg: None)
    runs: list[Measured] = []
    for i in range(setup.repeats):
        say(f"repeat {i + 1}/{setup.repeats}")
        run_dir = None if out_dir is None else out_dir / f"repeat-{i + 1}"
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        runs.append(measure(setup, base_url, run_dir, status=status, seed_offset=1000 * (i + 1), **kwargs))
    combined = combine_repeats(runs)
    if combined[2] is not None and out_dir is not None:
        (out_dir / "goodput.json").write_text(json.dumps(combined[2], indent=2))
    return combined


def combine_repeats(runs: list[Measured]) -> Measured:
    """One trial's figures from several runs: see ``measure_repeated``."""
    # measure.py builds on this module, so its statistics are imported when needed.
    from autotune.measure import summarise

    all_figures = [figures for figures, _, _ in runs]
    numeric = [k for k in dict.fromkeys(k for f in all_figures for k in f) if _is_number(all_figures, k)]
    figures: dict[str, Any] = {k: v for f in reversed(all_figures) for k, v in f.items() if k not in numeric}
    stats: dict[str, Any] = {}
    for key in numeric:
        summary = summarise([float(f[key]) for f in all_figures if key in f])
        figures[key] = summary.mean
        stats[key] = {"mean": summary.mean, "std": summary.std, "ci95": list(summary.ci95), "n": summary.n}
    if "loadgen_saturated" in numeric:
        figures["loadgen_saturated"] = max(float(f.get("loadgen_saturated", 0)) for f in all_figures)
    # --- telemetry of the repeats as one (begin) ---
    windows = [f["telemetry"] for f in all_figures if isinstance(f.get("telemetry"), dict)]
    if windows:
        from autotune.telemetry import combine_windows

        figures["telemetry"] = combine_windows(windows)
    # --- telemetry (end) ---
    figures["repeats"] = {
        "n": len(runs),
        "summary": _json_safe(stats),
        "runs": [_json_safe({k: f[k] for k in numeric if k in f}) for f in all_figures],
    }
    per_request = [row for _, rows, _ in runs for row in rows]
    goodputs = [g for _, _, g in runs if g is not None]
    goodput = None
    if goodputs:
        goodput = {
            "goodput": figures.get("goodput"),
            "unit": goodputs[0].get("unit"),
            "repeats": [{"goodput": g.get("goodput"), "best": g.get("best")} for g in goodputs],
            "levels": [{**level, "repeat": i + 1} for i, g in enumerate(goodputs) for level in g.get("levels", [])],
        }
    return figures, per_request, goodput


def _is_number(runs: list[dict[str, Any]], key: str) -> bool:
    return all(isinstance(f[key], (int, float)) and not isinstance(f[key], bool) for f in runs if key in f)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None: trial attributes are stored as JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
# --- repeats (end) ---


# --- telemetry around each measured window (begin) ---
def _gpus_used(config: Mapping[str, Any]) -> int | None:
    """GPUs one engine instance occupies (TP x PP); None when the config does not say."""
    tp, pp = config.get("tensor_parallel_size"), config.get("pipeline_parallel_size")
    if tp is None and pp is None:
        return None
    try:
        return int(tp or 1) * int(pp or 1)
    except (TypeError, ValueError):
        return None


def _telemetry_window(setup: TrialSetup, base_url: str, gpu_limit: int | None, say: Callable[[str], None]) -> Any:
    """A TelemetryWindow for one load run; a no-op context if even building it fails."""
    try:
        from autotune.telemetry import ENGINE_METRICS, TelemetryWindow, visible_gpus

        metrics_path = setup.engine.metrics_path if setup.engine.capabilities.metrics else None
        names = getattr(setup.engine, "metric_names", None)
        prefix = getattr(setup.engine, "metric_prefix", None)
        if names is not None and prefix:
            names = {**ENGINE_METRICS.get(prefix, {}), **names}  # the adapter's names win
        return TelemetryWindow(
            base_url + metrics_path if metrics_path else None,
            metric_names=names,
            use_gpu=setup.device == "cuda",
            gpus=visible_gpus(setup.extra_env),
            gpu_limit=gpu_limit,
            scrape_hz=4.0 if setup.device == "cuda" else 2.0,  # each scrape costs a CPU engine's server time
            headers={"Authorization": f"Bearer {setup.api_key}"} if setup.api_key else None,
            say=say,
        )
    except Exception:
        return nullcontext(None)


def _telemetry_figures(
    tel: Any, figures: Mapping[str, Any], windows: list[dict[str, Any]], load: float | None, out_dir: Path | None
) -> dict[str, Any]:
    """The window's figures; its time series go to telemetry.json. Never raises."""
    if tel is None:
        return {"notes": ["telemetry unavailable"]}
    try:
        reduced = tel.figures(figures.get("total_output_tokens"))
        windows.append({"load": load, "figures": reduced, "series": tel.series()})
        if out_dir is not None:
            (out_dir / "telemetry.json").write_text(json.dumps({"windows": windows}, default=str))
        return reduced
    except Exception as e:
        return {"notes": [f"telemetry failed: {type(e).__name__}: {e}"]}
# --- telemetry (end) ---


def _first_error(figures: dict[str, Any], errors: list[str | None]) -> None:
    first = next((e for e in errors if e), None)
    if first:
        figures["first_error"] = first


@lru_cache(maxsize=4)
def _tokenizer(source: str):  # type: ignore[no-untyped-def]
    return load_tokenizer(Path(source))


def _save_metrics(url: str, path: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            path.write_bytes(resp.read())
    except OSError:
        pass


def _write_requests(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _finish(trial_dir: Path, outcome: TrialOutcome) -> TrialOutcome:
    (trial_dir / "outcome.json").write_text(json.dumps(outcome.to_json(), indent=2, default=str))
    return outcome
