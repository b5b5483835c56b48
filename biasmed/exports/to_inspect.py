"""Export BiasMedQA prompts as an inspect_ai task: `biasmedqa.py` (a `@task`) beside the data.

The task is dataset + a solver + a scorer: each sample's input is the prompt as ONE system
message (the paper's form; `-T role=user` sends it as a user message); the solver generates, and
for a multi-turn mitigation (a chain: reflect) adds each follow-up user turn and generates again,
each turn with the reply length `biasmed run` gives it (larger where the reply ends with
`Answer: X`); the scorer reads the final reply with `biasmed.scoring`, the same extraction
`biasmed run` uses (so biasmed must be installed where inspect runs), and for a chain also the
first answer and how the final one moved from it. Metrics: `acc`, `nr`, and `adopted` (the reply is the planted
letter), each a mean; `adopted` is averaged over biased samples only.

    inspect eval DIR/biasmedqa.py --model openai/gpt-4o-mini
    inspect eval DIR/biasmedqa.py -T bias=recency -T role=user --model ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from biasmed.exports._common import (
    DATA_FILE,
    MANIFEST_FILE,
    check_role,
    collect,
    export_manifest,
    prompt_row,
    safe_name,
    write_rows,
)
from biasmed.results import write_text_atomic


def export_inspect(
    prompts_or_benchmark: Any,
    out_dir: str | os.PathLike[str],
    *,
    task_name: str = "biasmedqa",
    role: str = "system",
    max_tokens: int = 16,
    temperature: float = 0.0,
    answer_line_max_tokens: int = 512,
) -> Path:
    """Write `<task_name>.py` and the data for a Benchmark, prompts or a `biasmed build` file.

    `role` is the default of the task's `role` argument; `max_tokens` and `temperature` default
    to `biasmed run`'s, and a turn whose reply ends with `Answer: X` gets `answer_line_max_tokens`.
    Returns the path of the task file.
    """
    check_role(role)
    name = safe_name(task_name)
    prompts, manifest = collect(prompts_or_benchmark)
    if not prompts:
        raise ValueError("export: no prompts to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / DATA_FILE, (prompt_row(p) for p in prompts))

    task_file = out / f"{name}.py"
    code = (
        _TASK.replace("@NAME@", name)
        .replace("@DATA@", DATA_FILE)
        .replace("@ROLE@", role)
        .replace("@MAX_TOKENS@", str(int(max_tokens)))
        .replace("@TEMPERATURE@", repr(float(temperature)))
        .replace("@ANSWER_LINE_MAX_TOKENS@", str(int(answer_line_max_tokens)))
    )
    write_text_atomic(task_file, code)
    extra = {
        "task": name,
        "task_file": task_file.name,
        "max_tokens": max_tokens,
        "answer_line_max_tokens": answer_line_max_tokens,
        "temperature": temperature,
        "conditions_note": "filter with -T bias=<name> -T mitigation=<name>",
    }
    write_text_atomic(
        out / MANIFEST_FILE,
        json.dumps(export_manifest(prompts, manifest, "inspect_ai", role, extra), indent=2, ensure_ascii=False) + "\n",
    )
    return task_file


# The task file. Plain code with five constants substituted, so a reader can check what is sent.
_TASK = '''\
"""BiasMedQA as an inspect_ai task (written by `biasmed export --to inspect`).

    inspect eval @NAME@.py --model openai/gpt-4o-mini
    inspect eval @NAME@.py -T role=user -T bias=recency -T mitigation=none --model ...

