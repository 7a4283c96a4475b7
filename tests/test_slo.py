"""Tests for the SLO / objective language: parsing, error messages and evaluation.

The study feeds ``Constraint.violation`` straight to Optuna, so the sign convention
(<= 0 holds, > 0 broken) is tested at the boundaries, not just far from them.
"""

from __future__ import annotations

from typing import Any

import pytest

from autotune.errors import UserError
from autotune.spec import DEFAULT_ATTAINMENT, Constraint, Objective, parse_objectives, parse_slos

# --------------------------------------------------------------------------- parsing: good


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # (text, metric, stat, op, threshold seconds/raw, attainment, kind)
        ("ttft<300ms", ("ttft<300ms", "ttft", None, "<", 0.3, 0.99, "latency")),
        ("ttft<300ms@95%", ("ttft<300ms@95%", "ttft", None, "<", 0.3, 0.95, "latency")),
        ("ttft<300ms@99.5%", ("ttft<300ms@99.5%", "ttft", None, "<", 0.3, 0.995, "latency")),
        ("ttft<=1s@100%", ("ttft<=1s@100%", "ttft", None, "<=", 1.0, 1.0, "latency")),
        ("  TTFT < 300 MS @ 95 % ", ("ttft<300ms@95%", "ttft", None, "<", 0.3, 0.95, "latency")),
        ("tpot<50ms", ("tpot<50ms", "tpot", None, "<", 0.05, 0.99, "latency")),
        ("itl<250us", ("itl<250us", "itl", None, "<", 0.00025, 0.99, "latency")),
        ("e2e<2.5s", ("e2e<2.5s", "e2e", None, "<", 2.5, 0.99, "latency")),
        ("e2el<2s", ("e2el<2s", "e2e", None, "<", 2.0, 0.99, "latency")),
        ("p99(ttft)<300ms", ("p99(ttft)<300ms", "ttft", "p99", "<", 0.3, None, "latency")),
        ("p95(tpot)<40ms", ("p95(tpot)<40ms", "tpot", "p95", "<", 0.04, None, "latency")),
        ("p50(e2e)<2s", ("p50(e2e)<2s", "e2e", "p50", "<", 2.0, None, "latency")),
        ("mean(itl)<30ms", ("mean(itl)<30ms", "itl", "mean", "<", 0.03, None, "latency")),
        ("median(e2el)<=1.5s", ("median(e2el)<=1.5s", "e2e", "median", "<=", 1.5, None, "latency")),
        ("MAX(TTFT)<2S", ("max(ttft)<2s", "ttft", "max", "<", 2.0, None, "latency")),
        ("std(ttft)<50ms", ("std(ttft)<50ms", "ttft", "std", "<", 0.05, None, "latency")),
        ("p99.9(itl)<30ms", ("p99.9(itl)<30ms", "itl", "p99.9", "<", 0.03, None, "latency")),
        ("p99.0(ttft)<1s", ("p99.0(ttft)<1s", "ttft", "p99", "<", 1.0, None, "latency")),
        ("p100(ttft)<1s", ("p100(ttft)<1s", "ttft", "p100", "<", 1.0, None, "latency")),
        ("p90 ( tpot ) > 1 ms", ("p90(tpot)>1ms", "tpot", "p90", ">", 0.001, None, "latency")),
        ("mean(ttft)<.5s", ("mean(ttft)<.5s", "ttft", "mean", "<", 0.5, None, "latency")),
        ("output_tps>100", ("output_tps>100", "output_tps", None, ">", 100.0, None, "throughput")),
        ("output_throughput>=100", ("output_throughput>=100", "output_tps", None, ">=", 100.0, None, "throughput")),
        ("request_throughput>=2", ("request_throughput>=2", "request_throughput", None, ">=", 2.0, None, "throughput")),
        ("rps>1.5", ("rps>1.5", "request_throughput", None, ">", 1.5, None, "throughput")),
        ("total_tps>=1000", ("total_tps>=1000", "total_tps", None, ">=", 1000.0, None, "throughput")),
        ("goodput>3", ("goodput>3", "goodput", None, ">", 3.0, None, "throughput")),
        ("ppl<12.0", ("ppl<12.0", "ppl", None, "<", 12.0, None, "quality")),
    ],
)
def test_parse_single(text: str, expected: tuple[Any, ...]) -> None:
    (c,) = parse_slos(text)
    norm, metric, stat, op, threshold, attainment, kind = expected
    assert c.text == norm
    assert c.metric == metric
    assert c.stat == stat
    assert c.op == op
    assert c.threshold == pytest.approx(threshold, rel=1e-12)
    assert c.attainment == (pytest.approx(attainment) if attainment is not None else None)
    assert c.kind == kind
    assert c.relative is False


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300ms", 0.3), ("0.3s", 0.3), ("300000us", 0.3), ("300MS", 0.3), ("1.5S", 1.5), ("20Us", 2e-5)],
)
def test_units_convert_to_seconds(text: str, seconds: float) -> None:
    (c,) = parse_slos(f"p99(ttft)<{text}")
    assert c.threshold == pytest.approx(seconds, rel=1e-12)


