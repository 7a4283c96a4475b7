"""A study's measurements in the formats other tools read: vLLM's benchmark results, CSV and JSON lines.

``vllm-bench`` writes what ``vllm bench sweep serve`` writes: one folder per
configuration holding ``run=<k>.json`` per measured run, each the JSON that
``vllm bench serve --save-result --save-detailed`` saves (``date``,
``backend``, ``model_id``, ``num_prompts``, ``request_rate``,
``max_concurrency``, the figures under their names, and the per-request
lists ``input_lens``, ``output_lens``, ``ttfts``, ``itls`` ...) plus the
configuration's knobs, and ``summary.json``, the list of those runs. vLLM's
own readers (``vllm bench sweep plot`` and ``plot_pareto``) take the folder as
it is, and so does anything written for ``vllm bench serve``'s files. A
summary.csv of every run sits at the top.

``csv`` is one row per trial with flat columns (verdict, knobs, key figures,
each SLO's verdict); ``jsonl`` is one trial per line with everything stored.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from autotune.errors import UserError
from autotune.figures import trial_name
from autotune.json_safe import json_safe
from autotune.tuning import StudyResults, TrialRecord

__all__ = ["FORMATS", "bench_runs", "export"]

FORMATS = ("vllm-bench", "csv", "jsonl")
BACKEND = "openai"  # vllm bench serve's name for the /v1/completions client, the one autotune drives
# Columns of the CSV beside the knobs and the SLOs.
_CSV_FIGURES = ("output_throughput", "request_throughput", "total_token_throughput", "goodput", "median_ttft_ms",
                "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "completed", "failed",
                "cost_per_1k_tokens", "startup_s")


def export(results: StudyResults, out: Path, fmt: str) -> list[Path]:
    """Writes the study in ``fmt`` under ``out`` (a folder for vllm-bench, a file otherwise); the paths written."""
    if fmt == "vllm-bench":
        return _vllm_bench(results, out)
    if fmt == "csv":
        return [_csv(results, out)]
    if fmt == "jsonl":
        return [_jsonl(results, out)]
    raise UserError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")


def _measured(results: StudyResults) -> list[tuple[str, TrialRecord]]:
    """(folder name, record) of every measured trial, the engine defaults' baseline first."""
    out = []
    base = results.baseline()
    if base is not None and base.figures:
        out.append(("engine-defaults", base))
    out += [(f"trial-{t.number}", t) for t in results.measured() if t.figures]
    return out


def _vllm_bench(results: StudyResults, out: Path) -> list[Path]:
    written: list[Path] = []
    every: list[dict[str, Any]] = []
    for folder, t in _measured(results):
        runs = bench_runs(results, t)
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for run in runs:
            path = target / f"run={run['run_number']}.json"
            path.write_text(json.dumps(run, indent=4))
            written.append(path)
        (target / "summary.json").write_text(json.dumps(runs, indent=4))
        written.append(target / "summary.json")
        every += runs
    if not every:
        raise UserError(f"study {results.name} has no measured trial to export")
    written.append(_write_csv(out / "summary.csv", [{k: v for k, v in r.items() if not isinstance(v, list)}
                                                    for r in every]))
    return written


def bench_runs(results: StudyResults, t: TrialRecord) -> list[dict[str, Any]]:
    """One trial's runs as ``vllm bench serve --save-result --save-detailed`` writes each."""
    spec = results.spec
    w = spec.workload
    repeats = t.get("repeats") or {}
    per_run = [dict(r) for r in repeats.get("runs") or []] or [t.figures]
    trial_dir = Path(str(t.get("trial_dir") or ""))
    when = t.started_at.strftime("%Y%m%d-%H%M%S") if t.started_at else _date(t.environment.get("recorded_at"))
    model = str(t.get("model_source") or spec.model)
    runs = []
    for k, figures in enumerate(per_run):
        rows = _requests(trial_dir / (f"repeat-{k + 1}" if len(per_run) > 1 else "") / "requests.jsonl") \
            if t.get("trial_dir") else []
        run: dict[str, Any] = {
            "date": when, "endpoint_type": BACKEND, "backend": BACKEND,
            "label": f"autotune {results.name} {trial_name(t.number)}",
            "model_id": model, "tokenizer_id": model, "num_prompts": w.num_requests,
            "request_rate": w.rate if w.rate and w.arrival != "concurrency" else "inf",
            "burstiness": w.burstiness, "max_concurrency": w.concurrency,
        }
        run.update({key: value for key, value in figures.items() if _is_figure(key, value)})
        run["request_goodput"] = _request_goodput(rows, spec.constraints, figures.get("duration"))
        if rows:
            run.update(_detailed(rows))
        run.update({k: v for k, v in t.config.items() if k not in run})
        run.update({"run_number": k, "autotune_study": results.name, "autotune_trial": t.number,
                    "autotune_verdict": t.verdict_text})
        if isinstance(t.figures.get("goodput"), (int, float)):
            run["autotune_goodput"] = t.figures["goodput"]
        runs.append(json_safe(run))
    return runs


