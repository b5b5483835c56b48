"""`biasmed.evaluate()`: the one way to run an evaluation, from Python or (wrapped) from the CLI.

    result = biasmed.evaluate("smollm2", medqa="path/to/US", limit=3, mode="logprob")
    result.samples   # pandas DataFrame of the run folder's samples
    result.summary   # biasmed.Summary (robust convention unless `convention=` says otherwise)

The model is a spec string ("openai:gpt-4o-mini", "smollm2", ...), a `biasmed.Model`, or a plain
function `messages -> reply text` (sync or async). Files on disk, resume semantics and exit
states are those of `biasmed run`: a stop that is not "complete" raises one of biasmed.errors'
kinds (`InputError`, `FatalRunError`, `BudgetReached`, `RunIncomplete`, `RunInterrupted`) whose
`.result` is the EvalResult as far as it got.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from biasmed.analysis.summary import DEFAULT_CONVENTION, Summary, load_run, summarize
from biasmed.errors import BiasmedError
from biasmed.models.base import Model
from biasmed.models.function import FunctionModel, ReplyFn
from biasmed.run.evaluate import RunOutcome, RunPlan, RunSettings, run_folder
from biasmed.run.runner import RunStats

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
ModelLike = Union[str, Model, ReplyFn]


@dataclass
class EvalResult:
    """One run folder after `evaluate()`: what happened, and its samples and statistics on demand."""

    path: Path
    status: str  # complete | incomplete | max-cost | fatal | interrupted | dry-run
    message: str | None
    totals: dict[str, Any]  # samples, cache_hits, retries, errors, tokens, cost (the whole folder)
    stats: RunStats  # this invocation only
    meta: dict[str, Any] = field(repr=False)  # run.json
    plan: RunPlan | None = None  # dry runs
    convention: str = DEFAULT_CONVENTION
    n_boot: int = 10_000

    @cached_property
    def samples(self) -> pd.DataFrame:
        """This run folder's samples, one row each (`biasmed.load_run`)."""
        return load_run(self.path)

    @cached_property
    def summary(self) -> Summary:
        """Statistics of this run folder (`biasmed.summarize`), computed on first use."""
        return summarize(self.path, convention=self.convention, n_boot=self.n_boot)

    @classmethod
    def from_outcome(cls, o: RunOutcome, convention: str, n_boot: int) -> EvalResult:
        return cls(
            path=o.path,
            status=o.status,
            message=o.message,
            totals=o.totals,
            stats=o.stats,
            meta=o.meta,
            plan=o.plan,
            convention=convention,
            n_boot=n_boot,
        )


def _as_model(model: ModelLike) -> str | Model:
    if isinstance(model, (str, Model)):
        return model
    return FunctionModel(model)


async def evaluate_async(
    model: ModelLike,
    *,
    medqa: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    split: str = "test",
    options: int = 5,
    biases: Sequence[str] | str | None = None,
    mitigations: Sequence[str] | str | None = None,
    template_version: str = "paper-2024",
    target_mode: str = "incorrect",
    seed: int = 0,
    draws: int = 1,
    limit: int | None = None,
    bias_files: Sequence[str | os.PathLike[str]] = (),
    mode: str = "generate",
    out: str | os.PathLike[str] | None = None,
    convention: str = DEFAULT_CONVENTION,
    n_boot: int = 10_000,
    dry_run: bool = False,
    on_progress: Callable[[RunStats], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    **settings: Any,
) -> EvalResult:
    """`evaluate()` for code that already runs an event loop: `await biasmed.evaluate_async(...)`."""
    s = RunSettings.from_kwargs(
        medqa=None if medqa is None else str(medqa),
        data=None if data is None else str(data),
        split=split,
        options=options,
        biases=biases,
        mitigations=mitigations if mitigations is not None else ("none",),
        template_version=template_version,
        target_mode=target_mode,
        seed=seed,
        draws=draws,
        limit=limit,
        bias_files=tuple(str(f) for f in bias_files),
        mode=mode,
        **settings,
    )
    try:
        outcome = await run_folder(
            _as_model(model),
            s,
            None if out is None else Path(out),
            dry_run=dry_run,
            on_progress=on_progress,
            on_start=on_start,
        )
    except BiasmedError as e:
        if isinstance(e.result, RunOutcome):
            e.result = EvalResult.from_outcome(e.result, convention, n_boot)
        raise
    return EvalResult.from_outcome(outcome, convention, n_boot)


def evaluate(model: ModelLike, **kwargs: Any) -> EvalResult:
    """Run `model` on BiasMedQA into a run folder and return the result (see the module doc).

    Keyword arguments: medqa, data, split, options, biases, mitigations, template_version,
    target_mode, seed, draws, limit, bias_files, mode, out (default results/<model>), convention
    and n_boot (for `result.summary`), dry_run, on_progress, and every `biasmed run` setting
    (concurrency, max_tokens, temperature, max_cost, cache, cache_dir, timeout, device, ...).
    Works inside a running event loop too (a Jupyter cell): the run then gets its own thread.
    """
    return _run_sync(evaluate_async(model, **kwargs))


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # a loop is running in this thread (Jupyter): asyncio.run() would refuse, so run ours beside it
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="biasmed-evaluate") as pool:
        return pool.submit(asyncio.run, coro).result()
