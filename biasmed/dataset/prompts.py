"""Rendering prompts exactly as BiasMedQA printed them: instruction, education sentence,
one-shot / few-shot demos, the question block; and the chat-message form.

Demos come from a pool (MedQA's dev split) with an RNG seeded by (seed, question id, mitigation),
so the 8 bias conditions of a question see the same demo questions (a paired design), each demo
carrying the condition's bias. Demos are built from the untouched originals every time, which
avoids the original code's defect of stacking several bias sentences on a reused demo.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from biasmed.dataset.biases import TemplateSet, choose_target, make_item
from biasmed.dataset.mitigations import MitigationSet, letters_phrase, load_mitigations
from biasmed.records import NONE, Item, Prompt, Question

N_DEMOS = {"none": 0, "education": 0, "one-shot": 1, "few-shot": 2}


def format_options(options: Mapping[str, str], frame: Mapping[str, object]) -> str:
    sep = str(frame["option_separator"])
    fmt = str(frame["option"])
    return sep.join(fmt.format(letter=k, text=v) for k, v in options.items())


def question_block(text: str, options: Mapping[str, str], frame: Mapping[str, object], answer: str = "") -> str:
    return str(frame["question_block"]).format(question=text, options=format_options(options, frame), answer=answer)


def _demo_rng(seed: int, question_id: str, mitigation: str) -> random.Random:
    key = f"{seed}\x1fdemos\x1f{question_id}\x1f{mitigation}"
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


@dataclass
class Renderer:
    """Renders Items under mitigations with one template version and one demo pool."""

    templates: TemplateSet
    demo_pool: Sequence[Question] = ()
    seed: int = 0
    role: str = "system"
    mitigations: MitigationSet | None = None  # None: the built-ins

    def __post_init__(self) -> None:
        self._pool_ids = frozenset(q.id for q in self.demo_pool)
        if self.mitigations is None:
            self.mitigations = load_mitigations()

    def choose_demos(self, question_id: str, mitigation: str) -> list[Question]:
        k = N_DEMOS.get(mitigation, 0)
        if k == 0:
            return []
        pool = self.demo_pool
        if question_id in self._pool_ids:  # only when demos and questions share a split
            pool = [q for q in pool if q.id != question_id]
        if len(pool) < k:
            raise ValueError(f"{mitigation} needs {k} demo question(s); the demo pool has {len(pool)}")
        rng = _demo_rng(self.seed, question_id, mitigation)
        return [pool[i] for i in rng.sample(range(len(pool)), k)]

    def _demo_item(self, demo: Question, bias: str) -> Item:
        # demos always plant a wrong letter: they show the bias misleading (or resisted)
        return make_item(demo, bias, self.templates, self.seed, "incorrect")

    def _demos_text(self, item: Item, mitigation: str, demos: Sequence[Question]) -> str:
        frame = self.templates.frame
        biased = item.bias != NONE
        kind = "biased" if biased else "unbiased"
        blocks: list[str] = []
        for n, demo in enumerate(demos, start=1):
            d = self._demo_item(demo, item.bias)
            # "incorrectly classified" demos answer wrongly: with the planted letter when biased,
            # else with a seeded wrong letter (as the paper's unbiased one-shot logs do);
            # few-shot's second demo answers correctly
            wrong_demo = n == 1
            if not wrong_demo:
                answer = demo.answer_idx
            elif biased:
                answer = d.target or demo.answer_idx  # a biased demo always has a target
            else:
                answer = choose_target(demo, "none-demo", self.seed, "incorrect")
            custom = self.templates.bias(item.bias).demo_header if biased else ""
            if custom and wrong_demo:
                header = custom.rstrip("\n") + "\n"
            elif mitigation == "one-shot":
                header = frame["one-shot"][f"header_{kind}"]  # type: ignore[index]
            else:
                header = frame["few-shot"][f"header_{n}_{kind}"]  # type: ignore[index]
            blocks.append(str(header) + question_block(d.text, demo.options, frame, str(answer)))
        return str(frame["demo_separator"]).join(blocks) + str(frame["after_demos"])

    def render(self, item: Item, mitigation: str = "none") -> Prompt:
        assert self.mitigations is not None
        mit = self.mitigations.get(mitigation)  # ValueError naming the known ones
        if not mit.paper:
            return self._render_added(item, mitigation)
        frame = self.templates.frame
        education = ""
        if mitigation == "education" and item.bias != NONE and self.templates.bias(item.bias).education:
            education = " " + self.templates.bias(item.bias).education
        head = str(frame["head"]).format(instruction=self.templates.instruction, education=education)
        demos = self.choose_demos(item.question.id, mitigation)
        demo_text = self._demos_text(item, mitigation, demos) if demos else ""
        body = question_block(item.text, item.question.options, frame)
        return Prompt(
            item,
            mitigation,
            head + demo_text + body,
            self.role,
            tuple(d.id for d in demos),
            kind=mit.kind,
            formats=mit.formats,
        )

    def _render_added(self, item: Item, mitigation: str) -> Prompt:
        """A mitigation beyond the paper: the paper's prompt with the mitigation's text after the
        instruction (where the paper put its education sentence), and its follow-up turns."""
        assert self.mitigations is not None
        mit, ms = self.mitigations.get(mitigation), self.mitigations
        frame = self.templates.frame
        fill = letters_phrase(item.question.letters)
        instruction = self.templates.instruction
        if mit.formats[0] == "answer-line" and ms.drops:
            # reasoning is asked for: the paper's "a single letter and nothing more" would contradict it
            instruction = instruction.replace(" " + ms.drops, "").replace(ms.drops, "").rstrip()
        added = " " + mit.text.replace("{letters}", fill) if mit.text else ""
        head = str(frame["head"]).format(instruction=instruction, education=added)
        body = question_block(item.text, item.question.options, frame)
        follow = tuple(f.replace("{letters}", fill) for f in mit.follow_ups)
        return Prompt(
            item, mitigation, head + body, self.role, (), kind=mit.kind, formats=mit.formats, follow_ups=follow
        )

    def render_all(self, items: Iterable[Item], mitigations: Sequence[str]) -> list[Prompt]:
        """Question-major, then bias, then mitigation: the order runs and resumes use."""
        return [self.render(it, m) for it in items for m in mitigations]


def parse_mitigations(spec: str | None, known: MitigationSet | None = None) -> list[str]:
    """Mitigation names from a comma list, checked against `known` (default: the built-ins)."""
    if not spec:
        return ["none"]
    ms = known or load_mitigations()
    names = ["none" if s.strip() in ("", "baseline") else s.strip() for s in spec.split(",")]
    for n in names:
        if n not in ms.items:
            raise ValueError(f"unknown mitigation {n!r} (known: {', '.join(ms.items)})")
    return list(dict.fromkeys(names))
