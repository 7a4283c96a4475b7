"""benchmarks/verdicts.py: loads measured by several searches, and whether their intervals agree."""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from autotune.spec import GoodputOptions, parse_slos
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import verdicts  # noqa: E402


def _level(load: float, estimate: float, lower: float, upper: float | None, verdict: str) -> dict[str, Any]:
    judged = {"kind": "percentile", "verdict": verdict, "estimate": estimate, "lower": lower, "upper": upper}
    return {"load": load, "verdict": verdict, "slos": {"p99(tpot)<25ms": judged}}


def _entry(*searches: list[dict[str, Any]]) -> dict[str, Any]:
    return {"config": {}, "goodput": [20.0] * len(searches), "bracket": [None] * len(searches),
            "levels": [[(lv["load"], lv["verdict"]) for lv in s] for s in searches], "start": [1] * len(searches),
            "starts": 1, "startup_s": [40.0], "searches": [{"levels": s} for s in searches]}


def test_intervals_apart_are_counted_per_load() -> None:
    entry = _entry(
        [_level(20, 0.0140, 0.0139, 0.0141, "holds"), _level(25, 0.0251, 0.0250, None, "fails")],
        [_level(20, 0.0128, 0.0127, 0.0130, "holds"), _level(25, 0.0243, 0.0242, 0.0244, "holds"),
         _level(30, 0.0260, 0.0255, None, "fails")],
        [_level(20, 0.0135, 0.0129, 0.0140, "holds")],
    )
    rows = {r["load"]: r for r in verdicts.same_load(entry)}
    assert set(rows) == {20, 25}  # 30 was measured once: nothing to compare
    # 14.0 [13.9, 14.1] and 12.8 [12.7, 13.0] lie apart; the third overlaps both.
    assert (rows[20]["apart"], rows[20]["pairs"]) == (1, 3)
    # An interval open above (a level condemned early) lies apart only where its lower end is above the other.
    assert (rows[25]["apart"], rows[25]["pairs"]) == (1, 1)
    text = verdicts.report({"environment": {}, "x": {**entry, "goodput_options": {"max_levels": 6}}})
    assert "| 25 | p99(tpot)<25ms | 25.1 [25.0, -] ✗, 24.3 [24.2, 24.4] ✓ | 1 of 1 pairs |" in text


def test_old_records_without_searches_report_no_comparison() -> None:
    entry = _entry([_level(20, 0.014, 0.0139, 0.0141, "holds")])
    del entry["searches"]
    assert verdicts.same_load(entry) == []
    assert "intervals apart" not in verdicts.report({"environment": {}, "x": entry})


def test_a_replayed_schedule_is_shown_with_its_searches() -> None:
    entry = _entry(*[[_level(20, 0.014, 0.0139, 0.0141, "holds")]] * 4)
    entry.update(goodput=[26.5, 28.9, 26.5, 29.7], seed_offset=[1000, 1001, 1000, 1001])
    text = verdicts.report({"environment": {}, "x": entry})
    assert "| 1000 | 1.1: 26.5, 1.3: 26.5 |" in text and "| 1001 | 1.2: 28.9, 1.4: 29.7 |" in text


def test_schedules_must_be_offsets_below_the_rechecks() -> None:
    assert verdicts._offsets("0,1,0,1") == [0, 1, 0, 1]
    for bad in ("a,b", "-1", "500"):
        with pytest.raises(argparse.ArgumentTypeError):
            verdicts._offsets(bad)


def _kept(load: float, ttfts: list[float]) -> str:
    return json.dumps({"search": 1000, "level": 1, "load": load, "start_s": [0.1 * i for i in range(len(ttfts))],
                       "ttft_s": ttfts, "tpot_s": [0.01] * len(ttfts), "e2e_s": [1.0] * len(ttfts)})