def test_default_attainment_is_99_percent() -> None:
    (c,) = parse_slos("ttft<300ms")
    assert DEFAULT_ATTAINMENT == 0.99
    assert c.attainment == DEFAULT_ATTAINMENT


@pytest.mark.parametrize(
    "text",
    [
        "ttft<300ms@95%, p99(tpot)<40ms, output_tps>100",
        "ttft<300ms@95% and p99(tpot)<40ms AND output_tps>100",
        "ttft<300ms@95%,p99(tpot)<40ms and output_tps>100",
        "\tttft < 300ms @95%\n, p99( tpot )<40 ms and\noutput_tps > 100 ",
    ],
)
def test_parse_several(text: str) -> None:
    cs = parse_slos(text)
    assert [c.text for c in cs] == ["ttft<300ms@95%", "p99(tpot)<40ms", "output_tps>100"]
    assert [c.kind for c in cs] == ["latency", "latency", "throughput"]


def test_parse_relative_ppl() -> None:
    (c,) = parse_slos("ppl < +5%")
    assert (c.text, c.metric, c.op, c.kind, c.relative) == ("ppl<+5%", "ppl", "<", "quality", True)
    assert c.threshold == pytest.approx(0.05)
    assert c.figure_key() == "ppl_rel_change"


def test_parse_relative_ppl_without_plus() -> None:
    (c,) = parse_slos("PPL<=2.5%")
    assert c.relative is True and c.threshold == pytest.approx(0.025) and c.op == "<="


