"""What the harness exports share: the prompts to export, one JSONL row per prompt, the manifest.

A row carries the prompt text verbatim (the exported tasks send exactly this string) plus what
scoring needs: the options, the correct letter and the planted one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

from biasmed.dataset.build import Benchmark, read_benchmark_file
from biasmed.exports.to_hf import read_hf_manifest
from biasmed.records import NONE, Prompt
from biasmed.results import biasmed_version, write_text_atomic

DATA_FILE = "biasmedqa.jsonl"
MANIFEST_FILE = "biasmedqa.manifest.json"
ROLES = ("system", "user")

# a Benchmark, prompts, or a file written by `biasmed build`
ExportSource = Union["Benchmark", Sequence[Prompt], str, os.PathLike]  # noqa: F821


def collect(source: Any) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of `source` and the manifest that describes them (may be empty)."""

    if isinstance(source, Benchmark):
        return source.prompts(), source.manifest()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a file written by `biasmed build`)")
        prompts = read_benchmark_file(path)
        man = path.with_name(path.name.removesuffix(".jsonl") + ".manifest.json")
        manifest = json.loads(man.read_text("utf-8")) if man.is_file() else {"data_file": str(path)}
        return prompts, manifest
    prompts = list(source)
    if not all(isinstance(p, Prompt) for p in prompts):
        raise TypeError("export: expected a Benchmark, a list of Prompt, or a `biasmed build` file")
    return prompts, {}


def prompt_row(p: Prompt) -> dict[str, Any]:
    """One exported sample: the prompt verbatim plus everything needed to score the reply."""
    it, q = p.item, p.item.question
    return {
        "id": p.sample_id,
        "question_id": q.id,
        "bias": it.bias,
        "mitigation": p.mitigation,
        "draw": it.draw,
        "template_version": it.template_version,
        "target_mode": it.target_mode if it.bias != NONE else None,
        "answer_idx": q.answer_idx,
        "answer": q.answer,
        "bias_target": it.target,
        "bias_target_text": it.target_text,
        "options": dict(q.options),
        "n_options": len(q.options),
        "prompt": p.text,
        "prompt_sha256": p.sha256,
        "demo_ids": list(p.demo_ids),
        # how the replies are read: one format per turn, the last one is the answer ("letter": the
        # paper's single letter; "answer-line": reasoning that ends with `Answer: X`), and a chain's
        # follow-up user turns (reflect)
        "kind": p.kind,
        "formats": list(p.formats),
        "answer_format": p.answer_format,
        "follow_ups": list(p.follow_ups),
    }


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """JSONL, UTF-8, "\\n" line ends (JSON escapes keep every prompt byte intact)."""
    n = 0
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def conditions(prompts: Sequence[Prompt]) -> list[tuple[str, str]]:
    """(bias, mitigation) pairs in first-seen order: one harness task each."""
    return list(dict.fromkeys((p.item.bias, p.mitigation) for p in prompts))


def safe_name(text: str) -> str:
    """A task-name fragment: lower case letters, digits and underscores."""
    out = re.sub(r"[^0-9a-z_]+", "_", text.lower()).strip("_")
    if not out:
        raise ValueError(f"cannot make a task name from {text!r}")
    return out


def export_manifest(
    prompts: Sequence[Prompt], manifest: dict[str, Any], harness: str, role: str, extra: dict[str, Any]
) -> dict[str, Any]:

    return {
        "harness": harness,
        "biasmed_version": biasmed_version(),
        "prompts": len(prompts),
        "questions": len({p.item.question.id for p in prompts}),
        "conditions": [f"{b}|{m}" for b, m in conditions(prompts)],
        "role": role,
        "scoring": "biasmed.scoring.score(reply, answer_idx, 'robust', options)",
        **extra,
        "source": manifest,
    }


def chains(prompts: Sequence[Prompt]) -> list[str]:
    """The multi-turn mitigations among `prompts` (kind chain, e.g. reflect), in first-seen order."""
    return list(dict.fromkeys(p.mitigation for p in prompts if p.turns > 1))


def turn_max_tokens(fmt: str, max_tokens: int, answer_line_max_tokens: int) -> int:
    """A turn's reply length limit, as `biasmed run` sets it: larger where the reply reasons first."""
    return answer_line_max_tokens if fmt == "answer-line" else max_tokens


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be system or user, not {role!r}")
    return role


# --------------------------------------------------------------------------- the dataset card

