"""Export BiasMedQA prompts as an lm-evaluation-harness task folder.

The folder holds one task per condition (bias x mitigation), all in one group with size-weighted
`acc`, `nr` and `adopted`; the data as JSONL; and `utils.py`, which hands lm-eval each prompt
verbatim (a Python function, not a Jinja template: Jinja would strip the newline after a block
and is free to touch whitespace, and the prompt must end in "### Answer: " byte for byte) and
scores replies with `biasmed.scoring`, the same robust extraction `biasmed run` uses. So the
exported task needs biasmed installed where lm-eval runs.

    lm_eval --model local-chat-completions --apply_chat_template \\
        --model_args model=NAME,base_url=http://HOST/v1/chat/completions \\
        --include_path DIR --tasks biasmedqa

lm-eval puts the whole prompt in one user message (`role="user"`, the default here; compare with
`biasmed run --role user`). `role="system"` reproduces the paper's system message through the
task `description`, but lm-eval still adds an empty user message after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from biasmed.exports._common import (
    DATA_FILE,
    MANIFEST_FILE,
    chains,
    check_role,
    collect,
    conditions,
    export_manifest,
    prompt_row,
    safe_name,
    turn_max_tokens,
    write_rows,
)
from biasmed.records import NONE
from biasmed.results import write_text_atomic

TEMPLATE_FILE = "_default_template_yaml"  # no .yaml suffix: lm-eval must not index it as a task
METRICS = ("acc", "nr", "adopted")


def task_names(group: str, conds: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(bias, mitigation) -> lm-eval task name; the mitigation is named only when several are."""
    several = len({m for _, m in conds}) > 1
    return {(b, m): f"{group}_{safe_name(b)}" + (f"_{safe_name(m)}" if several else "") for b, m in conds}


def export_lmeval(
    prompts_or_benchmark: Any,
    out_dir: str | os.PathLike[str],
    *,
    group: str = "biasmedqa",
    role: str = "user",
    max_tokens: int = 16,
    temperature: float = 0.0,
    answer_line_max_tokens: int = 512,
) -> Path:
    """Write the lm-eval task folder for a Benchmark, a list of Prompt or a `biasmed build` file.

    `max_tokens` and `temperature` default to `biasmed run`'s; a reasoning task (its replies end
    with `Answer: X`) gets `answer_line_max_tokens`. A multi-turn mitigation (reflect) is refused:
    lm-eval tasks are single-turn. Returns the folder.
    """
    check_role(role)
    group = safe_name(group)
    prompts, manifest = collect(prompts_or_benchmark)
    if not prompts:
        raise ValueError("export: no prompts to export")
    multi = chains(prompts)
    if multi:
        raise ValueError(
            f"--to lm-eval: {', '.join(multi)} is a multi-turn mitigation and lm-eval tasks are "
            "single-turn; export it with --to inspect, or leave it out of --mitigations"
        )
    formats = {p.mitigation: p.answer_format for p in prompts}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    conds = conditions(prompts)
    names = task_names(group, conds)

    write_rows(out / DATA_FILE, (prompt_row(p) for p in prompts))
    _write(out / "utils.py", _UTILS.replace("@ROLE@", role).replace("@DATA@", DATA_FILE))
    _write(out / TEMPLATE_FILE, _template_yaml(role, max_tokens, temperature))
    for (bias, mitigation), name in names.items():
        tokens = turn_max_tokens(formats[mitigation], max_tokens, answer_line_max_tokens)
        _write(
            out / f"{name}.yaml",
            _task_yaml(name, bias, mitigation, None if tokens == max_tokens else (tokens, temperature)),
        )
    biased = any(b != NONE for b, _ in conds)
    _write(out / f"{group}.yaml", _group_yaml(group, list(names.values()), biased))
    extra = {
        "group": group,
        "tasks": list(names.values()),
        "max_tokens": max_tokens,
        "answer_line_max_tokens": answer_line_max_tokens,
        "temperature": temperature,
    }
    _write(
        out / MANIFEST_FILE,
        json.dumps(export_manifest(prompts, manifest, "lm-eval", role, extra), indent=2, ensure_ascii=False) + "\n",
    )
    return out


def _q(text: str) -> str:
    # a JSON string is a valid YAML double-quoted scalar: no surprise typing ("no", "1e3")
    return json.dumps(text, ensure_ascii=False)


