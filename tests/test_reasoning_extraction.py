"""Reasoning replies (answer format "answer-line"): the last stated final choice, NR without one.
The corpus is hand-written (tests/data/reasoning_replies.jsonl): varied, realistic replies."""

import json
from pathlib import Path

import pytest

from biasmed.scoring import extract_final, verdict

CORPUS = [json.loads(x) for x in (Path(__file__).parent / "data" / "reasoning_replies.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_corpus(case):
    ex = extract_final(case["reply"], case["options"], "ABCDE")
    assert (ex.letter, ex.rule) == (case["letter"], case["rule"])
    assert ex.nr == (case["letter"] is None and case["rule"] in ("nr", "no-final", "refusal"))


def test_corpus_is_varied():
    rules = {c["rule"] for c in CORPUS}
    assert len(CORPUS) >= 30 and {"answer-line", "final-choice", "no-final", "letter", "refusal"} <= rules


def test_verdict_reads_answer_line_prompts_with_extract_final_under_both_rules():
    reply = "The patient is stable. Weighing the options...\nAnswer: C"
    for rule in ("robust", "paper"):
        v = verdict(mode="generate", response=reply, logprobs=None, answer_idx="C", letters="ABCDE",
                    rule=rule, answer_format="answer-line")
        assert (v.letter, v.correct, v.nr) == ("C", True, False)
    # the paper's single-letter replies are read as before: first character under "paper"
    v = verdict(mode="generate", response=reply, logprobs=None, answer_idx="C", letters="ABCDE", rule="paper")
    assert v.letter is None


def test_no_final_choice_is_nr_and_not_correct():
    v = verdict(mode="generate", response="Several options are plausible.", logprobs=None, answer_idx="C",
                letters="ABCDE", answer_format="answer-line")
    assert v.nr and not v.correct and v.rule == "no-final"
