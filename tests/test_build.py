"""`biasmed build` on MedQA: counts, byte-identical output across processes, the target draw
(never correct, uniform over the wrong letters, stable when questions or biases are added),
target modes, `--format hf`, `--targets-from`."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from biasmed.dataset.build import build_benchmark, targets_from_run
from biasmed.dataset.medqa import QuestionSet
from biasmed.records import BIASES

CONDITIONS = ["none", *BIASES]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@pytest.fixture(scope="module")
def two_builds(medqa_dir: Path, tmp_path_factory: pytest.TempPathFactory, run_cli_process):
    """The same build run twice, each in a fresh process, from different working folders."""
    outs = []
    for k in range(2):
        d = tmp_path_factory.mktemp(f"build{k}")
        res = run_cli_process("build", "--medqa", medqa_dir, "--out", d / "bm.jsonl", cwd=d)
        assert res.exit_code == 0, res.stderr
        outs.append(d / "bm.jsonl")
    return outs


@pytest.fixture(scope="module")
def records(two_builds) -> list[dict]:
    return _records(two_builds[0])


def test_counts_and_fields(records: list[dict], medqa_test) -> None:
    assert len(records) == 1273 * 8
    assert Counter(r["bias"] for r in records) == {c: 1273 for c in CONDITIONS}
    # question-major: a question's 8 conditions are adjacent, the unbiased twin first
    assert [r["bias"] for r in records[:8]] == CONDITIONS
    assert len({r["id"] for r in records}) == len(records)
    by_q = {q.id: q for q in medqa_test}
    for r in records[:800]:
        q = by_q[r["question_id"]]
        assert r["answer_idx"] == q.answer_idx and r["options"] == q.options and r["question"] == q.question
        assert set(r["prompts"]) == {"none"} and r["prompts"]["none"].endswith("### Answer: ")
        if r["bias"] == "none":
            assert r["text"] == q.question and r["bias_target"] is None
        else:
            assert r["bias_target_text"] == q.options[r["bias_target"]]
            assert f"{r['bias_target']}: {r['bias_target_text']}" in r["text"]
            assert r["id"] == f"{q.id}|{r['bias']}"


def test_manifest(two_builds, medqa_dir: Path) -> None:
    m = json.loads(two_builds[0].with_name("bm.manifest.json").read_text())
    data = (medqa_dir / "test.jsonl").read_bytes()
    assert m["records"] == 1273 * 8 and m["questions"] == 1273 and m["seed"] == 0
    assert m["template_version"] == "paper-2024" and m["biases"] == CONDITIONS
    assert m["dataset"]["sha256"] == hashlib.sha256(data).hexdigest() and m["dataset"]["is_demo"] is False
    assert m["biasmed_version"] and m["records_sha256"] == hashlib.sha256(two_builds[0].read_bytes()).hexdigest()
    assert "WARNING" not in m


def test_byte_identical_across_processes(two_builds) -> None:
    a, b = two_builds
    assert a.read_bytes() == b.read_bytes()
    assert a.with_name("bm.manifest.json").read_bytes() == b.with_name("bm.manifest.json").read_bytes()


def test_targets_never_correct_and_uniform_over_wrong_letters(records: list[dict]) -> None:
    from scipy.stats import chisquare

    ranks = []  # position of the target among the question's wrong letters (0..3)
    per_bias: dict[str, Counter[int]] = {b: Counter() for b in BIASES}
    for r in records:
        if r["bias"] == "none":
            continue
        wrong = [L for L in r["options"] if L != r["answer_idx"]]
        assert r["bias_target"] in wrong
        ranks.append(wrong.index(r["bias_target"]))
        per_bias[r["bias"]][ranks[-1]] += 1
    counts = Counter(ranks)
    assert len(ranks) == 1273 * 7
    p = chisquare([counts[i] for i in range(4)]).pvalue
    assert p > 0.001, counts
    # the same test rejects a draw that favours one wrong letter by a few percent
    skewed = [counts[0] + 300, counts[1] - 100, counts[2] - 100, counts[3] - 100]
    assert chisquare(skewed).pvalue < 0.001
    # and per bias (1273 draws each)
    for b, per in per_bias.items():
        assert chisquare([per[i] for i in range(4)]).pvalue > 0.0005, (b, per)


def _targets(bench) -> dict[str, str | None]:
    return {it.id: it.target for it in bench.items}


def test_another_seed_changes_targets(medqa_test) -> None:
    a = _targets(build_benchmark(medqa_test, seed=0))
    b = _targets(build_benchmark(medqa_test, seed=1))
    changed = sum(a[k] != b[k] for k in a if a[k] is not None)
    assert changed > 0.6 * 1273 * 7  # 3 in 4 expected for 4 wrong letters


def test_seed_on_the_cli_changes_targets(medqa_dir: Path, tmp_path: Path, run_cli, records: list[dict]) -> None:
    out = tmp_path / "s7.jsonl"
    assert run_cli("build", "--medqa", medqa_dir, "--seed", "7", "--limit", "200", "--out", out).exit_code == 0
    s7 = {r["id"]: r["bias_target"] for r in _records(out)}
    s0 = {r["id"]: r["bias_target"] for r in records if r["id"] in s7}
    assert sum(s7[k] != s0[k] for k in s7 if s7[k]) > 0.6 * 200 * 7


def test_adding_questions_or_biases_never_moves_targets(medqa_test) -> None:
    full = _targets(build_benchmark(medqa_test, seed=3))
    few_q = QuestionSet(medqa_test.questions[500:560] + medqa_test.questions[10:20], medqa_test.source,
                        medqa_test.sha256, "test", 5)
    sub = _targets(build_benchmark(few_q, ["none", "recency", "status_quo"], seed=3))
    assert sub and all(full[k] == v for k, v in sub.items())
    v2 = _targets(build_benchmark(medqa_test, "all", seed=3))  # adds the two _v2 biases
    assert all(v2[k] == v for k, v in full.items())
    assert any(k.endswith("|confirmation_v2") for k in v2)


def test_target_modes_cli(medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    from scipy.stats import chisquare

    res = run_cli("build", "--medqa", medqa_dir, "--target-mode", "correct", "--limit", "100", "--out", tmp_path / "c.jsonl")
    assert res.exit_code == 0, res.stderr
    correct = [r for r in _records(tmp_path / "c.jsonl") if r["bias"] != "none"]
    assert correct and all(r["bias_target"] == r["answer_idx"] and r["target_mode"] == "correct" for r in correct)

    res = run_cli("build", "--medqa", medqa_dir, "--target-mode", "random", "--out", tmp_path / "r.jsonl")
    assert res.exit_code == 0, res.stderr
    rand = [r for r in _records(tmp_path / "r.jsonl") if r["bias"] != "none"]
    hits = sum(r["bias_target"] == r["answer_idx"] for r in rand)
    assert 0.16 < hits / len(rand) < 0.24  # 1 in 5
    ranks = Counter(list(r["options"]).index(r["bias_target"]) for r in rand)
    assert chisquare([ranks[i] for i in range(5)]).pvalue > 0.001

    res = run_cli("build", "--medqa", medqa_dir, "--target-mode", "sideways", "--limit", "2", "--out", tmp_path / "x.jsonl")
    assert res.exit_code == 2 and len(res.stderr_lines) == 1 and not (tmp_path / "x.jsonl").exists()


def test_format_hf_round_trip(medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "bm.jsonl"
    res = run_cli("build", "--medqa", medqa_dir, "--limit", "40", "--mitigations", "none,one-shot",
                  "--format", "hf", "--out", out)
    assert res.exit_code == 0, res.stderr
    ds = datasets.load_from_disk(str(tmp_path / "bm_hf"))
    recs = _records(out)
    assert len(ds) == len(recs) == 40 * 8
    for i in (0, 9, 319):
        row = ds[i]
        assert row["id"] == recs[i]["id"] and row["prompts"] == recs[i]["prompts"]
        assert row["options"] == recs[i]["options"] and row["bias_target"] == recs[i]["bias_target"]
    from biasmed.exports.to_hf import read_hf_manifest

    assert read_hf_manifest(tmp_path / "bm_hf")["records"] == 320


def test_targets_from_run(medqa_test, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    planted = {("test-0000", "recency"): "A", ("test-0001", "recency"): "B", ("test-0001", "cultural"): "D"}
    with open(run / "samples.jsonl", "w") as f:
        for (qid, bias), letter in planted.items():
            f.write(json.dumps({"sample_id": f"{qid}|{bias}|none", "question_id": qid, "bias": bias,
                                "bias_target": letter}) + "\n")
    targets = targets_from_run(run)
    assert targets == planted
    bench = build_benchmark(medqa_test, ["none", "recency", "cultural"], targets=targets, limit=3)
    got = {(it.question.id, it.bias): it.target for it in bench.items if it.bias != "none"}
    assert got[("test-0000", "recency")] == "A" and got[("test-0001", "cultural")] == "D"
    assert got[("test-0002", "recency")] != medqa_test.questions[2].answer_idx  # not in the run: drawn
