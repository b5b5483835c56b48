"""The BiasMedQA builder: questions x biases x mitigations -> items, prompts, JSONL records.

A `Benchmark` is the task's dataset half (inspect_ai's vocabulary): every biased item sits beside
its unbiased twin (same question id), with its target letter and text, and each requested
mitigation's full prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasmed.dataset.biases import TemplateSet, load_templates, make_items, parse_bias_list
from biasmed.dataset.medqa import DEMO_NOTE, QuestionSet
from biasmed.dataset.mitigations import MitigationSet
from biasmed.dataset.prompts import N_DEMOS, Renderer
from biasmed.records import (
    DEFAULT_TEMPLATE_VERSION,
    NONE,
    PAPER_MITIGATIONS,
    Item,
    Prompt,
    Question,
    sha256_text,
)
from biasmed.results import biasmed_version, iter_jsonl, read_samples, write_json_atomic


@dataclass
class Benchmark:
    questions: QuestionSet
    templates: TemplateSet
    items: list[Item]
    renderer: Renderer
    mitigations: list[str]
    biases: list[str]
    seed: int = 0
    target_mode: str = "incorrect"
    draws: int = 1
    demo_pool: QuestionSet | None = None
    targets_from: str | None = None
    _prompts: list[Prompt] | None = field(default=None, repr=False)

    def prompts(self) -> list[Prompt]:
        """All prompts, question-major (a question's conditions are adjacent: prefix sharing)."""
        if self._prompts is None:
            self._prompts = self.renderer.render_all(self.items, self.mitigations)
        return self._prompts

    def records(self) -> Iterator[dict[str, Any]]:
        """One record per item (question x bias [x draw]) with a prompt per mitigation."""
        by_item: dict[str, list[Prompt]] = {}
        for p in self.prompts():
            by_item.setdefault(p.item.id, []).append(p)
        for it in self.items:
            q = it.question
            ps = by_item[it.id]
            yield {
                "id": it.id,
                "question_id": q.id,
                "split": q.split,
                "bias": it.bias,
                "draw": it.draw,
                "template_version": it.template_version,
                "target_mode": it.target_mode if it.bias != NONE else None,
                "seed": self.seed,
                "answer_idx": q.answer_idx,
                "answer": q.answer,
                "options": q.options,
                "meta_info": q.meta_info,
                "question": q.question,
                "text": it.text,
                "bias_target": it.target,
                "bias_target_text": it.target_text,
                "prompts": {p.mitigation: p.text for p in ps},
                "prompt_sha256": {p.mitigation: p.sha256 for p in ps},
                "demo_ids": {p.mitigation: list(p.demo_ids) for p in ps if p.demo_ids},
                # mitigations beyond the paper: how to read and continue them (absent for the paper's,
                # whose build files stay as they were)
                **(
                    {"turns": turns}
                    if (
                        turns := {
                            p.mitigation: {"kind": p.kind, "formats": list(p.formats), "follow_ups": list(p.follow_ups)}
                            for p in ps
                            if p.mitigation not in PAPER_MITIGATIONS
                        }
                    )
                    else {}
                ),
            }

    def manifest(self) -> dict[str, Any]:
        """Everything needed to reproduce the file (no timestamps: two builds are byte-identical)."""
        m: dict[str, Any] = {
            "biasmed_version": biasmed_version(),
            "records": len(self.items),
            "prompts": len(self.items) * len(self.mitigations),
            "questions": len(self.questions),
            "biases": self.biases,
            "mitigations": self.mitigations,
            "seed": self.seed,
            "target_mode": self.target_mode,
            "draws": self.draws,
            "template_version": self.templates.version,
            "template_sha256": self.templates.sha256,
            "dataset": self.questions.manifest(),
            "demo_pool": self.demo_pool.manifest() if self.demo_pool else None,
            "targets_from": self.targets_from,
        }
        ms = self.renderer.mitigations
        if ms is not None and any(x not in PAPER_MITIGATIONS for x in self.mitigations):
            m["mitigation_set"] = ms.manifest()
        if self.questions.is_demo:
            m["WARNING"] = DEMO_NOTE
        return m


def build_benchmark(
    questions: QuestionSet,
    biases: Sequence[str] | str | None = None,
    template_version: str | TemplateSet = DEFAULT_TEMPLATE_VERSION,
    seed: int = 0,
    mitigations: Sequence[str] = ("none",),
    demo_pool: QuestionSet | None = None,
    target_mode: str = "incorrect",
    draws: int = 1,
    targets: Mapping[tuple[str, str], str] | None = None,
    targets_from: str | None = None,
    limit: int | None = None,
    role: str = "system",
    mitigation_set: MitigationSet | None = None,
) -> Benchmark:
    """Build the benchmark. `biases` is a list, a comma string, "all" or None (the version's default)."""
    templates = template_version if isinstance(template_version, TemplateSet) else load_templates(template_version)
    bias_list = (
        biases
        if isinstance(biases, list)
        else parse_bias_list(biases if isinstance(biases, str) or biases is None else ",".join(biases), templates)
    )
    mits = list(mitigations)
    if any(N_DEMOS.get(m, 0) for m in mits) and demo_pool is None:
        raise ValueError("one-shot/few-shot need a demo pool (the dev split): none was found")
    qs = questions.questions[:limit] if limit else questions.questions
    items = make_items(qs, bias_list, templates, seed, target_mode, draws, targets)
    renderer = Renderer(templates, demo_pool.questions if demo_pool else (), seed, role, mitigation_set)
    sub = QuestionSet(
        tuple(qs), questions.source, questions.sha256, questions.split, questions.n_options, questions.is_demo
    )
    return Benchmark(
        sub, templates, items, renderer, mits, bias_list, seed, target_mode, draws, demo_pool, targets_from
    )


def write_benchmark(bench: Benchmark, out: str | os.PathLike[str]) -> Path:
    """Write records (JSONL) and `<stem>.manifest.json` atomically; returns the manifest path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for rec in bench.records():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = out.with_name(out.name.removesuffix(".jsonl") + ".manifest.json")
    m = bench.manifest()
    m["records_sha256"] = _file_sha256(out)
    write_json_atomic(manifest, m)
    return manifest


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_benchmark_file(path: str | os.PathLike[str], mitigations: Sequence[str] | None = None) -> list[Prompt]:
    """Prompts back from a file written by `biasmed build` (for `biasmed run --data FILE`)."""

    out: list[Prompt] = []
    for n, rec in enumerate(iter_jsonl(path), start=1):
        try:
            q = Question(
                rec["question_id"],
                rec["question"],
                rec["options"],
                rec["answer_idx"],
                rec["answer"],
                rec.get("meta_info", ""),
                rec.get("split", "test"),
            )
            it = Item(
                q,
                rec["bias"],
                rec["text"],
                rec.get("bias_target"),
                rec.get("target_mode") or "incorrect",
                rec["template_version"],
                rec.get("draw", 0),
            )
            for m, text in rec["prompts"].items():
                if mitigations is None or m in mitigations:
                    t = (rec.get("turns") or {}).get(m) or {}
                    kind = t.get("kind") or ("demos" if m in ("one-shot", "few-shot") else "instruction")
                    out.append(
                        Prompt(
                            it,
                            m,
                            text,
                            "system",
                            tuple(rec.get("demo_ids", {}).get(m, ())),
                            kind,
                            tuple(t.get("formats") or ("letter",)),
                            tuple(t.get("follow_ups") or ()),
                        )
                    )
        except KeyError as e:
            raise ValueError(f"{path}:{n}: {e.args[0]}: missing (not a biasmed build file?)") from None
    return out


def targets_from_run(
    run_dir: str | os.PathLike[str], mitigation: str | None = None, template_version: str | None = None
) -> dict[tuple[str, str], str]:
    """(question id, bias) -> planted letter, read from a run (e.g. the paper's imported logs).

    The paper drew fresh targets for every log file, so one (question, bias) has different letters
    under different mitigations and wordings: filter on them to rebuild one published condition.
    Re-judged copies (`extra.ae`) carry the same prompts and are skipped.
    """

    out: dict[tuple[str, str], str] = {}
    for s in read_samples(run_dir):
        if s.get("bias") in (None, NONE) or not s.get("bias_target") or not s.get("question_id"):
            continue
        if (s.get("extra") or {}).get("ae"):
            continue
        if mitigation is not None and s.get("mitigation") != mitigation:
            continue
        if template_version is not None and s.get("template_version") != template_version:
            continue
        out.setdefault((s["question_id"], s["bias"]), s["bias_target"])
    return out


def prompt_hash(text: str) -> str:
    return sha256_text(text)