def test_constraint_is_frozen() -> None:
    (c,) = parse_slos("ttft<300ms")
    with pytest.raises(AttributeError):
        c.threshold = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- parsing: bad


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("tft<300ms", ["unknown metric 'tft'", "column 1", "known: ttft, tpot, itl, e2e"]),
        ("p99(tft)<300ms", ["unknown metric 'tft'", "column 5"]),
        ("ttft<300xs", ["unknown unit 'xs'", "column 9"]),
        ("ttft<300", ["missing unit after '300'", "'ttft'", "column 9"]),
        ("ttft<300 and tpot<1s", ["missing unit after '300'", "column 9"]),
        ("ttft<ms", ["expected a number", "'ms'", "column 6"]),
        ("ttft<", ["expected a number", "end of input", "column 6"]),
        ("ttft=300ms", ["bad operator '='", "column 5"]),
        ("ttft==300ms", ["bad operator '=='", "column 5"]),
        ("ttft=<300ms", ["bad operator '=<'", "column 5"]),
        ("ttft 300ms", ["expected an operator after 'ttft'", "'300'", "column 6"]),
        ("ttft<300ms@0%", ["attainment target '0%' out of range", "column 12"]),
        ("ttft<300ms@101%", ["attainment target '101%' out of range", "column 12"]),
        ("ttft<300ms@95", ["expected '%' after '95'", "column 14"]),
        ("ttft<300ms@", ["expected a percentage", "end of input", "column 12"]),
        ("ttft<300ms foo", ["unexpected 'foo'", "column 12"]),
        ("ttft<300ms)", ["unexpected ')'", "column 11"]),
        ("ttft<300ms;tpot<1s", ["unexpected character ';'", "column 11"]),
        ("ttft<300ms,", ["expected a metric", "end of input", "column 12"]),
        ("", ["empty expression"]),
        ("   ", ["empty expression"]),
        ("p0(ttft)<1s", ["percentile 'p0' out of range", "column 1"]),
        ("p101(ttft)<1s", ["percentile 'p101' out of range", "column 1"]),
        ("p100.5(ttft)<1s", ["percentile 'p100.5' out of range", "column 1"]),
        ("avg(ttft)<1s", ["unknown statistic 'avg'", "column 1"]),
        ("p99(ttft<1s", ["expected ')' after 'ttft'", "'<'", "column 9"]),
        ("p99(ttft)<300ms@95%", ["'@' not allowed on aggregate 'p99(ttft)'", "column 16"]),
        ("output_tps>100@95%", ["'@' not allowed", "column 15"]),
        ("output_tps>100tps", ["unexpected unit 'tps'", "column 15"]),
        ("p99(output_tps)>1", ["statistic 'p99' does not apply to 'output_tps'", "column 1"]),
        ("ttft<0ms", ["'0ms' must be positive", "column 6"]),
        ("ttft<-5ms", ["expected a number", "'-'", "column 6"]),
        ("ppl<+5", ["expected '%' after '+5'", "column 7"]),
        ("ppl<5ms", ["unexpected unit 'ms'", "column 6"]),
        ("mean(ppl)<5", ["statistic 'mean' does not apply to 'ppl'", "column 1"]),
    ],
)
def test_bad_slo(text: str, fragments: list[str]) -> None:
    with pytest.raises(UserError) as info:
        parse_slos(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"bad SLO '{text}': ")
    for fragment in fragments:
        assert fragment in message


def test_error_message_matches_documented_form() -> None:
    with pytest.raises(UserError, match=r"^bad SLO 'ttft<300xs': unknown unit 'xs' at column 9"):
        parse_slos("ttft<300xs")


def test_error_message_stays_one_line_for_multiline_input() -> None:
    with pytest.raises(UserError) as info:
        parse_slos("ttft<300ms,\ntpot<40xs")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown unit 'xs' at column 20" in message
    # The echoed text keeps its columns so a reader can count to the bad token.
    echoed = message.split("'")[1]
    assert echoed[19:21] == "xs"


# --------------------------------------------------------------------------- figure keys


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("p99(ttft)<300ms", "p99_ttft_ms"),
        ("p95(tpot)<40ms", "p95_tpot_ms"),
        ("mean(itl)<30ms", "mean_itl_ms"),
        ("median(e2e)<2s", "median_e2el_ms"),
        ("p99.9(ttft)<1s", "p99.9_ttft_ms"),
        ("max(ttft)<1s", "max_ttft_ms"),
        ("output_tps>1", "output_throughput"),
        ("total_tps>1", "total_token_throughput"),
        ("rps>1", "request_throughput"),
        ("goodput>1", "goodput"),
        ("ppl<12", "ppl"),
    ],
)
def test_figure_key(text: str, key: str) -> None:
    (c,) = parse_slos(text)
    assert c.figure_key() == key


def test_attainment_slo_has_no_figure_key() -> None:
    (c,) = parse_slos("ttft<300ms")
    with pytest.raises(ValueError):
        c.figure_key()


# --------------------------------------------------------------------------- violation: aggregates


def _one(text: str) -> Constraint:
    (c,) = parse_slos(text)
    return c