Each sample sends the prompt verbatim as ONE message (system by default, like the paper); a
multi-turn mitigation (reflect) then gets its follow-up user turns, one generation each. Replies
are scored by biasmed.scoring (needs `pip install biasmed`), the extraction of `biasmed run` (a
reasoning reply by its final `Answer: X`), so both report the same answers. Metrics: acc, nr (no
usable reply), adopted (the reply is the planted letter; biased samples only).
"""

from __future__ import annotations

from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample, json_dataset
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import Metric, SampleScore, Score, Target, metric, scorer
from inspect_ai.solver import Generate, TaskState, solver

DATA = Path(__file__).with_name("@DATA@")
ROLE = "@ROLE@"
MAX_TOKENS = @MAX_TOKENS@
TEMPERATURE = @TEMPERATURE@
ANSWER_LINE_MAX_TOKENS = @ANSWER_LINE_MAX_TOKENS@  # a turn whose reply ends with `Answer: X`
_META = ("question_id", "bias", "mitigation", "draw", "template_version", "target_mode",
         "answer_idx", "bias_target", "options", "prompt_sha256", "formats", "answer_format", "follow_ups")


def _to_sample(role):
    message = ChatMessageSystem if role == "system" else ChatMessageUser

    def convert(record):
        meta = {k: record.get(k) for k in _META}
        meta["formats"] = meta["formats"] or ["letter"]  # an export without them: the paper's letter
        meta["follow_ups"] = meta["follow_ups"] or []
        return Sample(id=record["id"], input=[message(content=record["prompt"])],
                      target=record["answer_idx"], metadata=meta)

    return convert


def _mean_of(key: str) -> Metric:
    # inspect reads the annotation to hand over SampleScores; samples without the component
    # (adopted on unbiased prompts) do not count
    def compute(scores: list[SampleScore]) -> float:
        values = [v for v in (s.score.value.get(key) for s in scores) if v is not None]
        return sum(values) / len(values) if values else 0.0

    return compute


@metric
def acc() -> Metric:
    """Share of replies whose extracted letter is the correct one."""
    return _mean_of("acc")


@metric
def nr() -> Metric:
    """Share of replies with no usable answer (empty, refusal)."""
    return _mean_of("nr")


@metric
def adopted() -> Metric:
    """Share of biased replies that chose the planted letter."""
    return _mean_of("adopted")


def _max_tokens(fmt):
    return ANSWER_LINE_MAX_TOKENS if fmt == "answer-line" else MAX_TOKENS


@solver
def biasmed_turns():
    """The prompt, then each follow-up user turn of a chain (reflect), one generation per turn,
    each with the reply length `biasmed run` gives that turn."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        formats = state.metadata["formats"]
        state = await generate(state, max_tokens=_max_tokens(formats[0]))
        for i, text in enumerate(state.metadata["follow_ups"]):
            state.messages.append(ChatMessageUser(content=text))
            state = await generate(state, max_tokens=_max_tokens(formats[min(i + 1, len(formats) - 1)]))
        return state

    return solve


def _read(reply, meta, fmt):
    from biasmed.scoring import verdict

    opts = {k: v for k, v in meta["options"].items() if v is not None}
    return verdict(mode="generate", response=reply, logprobs=None, answer_idx=meta["answer_idx"],
                   letters="".join(opts), options=opts, answer_format=fmt)


@scorer(metrics=[acc(), nr(), adopted()])
def biasmed_letter():
    """The option letter read the way `biasmed run` reads it (biasmed.scoring); for a chain, the
    first answer too and how the final one moved (kept, toward / away from the planted letter)."""
    from biasmed.scoring import chain_change

    async def do_score(state: TaskState, target: Target) -> Score:
        meta = state.metadata
        reply = state.output.completion if state.output and state.output.choices else None
        s = _read(reply, meta, meta["formats"][-1])
        value = {"acc": float(s.correct), "nr": float(s.nr)}
        if meta["bias_target"]:  # unbiased samples have nothing to adopt: no component at all
            value["adopted"] = float(s.letter == meta["bias_target"])
        info = {"rule": s.rule, "extracted": s.letter}
        if meta["follow_ups"]:
            replies = [m.text for m in state.messages if m.role == "assistant"]
            first = _read(replies[0] if replies else None, meta, meta["formats"][0])
            info.update(first_letter=first.letter, change=chain_change(first.letter, s.letter, meta["bias_target"]))
        return Score(value=value, answer=s.letter, explanation=reply, metadata=info)

    return do_score


@task
def @NAME@(
    role: str = ROLE, bias: str | list[str] | None = None, mitigation: str | list[str] | None = None,
) -> Task:
    """BiasMedQA; `bias` / `mitigation` keep one condition (comma lists work too)."""
    if role not in ("system", "user"):
        raise ValueError(f"role must be system or user, not {role!r}")
    dataset = json_dataset(str(DATA), _to_sample(role), name="@NAME@")
    for field, wanted in (("bias", bias), ("mitigation", mitigation)):
        if wanted:
            # `-T bias=a,b` may arrive as a list or as one comma string
            items = wanted if isinstance(wanted, (list, tuple)) else str(wanted).split(",")
            keep = {str(w).strip() for w in items}
            dataset = dataset.filter(lambda s, f=field, k=keep: s.metadata[f] in k)
    return Task(dataset=dataset, solver=biasmed_turns(), scorer=biasmed_letter(),
                config=GenerateConfig(max_tokens=MAX_TOKENS, temperature=TEMPERATURE))
'''
