"""Measuring a running server: one load or a goodput search, repeated, with telemetry alongside.

Knows nothing of Optuna or of engine lifetimes: it is given a URL and returns a
``Measurement``, so trials, ``autotune measure`` and ``verify`` measure alike.
"""

from __future__ import annotations

import gzip
import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from autotune.json_safe import json_safe
from autotune.load.goodput import endpoint_measure, search_goodput
from autotune.load.prompts import build_requests, load_tokenizer
from autotune.load.runner import run_load
from autotune.load.stats import Summary, per_request_view, summarize
from autotune.trial.setup import TrialSetup

__all__ = ["Measurement", "combine_repeats", "measure", "measure_repeated"]

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


@dataclass
class Measurement:
    """What one measurement (or several repeats of it, combined) found.

    ``figures`` are flat: numbers in vllm bench serve's names, plus a few texts
    (``first_error``). For a goodput search they are the best holding level's.
    """

    figures: dict[str, Any]
    per_request: list[dict[str, Any]] = field(default_factory=list)
    goodput: dict[str, Any] | None = None  # the levels tried and the verdict of each
    telemetry: dict[str, Any] | None = None  # GPU (NVML) and engine-metrics figures of the window
    repeats: dict[str, Any] | None = None  # with repeats: n, each figure's mean/std/CI, each run's figures


