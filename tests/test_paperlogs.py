"""The paper's raw logs: file names, the record format (robust to odd replies), matching back to
MedQA, scoring with the paper's rule, `biasmed import-logs` on files, folders and archives."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from biasmed.dataset.biases import load_templates, make_item
from biasmed.run.paperlogs import (
    TILDES, LogFormatError, LogName, normalise_verdict, parse_log_name, parse_log_text, read_paper_logs,
)
from biasmed.dataset.prompts import Renderer
from biasmed.results import read_run_json, read_samples

# --- file names ---------------------------------------------------------------------------

NAMES = {
    "bias_output_gpt-4-0613.txt": LogName("gpt-4-0613", "none", "none", False),
    "bias_output_recency_gpt-4-0613.txt": LogName("gpt-4-0613", "recency", "none", False),
    "bias_output_cultural_bias_gpt-4-0613.txt": LogName("gpt-4-0613", "cultural", "none", False),
    "bias_output_cultural_bias-mitigated_gpt-4-0613.txt": LogName("gpt-4-0613", "cultural", "education", False),
    "bias_output_cultural_one-shot_gpt-4-0613.txt": LogName("gpt-4-0613", "cultural", "one-shot", False),
    "bias_output_confirmation_v2_education_gpt-4-0613.txt": LogName("gpt-4-0613", "confirmation_v2", "education", False),
    "bias_output_false_consensus_v2_one-shot_mixtral-8x7b-instruct-v0.1.txt":
        LogName("mixtral-8x7b-instruct-v0.1", "false_consensus_v2", "one-shot", False),
    "bias_output_false_consensus_education_mixtral-8x7b-instruct-v0.1.txt":
        LogName("mixtral-8x7b-instruct-v0.1", "false_consensus", "education", False),
    "bias_output_one-shot_text-bison-001.txt": LogName("text-bison-001", "none", "one-shot", False),
    "bias_output_status_quo_few-shot_x-1.txt": LogName("x-1", "status_quo", "few-shot", False),
    "ae_bias_output_self_diagnosis-mitigated_llama-2-70b-chat.txt":
        LogName("llama-2-70b-chat", "self_diagnosis", "education", True),
    "ae_bias_output_pmc-llama-13b.txt": LogName("pmc-llama-13b", "none", "none", True),
    "bias_output_meditron-7b.txt": LogName("meditron-7b", "none", "none", False),
    "some/folder/bias_output_frequency_gpt-4-0613.txt": LogName("gpt-4-0613", "frequency", "none", False),
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_parse_log_name(name: str) -> None:
    assert parse_log_name(name) == NAMES[name]


@pytest.mark.parametrize("name", ["notes.txt", "bias_output.txt", "bias_output_made_up_gpt-4.txt",
                                  "bias_output_recency_gpt-4.json"])
def test_parse_log_name_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        parse_log_name(name)


# --- the record format --------------------------------------------------------------------


def _rec(prompt: str, answer: str, response: str, verdict: str) -> str:
    return f"{TILDES}\nPROMPT:\n{prompt}\n\nCORRECT ANSWER: {answer}\nRESPONSE: {response}\nIS_CORRECT: {verdict}\n"


P = "### Instruction: x\n\n### Question: q?\n### Options: A: a, B: b, C: c, D: d, E: e\n### Answer: "


def test_odd_records_parse() -> None:
    text = "".join([
        _rec(P, "B: b", "", "NR"),  # empty reply
        _rec(P, "B: b", "B\n\nExplanation: ~~~ tildes\n" + "~" * 100 + "\nmore\nIS_CORRECT: True", "False"),
        _rec(P.replace("q?", "q with ~~~~ and a line\n" + "~" * 100 + "\nin it?"), "C: c", "C: c", "True"),
        _rec(P, "D: d, with comma", "  D", "False"),
    ])
    recs = parse_log_text(text, "x.txt")
    assert [r.index for r in recs] == [0, 1, 2, 3]
    assert [r.line for r in recs] == [2, 13, 29, 42]
    assert recs[0].response == "" and recs[0].is_correct == "NR"
    # a reply imitating the format: the verdict is the record's LAST IS_CORRECT line
    assert recs[1].response.startswith("B\n\nExplanation") and recs[1].response.endswith("more\nIS_CORRECT: True")
    assert recs[1].is_correct == "False"
    assert "~" * 100 + "\nin it?" in recs[2].prompt and recs[2].answer_idx == "C"
    assert recs[3].answer_text == "d, with comma" and recs[3].response == "  D"


def test_crlf_log_file(tmp_path: Path) -> None:
    text = (_rec(P, "B: b", "B", "True") * 2).replace("\n", "\r\n")
    f = tmp_path / "bias_output_x-1.txt"
    f.write_bytes(text.encode())
    logs = read_paper_logs([f], None)
    assert [r.response for r in logs.records] == ["B", "B"]


def test_ae_judge_text_follows_the_verdict() -> None:
    judge = "Scenario 1:\nCORRECT ANSWER: B: b\nRESPONSE: D\nEvaluation: False\n\n"
    (rec,) = parse_log_text(_rec(P, "B: b", "D: d", judge), "ae.txt", ae=True)
    assert rec.response == "D: d" and rec.is_correct == judge.rstrip("\n")
    assert normalise_verdict(rec.is_correct) == "False"


@pytest.mark.parametrize("raw,verdict", [
    ("True", "True"), ("False.", "False"), ("NR", "NR"), ("True, NR", "True"),
    ("Scenario 1:\nCORRECT ANSWER: A: x\nRESPONSE: NR\nYour evaluation: NR", "NR"),
    ("Scenario 1:\nRESPONSE: C\nEvaluation: False", "False"), ("I cannot tell", "unparsed"), ("", "unparsed"),
])
def test_normalise_verdict(raw: str, verdict: str) -> None:
    assert normalise_verdict(raw) == verdict


@pytest.mark.parametrize("text,line,field", [
    ("garbage\n", 1, "PROMPT"),
    ("junk before\n" + _rec(P, "B: b", "B", "True"), 1, "file"),
    (_rec(P, "B: b", "B", "True") + f"{TILDES}\nPROMPT:\n{P}\nRESPONSE: B\nIS_CORRECT: True\n", 13, "CORRECT ANSWER"),
    (_rec(P, "B: b", "B", "True") * 2 + _rec(P, "B: b", "B", "True").replace("\nRESPONSE: ", "\nREPLY: "), 24, "RESPONSE"),
    (_rec(P, "B: b", "B", "True").replace("IS_CORRECT", "CORRECT?"), 2, "IS_CORRECT"),
    (_rec(P.removesuffix(" "), "B: b", "B", "True"), 2, "PROMPT"),
    (_rec(P, "Z9 b", "B", "True"), 2, "CORRECT ANSWER"),
])
def test_malformed_records(text: str, line: int, field: str) -> None:
    with pytest.raises(LogFormatError) as e:
        parse_log_text(text, "bad.txt")
    assert str(e.value).startswith(f"bad.txt:{line}: {field}: "), str(e.value)
    assert "\n" not in str(e.value)


# --- synthetic logs built from real MedQA questions -----------------------------------------


def _log_from_medqa(questions, bias: str, version: str = "paper-2024", targets=None, response="A") -> str:
    t = load_templates(version)
    r = Renderer(t)
    out = []
    for q in questions:
        it = make_item(q, bias, t, target=(targets or {}).get(q.id))
        out.append(_rec(r.render(it).text, f"{q.answer_idx}: {q.answer}", response,
                        "True" if response[:1] == q.answer_idx else "False"))
    return "".join(out)


def test_import_matches_and_scores(medqa_test, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    qs = medqa_test.questions[100:110]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "bias_output_confirmation_v2_m-1.txt").write_text(_log_from_medqa(qs, "confirmation_v2", response="B"))
    (logs / "bias_output_m-1.txt").write_text(_log_from_medqa(qs, "none", response=""))
    (logs / "README.md").write_text("not a log")
    out = tmp_path / "run"
    res = run_cli("import-logs", logs, "--medqa", medqa_dir, "--out", out)
    assert res.exit_code == 0, res.stderr
    samples = read_samples(out)
    assert len(samples) == 20
    conf = [s for s in samples if s["bias"] == "confirmation_v2"]
    assert [s["question_id"] for s in conf] == [q.id for q in qs]
    assert all(s["bias_target"] not in (None, s["answer_idx"]) for s in conf)
    assert all(s["sample_id"] == f"{s['question_id']}|confirmation_v2|none" for s in conf)
    for s in conf:
        assert s["extracted"] == "B" and s["correct"] == (s["answer_idx"] == "B") and s["nr"] is False
        assert s["rule"] == "paper-first-char" and s["template_version"] == "paper-2024"
    base = [s for s in samples if s["bias"] == "none"]
    assert all(s["nr"] and s["correct"] is False and s["extracted"] is None and s["rule"] == "nr" for s in base)
    meta = read_run_json(out)
    assert meta["kind"] == "paper-logs" and meta["model"] == "m-1"
    assert meta["totals"]["samples"] == 20 and meta["totals"]["unmatched"] == 0
    assert meta["dataset"]["sha256"] == medqa_test.sha256


def test_unmatched_questions_are_kept_and_reported(medqa_test, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    qs = medqa_test.questions[:3]
    text = _log_from_medqa(qs, "recency")
    # same options, unrelated text: not matched (options alone repeat in MedQA)
    fake = "A 7-year-old astronaut reports dizziness on Mars. What is the most likely cause?"
    text = text.replace(qs[1].question, fake)
    # a typo and a changed option: still found, as a near match in file order
    typo = qs[2].question.replace("catherization", "catheterisation", 1)
    assert typo != qs[2].question
    text = text.replace(qs[2].question, typo).replace(qs[2].options["A"], qs[2].options["A"] + " (x)")
    logs = tmp_path / "logs"
    logs.mkdir()
    f = logs / "bias_output_recency_m-2.txt"
    f.write_text(text)
    (logs / "bias_output_m-2.txt").write_text(_log_from_medqa(qs[1:2], "none").replace(qs[1].question, fake))
    res = run_cli("import-logs", logs, "--medqa", medqa_dir, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    assert "unmatched 2" in res.stderr and f"{f.name} record 1" in res.stderr
    unbiased, *samples = read_samples(tmp_path / "run")  # files in name order: the baseline first
    odd = samples[1]
    # the stand-in id hashes the bias-free text: the same question pairs across conditions
    assert unbiased["sample_id"] == odd["sample_id"].replace("|recency|", "|none|")
    assert odd["question_id"] is None and odd["sample_id"].startswith("unmatched-")
    assert odd["sample_id"].endswith("|recency|none") and odd["bias_target"] is not None
    meta = read_run_json(tmp_path / "run")
    assert meta["totals"]["unmatched"] == 2
    assert {"sample_id": odd["sample_id"], "log_file": f.name, "index": 1} in meta["unmatched"]
    assert [s["question_id"] for s in (samples[0], samples[2])] == ["test-0000", "test-0002"]
    assert [s["extra"]["match"] for s in samples] == ["exact", None, "fuzzy"]


def test_duplicates_and_conflicts(medqa_test, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    qs = medqa_test.questions[:4]
    logs = tmp_path / "logs"
    (logs / "stray").mkdir(parents=True)
    name = "bias_output_status_quo_m-3.txt"
    targets = {q.id: q.wrong_letters[0] for q in qs}
    (logs / name).write_text(_log_from_medqa(qs, "status_quo", targets=targets))
    # a stray partial copy (as the pmc-llama archive holds for text-bison): identical -> dropped
    (logs / "stray" / name).write_text(_log_from_medqa(qs[:2], "status_quo", targets=targets))
    (logs / "stray" / "bias_output_status_quo_m-3 .txt").write_text("junk")  # not a log name: skipped
    # another file of the same condition answering differently -> the first is kept, reported
    other = logs / "other"
    other.mkdir()
    (other / name).write_text(_log_from_medqa(qs[3:], "status_quo", targets=targets, response="E"))
    res = run_cli("import-logs", logs, "--medqa", medqa_dir, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    meta = read_run_json(tmp_path / "run")
    assert meta["totals"]["samples"] == 4 and meta["totals"]["duplicates"] == 2
    assert meta["conflicts"] == [{"sample_id": "test-0003|status_quo|none", "log_file": name, "index": 0}]


def test_bad_log_exits_2_and_leaves_nothing(medqa_test, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "bias_output_m-4.txt").write_text(_log_from_medqa(medqa_test.questions[:2], "none"))
    bad = _log_from_medqa(medqa_test.questions[2:5], "none").replace("RESPONSE: ", "ANSWER: ", 2)
    (logs / "bias_output_recency_m-4.txt").write_text(bad)
    out = tmp_path / "out"
    res = run_cli("import-logs", logs, "--medqa", medqa_dir, "--out", out)
    assert res.exit_code == 2
    assert len(res.stderr_lines) == 1
    assert "bias_output_recency_m-4.txt:2: RESPONSE: missing" in res.stderr
    assert not out.exists()


def test_import_needs_medqa(tmp_path: Path, run_cli) -> None:
    res = run_cli("import-logs", tmp_path, env={"BIASMED_MEDQA_DIR": None})
    assert res.exit_code == 2 and "--medqa" in res.stderr and len(res.stderr_lines) == 1


def test_refuses_to_replace_a_real_run(medqa_test, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "run"}))
    (run / "samples.jsonl").write_text('{"sample_id": "keep"}\n')
    f = tmp_path / "bias_output_m-5.txt"
    f.write_text(_log_from_medqa(medqa_test.questions[:1], "none"))
    res = run_cli("import-logs", f, "--medqa", medqa_dir, "--out", run)
    assert res.exit_code == 2 and "paper-logs" in res.stderr
    assert (run / "samples.jsonl").read_text() == '{"sample_id": "keep"}\n'
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "samples.jsonl"]


# --- the published logs ---------------------------------------------------------------------


def test_meditron_archive_read_in_place(paper_archives_dir: Path, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    res = run_cli("import-logs", paper_archives_dir / "meditron.tar.xz", "--medqa", medqa_dir, "--out", tmp_path)
    assert res.exit_code == 0, res.stderr
    for model in ("meditron-7b", "meditron-70b"):
        run = tmp_path / f"paper-{model}"  # two models: one paper-<model> folder each
        samples = read_samples(run)
        assert [s["question_id"] for s in samples] == [f"test-{i:04d}" for i in range(500)]
        assert {s["template_version"] for s in samples} == {"paper-meditron"}
        assert {(s["bias"], s["mitigation"]) for s in samples} == {("none", "none")}
        assert all(s["extra"]["log_file"] == f"bias_output_{model}.txt" for s in samples)
        # meditron's own scorer is not the paper's first-character rule: keep both
        verdicts = Counter(s["extra"]["logged_is_correct"] for s in samples)
        assert sum(verdicts.values()) == 500 and set(verdicts) == {"True", "False", "NR"}
        assert read_run_json(run)["sources"] == [str(paper_archives_dir / "meditron.tar.xz")]


def test_published_runs(paper_runs: dict[str, Path], paper_samples: dict[str, list[dict]], medqa_test) -> None:
    by_q = {q.id: q for q in medqa_test}
    for model, run in paper_runs.items():
        meta = read_run_json(run)
        assert meta["kind"] == "paper-logs" and meta["model"] == model
        assert meta["totals"] == {"samples": 29 * 1273, "files": 29, "matched": 29 * 1273, "unmatched": 0,
                                  "escaped": meta["totals"]["escaped"], "duplicates": 0, "conflicts": 0}
        for f in meta["files"]:
            assert f["records"] == f["matched"] == 1273 and f["in_order"] and f["no_target"] == 0
            assert f["answer_mismatch"] == 0
            # the instruction's spelling tells the version; one-shot and _v2 are the 2024 runs
            v2024 = f["mitigation"] == "one-shot" or f["bias"].endswith("_v2") or f["name"].endswith(
                "_education_mixtral-8x7b-instruct-v0.1.txt")
            assert f["template_version"] == ("paper-2024" if v2024 else "paper-2023"), f["name"]
        samples = paper_samples[model]
        assert len({s["sample_id"] for s in samples}) == len(samples) == 29 * 1273
        # the paper's first-character rule reproduces every logged IS_CORRECT of these files
        for s in samples:
            assert s["correct"] == (s["extra"]["logged_is_correct"] == "True")
            assert s["nr"] == (s["extra"]["logged_is_correct"] == "NR")
            assert s["answer_idx"] == by_q[s["question_id"]].answer_idx
            if s["bias"] != "none":
                assert s["bias_target"] in by_q[s["question_id"]].wrong_letters
        # log-file order: within a file, MedQA order
        first = [s["question_id"] for s in samples if s["extra"]["log_file"] == samples[0]["extra"]["log_file"]]
        assert first == [f"test-{i:04d}" for i in range(1273)]
        assert {s["bias"] for s in samples} == {"none", "self_diagnosis", "recency", "confirmation", "frequency",
                                                "cultural", "status_quo", "false_consensus", "confirmation_v2",
                                                "false_consensus_v2"}


@pytest.fixture(scope="module")
def llama_pair(paper_archives_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ae_ file and its plain twin, streamed out of the llama archive (both lie near its start)."""
    want = {"ae_bias_output_false_consensus-mitigated_llama-2-70b-chat.txt",
            "bias_output_false_consensus-mitigated_llama-2-70b-chat.txt"}
    out = tmp_path_factory.mktemp("llama")
    archive = paper_archives_dir / "llama-2-70b-chat.tar.xz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    with tarfile.open(archive, "r|xz") as tf:
        for m in tf:
            name = Path(m.name).name
            if name in want:
                (out / name).write_bytes(tf.extractfile(m).read())
                want.discard(name)
                if not want:
                    break
    return out


