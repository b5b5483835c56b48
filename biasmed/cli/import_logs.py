"""`biasmed import-logs`: the paper's published raw logs as biasmed runs (kind "paper-logs")."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from biasmed.cli._common import echo_err, fail, user_errors
from biasmed.dataset.medqa import load_medqa
from biasmed.run.paperlogs import import_paper_logs

_MAX_LISTED = 20


def import_logs_cmd(
    paths: Annotated[
        list[Path], typer.Argument(help="log files, folders of them, or .tar.xz archives (read in place)")
    ],
    medqa: Annotated[
        Optional[str],
        typer.Option(
            "--medqa", help="MedQA US folder or test.jsonl to match questions against. Default: $BIASMED_MEDQA_DIR."
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="one model: its run folder (default results/paper-<model>); several models: a parent folder (default results) with one paper-<model> folder each",
        ),
    ] = None,
) -> None:
    """Import the paper's raw logs as biasmed runs (kind "paper-logs"), one run per model.

    Each record is matched to its MedQA test question and its planted letter read from the bias sentence; ae_ (re-judged) copies are kept too, with sample ids ending in |ae.
    """

    if medqa is None and not os.environ.get("BIASMED_MEDQA_DIR"):
        fail("import-logs matches questions against MedQA: pass --medqa PATH or set BIASMED_MEDQA_DIR")
    t0 = time.perf_counter()
    with user_errors():
        questions = load_medqa(medqa, "test", 5)
        # a LogFormatError is a ValueError whose message is one "file:line: field: problem" line
        summaries = import_paper_logs(paths, questions.questions, out, questions.manifest())
    elapsed = time.perf_counter() - t0
    for s in summaries:
        echo_err(
            f"{s.model}: {s.samples} samples from {len(s.files)} files -> {s.out_dir} "
            f"(matched {s.matched}, unmatched {len(s.unmatched)}, escaped-text {s.escaped}, "
            f"identical duplicates dropped {s.duplicates}, conflicts {len(s.conflicts)})"
        )
        for u in s.unmatched[:_MAX_LISTED]:
            echo_err(f"  unmatched: {u['log_file']} record {u['index']} -> {u['sample_id']}")
        for c in s.conflicts[:_MAX_LISTED]:
            echo_err(f"  conflict (kept the first): {c['log_file']} record {c['index']} {c['sample_id']}")
        if max(len(s.unmatched), len(s.conflicts)) > _MAX_LISTED:
            echo_err(f"  ... see {s.out_dir / 'run.json'} for the full list")
    echo_err(f"imported {sum(s.samples for s in summaries)} samples for {len(summaries)} model(s) in {elapsed:.1f} s")


def register(app: typer.Typer) -> None:
    app.command("import-logs")(import_logs_cmd)
