"""`biasmed report` and `biasmed leaderboard`: statistics, tables and plots from run folders."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from biasmed.analysis.summary import CONVENTIONS, summarize
from biasmed.cli._common import echo_err, fail, user_errors
from biasmed.report.format import DEMO_BANNER, convention_line, plain
from biasmed.report.tables import rich_tables, write_leaderboard
from biasmed.report.write import default_out, report

_CONVENTION_HELP = (
    "robust (default): biasmed's robust answer extraction, NR counted wrong; "
    "paper: the paper's own verdicts and denominators (see docs/conventions.md)"
)
_RUNS_HELP = "run folders (results/<run>, with samples.jsonl and run.json)"
_OUT_HELP = "output folder (default: RUN/report for one run, ./report for several)"
_FORMAT_HELP = "csv or md (default: from --out's suffix, else csv)"
_MIXED_HELP = "combine runs built from different datasets"
_LB_BOOT_HELP = "bootstrap resamples for the CIs of the control columns (placebo, helpful gain, susceptibility, draws)"


def _check(convention: str, n_boot: int) -> None:
    if convention not in CONVENTIONS:
        fail(f"--convention must be one of {', '.join(CONVENTIONS)}, not {convention!r}")
    if n_boot < 0:
        fail("--n-boot must be 0 or more")


def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help=_RUNS_HELP)],
    convention: Annotated[str, typer.Option("--convention", help=_CONVENTION_HELP)] = "robust",
    out: Annotated[Path | None, typer.Option("--out", help=_OUT_HELP)] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="bootstrap resamples per comparison")] = 10_000,
    seed: Annotated[int, typer.Option("--seed", help="seed of the bootstrap")] = 0,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help=_MIXED_HELP)] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write the PNG plots")] = True,
    html: Annotated[bool, typer.Option("--html/--no-html", help="write report.html")] = True,
) -> None:
    """Accuracy with CIs, paired drops, adoption and recovery: a table here; summary.csv, report.md,
    controls.csv, the plots and report.html in --out."""
    from rich.console import Console
    from rich.markup import escape

    _check(convention, n_boot)
    t0 = time.perf_counter()
    target = out or default_out(runs)
    with user_errors():
        summary = report(
            runs,
            target,
            convention=convention,
            n_boot=n_boot,
            seed=seed,
            plots=plots,
            html=html,
            allow_mixed=allow_mixed,
        )
    # piped output is not wrapped at 80 columns: four mitigations need about 100
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)
    if summary.is_demo:
        console.print(f"[bold red]{escape(DEMO_BANNER)}[/]")
    console.print(escape(convention_line(convention)))
    for note in summary.notes:
        console.print(escape(plain(f"note: {note}")))
    for t in rich_tables(summary):
        console.print(t)
    echo_err(
        f"wrote {len(summary.written)} files to {target} in {time.perf_counter() - t0:.1f} s "
        f"(convention {convention}, {n_boot} bootstrap resamples per comparison)"
    )


def leaderboard_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders, one or more per model")],
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: print)")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help=_FORMAT_HELP)] = None,
    convention: Annotated[str, typer.Option("--convention", help=_CONVENTION_HELP)] = "robust",
    n_boot: Annotated[int, typer.Option("--n-boot", help=_LB_BOOT_HELP)] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help=_MIXED_HELP)] = False,
) -> None:
    """One row per (model, mitigation), sorted by mean accuracy over the biases (columns: results/README.md)."""
    _check(convention, n_boot)
    fmt = fmt or ("md" if out is not None and out.suffix.lower() in (".md", ".markdown") else "csv")
    if fmt not in ("csv", "md"):
        fail(f"--format must be csv or md, not {fmt!r}")
    with user_errors():
        # per-condition CIs are not shown here: only the model-level control figures are resampled
        summary = summarize(
            runs, convention=convention, n_boot=0, seed=seed, allow_mixed=allow_mixed, controls_boot=n_boot
        )
        text = write_leaderboard(summary, out, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        echo_err(f"wrote {len(summary.leaderboard)} rows to {out} (convention {convention})")
    for note in summary.notes:
        echo_err(plain(f"note: {note}"))


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
    app.command("leaderboard")(leaderboard_cmd)