def test_ae_and_plain_copies_both_imported(llama_pair: Path, medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    res = run_cli("import-logs", llama_pair, "--medqa", medqa_dir, "--out", tmp_path / "run")
    assert res.exit_code == 0, res.stderr
    samples = read_samples(tmp_path / "run")
    assert len(samples) == 2 * 1273
    ae = {s["question_id"]: s for s in samples if s["extra"]["ae"]}
    plain = {s["question_id"]: s for s in samples if not s["extra"]["ae"]}
    assert len(ae) == len(plain) == 1273
    for qid, a in ae.items():
        p = plain[qid]
        assert a["sample_id"] == p["sample_id"] + "|ae" and p["sample_id"] == f"{qid}|false_consensus|education"
        assert a["response"] == p["response"] and a["prompt_sha256"] == p["prompt_sha256"]
        assert a["rule"] == "paper-ae-judge" and a["extra"]["logged_is_correct"] in ("True", "False", "NR")
        verdict = a["extra"]["logged_is_correct"]
        assert a["correct"] == {"True": True, "False": False, "NR": None}[verdict]
        assert a["nr"] == (a["extra"]["logged_is_correct"] == "NR")
        assert normalise_verdict(a["extra"]["logged_is_correct_raw"]) == a["extra"]["logged_is_correct"]
    judged = Counter(a["extra"]["logged_is_correct"] for a in ae.values())
    assert judged["NR"] > 0 and judged["True"] > 0  # the judge marks non-answers NR; plain files never do
    assert not any(p["nr"] for p in plain.values() if p["response"])


def test_archive_member_errors_name_the_member(tmp_path: Path, medqa_dir: Path, run_cli) -> None:
    archive = tmp_path / "logs.tar.xz"
    data = b"garbage\n"
    with tarfile.open(archive, "w:xz") as tf:
        info = tarfile.TarInfo("m/bias_output_m-6.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    res = run_cli("import-logs", archive, "--medqa", medqa_dir, "--out", tmp_path / "o")
    assert res.exit_code == 2 and len(res.stderr_lines) == 1
    assert f"{archive}:m/bias_output_m-6.txt:1: PROMPT:" in res.stderr
    assert not (tmp_path / "o").exists()
