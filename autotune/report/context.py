"""What was measured, said once: the workload, the goals and where, for the top of every report.

A figure means nothing without the load that produced it ("5,600 tok/s" at 16
requests in flight is not 5,600 tok/s at 64), so the console, report.html and
the export all state it in these words.
"""

from __future__ import annotations

from typing import Any

from autotune.environment import describe
from autotune.figures import format_figure, label
from autotune.tuning.baseline import versus_defaults
from autotune.tuning import StudyResults, TrialRecord

__all__ = ["baseline_line", "environment_text", "lengths_text", "workload_line", "workload_text"]


def lengths_text(value: Any) -> str:
    """A token length as configured: "128" or "lognormal mean 512 (1..2048)"."""
    if isinstance(value, int):
        return str(value)
    data = value.model_dump() if hasattr(value, "model_dump") else dict(value)
    dist = data.get("dist")
    if dist == "fixed":
        return f"{data['mean']:g}"
    if dist == "uniform":
        return f"{data['min']}..{data['max']}"
    bounds = f" ({data.get('min', 1)}..{data['max']})" if data.get("max") else ""
    return f"{dist} mean {data.get('mean'):g}, std {data.get('std'):g}{bounds}"


def workload_text(spec: Any) -> str:
    """The load each trial was offered, in vllm bench serve's terms."""
    w = spec.workload
    if w.dataset:
        lengths = f"prompts from {w.dataset}, up to {lengths_text(w.output_tokens)} output tokens"
    else:
        lengths = f"{lengths_text(w.prompt_tokens)}-token prompts, {lengths_text(w.output_tokens)}-token outputs"
    if w.shared_prefix_tokens:
        lengths += f" after a {w.shared_prefix_tokens}-token shared prefix"
    if spec.goodput is not None:
        load = "load searched for the goodput (the highest rate at which the SLO holds)"
    elif w.arrival == "concurrency" or not w.rate:
        load = f"{w.concurrency} requests in flight (closed loop)"
    else:
        shape = "Poisson" if w.arrival == "poisson" else f"gamma (burstiness {w.burstiness:g})"
        load = f"{shape} arrivals at {w.rate:g} req/s, at most {w.concurrency} in flight"
    count = f"{w.num_requests} measured requests" + (f" or {w.duration_s:g} s" if w.duration_s else "")
    repeats = f", {spec.repeats} runs per trial" if spec.repeats > 1 else ""
    return f"{lengths}; {load}; {count} after {w.warmup_requests} warm-up{repeats}"


def workload_line(results: StudyResults) -> str:
    """One line above the console's tables: model, engine, workload and SLO."""
    spec = results.spec
    slo = f"SLO {spec.slo}" if spec.slo else "no SLO"
    return f"{results.name}: {spec.model} on {spec.engine.name}; {workload_text(spec)}; {slo}"


def environment_text(results: StudyResults) -> str:
    """Where the recommendations were measured (the first trial that recorded it)."""
    for t in results.front() + results.measured():
        if t.environment:
            return describe(t.environment)
    return "environment not recorded"


def baseline_line(results: StudyResults) -> str | None:
    """The engine's defaults against the best recommendation, on the first objective."""
    base = results.baseline()
    if base is None:
        return None
    best = results.best()
    metric = results.spec.objective_list[0].metric
    head = f"engine defaults: {_figures_text(base, metric)}, {base.verdict_text}"
    maximize = results.spec.objective_list[0].direction == "maximize"
    return f"{head}\n{versus_defaults(best, base, metric, maximize)}"


def _figures_text(t: TrialRecord, metric: str) -> str:
    f = t.figures
    keys = [metric] + [k for k in ("output_throughput", "p99_ttft_ms") if k != metric]
    return ", ".join(f"{label(k)} {format_figure(k, f.get(k))}" for k in keys if f.get(k) is not None)