def test_clustering_reads_each_kept_level_against_the_slos(tmp_path: Path) -> None:
    def level(misses: range) -> str:
        return _kept(20.0, [0.5 if i in misses else 0.1 for i in range(160)])

    (tmp_path / "fp8-1-1").mkdir()  # as a search leaves it
    (tmp_path / "fp8-1-1" / "levels.jsonl").write_text(level(range(40, 60)) + "\n" + level(range(0)) + "\n")
    (tmp_path / "fp8-2-1.levels.jsonl.gz").write_bytes(gzip.compress(level(range(3, 160, 8)).encode()))  # as kept
    slos = parse_slos("p99(ttft)<300ms, p99(tpot)<25ms")
    kept = verdicts.kept_levels(tmp_path)
    assert list(kept) == ["fp8"] and [meta["search"] for meta, _ in kept["fp8"]] == ["1-1", "1-1", "2-1"]
    found = verdicts.clustering(kept, slos)
    # Two levels missed the TTFT bound (one in a burst, one scattered); none missed TPOT; both starts are fp8's.
    assert list(found) == ["fp8"] and list(found["fp8"]) == ["p99(ttft)<300ms"]
    burst, scattered = found["fp8"]["p99(ttft)<300ms"]
    assert scattered < 1 < burst
    assert "| fp8 | p99(ttft)<300ms | 2 |" in verdicts.clustering_report(kept, slos)
    assert "nothing to tell" in verdicts.clustering_report({}, slos)


def test_a_design_effect_brings_intervals_apart_together(tmp_path: Path) -> None:
    """Two searches at one load: one met by every request, one with a burst of 10 misses in 400."""
    clean = [0.1 + 0.1 * i / 399 for i in range(400)]
    burst = clean[:390] + [0.5] * 10
    (tmp_path / "fp8-1-1").mkdir()
    (tmp_path / "fp8-1-1" / "levels.jsonl").write_text(_kept(20.0, clean) + "\n")
    (tmp_path / "fp8-1-2").mkdir()
    (tmp_path / "fp8-1-2" / "levels.jsonl").write_text(_kept(20.0, burst) + "\n")
    kept = verdicts.kept_levels(tmp_path)["fp8"]
    slos = parse_slos("p99(ttft)<300ms")
    assert verdicts.apart_pairs(kept, slos, 1.0)["p99(ttft)<300ms"] == (1, 1, 2)  # holds against fails, apart
    assert verdicts.apart_pairs(kept, slos, 5.0)["p99(ttft)<300ms"] == (0, 1, 0)  # both uncertain, overlapping


def test_searches_from_before_an_option_existed_go_on_and_changed_ones_do_not(tmp_path: Path) -> None:
    """A file kept from before ``design_effect`` existed resumes (the option took its default then); a file whose
    searches ran with another option is refused before any engine starts."""
    spec = ["--spec", str(REPO / "studies" / "tiny-cpu.yaml"), "--spec-set", "objectives=max:goodput",
            "--spec-set", "slo=p90(ttft)<300ms", "--spec-set", "goodput.unit=req/s"]
    options = GoodputOptions(unit="req/s").model_dump(mode="json")
    old = {k: v for k, v in options.items() if k != "design_effect"}
    out = tmp_path / "v.json"
    for kept, rc in ((old, 0), ({**old, "max_levels": old["max_levels"] + 1}, 2)):
        entry = {"config": {}, "goodput": [], "bracket": [], "levels": [], "start": [], "starts": 0,
                 "startup_s": [], "goodput_options": kept}
        out.write_text(json.dumps({"tiny": entry}))
        # --max-seconds 0: nothing fits, so no engine starts; the options are checked before that.
        assert verdicts.main([*spec, "--config", "tiny:", "--out", str(out), "--max-seconds", "0"]) == rc


