"""How fast a load generator can go, and how much time it adds, on this machine.

Every client here (autotune's own, ``vllm bench serve``'s, GuideLLM's) drives
the same zero-latency streaming server (``benchmarks/fake_server.py``) with the
same workload, in the same run, in rotating order.  The server runs on one
core and the client on another, so that neither steals the other's CPU; the
server is far from saturated (its CPU time is printed with the results).

Two phases per repeat:

* capacity: a closed loop at high concurrency.  The figure is streamed
  output tokens per second, counted by the server (the same yardstick for
  every client) from the first request received to the last token written;
  each client's own figure is shown beside it.
* timing error: one request at a time.  The server's own time to first token
  and inter-token gap are microseconds, so what a client measures above them
  is the client's (and the loopback's) doing.  Both sides read
  CLOCK_MONOTONIC.

    bash scripts/install.sh && bash scripts/install-benchmarks.sh && \\
      .venv/bin/python benchmarks/loadgen_capacity.py

Run it under the engine lock on a shared machine:
``flock /tmp/autotune-engine.lock .venv/bin/python benchmarks/loadgen_capacity.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (  # noqa: E402
    ROOT,
    environment,
    environment_line,
    free_cores,
    guidellm_cli,
    loadavg,
    pinned,
    ratio,
    stat,
    vllm_cli,
    write_section,
)

CLIENTS = ("autotune", "vllm bench serve", "guidellm")
MODEL = "fake"
TARGET_TPS = 50_000


@dataclass
class Phase:
    """One workload: a closed loop of ``requests`` requests at ``concurrency``."""

    name: str
    concurrency: int
    requests: int
    prompt_tokens: int
    output_tokens: int


# --------------------------------------------------------------------------- the server


class Server:
    """The fake server as a child process on its own core."""

    def __init__(self, core: int | None) -> None:
        argv = [sys.executable, str(ROOT / "benchmarks" / "fake_server.py"), "--port", "0", "--model", MODEL]
        if core is not None:
            argv += ["--cpu", str(core)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise SystemExit(f"error: fake server did not start: {line.strip()}")
        self.url = line.split()[-1]

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/fake/reset", method="POST"), timeout=10).read()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/fake/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- the clients


def _run(argv: list[str], core: int | None, timeout: float, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, preexec_fn=pinned(core), cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{argv[0]} exited with {proc.returncode}:\n{tail}")
    return proc.stdout


def run_autotune(url: str, tokenizer: Path, phase: Phase, core: int | None, workdir: Path) -> dict[str, Any]:
    """In a child process, as the other clients are, so that each gets the same core to itself."""
    params = {"url": url, "tokenizer": str(tokenizer), **asdict(phase)}
    out = _run([sys.executable, __file__, "--as-autotune-client", json.dumps(params)], core, 600)
    return json.loads(out.strip().splitlines()[-1])


def _autotune_client(params: dict[str, Any]) -> None:
    """The child side of ``run_autotune``: prompts are built before the clock starts."""
    from autotune.load.runner import run_load
    from autotune.load.stats import summarize
    from autotune.load.prompts import build_requests, load_tokenizer
    from autotune.load.workload import Workload

    tok, vocab = load_tokenizer(Path(params["tokenizer"]))
    workload = Workload(
        prompt_tokens=params["prompt_tokens"], output_tokens=params["output_tokens"],
        concurrency=params["concurrency"], num_requests=params["requests"], warmup_requests=0,
    )
    requests = build_requests(workload, tok, vocab, count=params["requests"])
    result = run_load(params["url"], MODEL, requests, workload)
    s = summarize(result)
    print(json.dumps({
        "client_tps": s["output_throughput"],
        "completed": s["completed"],
        "median_ttft_ms": s["median_ttft_ms"],
        "p99_ttft_ms": s["p99_ttft_ms"],
        "mean_itl_ms": s["mean_itl_ms"],
        "client_cpu_util": s.get("client_cpu_util"),
    }))


def run_vllm(url: str, tokenizer: Path, phase: Phase, core: int | None, workdir: Path) -> dict[str, Any]:
    out = workdir / "vllm.json"
    out.unlink(missing_ok=True)
    _run([
        *vllm_cli(), "bench", "serve", "--backend", "openai", "--base-url", url, "--model", MODEL,
        "--tokenizer", str(tokenizer), "--dataset-name", "random",
        "--random-input-len", str(phase.prompt_tokens), "--random-output-len", str(phase.output_tokens),
        "--num-prompts", str(phase.requests), "--max-concurrency", str(phase.concurrency),
        "--request-rate", "inf", "--ignore-eos", "--num-warmups", "0", "--disable-tqdm",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--result-dir", str(workdir), "--result-filename", out.name,
    ], core, 600)
    d = json.loads(out.read_text())
    return {
        "client_tps": d["output_throughput"],
        "completed": d["completed"],
        "median_ttft_ms": d["median_ttft_ms"],
        "p99_ttft_ms": d["p99_ttft_ms"],
        "mean_itl_ms": d["mean_itl_ms"],
    }


def guidellm_scenario(url: str, tokenizer: Path, phase: Phase, out: Path) -> dict[str, Any]:
    return {"spec": {
        "backend": {"kind": "openai_http", "target": url, "model": MODEL, "request_format": "/v1/completions"},
        "profile": {"kind": "concurrent", "streams": [phase.concurrency]},
        "data": [{"kind": "synthetic_text", "prompt_tokens": phase.prompt_tokens,
                  "output_tokens": phase.output_tokens}],
        "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
        "constraints": [{"kind": "max_requests", "count": phase.requests}],
        "outputs": [{"kind": "json", "path": str(out)}],
    }}


def run_guidellm(url: str, tokenizer: Path, phase: Phase, core: int | None, workdir: Path) -> dict[str, Any]:
    out = workdir / "guidellm.json"
    out.unlink(missing_ok=True)
    scenario = workdir / "guidellm-scenario.json"
    scenario.write_text(json.dumps(guidellm_scenario(url, tokenizer, phase, out)))
    _run([*guidellm_cli(), "run", "--scenario", str(scenario), "--disable-console"], core, 600, cwd=workdir)
    m = json.loads(out.read_text())["benchmarks"][0]["metrics"]

    def ok(key: str) -> dict[str, Any]:
        return m[key]["successful"]

    return {
        "client_tps": ok("output_tokens_per_second")["mean"],
        "completed": m["request_totals"]["successful"],
        "median_ttft_ms": ok("time_to_first_token_ms")["median"],
        "p99_ttft_ms": ok("time_to_first_token_ms")["percentiles"]["p99"],
        "mean_itl_ms": ok("inter_token_latency_ms")["mean"],
    }


RUNNERS = {"autotune": run_autotune, "vllm bench serve": run_vllm, "guidellm": run_guidellm}


# --------------------------------------------------------------------------- the benchmark


def measure(server: Server, client: str, tokenizer: Path, phase: Phase, core: int | None, workdir: Path) -> dict[str, Any]:
    server.reset()
    t0 = time.perf_counter()
    figures = RUNNERS[client](server.url, tokenizer, phase, core, workdir)
    figures["wall_s"] = time.perf_counter() - t0
    s = server.stats()
    figures["server"] = s
    figures["server_tps"] = s["tokens_per_s"]
    figures["server_cpu_util"] = s["cpu_s"] / s["span_s"] if s["span_s"] else None
    if s["requests"] != phase.requests:
        raise RuntimeError(f"{client}: the server saw {s['requests']} requests, expected {phase.requests}")
    return figures


def tables(results: dict[str, dict[str, list[dict[str, Any]]]], phases: dict[str, Phase], clients: list[str]):  # type: ignore[no-untyped-def]
    from rich.table import Table

    cap = phases["capacity"]
    t1 = Table(
        title=(f"Capacity: closed loop, concurrency {cap.concurrency}, {cap.requests} requests x "
               f"{cap.output_tokens} streamed tokens (mean ± std over repeats)"),
        title_justify="left",
    )
    for col in ("client", "streamed tok/s (server count)", "vs autotune", "tok/s (client's own)",
                "server CPU busy", "p50 TTFT ms"):
        t1.add_column(col, justify="left" if col == "client" else "right")
    base = stat([r["server_tps"] for r in results["capacity"]["autotune"]]) if "autotune" in clients else None
    for c in clients:
        rs = results["capacity"][c]
        tps = stat([r["server_tps"] for r in rs])
        t1.add_row(
            c, tps.text(), ratio(tps, base) if base else "n/a", stat([r["client_tps"] for r in rs]).text(),
            stat([100 * (r["server_cpu_util"] or 0) for r in rs]).text("{:.0f}%"),
            stat([r["median_ttft_ms"] for r in rs]).text("{:,.1f}"),
        )

    tim = phases["timing"]
    t2 = Table(
        title=(f"Timing error: one request at a time, {tim.requests} requests x {tim.output_tokens} tokens; "
               "time the client adds to the server's own figures, ms (mean ± std over repeats)"),
        title_justify="left",
    )
    for col in ("client", "p50 TTFT added", "vs autotune", "p99 TTFT added", "mean ITL added", "server p50 TTFT"):
        t2.add_column(col, justify="left" if col == "client" else "right")

    def added(r: dict[str, Any], key: str, server_key: str) -> float:
        return r[key] - r["server"][server_key]

    base2 = stat([added(r, "median_ttft_ms", "median_ttft_ms") for r in results["timing"]["autotune"]]) \
        if "autotune" in clients else None
    for c in clients:
        rs = results["timing"][c]
        p50 = stat([added(r, "median_ttft_ms", "median_ttft_ms") for r in rs])
        t2.add_row(
            c, p50.text("{:.3f}"), ratio(p50, base2) if base2 else "n/a",
            stat([added(r, "p99_ttft_ms", "p99_ttft_ms") for r in rs]).text("{:.3f}"),
            stat([added(r, "mean_itl_ms", "mean_itl_ms") for r in rs]).text("{:.4f}"),
            stat([r["server"]["median_ttft_ms"] for r in rs]).text("{:.3f}"),
        )
    return t1, t2


def verdict(results: dict[str, dict[str, list[dict[str, Any]]]], clients: list[str]) -> list[str]:
    if "autotune" not in clients:
        return []
    ours = stat([r["server_tps"] for r in results["capacity"]["autotune"]])
    lines = [f"autotune: {ours.mean:,.0f} streamed tokens/s "
             f"({'meets' if ours.mean >= TARGET_TPS else 'misses'} the {TARGET_TPS:,} target)"]
    for c in clients:
        if c != "autotune":
            other = stat([r["server_tps"] for r in results["capacity"][c]])
            lines.append(f"  vs {c}: {ours.mean / other.mean:.2f}x ({'at least as fast' if ours.mean >= other.mean else 'slower'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="the methodology asks for at least 10 for a reported figure")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {', '.join(CLIENTS)}")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--output-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--timing-requests", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="write every raw figure here")
    parser.add_argument("--write-docs", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")
    parser.add_argument("--as-autotune-client", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_autotune_client:
        _autotune_client(json.loads(args.as_autotune_client))
        return 0

    from rich.console import Console

    from autotune.models.tiny import ensure_tiny_model

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in clients if c not in RUNNERS]
    if unknown:
        print(f"error: unknown client(s) {', '.join(unknown)}; known: {', '.join(CLIENTS)}", file=sys.stderr)
        return 2
    if "guidellm" in clients:
        guidellm_cli()  # fails early with the install hint
    console = Console(record=True, width=140)
    env = environment()
    cores = free_cores()
    server_core, client_core = (cores[0], cores[-1]) if len(cores) > 1 else (None, None)
    tokenizer = ensure_tiny_model()
    phases = {
        "capacity": Phase("capacity", args.concurrency, args.requests, args.prompt_tokens, args.output_tokens),
        "timing": Phase("timing", 1, args.timing_requests, args.prompt_tokens, 64),
    }
    console.print(environment_line(env), highlight=False)
    console.print(f"server on core {server_core}, client on core {client_core}; {args.repeats} repeat(s)", highlight=False)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {p: {c: [] for c in clients} for p in phases}
    server = Server(server_core)
    try:
        with tempfile.TemporaryDirectory(prefix="loadgen-capacity-") as tmp:
            for i in range(args.repeats):
                order = clients[i % len(clients):] + clients[: i % len(clients)]
                for c in order:
                    for name, phase in phases.items():
                        r = measure(server, c, tokenizer, phase, client_core, Path(tmp))
                        results[name][c].append(r)
                        console.print(
                            f"  repeat {i + 1} {c:<17} {name:<8} server {r['server_tps']:>9,.0f} tok/s, "
                            f"client {r['client_tps']:>9,.0f} tok/s, p50 TTFT {r['median_ttft_ms']:.3f} ms",
                            highlight=False,
                        )
    finally:
        server.stop()
    env["loadavg_end"] = loadavg()
    t1, t2 = tables(results, phases, clients)
    console.print(t1)
    console.print(t2)
    for line in verdict(results, clients):
        console.print(line, highlight=False)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "phases": {k: asdict(v) for k, v in phases.items()},
                                         "results": results}, indent=2))
    if args.write_docs:
        text = console.export_text()
        write_section("loadgen_capacity", docs_section(env, args, text))
    return 0


def docs_section(env: dict[str, Any], args: argparse.Namespace, text: str) -> str:
    cmd = ".venv/bin/python benchmarks/loadgen_capacity.py"
    if args.repeats != 10:
        cmd += f" --repeats {args.repeats}"
    return (
        "### Latest output\n\n"
        f"Latest run: {environment_line(env)}; load average at end {env['loadavg_end']}.\n\n"
        f"Command (under the engine lock): `flock /tmp/autotune-engine.lock {cmd} --write-docs`\n\n"
        "```text\n" + text.rstrip() + "\n```\n"
    )


if __name__ == "__main__":
    sys.exit(main())
