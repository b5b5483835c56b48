"""Resolving a command's inputs: questions, the demo pool, and templates (+ user biases)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from biasmed.dataset.biases import TemplateSet, load_templates
from biasmed.dataset.custom_biases import load_bias_files
from biasmed.dataset.medqa import QuestionSet, load_questions
from biasmed.dataset.prompts import N_DEMOS


def load_sources(
    medqa: str | None,
    split: str,
    n_options: int,
    mitigations: Sequence[str],
    template_version: str,
    bias_files: Sequence[Path] | None = None,
) -> tuple[QuestionSet, QuestionSet | None, TemplateSet]:
    """Questions of `split`, the dev-split demo pool when demos are needed, and the templates."""
    questions = load_questions(medqa, split, n_options)
    pool = None
    if any(N_DEMOS.get(m, 0) for m in mitigations):
        pool_split = "dev" if split == "test" else "test"
        src = "demo" if questions.is_demo else medqa
        if src is None or src == "demo" or src.startswith("hub:") or not Path(src).is_file():
            pool = load_questions(src, pool_split, n_options)
        else:
            sibling = Path(src).with_name(f"{pool_split}.jsonl")
            pool = load_questions(str(sibling), pool_split, n_options)
    templates = load_templates(template_version)
    if bias_files:
        templates = templates.with_biases(load_bias_files(bias_files))
    return questions, pool, templates
