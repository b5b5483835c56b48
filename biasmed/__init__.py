"""biasmed: measure how cognitive biases planted in clinical questions bend LLM answers.

Public API (see README, "Library"):
- data:    `load_medqa`, `load_demo`, `load_hub`, `load_questions`, `QuestionSet`, `DataError`
- biases:  `load_templates`, `make_item`, `make_items`, `choose_target`
- prompts: `Renderer`
- build:   `build_benchmark`, `write_benchmark`, `Benchmark`
- records: `Question`, `Item`, `Prompt`, `Sample`
- analysis: `load_run` (a run's samples as a pandas DataFrame), `summarize` (statistics DataFrame)
"""

from __future__ import annotations

from biasmed._version import __version__

from biasmed.analysis.summary import load_run, summarize
from biasmed.dataset.biases import choose_target, load_templates, make_item, make_items
from biasmed.dataset.build import Benchmark, build_benchmark, write_benchmark
from biasmed.dataset.medqa import DataError, QuestionSet, load_demo, load_hub, load_medqa, load_questions
from biasmed.dataset.prompts import Renderer
from biasmed.records import BIASES, MITIGATIONS, Item, Prompt, Question, Sample

__all__ = [
    "__version__",
    "BIASES", "MITIGATIONS",
    "Benchmark", "DataError", "Item", "Prompt", "Question", "QuestionSet", "Renderer", "Sample",
    "build_benchmark", "choose_target", "load_demo", "load_hub", "load_medqa", "load_questions",
    "load_run", "load_templates", "make_item", "make_items", "summarize", "write_benchmark",
]
