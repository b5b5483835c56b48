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

from biasmed.records import NONE, Prompt

DATA_FILE = "biasmedqa.jsonl"
MANIFEST_FILE = "biasmedqa.manifest.json"
ROLES = ("system", "user")

# a Benchmark, prompts, or a file written by `biasmed build`
ExportSource = Union["Benchmark", Sequence[Prompt], str, os.PathLike]  # noqa: F821


def collect(source: Any) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts of `source` and the manifest that describes them (may be empty)."""
    from biasmed.build import Benchmark, read_benchmark_file

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


def export_manifest(prompts: Sequence[Prompt], manifest: dict[str, Any], harness: str,
                    role: str, extra: dict[str, Any]) -> dict[str, Any]:
    from biasmed.results import biasmed_version

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


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be system or user, not {role!r}")
    return role
