"""`biasmed report` and `biasmed leaderboard`: statistics, tables and plots from run folders."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from biasmed.cli._common import echo_err, fail, user_errors

_CONVENTION_HELP = ("robust (default): biasmed's robust answer extraction, NR counted wrong; "
                    "paper: the paper's own verdicts and denominators (see docs/conventions.md)")


def _check(convention: str, n_boot: int) -> None:
    from biasmed.analysis.summary import CONVENTIONS

    if convention not in CONVENTIONS:
        fail(f"--convention must be one of {', '.join(CONVENTIONS)}, not {convention!r}")
    if n_boot < 0:
        fail("--n-boot must be 0 or more")


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders (results/<run>, with samples.jsonl and run.json)")],
    convention: Annotated[str, typer.Option("--convention", help=_CONVENTION_HELP)] = "robust",
    out: Annotated[Optional[Path], typer.Option("--out", help="output folder (default: RUN/report for one run, ./report for several)")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="bootstrap resamples per comparison")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="seed of the bootstrap")] = 0,
    medqa: Annotated[Optional[str], typer.Option("--medqa", help="MedQA file or folder for the option-text rules (default: the dataset recorded in run.json)")] = None,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="combine runs built from different datasets")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots")] = True,
) -> None:
    """Accuracy with CIs, paired drops, adoption and recovery: a table here; summary.csv, report.md and plots in --out."""
    from rich.console import Console
    from rich.markup import escape

    from biasmed.analysis.summary import summarize
    from biasmed.report.tables import DEMO_BANNER, convention_line, rich_tables, write_report

    _check(convention, n_boot)
    t0 = time.perf_counter()
    with user_errors():
        summary = summarize(runs, convention=convention, n_boot=n_boot, seed=seed, medqa=medqa,
                            allow_mixed=allow_mixed)
        target = out or (runs[0] / "report" if len(runs) == 1 else Path("report"))
        written = write_report(summary, target, plots=plots)
    # piped output is not wrapped at 80 columns: four mitigations need about 100
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    if summary.attrs.get("is_demo"):
        console.print(f"[bold red]{escape(DEMO_BANNER)}[/]")
    console.print(escape(convention_line(convention)))
    for note in summary.attrs.get("notes", []):
        console.print(escape(f"note: {note}"))
    for t in rich_tables(summary):
        console.print(t)
    echo_err(f"wrote {len(written)} files to {target} in {time.perf_counter() - t0:.1f} s "
             f"(convention {convention}, {n_boot} bootstrap resamples per comparison)")


def leaderboard_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders, one or more per model")],
    out: Annotated[Optional[Path], typer.Option("--out", help="file to write (default: print)")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv or md (default: from --out's suffix, else csv)")] = None,
    convention: Annotated[str, typer.Option("--convention", help=_CONVENTION_HELP)] = "robust",
    n_boot: Annotated[int, typer.Option("--n-boot", help="bootstrap resamples for the CIs of the control columns (placebo, helpful gain, susceptibility, draws)")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    medqa: Annotated[Optional[str], typer.Option("--medqa", help="MedQA file or folder for the option-text rules")] = None,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="combine runs built from different datasets")] = False,
) -> None:
    """One row per (model, mitigation), sorted by mean accuracy over the biases (columns: results/README.md)."""
    from biasmed.analysis.summary import summarize
    from biasmed.report.tables import leaderboard, write_leaderboard

    _check(convention, n_boot)
    fmt = fmt or ("md" if out is not None and out.suffix.lower() in (".md", ".markdown") else "csv")
    if fmt not in ("csv", "md"):
        fail(f"--format must be csv or md, not {fmt!r}")
    with user_errors():
        # per-condition CIs are not shown here: only the model-level control figures are resampled
        summary = summarize(runs, convention=convention, n_boot=0, seed=seed, medqa=medqa,
                            allow_mixed=allow_mixed, controls_boot=n_boot)
        lb = leaderboard(summary)
        text = write_leaderboard(lb, out, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        echo_err(f"wrote {len(lb)} rows to {out} (convention {convention})")
    for note in summary.attrs.get("notes", []):
        echo_err(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
    app.command("leaderboard")(leaderboard_cmd)