_FIGURE = re.compile(r"^(duration|completed|failed|total_input_tokens|total_output_tokens|request_throughput|"
                     r"output_throughput|total_token_throughput|(mean|median|std|max|p\d+(\.\d+)?)_(ttft|tpot|itl|e2el)_ms)$")


def _is_figure(key: str, value: Any) -> bool:
    return bool(_FIGURE.match(key)) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _date(recorded_at: Any) -> str:
    """vllm bench serve's date format from an ISO time."""
    text = str(recorded_at or "")
    digits = re.sub(r"[^0-9]", "", text)[:14]
    return f"{digits[:8]}-{digits[8:14]}" if len(digits) == 14 else text


def _requests(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def _detailed(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-request lists vllm bench serve saves with --save-detailed (seconds, as it writes them)."""
    t0 = min(float(r.get("start") or 0.0) for r in rows)
    out: dict[str, Any] = {
        "input_lens": [int(r.get("prompt_tokens") or 0) for r in rows],
        "output_lens": [int(r.get("output_tokens") or 0) if r.get("ok") else 0 for r in rows],
        "ttfts": [float(r["ttft_s"]) if r.get("ok") and r.get("ttft_s") is not None else 0.0 for r in rows],
        "itls": [[float(x) for x in r.get("itl_s") or []] if r.get("ok") else [] for r in rows],
        "latencies": [float(r["e2e_s"]) if r.get("ok") and r.get("e2e_s") is not None else 0.0 for r in rows],
        "start_times": [float(r.get("start") or 0.0) - t0 for r in rows],
        "errors": [str(r.get("error") or "") for r in rows],
    }
    out.update(_peaks(rows, t0))
    return out


def _peaks(rows: Sequence[Mapping[str, Any]], t0: float) -> dict[str, Any]:
    """``max_output_tokens_per_s`` and ``max_concurrent_requests`` over one-second buckets, as vllm counts them."""
    tokens: dict[int, int] = {}
    spans = []
    for r in rows:
        start = float(r.get("start") or 0.0) - t0
        if r.get("ok") and r.get("ttft_s") is not None:
            t = start + float(r["ttft_s"])
            tokens[int(t)] = tokens.get(int(t), 0) + 1
            for gap in r.get("itl_s") or []:
                t += float(gap)
                tokens[int(t)] = tokens.get(int(t), 0) + 1
        end = start + float(r.get("e2e_s") or r.get("ttft_s") or 0.0)
        spans.append((start, end))
    if not spans:
        return {}
    last = int(max(end for _, end in spans)) + 1
    concurrent = [sum(1 for s, e in spans if s < second + 1 and e >= second) for second in range(last)]
    return {"max_output_tokens_per_s": float(max(tokens.values(), default=0)),
            "max_concurrent_requests": int(max(concurrent, default=0))}


def _request_goodput(rows: Sequence[Mapping[str, Any]], constraints: Iterable[Any], duration: Any) -> float | None:
    """vllm bench serve's ``request_goodput``: requests/s that met every per-request latency
    bound the SLO names (its ``--goodput ttft:300``), None without an SLO or without the requests."""
    bounds = [(c.metric, c.op, c.threshold) for c in constraints
              if c.kind == "latency" and c.metric in ("ttft", "tpot", "e2e") and c.op in ("<", "<=")]
    if not bounds or not rows or not isinstance(duration, (int, float)) or duration <= 0:
        return None
    key = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}
    good = 0
    for r in rows:
        if not r.get("ok"):
            continue
        values = [r.get(key[m]) for m, _, _ in bounds]
        if all(v is not None and (v < limit if op == "<" else v <= limit)
               for v, (_, op, limit) in zip(values, bounds)):
            good += 1
    return good / float(duration)


def trial_row(results: StudyResults, t: TrialRecord) -> dict[str, Any]:
    """One trial as a flat row: verdict, knobs, key figures and each SLO's verdict."""
    row: dict[str, Any] = {"trial": t.number, "state": t.state, "verdict": t.verdict_text, "reason": t.reason or ""}
    for i, o in enumerate(results.spec.objective_list if results.spec else []):
        row[f"value_{o.metric}"] = t.values[i] if t.values and i < len(t.values) else None
    row.update({k: v for k, v in sorted(t.config.items())})
    figures = t.figures
    row.update({key: figures.get(key) for key in _CSV_FIGURES})
    row["startup_s"] = t.get("startup_s")
    for text in results.slo_texts():
        verdict = t.slo.get(text)
        row[f"slo {text}"] = None if verdict is None else ("met" if verdict.get("holds") else "missed")
    return row


def _csv(results: StudyResults, out: Path) -> Path:
    rows = [trial_row(results, t) for t in results.trials]
    base = results.baseline()
    if base is not None:
        rows.insert(0, {**trial_row(results, base), "trial": "engine defaults"})
    return _write_csv(out, rows)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in r.items()})
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else value


def _jsonl(results: StudyResults, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"study": results.name, **t.to_json()}, default=str) for t in results.trials]
    base = results.baseline()
    if base is not None:
        lines.insert(0, json.dumps({"study": results.name, "baseline": True, **base.to_json()}, default=str))
    out.write_text("\n".join(lines) + "\n")
    return out