@pytest.mark.parametrize(
    ("text", "figures", "expected"),
    [
        ("p99(ttft)<300ms", {"p99_ttft_ms": 240.0}, -0.2),  # holds, 20% headroom
        ("p99(ttft)<300ms", {"p99_ttft_ms": 450.0}, 0.5),  # broken by 50%
        ("p99(ttft)<0.3s", {"p99_ttft_ms": 450.0}, 0.5),  # unit of the SLO does not matter
        ("mean(itl)<30ms", {"mean_itl_ms": 15.0}, -0.5),
        ("p99(ttft)>100ms", {"p99_ttft_ms": 50.0}, 0.5),  # '>' flips the sign
        ("output_tps>100", {"output_throughput": 150.0}, -0.5),
        ("output_tps>100", {"output_throughput": 80.0}, 0.2),
        ("request_throughput>=2", {"request_throughput": 2.0}, 0.0),
        ("ppl<12", {"ppl": 13.2}, 0.1),
        ("ppl<+5%", {"ppl_rel_change": 0.02}, -0.6),
        ("ppl<+5%", {"ppl_rel_change": 0.1}, 1.0),
        ("p50(e2e)<2s", {"median_e2el_ms": 1000.0}, -0.5),  # p50 falls back to median
        ("goodput>10", {"request_goodput": 12.0}, -0.2),  # vllm's spelling of goodput
    ],
)
def test_violation_aggregate(text: str, figures: dict[str, float], expected: float) -> None:
    assert _one(text).violation(figures) == pytest.approx(expected, abs=1e-12)


def test_violation_strict_bound_at_equality_is_broken() -> None:
    assert _one("p99(ttft)<300ms").violation({"p99_ttft_ms": 300.0}) > 0
    assert _one("output_tps>100").violation({"output_throughput": 100.0}) > 0
    assert _one("p99(ttft)<=300ms").violation({"p99_ttft_ms": 300.0}) <= 0


def test_violation_zero_threshold_does_not_divide_by_zero() -> None:
    assert _one("output_tps>0").violation({"output_throughput": 5.0}) == pytest.approx(-5.0)


def test_violation_nan_measurement_is_broken() -> None:
    assert _one("mean(tpot)<50ms").violation({"mean_tpot_ms": float("nan")}) > 0


def test_violation_missing_figure_raises_keyerror() -> None:
    with pytest.raises(KeyError, match="p99_ttft_ms"):
        _one("p99(ttft)<300ms").violation({"mean_ttft_ms": 10.0})


# --------------------------------------------------------------------------- violation: attainment


