"""``export``: a study's measurements as vLLM benchmark results, CSV or JSON lines."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from autotune.cli import _options as opt
from autotune.cli._app import app, console

_SUFFIX = {"vllm-bench": "", "csv": ".csv", "jsonl": ".jsonl"}


@app.command("export")
def export_cmd(
    study_dir: Optional[Path] = opt.STUDY_DIR,
    storage: Optional[str] = opt.STORAGE,
    study: Optional[str] = opt.STUDY,
    fmt: str = typer.Option("vllm-bench", "--format", "-f",
                            help="vllm-bench (vllm bench serve result files), csv or jsonl"),
    out: Optional[Path] = typer.Option(None, "--out", "--result-dir", "-O",
                                       help="where to write (default: export-<format> in the study folder)"),
) -> None:
    """Write the study's measurements for other tools: `vllm bench sweep plot` reads the vllm-bench folder."""
    from autotune.errors import UserError
    from autotune.export import FORMATS, export

    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r} (known: {', '.join(FORMATS)})")
    results, folder = opt.open_results(study_dir, storage, study)
    target = out if out is not None else folder / f"export-{fmt}{_SUFFIX[fmt]}"
    written = export(results, target, fmt)
    console.print(f"exported {results.name} as {fmt}: {target.resolve()} ({len(written)} file(s))",
                  highlight=False, soft_wrap=True)