def test_finished_searches_under_other_options_are_named_not_counted_silently(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration whose searches are all done, but under other goodput options, is not measured again;
    the run says so, so that its spread is not read beside another's as measured alike."""
    spec = ["--spec", str(REPO / "studies" / "tiny-cpu.yaml"), "--spec-set", "objectives=max:goodput",
            "--spec-set", "slo=p90(ttft)<300ms", "--spec-set", "goodput.unit=req/s"]
    options = GoodputOptions(unit="req/s").model_dump(mode="json")
    out = tmp_path / "v.json"
    for kept, noted in ((options, False), ({**options, "max_levels": options["max_levels"] - 1}, True)):
        entry = {"config": {}, "goodput": [20.0] * 2, "bracket": [1.0] * 2, "levels": [[], []], "start": [1, 1],
                 "starts": 1, "startup_s": [40.0], "goodput_options": kept}
        out.write_text(json.dumps({"tiny": entry}))
        assert verdicts.main([*spec, "--config", "tiny:", "--searches", "2", "--out", str(out),
                              "--max-seconds", "0"]) == 0
        said = capsys.readouterr().out
        assert ("tiny's 2 searches ran with other goodput options {'max_levels'" in said) is noted


def _kept_level(folder: Path, recorded: str) -> None:
    """The H100 level of tests/data/levels/h100_filling_batch.json as a trial folder keeps it."""
    rec = json.loads((REPO / "tests" / "data" / "levels" / "h100_filling_batch.json").read_text())
    folder.mkdir(parents=True)
    columns = {k: rec[k] for k in ("start_s", "ttft_s", "tpot_s", "e2e_s")}
    (folder / "levels.jsonl").write_text(json.dumps({"search": 1, "level": 5, "load": rec["rate"], **columns}) + "\n")
    level = {"load": rec["rate"], "verdict": recorded, "holds": recorded == "holds", "requests": 368,
             "planned_requests": 368, "max_requests": 736, "stopped_early": False,
             "backlog": {"verdict": recorded, "source": "engine queue"}}
    (folder / "goodput.json").write_text(json.dumps({"goodput": 0.0, "levels": [level]}))


def test_rejudge_shows_the_levels_whose_verdict_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A level the old backlog check failed while its batch filled holds now; one recorded as holding stays."""
    _kept_level(tmp_path / "trials" / "0003", "fails")
    _kept_level(tmp_path / "trials" / "0004", "holds")
    spec = ["--spec", str(REPO / "studies" / "h200-llama8b-chat.yaml")]
    assert verdicts.main(["--rejudge", str(tmp_path), *spec]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 kept levels judged again, 1 with another verdict than recorded")
    changed = [line for line in out.splitlines() if line.startswith("| trials/")]
    assert len(changed) == 1 and "trials/0003" in changed[0]
    assert "fails → holds (client latency)" in changed[0] and changed[0].endswith("| fails → holds |")


def test_rejudge_reads_kept_files_compressed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The repository keeps a GPU trial's levels and its goodput.json gzipped: the recorded verdict still shows."""
    folder = tmp_path / "trials" / "0003"
    _kept_level(folder, "fails")
    for name in ("levels.jsonl", "goodput.json"):
        (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
        (folder / name).unlink()
    assert verdicts.main(["--rejudge", str(tmp_path), "--spec", str(REPO / "studies" / "h200-llama8b-chat.yaml")]) == 0
    changed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| trials/")]
    assert len(changed) == 1 and changed[0].endswith("| fails → holds |")


def test_rejudge_refuses_what_it_cannot_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verdicts.main(["--rejudge", str(tmp_path / "nowhere")]) == 2
    assert verdicts.main(["--rejudge", str(tmp_path)]) == 2  # no study there, and no --spec
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nowhere'} is not a folder",
                   f"error: no study in {tmp_path} (no study.db) (or pass --spec)"]


def test_the_spread_is_reported_with_its_interval() -> None:
    """Ten searches read a CV of about 6%: from so few, the true spread may be 4% or 11%, and the report says so."""
    goodputs = [18.0, 19.0, 19.0, 18.0, 20.0, 19.5, 18.5, 16.0, 19.5, 19.0]  # the H100 defaults' ten searches
    entry = {**_entry(*[[_level(20.0, 0.024, 0.023, 0.025, "holds")]] * 10), "goodput": goodputs,
             "bracket": [0.5] * 10, "starts": 4, "start": [1, 1, 2, 2, 3, 3, 3, 4, 4, 4], "startup_s": [1.0] * 4}
    s = verdicts.summary(entry)
    lo, hi = s["cv_interval"]
    assert lo < s["cv"] < hi and round(100 * s["cv"], 1) == 6.1
    assert round(100 * lo, 1) == 4.2 and round(100 * hi, 1) == 11.1  # chi-square with 9 degrees of freedom
    few = verdicts.summary({**entry, "goodput": goodputs[:5]})
    assert few["cv_interval"][1] - few["cv_interval"][0] > hi - lo  # fewer searches, a wider interval
    assert verdicts.summary({**entry, "goodput": goodputs[:2]})["cv_interval"] is None
    shown = verdicts.report({"environment": {}, "defaults": entry})
    assert "| coefficient of variation | 6.1% (95% CI 4.2%-11.1%) | <= 5.0% | **missed** |" in shown
