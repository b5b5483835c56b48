"""`biasmed.report()`: what `biasmed report` writes, from Python.

    summary = biasmed.report("results/gpt-4o-mini", out="results/gpt-4o-mini/report")
    summary.written   # the files written: summary.csv, report.md, controls.csv, the plots, report.html

The statistics are computed once (`biasmed.summarize` -> `Summary`) and every writer formats them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biasmed.analysis.summary import DEFAULT_CONVENTION, Summary, summarize
from biasmed.report.html import write_html
from biasmed.report.plots import write_plots
from biasmed.report.tables import report_markdown, write_csv
from biasmed.results import write_text_atomic


def write_report(
    summary: Summary, out_dir: str | os.PathLike[str], plots: bool = True, html: bool = True
) -> list[Path]:
    """summary.csv, report.md, controls.csv (when a run has controls), the PNG plots and
    report.html (unless html=False) into `out_dir`; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(summary.table_csv(), out / "summary.csv")]
    pngs: list[Path] = []
    if plots and len(summary):
        pngs = write_plots(summary, out)
    md = out / "report.md"
    write_text_atomic(md, report_markdown(summary, pngs))
    written.append(md)
    if len(summary.controls):
        written.append(write_csv(summary.controls, out / "controls.csv"))
    written += pngs
    if html:
        written.append(Path(write_html(summary, out / "report.html")))
    return written


def report(
    runs_or_results: Any,
    out: str | os.PathLike[str] | None = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    n_boot: int = 10_000,
    seed: int = 0,
    plots: bool = True,
    html: bool = True,
    allow_mixed: bool = False,
) -> Summary:
    """Write what `biasmed report` writes and return the `Summary`; `summary.written` lists the files.

    `runs_or_results`: a run folder, a frame from `biasmed.load_run`, an `EvalResult` (anything with
    a `.path` is read as its run folder), a ready `Summary` (then convention, n_boot, seed and
    allow_mixed are its own), or a list of the first three. `out`: the folder to write (default:
    RUN/report for one run folder, ./report otherwise), as the CLI.
    """
    if isinstance(runs_or_results, Summary):
        summary = runs_or_results
    else:
        summary = summarize(
            _runs(runs_or_results), convention=convention, n_boot=n_boot, seed=seed, allow_mixed=allow_mixed
        )
    target = Path(out) if out is not None else default_out(runs_or_results)
    summary.written = write_report(summary, target, plots=plots, html=html)
    return summary


def _runs(x: Any) -> Any:
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    return [getattr(i, "path", i) for i in items]


def default_out(runs_or_results: Any) -> Path:
    """RUN/report for one run folder (a path, a result, a Summary of one run), ./report otherwise."""
    if isinstance(runs_or_results, Summary):
        paths = [r.get("path") for r in runs_or_results.runs]
        items: Sequence[Any] = paths if len(paths) == 1 and paths[0] else []
    elif isinstance(runs_or_results, (list, tuple)):
        items = runs_or_results
    else:
        items = [runs_or_results]
    if len(items) == 1:
        one = getattr(items[0], "path", items[0])
        if isinstance(one, (str, os.PathLike)):
            return Path(one) / "report"
    return Path("report")
