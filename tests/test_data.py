"""MedQA loading through `biasmed build`: malformed inputs stop with exit code 2 and ONE line naming
file, line and field, leaving no output behind; harmless oddities load; 4-option files; the
`datasets` code path; the embedded demo set as the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasmed.dataset.medqa import DataError, load_hub, load_medqa, parse_jsonl

GOOD = {
    "question": "A 30-year-old woman has a headache. Which of the following is the most likely cause?",
    "answer": "Tension headache",
    "options": {"A": "Migraine", "B": "Tension headache", "C": "Cluster headache",
                "D": "Subarachnoid hemorrhage", "E": "Sinusitis"},
    "meta_info": "step1",
    "answer_idx": "B",
}


def _line(**changes: object) -> str:
    rec = {**GOOD, **changes}
    rec = {k: v for k, v in rec.items() if v is not _DROP}
    return json.dumps(rec)


_DROP = object()
G = json.dumps(GOOD)


def _opts(**o: object) -> dict:
    return dict(o)


# (name, file bytes, line the error must name, field the error must name)
MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("not_json", f"{G}\n{{not json\n".encode(), 2, "line"),
    ("truncated_json", f'{G}\n{G}\n{G[:40]}\n'.encode(), 3, "line"),
    ("missing_question", f"{G}\n{_line(question=_DROP)}\n".encode(), 2, "question"),
    ("missing_options", f"{_line(options=_DROP)}\n".encode(), 1, "options"),
    ("missing_answer_idx", f"{G}\n{G}\n{_line(answer_idx=_DROP)}\n".encode(), 3, "answer_idx"),
    ("answer_idx_not_an_option", f"{_line(answer_idx='F')}\n".encode(), 1, "answer_idx"),
    ("answer_not_option_text", f"{G}\n{_line(answer='Migraine')}\n".encode(), 2, "answer"),
    ("duplicate_letter", (G + "\n" + G.replace('"E": "Sinusitis"', '"D": "Sinusitis"') + "\n").encode(), 2, "options.D"),
    ("skipped_letter", f"{_line(options=_opts(A='a', B='Tension headache', C='c', E='e', F='f'))}\n".encode(), 1, "options"),
    ("three_options", f"{_line(options=_opts(A='a', B='Tension headache', C='c'))}\n".encode(), 1, "options"),
    ("six_options", f"{_line(options=_opts(A='a', B='Tension headache', C='c', D='d', E='e', F='f'))}\n".encode(), 1, "options"),
    ("empty_question", f"{G}\n{_line(question='   ')}\n".encode(), 2, "question"),
    ("question_not_string", f"{_line(question=42)}\n".encode(), 1, "question"),
    ("empty_option_text", f"{_line(options=_opts(A='', B='Tension headache', C='c', D='d', E='e'))}\n".encode(), 1, "options.A"),
    ("options_not_object", f"{_line(options=['a', 'b', 'c', 'd', 'e'])}\n".encode(), 1, "options"),
    ("non_object_line", f"{G}\n[1, 2, 3]\n".encode(), 2, "record"),
    ("null_line", f"{G}\n{G}\nnull\n".encode(), 3, "record"),
    ("bom", b"\xef\xbb\xbf" + f"{G}\n".encode(), 1, "file"),
    ("crlf_error_on_line_3", f"{G}\r\n{G}\r\n{_line(answer_idx='Z')}\r\n{G}\r\n".encode(), 3, "answer_idx"),
    ("non_utf8", f"{G}\n".encode() + G.encode().replace(b"headache", b"headach\xe9", 1) + b"\n", 2, "line"),
    ("ten_mb_line", f"{G}\n".encode() + _line(question="x" * (10 * 1024 * 1024)).encode() + b"\n", 2, "line"),
    ("blank_line_inside", f"{G}\n\n{G}\n".encode(), 2, "line"),
    ("whitespace_line_inside", f"{G}\n   \t\n{G}\n".encode(), 2, "line"),
    ("empty_file", b"", 1, "file"),
    ("duplicate_top_level_key", ('{"question": "a?", "question": "b?", ' + G[1:] + "\n").encode(), 1, "question"),
]


@pytest.mark.parametrize("name,data,line,field", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_medqa_exits_2_with_one_line(name: str, data: bytes, line: int, field: str,
                                               tmp_path: Path, run_cli) -> None:
    bad = tmp_path / "in" / "test.jsonl"
    bad.parent.mkdir()
    bad.write_bytes(data)
    out_dir = tmp_path / "out"
    res = run_cli("build", "--medqa", bad, "--out", out_dir / "bm.jsonl", "--format", "hf")
    assert res.exit_code == 2, res.stderr
    lines = res.stderr_lines
    assert len(lines) == 1, lines
    msg = lines[0]
    assert f"{bad}:{line}: {field}:" in msg, msg
    assert len(msg) < 400, "one short line, not the offending content"
    assert res.stdout == ""
    assert not out_dir.exists(), "nothing may be written for a bad input"


def test_at_least_twelve_malformed_cases() -> None:
    assert len(MALFORMED) >= 12


def test_library_raises_dataerror_with_location() -> None:
    with pytest.raises(DataError) as e:
        parse_jsonl(f"{G}\n{G}\n{_line(answer='nope')}\n".encode(), "x.jsonl", "test")
    assert (e.value.path, e.value.line, e.value.field) == ("x.jsonl", 3, "answer")


@pytest.mark.parametrize("data", [
    f"{G}\r\n{G}\r\n".encode(),  # CRLF line endings
    f"{G}\n{G}\n\n\n".encode(),  # trailing blank lines
    f"{G}\n{G}".encode(),  # no final newline
    f"{G}\r\n{G}\r\n\r\n".encode(),  # CRLF and a trailing blank CRLF line
], ids=["crlf", "trailing_blank_lines", "no_final_newline", "crlf_trailing_blank"])
def test_valid_oddities_are_accepted(data: bytes, tmp_path: Path, run_cli) -> None:
    f = tmp_path / "test.jsonl"
    f.write_bytes(data)
    qs = load_medqa(f)
    assert [q.id for q in qs] == ["test-0000", "test-0001"]
    assert qs.questions[0].question == GOOD["question"]
    out = tmp_path / "bm.jsonl"
    res = run_cli("build", "--medqa", f, "--out", out)
    assert res.exit_code == 0, res.stderr
    assert len(out.read_text().splitlines()) == 2 * 8


def test_medqa_counts_and_ids(medqa_test, medqa_dev) -> None:
    assert len(medqa_test) == 1273 and len(medqa_dev) == 1272
    assert medqa_test.questions[0].id == "test-0000" and medqa_test.questions[-1].id == "test-1272"
    assert medqa_dev.questions[5].id == "dev-0005"
    meta = [q.meta_info for q in medqa_test]
    assert meta.count("step1") == 679 and meta.count("step2&3") == 594
    assert medqa_test.n_options == 5 and not medqa_test.is_demo


def test_four_option_files(medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    qs = load_medqa(medqa_dir, "test", 4)
    assert len(qs) == 1273 and qs.n_options == 4
    assert all(q.letters == ("A", "B", "C", "D") for q in qs)
    out = tmp_path / "bm4.jsonl"
    res = run_cli("build", "--medqa", medqa_dir, "--options", "4", "--limit", "50", "--out", out)
    assert res.exit_code == 0, res.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 50 * 8
    for r in recs:
        prompt = r["prompts"]["none"]
        assert ", D: " in prompt and ", E: " not in prompt.split("### Options: ")[1]
        if r["bias"] != "none":
            assert r["bias_target"] in "ABCD" and r["bias_target"] != r["answer_idx"]


def test_datasets_path_matches_jsonl_loader(medqa_dir: Path) -> None:
    pytest.importorskip("datasets")
    file = medqa_dir / "test.jsonl"
    via_datasets = load_hub("json", "test", 5, config=str(file))
    direct = load_medqa(file)
    assert via_datasets.source == f"json:{file}"
    assert via_datasets.questions == direct.questions


def test_datasets_path_four_options(medqa_dir: Path) -> None:
    pytest.importorskip("datasets")
    file = medqa_dir / "4_options" / "dev.jsonl"
    assert load_hub("json", "dev", 4, config=str(file)).questions == load_medqa(file, "dev", 4).questions


def _demo_ready() -> bool:
    from biasmed._paths import demo_dir

    d = demo_dir()
    return (d / "demo-test.jsonl").is_file() and (d / "demo-dev.jsonl").is_file()


def test_demo_set_is_the_default_and_says_so(tmp_path: Path, run_cli) -> None:
    if not _demo_ready():
        pytest.skip("the demo set (data/demo/{test,dev}.jsonl) is not there yet")
    out = tmp_path / "demo.jsonl"
    res = run_cli("build", "--out", out, env={"BIASMED_MEDQA_DIR": None})
    assert res.exit_code == 0, res.stderr
    assert "DEMO" in res.stderr
    manifest = json.loads((tmp_path / "demo.manifest.json").read_text())
    assert manifest["dataset"]["is_demo"] is True
    assert "DEMO" in manifest["WARNING"] and "not MedQA" in manifest["WARNING"]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) >= 25 * 8
    assert {r["bias"] for r in recs} == {"none", "self_diagnosis", "recency", "confirmation", "frequency",
                                        "cultural", "status_quo", "false_consensus"}


def test_medqa_env_var_is_used(medqa_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "env.jsonl"
    res = run_cli("build", "--limit", "3", "--out", out, env={"BIASMED_MEDQA_DIR": str(medqa_dir)})
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "env.manifest.json").read_text())
    assert manifest["dataset"]["is_demo"] is False and "WARNING" not in manifest
    assert manifest["dataset"]["source"] == str(medqa_dir / "test.jsonl")


def test_missing_medqa_path_is_one_line(tmp_path: Path, run_cli) -> None:
    res = run_cli("build", "--medqa", tmp_path / "nowhere", "--out", tmp_path / "o" / "x.jsonl")
    assert res.exit_code == 2 and len(res.stderr_lines) == 1
    assert "nowhere" in res.stderr
    assert not (tmp_path / "o").exists()
