"""`biasmed export --to lm-eval|inspect|hf DIR`: BiasMedQA for other harnesses.

The prompts come from `--data FILE` (written by `biasmed build`) or are built on the fly with the
same options as `biasmed build`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from biasmed.cli._common import fail, split_list, user_errors
from biasmed.dataset.build import build_benchmark, read_benchmark_file, write_benchmark
from biasmed.dataset.mitigations import MitigationSet, load_mitigation_set
from biasmed.dataset.prompts import parse_mitigations
from biasmed.dataset.sources import load_sources
from biasmed.exports._common import write_dataset_card
from biasmed.exports.to_hf import save_hf_dataset
from biasmed.exports.to_inspect import export_inspect
from biasmed.exports.to_lmeval import export_lmeval

TARGETS = ("lm-eval", "inspect", "hf")
DEFAULT_MAX_TOKENS = 16  # as `biasmed run`: a single letter
DEFAULT_ROLE = {"lm-eval": "user", "inspect": "system"}


def export_cmd(
    dest: Annotated[Path, typer.Argument(help="output folder (created; files of an earlier export are replaced)")],
    to: Annotated[str, typer.Option("--to", help="lm-eval | inspect | hf")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data", help="a file written by `biasmed build` (else the benchmark is built from the options below)"
        ),
    ] = None,
    medqa: Annotated[
        Optional[str],
        typer.Option(
            "--medqa",
            help="MedQA JSONL file or folder, 'hub:<id>[:config]', or 'demo'. Default: $BIASMED_MEDQA_DIR, else the embedded demo set.",
        ),
    ] = None,
    split: Annotated[Optional[str], typer.Option(help="test or dev (default: test)")] = None,
    options: Annotated[Optional[int], typer.Option("--options", help="5 or 4 answer options (default: 5)")] = None,
    biases: Annotated[
        Optional[str],
        typer.Option(help="comma list, 'all', or default (the version's 7 biases); 'none' is always included"),
    ] = None,
    template_version: Annotated[
        Optional[str], typer.Option("--template-version", help="paper-2024 or paper-2023 (default: paper-2024)")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the target and demo draws (default: 0)")] = None,
    mitigations: Annotated[
        Optional[str],
        typer.Option(
            help="comma list of none,education,one-shot,few-shot (the paper's), reasoning,debias,reflect, or a --mitigation-file's (default: none); reflect and other chains: --to inspect only"
        ),
    ] = None,
    mitigation_file: Annotated[
        Optional[list[Path]],
        typer.Option("--mitigation-file", help="user-authored mitigation YAML (repeatable; see docs/mitigations.md)"),
    ] = None,
    target_mode: Annotated[
        Optional[str], typer.Option("--target-mode", help="incorrect | correct | random (default: incorrect)")
    ] = None,
    limit: Annotated[Optional[int], typer.Option(help="first N questions only")] = None,
    bias_file: Annotated[
        Optional[list[Path]], typer.Option("--bias-file", help="user-authored bias YAML (repeatable)")
    ] = None,
    role: Annotated[
        Optional[str], typer.Option(help="system or user message (default: user for lm-eval, system for inspect)")
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-tokens",
            help="reply length limit per turn (as `biasmed run`): default 16, and 512 for turns read as `Answer: X`",
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="sampling temperature (as `biasmed run`)")] = 0.0,
    name: Annotated[str, typer.Option(help="task name (lm-eval group / inspect task)")] = "biasmedqa",
) -> None:
    """Write BiasMedQA as an lm-evaluation-harness task, an inspect_ai task, or a `datasets` dataset."""
    if to not in TARGETS:
        fail(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    if role is not None and role not in ("system", "user"):
        fail("--role must be system or user")
    if role is not None and to == "hf":
        fail("--role has no meaning for --to hf (the dataset stores the prompt text only)")
    if (max_tokens is not None and max_tokens < 1) or temperature < 0:
        fail("--max-tokens must be at least 1 and --temperature at least 0")
    if options is not None and options not in (4, 5):
        fail("--options must be 4 or 5")
    if limit is not None and limit < 1:
        fail("--limit must be at least 1")
    build_opts = {
        "--medqa": medqa,
        "--split": split,
        "--options": options,
        "--template-version": template_version,
        "--seed": seed,
        "--target-mode": target_mode,
        "--bias-file": bias_file,
    }
    if data is not None:
        given = [k for k, v in build_opts.items() if v is not None and v != []]
        if given:
            fail(f"{given[0]} builds the benchmark; with --data {data} the file already fixes it")
        if not data.is_file():
            fail(f"{data}: no such file (--data takes a file written by `biasmed build`)")

    with user_errors():
        ms = load_mitigation_set(mitigation_file or ())
        b = _Build(
            data, medqa, split, options, biases, template_version, seed, mitigations, target_mode, limit, bias_file, ms
        )
        # per turn, as `biasmed run`: a given --max-tokens applies to every turn
        tokens = {
            "max_tokens": max_tokens or DEFAULT_MAX_TOKENS,
            "answer_line_max_tokens": max_tokens or ms.answer_line_max_tokens,
        }
        if to == "hf":
            out, note = _export_hf(dest, b)
        else:
            source, is_demo = _source(b)
            r = role or DEFAULT_ROLE[to]
            if to == "lm-eval":
                out = export_lmeval(source, dest, group=name, role=r, temperature=temperature, **tokens)
                note = f"run: lm_eval --include_path {out} --tasks {name} --model ... (prompt as {r} message)"
            else:
                out = export_inspect(source, dest, task_name=name, role=r, temperature=temperature, **tokens)
                note = f"run: cd {out.parent} && inspect eval {out.name} --model ... (prompt as {r} message)"
            if is_demo:
                note += "  [DEMO SET: not MedQA, not the benchmark]"
    typer.echo(f"wrote {to} export to {out}; {note}", err=True)


@dataclass(frozen=True)
class _Build:
    """The options that choose the prompts: `--data FILE`, or `biasmed build`'s (None: its default)."""

    data: Path | None
    medqa: str | None
    split: str | None
    options: int | None
    biases: str | None
    template_version: str | None
    seed: int | None
    mitigations: str | None
    target_mode: str | None
    limit: int | None
    bias_file: list[Path] | None
    ms: MitigationSet

    def mits(self) -> list[str]:
        return parse_mitigations(self.mitigations, self.ms)

    def benchmark(self) -> Any:
        mits = self.mits()
        questions, pool, templates = load_sources(
            self.medqa,
            self.split or "test",
            self.options or 5,
            mits,
            self.template_version or "paper-2024",
            self.bias_file,
        )
        return build_benchmark(
            questions,
            self.biases,
            templates,
            self.seed or 0,
            mits,
            pool,
            self.target_mode or "incorrect",
            limit=self.limit,
            mitigation_set=self.ms,
        )


