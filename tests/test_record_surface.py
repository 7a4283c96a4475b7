"""``record_surface.py``: a recorded surface drawn as a table and a plot, complete or partial, and
a surface that only the machine and engine release it was recorded on may extend (no engine starts here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "record_surface.py"
SURFACE = REPO / "benchmarks" / "data" / "surface_cpu_smollm2.json"


def run_report(surface: Path, *extra: str) -> str:
    out = subprocess.run([sys.executable, str(SCRIPT), "--report", str(surface), *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def cell(table: str, row: list[str], column: str) -> str:
    """The table's cell in the row whose leading cells are ``row``, under the header ``column``."""
    lines = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0]]
    for cells in lines[2:]:
        cells = [c.strip() for c in cells]
        if cells[: len(row)] == row:
            return cells[header.index(column)]
    raise AssertionError(f"no row {row}")


def test_every_recorded_point_is_in_its_row_and_column(tmp_path: Path) -> None:
    data = json.loads(SURFACE.read_text())
    png = tmp_path / "surface.png"
    table = run_report(SURFACE, "--plot", str(png))
    for point in data["points"]:
        c = point["config"]
        row = [str(c["max_num_batched_tokens"]), str(c["enable_prefix_caching"])]
        assert cell(table, row, f"max_num_seqs={c['max_num_seqs']}") == f"{point['goodput']:.3g}"
    engine_min = sum(p["engine_s"] for p in data["points"]) / 60
    assert "36 of 36 points" in table and f"engine time {engine_min:.1f} min" in table
    best = max(data["points"], key=lambda p: p["goodput"])
    assert f"at {best['goodput']:g} req/s" in table and "defaults" not in table  # none recorded in this file
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_partial_surface_shows_what_is_missing_and_reads_against_its_defaults(tmp_path: Path) -> None:
    data = json.loads(SURFACE.read_text())
    dropped = data["points"].pop(0)
    failed = data["points"][0]
    failed.update(status="failed", goodput=0.0, feasible=False)
    # The defaults: one of the grid's own measurements stands in, so its ratio is known exactly.
    data["defaults"] = {**data["points"][1], "config": {}}
    surface = tmp_path / "partial.json"
    surface.write_text(json.dumps(data))
    table = run_report(surface)
    c = dropped["config"]
    assert cell(table, [str(c["max_num_batched_tokens"]), str(c["enable_prefix_caching"])],
                f"max_num_seqs={c['max_num_seqs']}") == "·"
    c = failed["config"]
    assert cell(table, [str(c["max_num_batched_tokens"]), str(c["enable_prefix_caching"])],
                f"max_num_seqs={c['max_num_seqs']}") == "failed"
    assert "35 of 36 points" in table and "defaults included" in table
    best = max((p for p in data["points"] if p["feasible"]), key=lambda p: p["goodput"])
    ratio = best["goodput"] / data["defaults"]["goodput"]
    assert f"{ratio:.2f}x the defaults" in table


def test_a_surface_is_extended_only_on_the_gpu_and_engine_it_was_recorded_on(tmp_path: Path) -> None:
    data = json.loads(SURFACE.read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps(data))
    # Every point is in the file, so resuming it here measures nothing and starts no engine.
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(same), "--max-seconds", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "36 point(s) recorded, 0 to go" in out.stdout
    for field, value in (("gpu", "NVIDIA H200"), ("engine_version", "0.25.1")):
        other = tmp_path / f"other-{field}.json"
        other.write_text(json.dumps({**data, "environment": {**data["environment"], field: value}}))
        before = other.read_text()
        out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(other), "--max-seconds", "0"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and f"recorded with {field} {value}" in out.stderr, out.stdout + out.stderr
        assert other.read_text() == before  # nothing measured is lost or rewritten


def test_a_short_run_starts_no_point_that_the_slowest_so_far_says_cannot_end_in_time(tmp_path: Path) -> None:
    from benchmarks.record_surface import POINT_MARGIN, fits, slowest

    data = json.loads(SURFACE.read_text())
    data["points"].pop(0)  # one point to go
    longest = max(p["wall_s"] for p in data["points"])
    assert slowest(data) == longest
    assert fits(data, 0, longest * POINT_MARGIN) and not fits(data, 1, longest * POINT_MARGIN)
    assert fits({"points": []}, 0, 1)  # before any point its cost is unknown: the first one runs
    surface = tmp_path / "partial.json"
    surface.write_text(json.dumps(data))
    before = surface.read_text()
    # The point to go would need about `longest` seconds: a run that must end sooner starts no engine.
    out = subprocess.run([sys.executable, str(SCRIPT), "--out", str(surface), "--finish-by", f"{longest / 2:.0f}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "35 point(s) recorded, 1 to go" in out.stdout and "stopping:" in out.stdout, out.stdout
    assert json.loads(surface.read_text())["points"] == json.loads(before)["points"]
