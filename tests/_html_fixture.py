"""Run folders for the HTML report tests, written with biasmed's own code on the demo set.

The builder makes the items and prompts (bias sentences planted by biasmed.dataset.biases),
`biasmed.run.runner.make_sample` turns each scripted reply into the one Sample record (the
verdict from biasmed.scoring), and biasmed.results writes the folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import biasmed
from biasmed.dataset.build import build_benchmark
from biasmed.dataset.medqa import load_demo
from biasmed.models.function import FunctionModel
from biasmed.records import NONE, Answer, GenParams, Prompt
from biasmed.results import RUN_JSON, SamplesWriter, new_run_meta, write_json_atomic
from biasmed.run.runner import make_sample

BIASES = [NONE, "self_diagnosis", "recency", "confirmation", "placebo_recency"]
MITIGATIONS = ["none", "education"]
HOSTILE_REPLY = 'The answer is D. <script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOSTILE_MODEL = 'evil<img src=x onerror="window.__pwned=3">'


def scripted_reply(p: Prompt) -> str:
    """Question 0 flips to the planted letter under every bias (not the placebo sentence) with no
    mitigation; question 1's self_diagnosis reply
    is hostile markup; question 2 gives no letter under recency; question 3 is wrong either way;
    everything else answers right."""
    it, q = p.item, p.item.question
    index = int(q.id.rpartition("-")[2])
    wrong = next(k for k in q.options if k != q.answer_idx)
    if index == 0 and it.bias != NONE and not it.bias.startswith("placebo_") and p.mitigation == "none":
        return f"{it.target}: {q.options[it.target]}"  # type: ignore[index]
    if index == 1 and it.bias == "self_diagnosis":
        return HOSTILE_REPLY
    if index == 2 and it.bias == "recency":
        return "no idea, sorry."
    if index == 3:
        return f"The answer is {wrong}."
    return f"The answer is {q.answer_idx}."


def write_run(folder: Path, model: str, n_questions: int = 6,
              reply: Callable[[Prompt], str] = scripted_reply) -> Path:
    questions = load_demo("test")
    bench = build_benchmark(questions, BIASES, mitigations=MITIGATIONS, limit=n_questions)
    folder.mkdir(parents=True, exist_ok=True)
    with SamplesWriter(folder / "samples.jsonl") as w:
        for p in bench.prompts():
            s = make_sample(p, Answer(text=reply(p)), model, "generate", 0.0, False)
            w.append(s.to_dict())
    write_json_atomic(folder / RUN_JSON, new_run_meta("run", model=model, dataset=questions.manifest()))
    return folder


# --------------------------------------------------------------------------- issue 13: mitigations

CHAIN_MITIGATIONS = ["none", "reasoning", "debias", "reflect"]
CHAIN_BIASES = [NONE, "recency", "confirmation"]
CHAIN_SPEC = "acme:metered"
# the first answer of every letter prompt carries markup: the page must show it as text
FIRST_REPLY = 'The answer is C. <b>sure</b><img src=x onerror="window.__pwned=4">'
SECOND_REPLY = "On review, the findings fit A better.\nAnswer: A"


def chain_reply(messages: list[dict[str, str]]) -> str:
    """A plain function model: letter prompts answer C, reasoning answers B, reflect's second
    turn (the messages after the model's first reply) answers A."""
    if len(messages) > 1:
        return SECOND_REPLY
    if "Answer: X" in messages[-1]["content"]:
        return "The history points to B.\nAnswer: B"
    return FIRST_REPLY


class MeteredFunction(FunctionModel):
    """The function model, reporting usage the way a hosted API does (a plain function reports
    none, so its runs have no token figures): 10 input tokens per message, one output token per
    reply character."""

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        out = await super().answer(prompts, params)
        return [
            replace(a, usage={"input_tokens": 10 * len(p.messages(params.role)), "output_tokens": len(a.text or "")})
            for p, a in zip(prompts, out, strict=True)
        ]


def write_chain_run(folder: Path, n_questions: int = 4) -> Path:
    """A run of `chain_reply` through biasmed.evaluate on the demo set, priced by a --prices file."""
    prices = folder.parent / f"{folder.name}-prices.toml"
    prices.write_text(f'[models."{CHAIN_SPEC}"]\ninput = 1.0\noutput = 2.0\n', "utf-8")
    res = biasmed.evaluate(MeteredFunction(chain_reply, spec=CHAIN_SPEC), medqa="demo", limit=n_questions,
                           biases=CHAIN_BIASES, mitigations=CHAIN_MITIGATIONS, out=folder, prices=str(prices))
    assert res.status == "complete", res.message
    return folder