_FIELDS = {
    "id": "record id: `<question_id>|<bias>` (`|d<k>` for re-draw k of the targets)",
    "question_id": "`<split>-<0-based line in the MedQA file>`, shared by a question's conditions (paired design)",
    "split": "MedQA split of the question (test or dev)",
    "bias": "`none` (the unbiased twin) or the bias planted in `text`",
    "draw": "which draw of planted targets (0 = the default draw)",
    "template_version": "bias and prompt wording (`paper-2024` or `paper-2023`)",
    "target_mode": "how the planted letter was chosen: incorrect (the paper), correct, random; null when unbiased",
    "seed": "seed of the target and demo draws",
    "answer_idx": "the correct letter",
    "answer": "the correct option's text",
    "options": "letter -> option text (A-E, or A-D for the 4-option variant)",
    "meta_info": "MedQA's step label (step1, step2&3)",
    "question": "the original MedQA question",
    "text": "the question with the bias sentence planted (equals `question` when unbiased)",
    "bias_target": "the planted letter (null when unbiased)",
    "bias_target_text": "the planted option's text",
    "prompts": "mitigation -> the full prompt, byte-exact (ends with `### Answer: `, trailing space)",
    "prompt_sha256": "mitigation -> sha256 of the prompt's UTF-8 bytes",
    "demo_ids": "mitigation -> question ids of the one-/few-shot demos (null without demos)",
}

DEMO_WARNING = (
    "**This dataset was built from biasmed's embedded DEMO SET** (illustrative vignettes written for "
    "biasmed, not MedQA). It exercises the pipeline; figures computed on it are NOT BiasMedQA results."
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # GitHub tables: an escaped pipe, even inside code spans


def write_dataset_card(out_dir: str | os.PathLike[str]) -> Path:
    """README.md for a dataset saved by `biasmed.export.save_hf_dataset`, from its columns and manifest."""
    from datasets import load_from_disk

    out = Path(out_dir)
    ds = load_from_disk(str(out))
    man = read_hf_manifest(out)
    dataset = man.get("dataset") or {}
    is_demo = bool(dataset.get("is_demo"))
    rows = "\n".join(f"| `{c}` | {_cell(_FIELDS.get(c, ''))} |" for c in ds.column_names)
    biases = ", ".join(f"`{b}`" for b in man.get("biases") or []) or "(see the records)"
    mits = ", ".join(f"`{m}`" for m in man.get("mitigations") or []) or "(see the records)"
    lines = [
        "---",
        "license: mit",
        "language:",
        "- en",
        "task_categories:",
        "- question-answering",
        "- multiple-choice",
        f"pretty_name: BiasMedQA{' (demo set)' if is_demo else ''}",
        "tags:",
        "- medical",
        "- cognitive-bias",
        "- biasmed",
        "---",
        "",
        f"# BiasMedQA{' (DEMO SET - not the benchmark)' if is_demo else ''}",
        "",
        *([DEMO_WARNING, ""] if is_demo else []),
        "BiasMedQA (Schmidgall et al., *Evaluation and mitigation of cognitive biases in medical language "
        "models*, npj Digital Medicine 2024; arXiv 2402.08113) plants one of seven cognitive biases "
        "(self-diagnosis, recency, confirmation, frequency, cultural, status quo, false consensus) in "
        "MedQA (USMLE) questions: a sentence that points at an incorrect option. Comparing a model's "
        "answers with and without the sentence measures how far the bias bends them. Every biased "
        "record sits beside its unbiased twin (same `question_id`).",
        "",
        "Written by `biasmed export --to hf` (or `biasmed build --format hf`). Load it with "
        "`datasets.load_from_disk(PATH)`; the build manifest is stored as the dataset's `description`.",
        "",
        "## Build",
        "",
        f"- records: {ds.num_rows} ({man.get('questions', '?')} questions x {len(man.get('biases') or []) or '?'} conditions)",
        f"- template version: `{man.get('template_version', '?')}` (sha256 `{man.get('template_sha256', '?')}`)",
        f"- seed: {man.get('seed', '?')}; target mode: `{man.get('target_mode', '?')}`; draws: {man.get('draws', 1)}",
        f"- biases: {biases}",
        f"- mitigations: {mits}",
        f"- source: `{dataset.get('source', '?')}` split `{dataset.get('split', '?')}`, "
        f"{dataset.get('n_options', '?')} options, sha256 `{dataset.get('sha256', '?')}`",
        f"- biasmed version: {man.get('biasmed_version', '?')}",
        "",
        "## Fields",
        "",
        "| field | meaning |",
        "|---|---|",
        rows,
        "",
        "## Licence",
        "",
        "The questions come from MedQA (Jin et al., 2021, github.com/jind11/MedQA), released under the "
        "MIT licence: keep its copyright notice when you share this derived dataset. The bias and "
        "prompt wording follows the BiasMedQA paper."
        if not is_demo
        else "The demo vignettes are part of biasmed (MIT licence); the bias and prompt wording follows the "
        "BiasMedQA paper. "
        "A build from MedQA (Jin et al., 2021, github.com/jind11/MedQA) carries MedQA's MIT licence.",
        "",
        "## Scoring",
        "",
        "The prompt asks for a single letter. biasmed reads replies with `biasmed.scoring` (robust rule: "
        "a lone letter, `Answer: C`, `C: <option text>`, ...; empty or refusing replies are NR). Report "
        "accuracy per condition, the paired drop from the unbiased twin, and the share of replies that "
        "adopted `bias_target`.",
        "",
    ]

    card = out / "README.md"
    write_text_atomic(card, "\n".join(lines))
    return card
