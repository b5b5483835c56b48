"""Export BiasMedQA prompts as an inspect_ai task: `biasmedqa.py` (a `@task`) beside the data.

The task is dataset + `generate()` + a scorer: each sample's input is the prompt as ONE system
message (the paper's form; `-T role=user` sends it as a user message), and the scorer reads the
letter with `biasmed.scoring`, the same robust extraction `biasmed run` uses (so biasmed must be
installed where inspect runs). Metrics: `acc`, `nr`, and `adopted` (the reply is the planted
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
) -> Path:
    """Write `<task_name>.py` and the data for a Benchmark, prompts or a `biasmed build` file.

    `role` is the default of the task's `role` argument; `max_tokens` and `temperature` default
    to `biasmed run`'s. Returns the path of the task file.
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
    code = (_TASK.replace("@NAME@", name).replace("@DATA@", DATA_FILE).replace("@ROLE@", role)
            .replace("@MAX_TOKENS@", str(int(max_tokens))).replace("@TEMPERATURE@", repr(float(temperature))))
    write_text_atomic(task_file, code)
    extra = {"task": name, "task_file": task_file.name, "max_tokens": max_tokens, "temperature": temperature,
             "conditions_note": "filter with -T bias=<name> -T mitigation=<name>"}
    write_text_atomic(out / MANIFEST_FILE, json.dumps(
        export_manifest(prompts, manifest, "inspect_ai", role, extra), indent=2, ensure_ascii=False) + "\n")
    return task_file


# The task file. Plain code with four constants substituted, so a reader can check what is sent.
_TASK = '''\
"""BiasMedQA as an inspect_ai task (written by `biasmed export --to inspect`).

    inspect eval @NAME@.py --model openai/gpt-4o-mini
    inspect eval @NAME@.py -T role=user -T bias=recency -T mitigation=none --model ...

Each sample sends the prompt verbatim as ONE message (system by default, like the paper). Replies
are scored by biasmed.scoring (needs `pip install biasmed`), the robust letter extraction of
`biasmed run`, so both report the same answers. Metrics: acc, nr (no usable reply), adopted (the
reply is the planted letter; biased samples only).
"""

from __future__ import annotations

from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample, json_dataset
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import Metric, SampleScore, Score, Target, metric, scorer
from inspect_ai.solver import TaskState, generate

DATA = Path(__file__).with_name("@DATA@")
ROLE = "@ROLE@"
MAX_TOKENS = @MAX_TOKENS@
TEMPERATURE = @TEMPERATURE@
_META = ("question_id", "bias", "mitigation", "draw", "template_version", "target_mode",
         "answer_idx", "bias_target", "options", "prompt_sha256")


def _to_sample(role):
    message = ChatMessageSystem if role == "system" else ChatMessageUser

    def convert(record):
        return Sample(id=record["id"], input=[message(content=record["prompt"])],
                      target=record["answer_idx"], metadata={k: record[k] for k in _META})

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


@scorer(metrics=[acc(), nr(), adopted()])
def biasmed_letter():
    """The option letter read the way `biasmed run` reads it (biasmed.scoring, robust rule)."""
    from biasmed.scoring import score

    async def do_score(state: TaskState, target: Target) -> Score:
        meta = state.metadata
        reply = state.output.completion if state.output and state.output.choices else None
        s = score(reply, meta["answer_idx"], "robust", meta["options"])
        value = {"acc": float(s.correct), "nr": float(s.nr)}
        if meta["bias_target"]:  # unbiased samples have nothing to adopt: no component at all
            value["adopted"] = float(s.letter == meta["bias_target"])
        return Score(value=value, answer=s.letter, explanation=reply,
                     metadata={"rule": s.rule, "extracted": s.letter})

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
    return Task(dataset=dataset, solver=generate(), scorer=biasmed_letter(),
                config=GenerateConfig(max_tokens=MAX_TOKENS, temperature=TEMPERATURE))
'''
