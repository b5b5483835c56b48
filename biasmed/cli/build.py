"""`biasmed build`: write the BiasMedQA records (one per question x bias) and a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from biasmed.cli._common import fail, user_errors
from biasmed.dataset.build import build_benchmark, targets_from_run, write_benchmark
from biasmed.dataset.mitigations import load_mitigation_set
from biasmed.dataset.prompts import parse_mitigations
from biasmed.dataset.sources import load_sources
from biasmed.exports._common import write_dataset_card
from biasmed.exports.to_hf import save_hf_dataset


def build_cmd(
    medqa: Annotated[
        Optional[str],
        typer.Option(
            "--medqa",
            help="MedQA JSONL file or folder, 'hub:<id>[:config]', or 'demo'. Default: $BIASMED_MEDQA_DIR, else the embedded demo set.",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="test or dev")] = "test",
    options: Annotated[int, typer.Option("--options", help="5 or 4 answer options")] = 5,
    biases: Annotated[
        Optional[str],
        typer.Option(help="comma list, 'all', or default (the version's 7 biases); 'none' is always included"),
    ] = None,
    template_version: Annotated[
        str, typer.Option("--template-version", help="paper-2024 or paper-2023")
    ] = "paper-2024",
    seed: Annotated[int, typer.Option(help="seed of the target and demo draws")] = 0,
    mitigations: Annotated[
        str,
        typer.Option(
            help="comma list of none,education,one-shot,few-shot (the paper's), reasoning,debias,reflect, or a --mitigation-file's"
        ),
    ] = "none",
    target_mode: Annotated[str, typer.Option("--target-mode", help="incorrect | correct | random")] = "incorrect",
    targets_from: Annotated[
        Optional[Path], typer.Option("--targets-from", help="take each (question, bias) target from an imported run")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="first N questions only")] = None,
    draws: Annotated[int, typer.Option(help="re-draw the planted targets K times (draw 0 is the default draw)")] = 1,
    bias_file: Annotated[
        Optional[list[Path]], typer.Option("--bias-file", help="user-authored bias YAML (repeatable)")
    ] = None,
    mitigation_file: Annotated[
        Optional[list[Path]], typer.Option("--mitigation-file", help="user-authored mitigation YAML (repeatable)")
    ] = None,
    out: Annotated[Path, typer.Option(help="output JSONL")] = Path("data/biasmedqa.jsonl"),
    fmt: Annotated[str, typer.Option("--format", help="jsonl, or hf (also save a datasets.Dataset)")] = "jsonl",
) -> None:
    """Build BiasMedQA: every question unbiased and under each bias, with rendered prompts."""

    if options not in (4, 5):
        fail("--options must be 4 or 5")
    if draws < 1:
        fail("--draws must be at least 1")
    if fmt not in ("jsonl", "hf"):
        fail("--format must be jsonl or hf")
    with user_errors():
        ms = load_mitigation_set(mitigation_file or ())
        mits = parse_mitigations(mitigations, ms)
        questions, pool, templates = load_sources(medqa, split, options, mits, template_version, bias_file)
        targets = None
        if targets_from:
            if len(mits) > 1:
                typer.echo(
                    "biasmed: warning: the paper drew new targets for every mitigation; "
                    f"--targets-from takes those of {mits[0]!r} for all",
                    err=True,
                )
            targets = targets_from_run(targets_from, mits[0], template_version)
            if not targets:
                fail(f"{targets_from}: no planted targets for mitigation {mits[0]} and {template_version}")
        bench = build_benchmark(
            questions,
            biases,
            templates,
            seed,
            mits,
            pool,
            target_mode,
            targets=targets,
            targets_from=str(targets_from) if targets_from else None,
            limit=limit,
            draws=draws,
            mitigation_set=ms,
        )
        manifest = write_benchmark(bench, out)
    if fmt == "hf":
        hf_dir = out.with_name(out.name.removesuffix(".jsonl") + "_hf")
        save_hf_dataset(out, hf_dir)
        write_dataset_card(hf_dir)
    n = len(bench.items)
    note = "  [DEMO SET: not MedQA, not the benchmark]" if questions.is_demo else ""
    per_draw = f", {draws} target draws" if draws > 1 else ""
    typer.echo(
        f"wrote {n} records ({len(bench.questions)} questions x {len(bench.biases)} conditions{per_draw}, "
        f"mitigations {','.join(mits)}) to {out}; manifest {manifest}{note}",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.command("build")(build_cmd)
