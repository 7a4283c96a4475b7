"""Did the server keep up with an open-loop rate, or is a backlog growing that a short level hides?

A level can meet a latency SLO at a rate the server cannot sustain: an engine
that admits every request at once (vLLM with a large ``max_num_seqs``) keeps
TTFT low and pays in a batch that keeps growing, and a queue that has only
just started to build has not yet reached the p99.  Such a level is no
goodput, however its latencies read.

The first check compared the median end-to-end latency of the two halves of
a level and failed it below 0.85.  A ratio of latency *levels* is no measure
of keeping up: it swings with every Poisson burst, and on an H200 it failed a
level at 15.36 req/s whose p99 TTFT was 141 ms against a 300 ms bound (ratio
0.78).  What a backlog changes is the *trend*: the number of requests in the
system grows at the rate the server falls short by.  So the served fraction
is estimated from a slope, with a confidence bound, and a level fails only
when even the bound says the server served less than ``min_sustained`` of
its arrivals:

* from the engine's own queue where the caller has it (vLLM's
  ``num_requests_waiting``, plus ``num_requests_running`` where present: a
  batch that keeps growing is a backlog the waiting queue alone does not
  show): served = 1 - slope / rate;
* otherwise from the client's end-to-end latencies by send time: a request
  sent ``dt`` later finishing ``slope * dt`` later still means the server
  completes ``1 / (1 + slope)`` of what arrives.

Slopes are fitted to block means over windows of half a latency (at least
0.5 s; the latency of the first third of the level, before a backlog could
inflate it), so that neighbouring requests, which share a batch and its
luck, do not pass for independent evidence, after the ramp-up: 1.5 of the
level's median latencies from the first send.  The ramp is not one latency
of the first requests: on an H100 (Llama-3.1-8B shape, 24.5 req/s, p99 TPOT
23.6 ms against 25) each request joined a fuller batch and took longer than
the one before, from 2.8 s to over 5 s, so the count in the system rose for
8 s; judged from 4.2 s, the level read as serving 62% of its arrivals with an
empty waiting queue.  A level too short for four blocks is not judged here:
its latency SLOs decide.

What the old check still caught truly is kept as a second test: a latency SLO
whose own metric rises steadily through the level (the lower confidence bound
of its slope above 0) and would cross its bound if the level ran as long again
fails: it only held because the run stopped before the backlog showed. Where
the engine's count judges and did not confidently grow, that test stands
down: a backlog is a count that grows, and a latency can rise without one.
On an H100 (fp8, 25 req/s) the last two seconds of a level's sends met a
burst: p99 TPOT 22.6 ms against 25, the count in the engine flat through the
level (66-116), and a slope fitted through that last block projected 27 ms.
The same engine start held 28.9 req/s in another search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from autotune.spec.slo import Constraint

__all__ = ["backlog_verdict", "block_trend", "percentile_of"]

_FIELD = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}
_MIN_BLOCKS = 4
_RAMP_LATENCIES = 1.5


def block_trend(
    t: Sequence[float], y: Sequence[float], begin: float, end: float, block_s: float, confidence: float = 0.95
) -> tuple[float, float, float] | None:
    """Slope of ``y`` over ``t`` in ``[begin, end)`` and its two-sided confidence bounds, from block means.

    None when fewer than four blocks of ``block_s`` hold data: too little to
    tell a trend from a burst.
    """
    blocks = int((end - begin) // block_s) if block_s > 0 else 0
    if blocks < _MIN_BLOCKS:
        return None
    ts, ys = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    which = np.floor((ts - begin) / block_s).astype(int)
    centers, means = [], []
    for b in range(blocks):
        inside = ys[(which == b) & np.isfinite(ys)]
        if inside.size:
            centers.append(begin + (b + 0.5) * block_s)
            means.append(float(inside.mean()))
    if len(means) < _MIN_BLOCKS:
        return None
    fit = stats.linregress(centers, means)
    half = float(stats.t.ppf((1 + confidence) / 2, len(means) - 2)) * float(fit.stderr)
    return float(fit.slope), float(fit.slope) - half, float(fit.slope) + half


def backlog_verdict(
    rows: Sequence[Mapping[str, Any]],
    rate: float,
    constraints: Sequence[Constraint] = (),
    *,
    queue: Mapping[str, Sequence[float | None]] | None = None,
    confidence: float = 0.95,
    min_sustained: float = 0.85,
    horizon: float = 1.0,
) -> dict[str, Any]:
    """Holds, fails or "not judged"; see the module docstring.

    ``rows`` are per-request records with ``start_s`` (send time, s) and
    latencies in seconds (None for a failed request); ``queue`` maps ``t``
    (s, on the same clock as ``start_s``) to ``waiting`` and optionally
    ``running`` counts.  ``horizon`` is how much longer, in level lengths, a
    rising latency is projected.  The answer says which source judged
    (``source``), the served fraction and its upper bound, and each latency
    SLO's trend (``rising``).
    """
    out: dict[str, Any] = {"verdict": "not judged", "source": None, "served": None, "served_upper": None}
    timed = [r for r in rows if isinstance(r.get("start_s"), (int, float))]
    done = [r for r in timed if r.get("e2e_s") is not None]
    if len(done) < 2 * _MIN_BLOCKS:
        out["reason"] = "no send times" if not timed else "too few completed requests"
        return out
    first = min(r["start_s"] for r in timed)
    last = max(r["start_s"] for r in timed)
    # Blocks span half a latency of the requests that fill the batch (the first third, before a backlog
    # could inflate it). The ramp lasts longer: each request joins a fuller batch and takes longer than
    # the one before, so the count in the system climbs until the latency has settled, about one latency
    # of the whole level. A backlog inflates that latency too, which only shortens the window judged.
    early = [r["e2e_s"] for r in done if r["start_s"] < first + (last - first) / 3]
    overall = float(np.median([r["e2e_s"] for r in done]))
    latency = float(np.median(early)) if len(early) >= 5 else overall
    begin, block = first + _RAMP_LATENCIES * max(latency, overall), max(0.5, latency / 2)
    out["window_s"] = [begin - first, last - first]

    served = _from_queue(queue, rate, begin, last, block, confidence)
    if served is not None:
        out["source"] = "engine queue"
    else:
        trend = block_trend([r["start_s"] for r in done], [r["e2e_s"] for r in done], begin, last, block, confidence)
        if trend is not None:
            slope, lower, _ = trend
            served = 1 / (1 + max(slope, -0.5)), 1 / (1 + max(lower, -0.5))
            out["source"] = "client latency"
    reasons = []
    if served is not None:
        out["served"], out["served_upper"] = served
        out["verdict"] = "holds"
        if served[1] < min_sustained:
            reasons.append(f"served at most {served[1]:.0%} of arrivals ({out['source']}), below {min_sustained:.0%}")

    # The engine's own count is the backlog: where it did not confidently grow, a latency still rising is the
    # batch settling or a late burst, which the SLO's own reading judges.
    kept_up = out["source"] == "engine queue" and out["served_upper"] >= 1.0
    rising: dict[str, Any] = {}
    for c in constraints:
        key = _FIELD.get(c.metric)
        if key is None or c.op not in ("<", "<="):
            continue
        points = [(r["start_s"], float(r[key])) for r in done if r.get(key) is not None]
        trend = block_trend([p[0] for p in points], [p[1] for p in points], begin, last, block, confidence)
        if trend is None:
            continue
        out["verdict"] = "holds" if out["verdict"] == "not judged" else out["verdict"]
        slope, lower, _ = trend
        q = c.attainment if c.attainment is not None else percentile_of(c.stat)
        level = float(np.quantile([p[1] for p in points], q)) if q is not None else math.nan
        projected = level + max(lower, 0.0) * horizon * (last - first)
        rising[c.text] = {"slope": slope, "slope_lower": lower, "level": level, "projected": projected}
        if lower > 0 and projected >= c.threshold and not kept_up:
            reasons.append(
                f"{c.metric} rising {1000 * slope:.1f} ms/s: would reach {1000 * projected:.0f} ms "
                f"against {c.text} had the level run {horizon:g}x longer"
            )
    out["rising"] = rising
    if reasons:
        out["verdict"] = "fails"
        out["reason"] = "; ".join(reasons)
    return out


def _from_queue(
    queue: Mapping[str, Sequence[float | None]] | None, rate: float, begin: float, end: float, block: float,
    confidence: float,
) -> tuple[float, float] | None:
    """Served fraction and its upper bound from the engine's own request counts, if it reported enough."""
    if not queue or not queue.get("t") or not queue.get("waiting"):
        return None
    running = queue.get("running") or [None] * len(queue["t"])
    points = [
        (t, w + (r or 0.0))
        for t, w, r in zip(queue["t"], queue["waiting"], running, strict=False)
        if t is not None and w is not None
    ]
    trend = block_trend([p[0] for p in points], [p[1] for p in points], begin, end, block, confidence)
    if trend is None:
        return None
    slope, lower, _ = trend
    return 1 - slope / rate, 1 - lower / rate


def percentile_of(stat: str | None) -> float | None:
    """``p99`` -> 0.99, ``median`` -> 0.5; None for statistics that are no percentile (mean, max, std)."""
    if stat == "median":
        return 0.5
    if stat and stat.startswith("p"):
        q = float(stat[1:]) / 100
        return q if 0 < q < 1 else None
    return None
