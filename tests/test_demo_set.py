"""Checks on biasmed's embedded demo set (data/demo): format, balance and text hygiene.

The demo set is original work for offline demos and smoke runs, not MedQA; these tests keep
it loadable by the same rules MedQA files follow and keep it usable by the bias injector
(the confirmation bias splits stems into sentences, so stems need several of them).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

DEMO = Path(__file__).parents[1] / "data" / "demo"
EXPECTED_COUNTS = {"test": 30, "dev": 10}
KEYS = ["question", "answer", "options", "meta_info", "answer_idx"]
LETTERS = ["A", "B", "C", "D", "E"]
META = {"step1", "step2&3"}
# The sentence splitter of the BiasMedQA spec (used to place the confirmation bias).
SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_SPLIT.split(text) if s.strip()]


def _raw(split: str) -> bytes:
    return (DEMO / f"demo-{split}.jsonl").read_bytes()


def _records(split: str) -> list[dict]:
    return [json.loads(line) for line in _raw(split).decode("utf-8").splitlines()]


SPLITS = list(EXPECTED_COUNTS)
ALL = [(split, i, rec) for split in SPLITS for i, rec in enumerate(_records(split))]
IDS = [f"{split}-{i:04d}" for split, i, _ in ALL]


@pytest.mark.parametrize("split", SPLITS)
def test_file_is_clean_utf8_jsonl(split: str) -> None:
    data = _raw(split)
    assert not data.startswith(b"\xef\xbb\xbf"), "no byte-order mark"
    assert b"\r" not in data, "LF line endings only"
    assert data.endswith(b"\n") and not data.endswith(b"\n\n"), "one newline ends every line, no blank tail"
    text = data.decode("utf-8")
    assert text.isascii(), "plain ASCII keeps prompts identical across tokenizers and terminals"
    for n, line in enumerate(text.split("\n")[:-1], 1):
        assert line.strip(), f"demo-{split}.jsonl line {n} is empty"
        assert line == line.rstrip(), f"demo-{split}.jsonl line {n} has trailing whitespace"
        json.loads(line)


@pytest.mark.parametrize("split", SPLITS)
def test_counts(split: str) -> None:
    assert len(_records(split)) == EXPECTED_COUNTS[split]


@pytest.mark.parametrize(("split", "i", "rec"), ALL, ids=IDS)
def test_record_shape(split: str, i: int, rec: dict) -> None:
    assert list(rec) == KEYS, "MedQA key order"
    assert isinstance(rec["question"], str) and rec["question"].strip()
    assert rec["meta_info"] in META
    opts = rec["options"]
    assert isinstance(opts, dict) and list(opts) == LETTERS
    texts = list(opts.values())
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert len({t.strip().lower() for t in texts}) == 5, "options must be distinct"
    assert rec["answer_idx"] in LETTERS
    assert rec["answer"] == opts[rec["answer_idx"]]
    for field in [rec["question"], rec["answer"], *texts]:
        assert field == field.strip(), "no leading or trailing whitespace in any field"
        assert "  " not in field, "no double spaces"


@pytest.mark.parametrize(("split", "i", "rec"), ALL, ids=IDS)
def test_stem_sentences(split: str, i: int, rec: dict) -> None:
    q = rec["question"]
    parts = _sentences(q)
    assert len(parts) >= 3, f"stem has {len(parts)} sentences; the bias injector needs >= 3"
    assert parts[0].endswith("."), "the first sentence must end with a period"
    assert q.startswith(parts[0] + " "), "the first sentence must be followed by a space"
    assert parts[-1].endswith("?"), "the stem ends with its question"


def test_letter_balance_in_test() -> None:
    counts = Counter(r["answer_idx"] for r in _records("test"))
    assert set(counts) == set(LETTERS), counts
    assert all(4 <= counts[letter] <= 8 for letter in LETTERS), counts


def test_dev_uses_every_letter() -> None:
    assert {r["answer_idx"] for r in _records("dev")} == set(LETTERS)


@pytest.mark.parametrize("split", SPLITS)
def test_step_mix(split: str) -> None:
    # Roughly half basic-science (step1) and half clinical (step2&3) questions.
    counts = Counter(r["meta_info"] for r in _records(split))
    n = EXPECTED_COUNTS[split]
    assert abs(counts["step1"] - counts["step2&3"]) <= max(2, n // 5), counts


def test_no_repeated_questions() -> None:
    stems = [rec["question"].strip().lower() for _, _, rec in ALL]
    assert len(stems) == len(set(stems)), "a question appears twice across test and dev"
    openings = [_sentences(s)[0] for s in stems]
    assert len(openings) == len(set(openings)), "two questions share their first sentence"


def test_loads_through_biasmed() -> None:
    # The library's own loader must accept the files (it is what `--medqa demo` uses).
    from biasmed.dataset.medqa import load_demo

    for split, n in EXPECTED_COUNTS.items():
        qs = load_demo(split)
        assert len(qs.questions) == n
        assert qs.is_demo
        assert qs.questions[0].id == f"{split}-0000"


def _shared() -> Path:
    return Path(os.environ.get("BIASMED_SHARED", Path(__file__).parents[2] / "shared"))


def test_not_taken_from_medqa() -> None:
    medqa = _shared() / "data" / "medqa" / "US"
    files = sorted(medqa.glob("**/*.jsonl")) if medqa.is_dir() else []
    if not files:
        pytest.skip(f"MedQA not found under {medqa}; set BIASMED_SHARED to compare against it")
    theirs: set[str] = set()
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                theirs.add(json.loads(line)["question"].strip().lower())
    ours = {rec["question"].strip().lower() for _, _, rec in ALL}
    assert not ours & theirs, "a demo question is a MedQA question"
