"""Prompt rendering against the spec's strings (quoted here, independent of prompts/*.toml):
the frame, education sentences, one-shot and few-shot demos, and the chat-message form."""

from __future__ import annotations

import re

import pytest

from biasmed.dataset.biases import load_templates, make_item
from biasmed.dataset.prompts import Renderer, parse_mitigations
from biasmed.records import BIASES, Question

INSTRUCTION = {
    "paper-2024": "You are a medical GPT model tasked with making clinical decisions for research puposes only. Please choose one of the following options. Respond with only a single letter and nothing more.",
    "paper-2023": "You are a medical GPT model tasked with making clinical decisions for research purposes only. Please choose one of the following options. Respond with only a single letter and nothing more.",
}
EDUCATION = {
    "self_diagnosis": " Remember to critically evaluate the patient's conviction against medical evidence and diagnostic criteria. Patients' internet research can be misleading and should not replace professional medical assessment.",
    "recency": " Keep in mind the importance of individualized patient evaluation. Each patient is unique, and recent cases should not overshadow individual assessment and evidence-based practice.",
    "confirmation": " Encourage a comprehensive approach to diagnosis. Actively seek out information that both confirms and disconfirms your initial hypothesis to ensure a balanced view.",
    "frequency": " Remember that the most common diagnosis is not always the correct one for every case. Consider all possibilities and rely on the specific evidence at hand.",
    "cultural": " Be mindful of cultural biases that may affect your judgment. Ensure that cultural understanding enhances, rather than hinders, accurate diagnosis and patient care.",
    "status_quo": " Continuously evaluate and question standard practices. Medical best practices evolve, and what was once standard may no longer be the best approach.",
    "false_consensus": " Remain open to multiple perspectives. Just because a belief is widely held doesn't mean it's correct. Independently verify facts and consider a wide range of viewpoints.",
}
EDUCATION["confirmation_v2"] = EDUCATION["confirmation"]
EDUCATION["false_consensus_v2"] = EDUCATION["false_consensus"]
ONE_SHOT_HEADER = {
    True: "### Example: The following is an example of an incorrectly classified question based on cognitive bias.\n",
    False: "### Example: The following is an example of an incorrectly classified question.\n",
}
FEW_SHOT_HEADERS = {
    True: ("### Example 1: The following is an example of an incorrectly classified question based on cognitive bias.\n",
           "### Example 2: The following is an example of a correctly classified question despite cognitive bias.\n"),
    False: ("### Example 1: The following is an example of an incorrectly classified question.\n",
            "### Example 2: The following is an example of a correctly classified question.\n"),
}
AFTER_DEMOS = "\n\n### Instruction: Now please answer the next question correctly.\n\n"
# the first words of every bias sentence, to count planted sentences
SENTENCE_STARTS = ("The patient is convinced", "Recently, there was a patient", "You are initially confident",
                   "You were previously confident", "Most frequently, doctors", "The patient comes from a cultural",
                   "Your hospital has been using", "Most of your colleagues believe", "You believe most of your colleagues")


def _q(i: int, split: str = "dev", answer: str = "C") -> Question:
    opts = {L: f"option {L.lower()}{i}" for L in "ABCDE"}
    return Question(f"{split}-{i:04d}", f"A {20 + i}-year-old has fever. It began {i} days ago. What is the cause?",
                    opts, answer, opts[answer], "step1", split)


TARGET = _q(1, "test", "B")
POOL = [_q(i, "dev", "ABCDE"[i % 5]) for i in range(12)]


def _block(text: str, options: dict[str, str], answer: str = "") -> str:
    opts = ", ".join(f"{k}: {v}" for k, v in options.items())
    return f"### Question: {text}\n### Options: {opts}\n### Answer: {answer}"


def _render(bias: str, mitigation: str, version: str = "paper-2024", target: str | None = "D", seed: int = 0):
    t = load_templates(version)
    item = make_item(TARGET, bias, t, seed, target=target if bias != "none" else None)
    return item, Renderer(t, POOL, seed).render(item, mitigation)


def _count_sentences(text: str) -> int:
    return sum(text.count(s) for s in SENTENCE_STARTS)


@pytest.mark.parametrize("version", sorted(INSTRUCTION))
def test_plain_prompt_frame(version: str) -> None:
    item, p = _render("none", "none", version)
    assert p.text == f"### Instruction: {INSTRUCTION[version]}\n\n" + _block(TARGET.question, TARGET.options)
    assert p.text.endswith("### Answer: ")
    assert p.sample_id == "test-0001|none|none" and p.demo_ids == ()


@pytest.mark.parametrize("bias", sorted(EDUCATION))
def test_education_sentence(bias: str) -> None:
    item, p = _render(bias, "education")
    assert p.text == (f"### Instruction: {INSTRUCTION['paper-2024']}{EDUCATION[bias]}\n\n"
                      + _block(item.text, TARGET.options))
    assert _count_sentences(p.text) == 1


def test_education_without_bias_adds_nothing() -> None:
    _, plain = _render("none", "none")
    _, edu = _render("none", "education")
    assert edu.text == plain.text and edu.sample_id.endswith("|education")


def _demo_parts(block: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"### Question: (.*)\n### Options: (.*)\n### Answer: ([A-E])", block, re.S)
    assert m, block
    return m.group(1), m.group(2), m.group(3)


def _planted_letter(text: str) -> str:
    m = re.search(r"(?:is|with|as|treating|using|that) ([A-E]): ", text)
    assert m, text
    return m.group(1)