def _req(
    ttft: float | None, tpot: float | None = 0.01, e2e: float | None = 1.0, itl: list[float] | None = None
) -> dict[str, Any]:
    return {"ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "itl_s": [] if itl is None else itl}


def test_attainment_holds() -> None:
    c = _one("ttft<300ms@90%")
    reqs = [_req(0.1)] * 19 + [_req(0.5)]
    assert c.achieved_fraction(reqs) == pytest.approx(0.95)
    assert c.violation({}, reqs) == pytest.approx(-0.05)


def test_attainment_broken() -> None:
    c = _one("ttft<300ms")  # default 99%
    reqs = [_req(0.1)] * 9 + [_req(0.5)]
    assert c.violation({}, reqs) == pytest.approx(0.99 - 0.9)


def test_attainment_exactly_at_target_holds() -> None:
    c = _one("ttft<300ms@95%")
    reqs = [_req(0.1)] * 19 + [_req(0.5)]
    assert c.violation({}, reqs) == 0.0


def test_attainment_failed_request_is_a_miss() -> None:
    c = _one("ttft<300ms@100%")
    assert c.achieved_fraction([_req(0.1), _req(None)]) == pytest.approx(0.5)
    # A request that streamed a fast first token but never finished is still a failure.
    assert c.achieved_fraction([_req(0.1), _req(0.1, e2e=None)]) == pytest.approx(0.5)
    assert c.achieved_fraction([_req(0.1), {**_req(0.1), "success": False}]) == pytest.approx(0.5)


def test_attainment_greater_than() -> None:
    c = _one("e2e>1s@50%")
    reqs = [_req(0.1, e2e=2.0), _req(0.1, e2e=0.5), _req(0.1, e2e=1.0)]
    assert c.achieved_fraction(reqs) == pytest.approx(1 / 3)
    assert c.violation({}, reqs) > 0


def test_attainment_itl_needs_every_gap() -> None:
    c = _one("itl<50ms@50%")
    reqs = [_req(0.1, itl=[0.01, 0.02]), _req(0.1, itl=[0.01, 0.08]), _req(0.1, itl=[])]
    assert c.achieved_fraction(reqs) == pytest.approx(2 / 3)
    assert c.violation({}, reqs) < 0
    assert c.achieved_fraction([_req(0.1, e2e=1.0) | {"itl_s": None}]) == 0.0


def test_attainment_tpot_uses_tpot_field() -> None:
    c = _one("tpot<=20ms@100%")
    assert c.violation({}, [_req(5.0, tpot=0.02), _req(5.0, tpot=0.01)]) == 0.0
    assert c.violation({}, [_req(0.0, tpot=0.03)]) == pytest.approx(1.0)


def test_attainment_needs_per_request_data() -> None:
    c = _one("ttft<300ms")
    with pytest.raises(ValueError):
        c.violation({"p99_ttft_ms": 1.0})
    assert c.achieved_fraction([]) == 0.0
    with pytest.raises(KeyError, match="ttft_s"):
        c.achieved_fraction([{"e2e_s": 1.0}])


def test_aggregate_has_no_achieved_fraction() -> None:
    with pytest.raises(ValueError):
        _one("p99(ttft)<300ms").achieved_fraction([_req(0.1)])


# --------------------------------------------------------------------------- objectives


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max:goodput", [("max:goodput", "maximize", "goodput")]),
        ("max:output_tps", [("max:output_tps", "maximize", "output_throughput")]),
        ("min:p99(ttft)", [("min:p99(ttft)", "minimize", "p99_ttft_ms")]),
        ("min:cost", [("min:cost", "minimize", "cost_per_1k_tokens")]),
        ("max:request_throughput", [("max:request_throughput", "maximize", "request_throughput")]),
        ("min:mean(e2e)", [("min:mean(e2e)", "minimize", "mean_e2el_ms")]),
        ("MAXIMIZE : rps", [("maximize:rps", "maximize", "request_throughput")]),
        (
            "max:goodput, minimize:p99.9(itl),min:cost",
            [
                ("max:goodput", "maximize", "goodput"),
                ("minimize:p99.9(itl)", "minimize", "p99.9_itl_ms"),
                ("min:cost", "minimize", "cost_per_1k_tokens"),
            ],
        ),
    ],
)
def test_parse_objectives(text: str, expected: list[tuple[str, str, str]]) -> None:
    assert [(o.text, o.direction, o.metric) for o in parse_objectives(text)] == expected


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("maxx:goodput", ["unknown direction 'maxx'", "column 1"]),
        ("up:goodput", ["unknown direction 'up'", "column 1"]),
        ("max goodput", ["expected ':' after 'max'", "'goodput'", "column 5"]),
        ("max:gooput", ["unknown metric 'gooput'", "column 5"]),
        ("min:ttft", ["metric 'ttft' needs a statistic", "column 5"]),
        ("min:p101(ttft)", ["percentile 'p101' out of range", "column 5"]),
        ("max:goodput min:cost", ["unexpected 'min'", "column 13"]),
        ("max:goodput,", ["expected a direction", "end of input", "column 13"]),
        ("max:goodput, max:goodput", ["duplicate objective 'max:goodput'", "column 14"]),
        ("", ["empty expression"]),
    ],
)
def test_bad_objectives(text: str, fragments: list[str]) -> None:
    with pytest.raises(UserError) as info:
        parse_objectives(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"bad objective '{text}': ")
    for fragment in fragments:
        assert fragment in message


def test_objective_value() -> None:
    figures = {"goodput": 7.5, "p99_ttft_ms": 210.0, "output_throughput": 900.0}
    goodput, ttft, tps = parse_objectives("max:goodput, min:p99(ttft), max:output_tps")
    assert (goodput.value(figures), ttft.value(figures), tps.value(figures)) == (7.5, 210.0, 900.0)
    assert isinstance(goodput, Objective)
    with pytest.raises(KeyError, match="cost_per_1k_tokens"):
        parse_objectives("min:cost")[0].value(figures)