def _source(b: _Build) -> tuple[Any, bool]:
    """The prompts to export (a Benchmark, or a filtered list from --data) and whether demo."""
    if b.data is None:
        bench = b.benchmark()
        return bench, bench.questions.is_demo
    prompts = read_benchmark_file(b.data, b.mits() if b.mitigations else None)
    wanted = split_list(b.biases)
    if wanted and wanted != ["all"]:
        keep = set(wanted) | {"none"}
        prompts = [p for p in prompts if p.item.bias in keep]
    if b.limit:
        qids = set(list(dict.fromkeys(p.question_id for p in prompts))[: b.limit])
        prompts = [p for p in prompts if p.question_id in qids]
    if not prompts:
        raise ValueError(f"{b.data}: no prompts left to export (check --biases / --mitigations)")
    return prompts, _demo_file(b.data)


def _demo_file(data: Path) -> bool:
    man = data.with_name(data.name.removesuffix(".jsonl") + ".manifest.json")
    if not man.is_file():
        return False
    return bool((json.loads(man.read_text("utf-8")).get("dataset") or {}).get("is_demo"))


def _export_hf(dest: Path, b: _Build) -> tuple[Path, str]:
    if b.data is not None:
        if b.biases or b.mitigations or b.limit:
            raise ValueError(
                "--to hf --data exports the file as it is; select biases, mitigations and "
                "questions with `biasmed build` instead"
            )
        save_hf_dataset(b.data, dest)
    else:
        bench = b.benchmark()
        with tempfile.TemporaryDirectory(prefix="biasmed-export-") as tmp:
            jsonl = Path(tmp) / "biasmedqa.jsonl"
            write_benchmark(bench, jsonl)
            save_hf_dataset(jsonl, dest)
    card = write_dataset_card(dest)
    return dest, f"card {card}; read it with datasets.load_from_disk({str(dest)!r})"


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