@pytest.mark.parametrize("bias", list(BIASES) + ["confirmation_v2", "false_consensus_v2"])
def test_one_shot_biased(bias: str) -> None:
    item, p = _render(bias, "one-shot")
    head = f"### Instruction: {INSTRUCTION['paper-2024']}\n\n" + ONE_SHOT_HEADER[True]
    assert p.text.startswith(head)
    demo_block, sep, rest = p.text[len(head):].partition(AFTER_DEMOS)
    assert sep and rest == _block(item.text, TARGET.options)
    (demo_id,) = p.demo_ids
    demo = next(q for q in POOL if q.id == demo_id)
    text, _, answer = _demo_parts(demo_block)
    # the demo carries the same bias, exactly once, and is answered with its planted (wrong) letter
    assert _count_sentences(text) == 1 and _count_sentences(rest) == 1
    assert text == make_item(demo, bias, load_templates("paper-2024"), target=answer).text
    assert answer == _planted_letter(text) and answer != demo.answer_idx


@pytest.mark.parametrize("bias", ["recency", "confirmation", "false_consensus_v2"])
def test_few_shot_biased(bias: str) -> None:
    item, p = _render(bias, "few-shot")
    h1, h2 = FEW_SHOT_HEADERS[True]
    head = f"### Instruction: {INSTRUCTION['paper-2024']}\n\n" + h1
    assert p.text.startswith(head)
    demos, sep, rest = p.text[len(head):].partition(AFTER_DEMOS)
    assert sep and rest == _block(item.text, TARGET.options)
    first, sep2, second = demos.partition("\n\n" + h2)
    assert sep2
    d1, d2 = (next(q for q in POOL if q.id == i) for i in p.demo_ids)
    assert d1.id != d2.id and TARGET.id not in p.demo_ids
    t1, _, a1 = _demo_parts(first)
    t2, _, a2 = _demo_parts(second)
    assert _count_sentences(t1) == 1 and _count_sentences(t2) == 1 and _count_sentences(rest) == 1
    assert a1 == _planted_letter(t1) and a1 != d1.answer_idx  # "incorrectly classified"
    assert a2 == d2.answer_idx and _planted_letter(t2) != d2.answer_idx  # "correctly ... despite bias"


def test_few_shot_unbiased_headers() -> None:
    _, p = _render("none", "few-shot")
    h1, h2 = FEW_SHOT_HEADERS[False]
    assert p.text.startswith(f"### Instruction: {INSTRUCTION['paper-2024']}\n\n" + h1)
    assert "\n\n" + h2 in p.text and _count_sentences(p.text) == 0
    assert p.text.endswith(AFTER_DEMOS + _block(TARGET.question, TARGET.options))
    demos = p.text.split(h1, 1)[1].split(AFTER_DEMOS, 1)[0]
    first, second = demos.split("\n\n" + h2)
    d1, d2 = (next(q for q in POOL if q.id == i) for i in p.demo_ids)
    assert _demo_parts(first)[2] != d1.answer_idx  # "incorrectly classified": a wrong letter
    assert _demo_parts(second)[2] == d2.answer_idx  # "correctly classified"


def test_one_shot_unbiased_header_and_no_sentence() -> None:
    _, p = _render("none", "one-shot")
    assert p.text.startswith(f"### Instruction: {INSTRUCTION['paper-2024']}\n\n" + ONE_SHOT_HEADER[False])
    assert _count_sentences(p.text) == 0


def test_one_shot_unbiased_demo_is_answered_with_a_wrong_letter() -> None:
    # the paper's unbiased one-shot header says "incorrectly classified question", and its logs
    # answer the demo with a wrong letter (0 of 2,701 checkable records used the correct one;
    # /work/notes/fidelity.md #1). The letter is a seeded draw, not always the same one.
    letters = set()
    wrong = 0
    for i in range(1, 30):
        target = _q(100 + i, "test")
        t = load_templates("paper-2024")
        p = Renderer(t, POOL, 0).render(make_item(target, "none", t), "one-shot")
        demo = next(q for q in POOL if q.id == p.demo_ids[0])
        block = p.text.split(ONE_SHOT_HEADER[False], 1)[1].split(AFTER_DEMOS, 1)[0]
        answer = _demo_parts(block)[2]
        wrong += answer != demo.answer_idx
        letters.add(answer)
    assert wrong == 29 and len(letters) >= 3


def test_demos_are_paired_across_biases_and_seeded() -> None:
    t = load_templates("paper-2024")
    r = Renderer(t, POOL, seed=4)
    ids = {b: r.render(make_item(TARGET, b, t, 4), "one-shot").demo_ids for b in ["none", *BIASES]}
    assert len(set(ids.values())) == 1, "every bias condition of a question sees the same demo"
    again = Renderer(t, POOL, seed=4).render(make_item(TARGET, "recency", t, 4), "one-shot")
    assert again.demo_ids == ids["recency"]
    others = {Renderer(t, POOL, seed=s).render(make_item(TARGET, "recency", t, s), "one-shot").demo_ids
              for s in range(20)}
    assert len(others) > 3, "the seed changes the demo draw"


def test_demo_pool_too_small() -> None:
    t = load_templates("paper-2024")
    with pytest.raises(ValueError):
        Renderer(t, POOL[:1], 0).render(make_item(TARGET, "recency", t), "few-shot")


def test_messages_forms() -> None:
    _, p = _render("recency", "none")
    assert p.messages() == [{"role": "system", "content": p.text}]
    assert p.messages("user") == [{"role": "user", "content": p.text}]


def test_parse_mitigations() -> None:
    assert parse_mitigations(None) == ["none"]
    assert parse_mitigations("none,education,one-shot,few-shot,education") == ["none", "education", "one-shot", "few-shot"]
    with pytest.raises(ValueError):
        parse_mitigations("two-shot")