def _generation(max_tokens: int, temperature: float) -> str:
    return f"""\
generation_kwargs:
  until: []
  max_gen_toks: {int(max_tokens)}
  do_sample: {"true" if temperature > 0 else "false"}
  temperature: {float(temperature)}
"""


def _template_yaml(role: str, max_tokens: int, temperature: float) -> str:
    # role "system": the description is the prompt and lm-eval sends it as the system message
    # (utils.doc_to_text then returns ""). A template that is only `{{prompt}}` renders the value
    # unchanged in every lm-eval version; no literal template text surrounds it to be trimmed.
    description = _q("{{prompt}}") if role == "system" else _q("")
    return f"""\
# BiasMedQA task template (written by `biasmed export --to lm-eval`); the tasks include it.
custom_dataset: !function utils.load_docs
test_split: test
output_type: generate_until
doc_to_text: !function utils.doc_to_text
doc_to_target: answer_idx
description: {description}
process_results: !function utils.process_results
{_generation(max_tokens, temperature)}metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: nr
    aggregation: mean
    higher_is_better: false
"""


def _task_yaml(name: str, bias: str, mitigation: str, generation: tuple[int, float] | None = None) -> str:
    adopted = "" if bias == NONE else "  - metric: adopted\n    aggregation: mean\n    higher_is_better: false\n"
    # a reasoning task's longer replies: its own generation_kwargs replace the template's
    gen = "" if generation is None else _generation(*generation)
    return f"""\
include: {TEMPLATE_FILE}
task: {_q(name)}
task_alias: {_q(bias if mitigation == "none" else f"{bias} / {mitigation}")}
{gen}metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: nr
    aggregation: mean
    higher_is_better: false
{adopted}metadata:
  version: 1.0
  bias: {_q(bias)}
  mitigation: {_q(mitigation)}
"""


def _group_yaml(group: str, tasks: list[str], biased: bool) -> str:
    listed = "".join(f"  - {_q(t)}\n" for t in tasks)
    metrics = ("acc", "nr") + (("adopted",) if biased else ())
    agg = "".join(f"  - metric: {m}\n    aggregation: mean\n    weight_by_size: true\n" for m in metrics)
    return f"""\
group: {_q(group)}
task:
{listed}aggregate_metric_list:
{agg}metadata:
  version: 1.0
"""


def _write(path: Path, text: str) -> None:

    write_text_atomic(path, text)


# The helper module lm-eval imports (`!function utils.<name>`). Plain code, no templating beyond
# the two constants, so a reader can check what reaches the model.
_UTILS = '''\
"""BiasMedQA for lm-evaluation-harness (written by `biasmed export --to lm-eval`).

Needs biasmed installed (`pip install biasmed`): replies are scored by biasmed.scoring, the same
robust letter extraction that `biasmed run` applies (a reasoning reply by its final `Answer: X`),
so both report the same answers.
"""

from __future__ import annotations

import json
from pathlib import Path

ROLE = "@ROLE@"  # "user": the prompt is the user message; "system": it is the task description
DATA = Path(__file__).with_name("@DATA@")


def load_docs(bias=None, mitigation=None, **_):
    """The rows of one condition (lm-eval passes the task metadata as keyword arguments)."""
    import datasets

    rows = []
    with open(DATA, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if (bias is None or row["bias"] == bias) and (mitigation is None or row["mitigation"] == mitigation):
                    rows.append(row)
    return {"test": datasets.Dataset.from_list(rows)}


def doc_to_text(doc):
    """The prompt, byte for byte (it ends with "### Answer: ", trailing space included)."""
    return doc["prompt"] if ROLE == "user" else ""


def _options(doc):
    # Arrow gives 4-option rows an "E": None column when 4- and 5-option rows are mixed
    return {k: v for k, v in doc["options"].items() if v is not None}


def process_results(doc, results):
    from biasmed.scoring import verdict

    reply = results[0] if results else None
    opts = _options(doc)
    s = verdict(mode="generate", response=reply, logprobs=None, answer_idx=doc["answer_idx"],
                letters="".join(opts), options=opts, answer_format=doc.get("answer_format") or "letter")
    out = {"acc": float(s.correct), "nr": float(s.nr)}
    if doc.get("bias_target"):
        out["adopted"] = float(s.letter == doc["bias_target"])
    return out
'''