def measure(
    setup: TrialSetup,
    base_url: str,
    out_dir: Path | None,
    *,
    status: Say | None = None,
    progress: Progress | None = None,
    seed_offset: int = 0,
    gpu_limit: int | None = None,
    incumbent: float | None = None,
    recheck_below: float | None = None,
    warm_up: bool = True,
) -> Measurement:
    """Drives the workload at a running server: one fixed load, or a goodput search.

    ``gpu_limit`` is how many GPUs the engine uses, for the telemetry of the window.
    ``incumbent``: the best goodput so far; a search starts there and stops at
    once below it (``autotune.load.goodput.search_goodput``). ``recheck_below``:
    a goodput under this is measured once more on the same start, and the
    better reading kept (both are in the goodput record). ``warm_up``: warm the
    engine at the first level's load first; once per engine start is enough.
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
                seed_offset=seed_offset,
            )
        figures: dict[str, Any] = dict(summarize(result))
        telemetry = _telemetry_figures(tel, figures, windows, None, out_dir)
        if out_dir is not None:
            _write_requests(out_dir / "requests.jsonl", [r.as_dict() for r in result.records])
        _first_error(figures, [r.error for r in result.records])
        return Measurement(figures, per_request_view(result.records), None, telemetry)

    g = setup.goodput
    judged = [c for c in setup.constraints if c.kind in ("latency", "throughput")]
    metrics_url = _metrics_url(setup, base_url)

    def search(offset: int, warm: bool, start_at: float | None) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
        """One goodput search: its result, its record (each level with its own window's telemetry), and
        that telemetry in the order the levels were measured."""
        probe = endpoint_measure(
            base_url, setup.engine.request_model(setup.model), tokenizer, vocab, workload, unit=g.unit,
            ignore_eos=setup.engine.capabilities.ignore_eos, api_key=setup.api_key, progress=progress,
            min_duration_s=g.min_duration_s, seed_offset=offset, constraints=judged, design_effect=g.design_effect,
            warmup_s=g.warmup_s if warm else 0.0, warmup_latencies=g.warmup_latencies if warm else 0.0,
            metrics_url=metrics_url, metric_names=_metric_names(setup) if metrics_url else None,
            metrics_headers=_auth(setup), metrics_hz=_scrape_hz(setup),
        )
        telemetry: list[dict[str, Any]] = []

        def level(load: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
            say(f"goodput level {len(telemetry) + 1}/{g.max_levels}: {load:g} {g.unit}")
            with _telemetry_window(setup, base_url, gpu_limit, say) as tel:
                level_figures, per_request = probe(load)
            level_figures = dict(level_figures)
            telemetry.append(_telemetry_figures(tel, level_figures, windows, load, out_dir))
            if out_dir is not None:
                _append_level(out_dir / "levels.jsonl", offset, len(telemetry), load, per_request,
                              level_figures.get("engine_queue"))
            return level_figures, per_request

        found = search_goodput(
            level, judged, unit=g.unit, start=g.start, max_levels=g.max_levels, upper=g.upper,
            min_load=g.min_load, resolution=g.resolution, conservative=g.conservative, growth=g.growth,
            incumbent=start_at, design_effect=g.design_effect, first_growth=g.first_step,
        )
        record = found.to_json()
        for entry, figures in zip(record["levels"], telemetry, strict=True):
            entry["telemetry"] = {k: v for k, v in json_safe(figures).items() if v is not None}
        return found, record, telemetry

    found, summary, telemetry = search(seed_offset, warm_up, incumbent)
    if recheck_below is not None and _reading(found) < recheck_below:
        # A verdict far below what a configuration one knob away (or the defaults) served is more
        # likely a bad reading than a bad configuration: one more search on the same start decides.
        say(f"goodput {_reading(found):g} is far below {recheck_below:g}: measuring again")
        again, again_summary, again_telemetry = search(seed_offset + 500, False, None)
        readings = [summary, again_summary]
        if _reading(again) > _reading(found):
            found, summary, telemetry = again, again_summary, again_telemetry
        summary = {**summary, "readings": readings, "rechecked_below": recheck_below}
    chosen = found.best or found.levels[0]
    figures = dict(chosen.figures)
    if found.stopped == "below incumbent":
        figures["goodput_upper_bound"] = found.goodput_upper_bound  # a bound, not a measurement
    else:
        figures["goodput"] = found.goodput
    if out_dir is not None:
        (out_dir / "goodput.json").write_text(json.dumps(summary, indent=2))
    _first_error(figures, [r.get("error") for r in chosen.per_request])
    chosen_at = next(i for i, level in enumerate(found.levels) if level is chosen)
    return Measurement(figures, chosen.per_request, summary, telemetry[chosen_at])


def _reading(found: Any) -> float:
    """What a search says the goodput is: its measured value, or the bound it stopped below."""
    return float(found.goodput_upper_bound if found.stopped == "below incumbent" else found.goodput)


def measure_repeated(
    setup: TrialSetup, base_url: str, out_dir: Path | None, *, repeats: int | None = None,
    on_repeat: Callable[[int, Measurement], None] | None = None, seed_offset: int = 0, **kwargs: Any,
) -> Measurement:
    """``measure`` ``repeats`` times (default ``setup.repeats``) on one server, combined.

    Each run draws fresh prompts and its own arrival schedule (its own seed
    offset, above ``seed_offset``), so a prefix cache cannot serve a later run
    from an earlier one, and keeps its artefacts in ``out_dir/repeat-N``.
    ``on_repeat`` sees every run as it ends, so a caller can keep what was
    measured before an interruption.
    """
    n = setup.repeats if repeats is None else repeats
    if n <= 1:
        one = measure(setup, base_url, out_dir, seed_offset=seed_offset, **kwargs)
        if on_repeat is not None:
            on_repeat(0, one)
        return one
    say = kwargs.get("status") or (lambda _msg: None)
    runs: list[Measurement] = []
    for i in range(n):
        say(f"repeat {i + 1}/{n}")
        run_dir = None if out_dir is None else out_dir / f"repeat-{i + 1}"
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        runs.append(measure(setup, base_url, run_dir, seed_offset=seed_offset + 1000 * (i + 1), warm_up=i == 0,
                            **kwargs))
        if on_repeat is not None:
            on_repeat(i, runs[-1])
    combined = combine_repeats(runs)
    if combined.goodput is not None and out_dir is not None:
        (out_dir / "goodput.json").write_text(json.dumps(combined.goodput, indent=2))
    return combined


def combine_repeats(runs: list[Measurement]) -> Measurement:
    """One trial's figures from several runs: each numeric figure's mean, with its spread beside.

    ``loadgen_saturated`` is the worst run's, not the mean: one distorted run
    taints the mean. The per-request view pools all runs, so attainment SLOs
    are judged on every request measured.
    """
    all_figures = [r.figures for r in runs]
    numeric = [k for k in dict.fromkeys(k for f in all_figures for k in f) if _is_number(all_figures, k)]
    figures: dict[str, Any] = {k: v for f in reversed(all_figures) for k, v in f.items() if k not in numeric}
    stats: dict[str, Any] = {}
    for key in numeric:
        summary = Summary.of(float(f[key]) for f in all_figures if key in f)
        figures[key] = summary.mean
        stats[key] = {"mean": summary.mean, "std": summary.std, "ci95": list(summary.ci95), "n": summary.n}
    if "loadgen_saturated" in numeric:
        figures["loadgen_saturated"] = max(float(f.get("loadgen_saturated", 0)) for f in all_figures)
    windows = [r.telemetry for r in runs if isinstance(r.telemetry, dict)]
    telemetry = None
    if windows:
        from autotune.telemetry import combine_windows

        telemetry = combine_windows(windows)
    repeats = {
        "n": len(runs),
        "summary": json_safe(stats),
        "runs": [json_safe({k: f[k] for k in numeric if k in f}) for f in all_figures],
    }
    goodputs = [r.goodput for r in runs if r.goodput is not None]
    goodput = None
    if goodputs:
        goodput = {
            "goodput": figures.get("goodput"),
            "unit": goodputs[0].get("unit"),
            "repeats": [{"goodput": g.get("goodput"), "best": g.get("best")} for g in goodputs],
            "levels": [{**level, "repeat": i + 1} for i, g in enumerate(goodputs) for level in g.get("levels", [])],
        }
    per_request = [row for r in runs for row in r.per_request]
    return Measurement(figures, per_request, goodput, telemetry, repeats)


def _is_number(runs: list[dict[str, Any]], key: str) -> bool:
    return all(isinstance(f[key], (int, float)) and not isinstance(f[key], bool) for f in runs if key in f)


def _metrics_url(setup: TrialSetup, base_url: str) -> str | None:
    path = setup.engine.metrics_path if setup.engine.capabilities.metrics else None
    return base_url + path if path else None


def _metric_names(setup: TrialSetup) -> Any:
    return setup.engine.metric_names


def _auth(setup: TrialSetup) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {setup.api_key}"} if setup.api_key else None


def _scrape_hz(setup: TrialSetup) -> float:
    return 4.0 if setup.device == "cuda" else 2.0  # each scrape costs a CPU engine's server time


def _telemetry_window(setup: TrialSetup, base_url: str, gpu_limit: int | None, say: Say) -> Any:
    """A TelemetryWindow for one load run; a no-op context if even building it fails."""
    try:
        from autotune.telemetry import TelemetryWindow, visible_gpus

        return TelemetryWindow(
            _metrics_url(setup, base_url), metric_names=_metric_names(setup), use_gpu=setup.device == "cuda",
            gpus=visible_gpus(setup.extra_env), gpu_limit=gpu_limit, scrape_hz=_scrape_hz(setup),
            headers=_auth(setup), say=say,
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


def _first_error(figures: dict[str, Any], errors: list[str | None]) -> None:
    first = next((e for e in errors if e), None)
    if first:
        figures["first_error"] = first


@lru_cache(maxsize=4)
def _tokenizer(source: str):  # type: ignore[no-untyped-def]
    return load_tokenizer(Path(source))


_LEVEL_COLUMNS = ("start_s", "ttft_s", "tpot_s", "e2e_s")


def _append_level(
    path: Path, search: int, level: int, load: float, rows: list[dict[str, Any]], queue: Any = None
) -> None:
    """One goodput level's requests, kept so that a verdict can be re-examined after the engine is gone.

    Columns, not rows, and without the inter-token gaps: a GPU search measures
    thousands of requests, and TPOT already summarises each one's gaps.
    With the engine's waiting and running counts through the level (``engine_queue``, where it was
    polled), so that the backlog check can be run again on what it saw.
    """
    columns = {key: [row.get(key) for row in rows] for key in _LEVEL_COLUMNS}
    kept = {"search": search, "level": level, "load": load, **columns}
    if queue:
        kept["engine_queue"] = queue
    with open(path, "a") as f:
        f.write(json.dumps(kept) + "\n")


def read_levels(path: Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A ``levels.jsonl`` (or its gzip) back as ``(search, level, load)`` (and ``engine_queue`` where kept)
    and the level's per-request rows."""
    out = []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        kept = json.loads(line)
        rows = [dict(zip(_LEVEL_COLUMNS, values, strict=True)) for values in zip(*(kept[k] for k in _LEVEL_COLUMNS))]
        out.append(({k: kept[k] for k in ("search", "level", "load", "engine_queue") if k in kept}, rows))
    return out


def _write_requests(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
