"""Acceptance: biasmed re-renders the paper's published prompts byte for byte.

Through `biasmed import-logs` (the `paper_runs` fixture) and then the builder with each logged
(question, bias) target: for every record of the gpt-3.5-turbo-0613 and mixtral-8x7b-instruct-v0.1
logs with no mitigation or with education, in both template versions, the rendered prompt equals
the logged one. Records whose logged question is MedQA's text with raw JSON escapes (the 2023
runs) cannot match; they are counted and listed apart, and the exact-match rate over the rest must
be >= 99%. One-shot logs: the instruction line and the target-question block match (the demos
came from MedQA's train split, which biasmed does not have).

Each log file drew its own targets, so targets are taken per log file (not per run).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from biasmed.dataset.build import build_benchmark
from biasmed.run.paperlogs import find_planted, parse_log_name, parse_log_text, parse_options, remove_planted
from biasmed.records import sha256_text
from biasmed.results import read_samples

MIN_RATE = 0.99


def _log_prompts(path: Path) -> list[str]:
    return [r.prompt for r in parse_log_text(path.read_text("utf-8"), str(path))]


def _target_block(prompt: str) -> str:
    return prompt[prompt.rfind("### Question: "):]


def _needs_json_escape(q) -> bool:
    text = q.question + "".join(q.options.values())
    return json.dumps(text, ensure_ascii=False)[1:-1] != text


def _first_difference(a: str, b: str) -> str:
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return f"at {i}: rendered {a[max(0, i - 40):i + 40]!r} vs logged {b[max(0, i - 40):i + 40]!r}"


MODELS = ("gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1")


@pytest.fixture(scope="module")
def one_shot_prompts(paper_logs_dir: Path) -> dict[tuple[str, str], list[str]]:
    """(model, log file) -> logged prompts, for the one-shot files (their demos are not in MedQA)."""
    return {(m, f.name): _log_prompts(f) for m in MODELS
            for f in sorted((paper_logs_dir / m).glob("bias_output_*one-shot_*.txt"))}


@pytest.fixture(scope="module")
def fidelity(paper_samples: dict[str, list[dict]], paper_logs_dir: Path, one_shot_prompts, medqa_test, medqa_dev):
    """Per (model, template version, mitigation): counts of exact / escaped / mismatched records."""
    by_q = {q.id: q for q in medqa_test}
    table: dict[tuple[str, str, str], dict] = defaultdict(
        lambda: {"records": 0, "exact": 0, "escaped": 0, "escaped_ids": set(), "mismatches": [], "files": 0})
    for model, run_samples in paper_samples.items():
        files: dict[str, list[dict]] = defaultdict(list)
        for s in run_samples:
            if not s["extra"]["ae"] and s["mitigation"] in ("none", "education", "one-shot"):
                files[s["extra"]["log_file"]].append(s)
        for log_file, samples in sorted(files.items()):
            bias, mitigation, version = samples[0]["bias"], samples[0]["mitigation"], samples[0]["template_version"]
            targets = {(s["question_id"], bias): s["bias_target"] for s in samples if s["bias_target"]}
            bench = build_benchmark(medqa_test, [bias], version, seed=0, mitigations=[mitigation],
                                    demo_pool=medqa_dev if mitigation == "one-shot" else None, targets=targets)
            rendered = {p.item.question.id: p.text for p in bench.prompts()}
            logged = one_shot_prompts[(model, log_file)] if mitigation == "one-shot" else None
            row = table[(model, version, mitigation)]
            row["files"] += 1
            for s in samples:
                row["records"] += 1
                if s["extra"].get("escaped"):
                    row["escaped"] += 1
                    row["escaped_ids"].add(s["question_id"])
                    continue
                text = rendered[s["question_id"]]
                if logged is None:
                    ok = sha256_text(text) == s["prompt_sha256"]
                else:
                    log = logged[s["extra"]["log_index"]]
                    ok = (_target_block(text) == _target_block(log)
                          and text.split("\n", 1)[0] == log.split("\n", 1)[0])
                if ok:
                    row["exact"] += 1
                else:
                    log = log if logged is not None else _log_prompts(paper_logs_dir / model / log_file)[s["extra"]["log_index"]]
                    row["mismatches"].append(f"{log_file} record {s['extra']['log_index']} ({s['question_id']}): "
                                             + _first_difference(text, log))
    for (model, version, mitigation), row in sorted(table.items()):
        rest = row["records"] - row["escaped"]
        print(f"fidelity {model} {version} {mitigation}: {row['files']} files, {row['exact']}/{rest} exact "
              f"({row['exact'] / max(rest, 1):.2%}), {row['escaped']} escaped records "
              f"({len(row['escaped_ids'])} questions) excluded, {len(row['mismatches'])} mismatches")
        for m in row["mismatches"][:10]:
            print("   ", m)
    escaped = sorted(set().union(*(row["escaped_ids"] for row in table.values())))
    print(f"escaped questions (logged as raw JSON text in the 2023 runs), {len(escaped)}: {', '.join(escaped)}")
    return dict(table), by_q


def test_every_condition_is_covered(fidelity) -> None:
    table, _ = fidelity
    for model in ("gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1"):
        files = {k[1:]: v["files"] for k, v in table.items() if k[0] == model}
        # 2023: baseline + 7 biases, 7 (mixtral: 6) -mitigated; 2024: the two _v2 biases (+ mixtral's
        # false_consensus_education), and 10 one-shot files
        assert files[("paper-2023", "none")] == 8
        assert files[("paper-2023", "education")] == (7 if model.startswith("gpt") else 6)
        assert files[("paper-2024", "none")] == 2
        assert files[("paper-2024", "education")] == (2 if model.startswith("gpt") else 3)
        assert files[("paper-2024", "one-shot")] == 10
        assert sum(v["records"] for k, v in table.items() if k[0] == model) == 29 * 1273


@pytest.mark.parametrize("mitigation", ["none", "education"])
@pytest.mark.parametrize("version", ["paper-2023", "paper-2024"])
@pytest.mark.parametrize("model", ["gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1"])
def test_full_prompt_is_byte_identical(fidelity, model: str, version: str, mitigation: str) -> None:
    table, _ = fidelity
    row = table[(model, version, mitigation)]
    rest = row["records"] - row["escaped"]
    assert rest > 0
    assert row["exact"] / rest >= MIN_RATE, "\n".join(row["mismatches"][:20])


@pytest.mark.parametrize("model", ["gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1"])
def test_one_shot_target_block_matches(fidelity, model: str) -> None:
    table, _ = fidelity
    row = table[(model, "paper-2024", "one-shot")]
    assert row["escaped"] == 0
    assert row["exact"] / row["records"] >= MIN_RATE, "\n".join(row["mismatches"][:20])


def test_escaped_records_are_the_questions_json_escapes(fidelity) -> None:
    """The records left out are exactly MedQA questions holding a newline, quote or backslash, in
    the 2023 runs only (which logged the raw JSON text)."""
    table, by_q = fidelity
    expected = {qid for qid, q in by_q.items() if _needs_json_escape(q)}
    assert len(expected) == 268
    for (model, version, mitigation), row in table.items():
        if version == "paper-2023":
            assert row["escaped_ids"] == expected, (model, mitigation)
            assert row["escaped"] == 268 * row["files"]
        else:
            assert row["escaped"] == 0


def test_cli_targets_from_rebuilds_one_published_file(paper_logs_dir: Path, medqa_dir: Path, tmp_path: Path,
                                                      run_cli) -> None:
    """End to end through the CLI: import one log file, then `build --targets-from` that run."""
    log = paper_logs_dir / "gpt-3.5-turbo-0613" / "bias_output_recency-mitigated_gpt-3.5-turbo-0613.txt"
    run = tmp_path / "paper-recency-edu"
    res = run_cli("import-logs", log, "--medqa", medqa_dir, "--out", run)
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "rebuilt.jsonl"
    res = run_cli("build", "--medqa", medqa_dir, "--targets-from", run, "--biases", "recency",
                  "--template-version", "paper-2023", "--mitigations", "education", "--out", out)
    assert res.exit_code == 0, res.stderr
    rebuilt = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines()) if r["bias"] == "recency"}
    samples = {s["question_id"]: s for s in read_samples(run)}
    logged = _log_prompts(log)
    exact = escaped = 0
    for qid, s in samples.items():
        prompt = rebuilt[qid]["prompts"]["education"]
        assert rebuilt[qid]["bias_target"] == s["bias_target"]
        if s["extra"].get("escaped"):
            escaped += 1
            continue
        assert prompt == logged[s["extra"]["log_index"]], qid
        assert rebuilt[qid]["prompt_sha256"]["education"] == s["prompt_sha256"]
        exact += 1
    assert (exact, escaped) == (1273 - 268, 268)


_DEMO = re.compile(r"### Example: [^\n]*\n### Question: (.*)\n### Options: (.*)\n### Answer: ([A-E])\n\n### Instruction: Now", re.S)


def test_one_shot_demo_answers_in_the_logs(one_shot_prompts) -> None:
    """The convention biasmed's renderer follows, read from the logs: a biased demo is answered with
    its planted letter; an unbiased demo ("an incorrectly classified question") with a WRONG letter.

    The demos come from MedQA's train split (not available), so "wrong" is shown two ways: the
    letter was planted on the same demo question in some biased file (planted letters are never
    the correct one), and when a demo was seen with all 4 wrong letters planted, the answer is not
    the 5th."""
    planted: dict[tuple[str, str], set[str]] = defaultdict(set)
    unbiased: list[tuple[tuple[str, str], str]] = []
    single = stacked = 0
    for (model, log_file), prompts in one_shot_prompts.items():
        bias = parse_log_name(log_file).bias
        for prompt in prompts:
            q, o, answer = _DEMO.search(prompt).groups()
            if bias == "none":
                unbiased.append(((" ".join(q.split()), o), answer))
                continue
            p = find_planted(q, parse_options(o), bias)
            prefix = p.sentence[:p.sentence.index(f"{p.target}: ")]  # the sentence up to its letter
            if len(re.findall(re.escape(prefix) + "[A-E]: ", q)) > 1:
                stacked += 1  # the original code's defect: a reused demo with several sentences
                continue
            single += 1
            assert answer == p.target
            planted[(" ".join(remove_planted(q, p).split()), o)].add(p.target)
    print(f"one-shot demos: {single} with one sentence (answer == planted letter), {stacked} stacked")
    assert single > 15000 and stacked < single / 10
    known_wrong = sum(answer in planted[key] for key, answer in unbiased)
    inferred = [(answer, (set("ABCDE") - planted[key]).pop()) for key, answer in unbiased if len(planted[key]) == 4]
    print(f"unbiased demos: {len(unbiased)}, answer known wrong {known_wrong}, correct letter inferable {len(inferred)}")
    assert len(unbiased) == 2 * 1273 and known_wrong > 500
    assert inferred and all(answer != correct for answer, correct in inferred), Counter(
        a == c for a, c in inferred)
