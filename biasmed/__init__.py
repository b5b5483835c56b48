"""biasmed: measure how cognitive biases planted in clinical questions bend LLM answers.

Public API (see README, "Library"):
- run:      `evaluate`, `evaluate_async`, `EvalResult`, `Model` (the model base class)
- report:   `report` (writes what `biasmed report` writes), `summarize` -> `Summary`, `load_run`
- data:     `load_medqa`, `load_demo`, `load_hub`, `load_questions`, `QuestionSet`
- biases:   `load_templates`, `make_item`, `make_items`, `choose_target`
- prompts:  `Renderer`; build: `build_benchmark`, `write_benchmark`, `Benchmark`
- records:  `Question`, `Item`, `Prompt`, `GenParams`, `Answer`, `ErrorKind`, `Sample`
- errors:   `BiasmedError`, `InputError`, `DataError`, `FatalRunError`, `EnvironmentFailure`,
            `RunIncomplete`, `BudgetReached`, `RunInterrupted`
"""

from __future__ import annotations

# `biasmed.report(...)` writes what `biasmed report` writes: the report package is callable
from biasmed import report  # noqa: E402  (after the stages it builds on)
from biasmed._version import __version__
from biasmed.analysis.summary import Summary, load_run, summarize
from biasmed.api import EvalResult, evaluate, evaluate_async
from biasmed.dataset.biases import choose_target, load_templates, make_item, make_items
from biasmed.dataset.build import Benchmark, build_benchmark, write_benchmark
from biasmed.dataset.medqa import QuestionSet, load_demo, load_hub, load_medqa, load_questions
from biasmed.dataset.prompts import Renderer
from biasmed.errors import (
    BiasmedError,
    BudgetReached,
    DataError,
    EnvironmentFailure,
    FatalRunError,
    InputError,
    RunIncomplete,
    RunInterrupted,
)
from biasmed.models.base import Model
from biasmed.records import BIASES, MITIGATIONS, Answer, ErrorKind, GenParams, Item, Prompt, Question, Sample

__all__ = [
    "BIASES",
    "MITIGATIONS",
    "Answer",
    "Benchmark",
    "BiasmedError",
    "BudgetReached",
    "DataError",
    "EnvironmentFailure",
    "ErrorKind",
    "EvalResult",
    "FatalRunError",
    "GenParams",
    "InputError",
    "Item",
    "Model",
    "Prompt",
    "Question",
    "QuestionSet",
    "Renderer",
    "RunIncomplete",
    "RunInterrupted",
    "Sample",
    "Summary",
    "__version__",
    "build_benchmark",
    "choose_target",
    "evaluate",
    "evaluate_async",
    "load_demo",
    "load_hub",
    "load_medqa",
    "load_questions",
    "load_run",
    "load_templates",
    "make_item",
    "make_items",
    "report",
    "summarize",
    "write_benchmark",
]
