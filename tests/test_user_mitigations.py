"""User-authored mitigations (issue 13): the worked example in examples/ runs through
`biasmed.evaluate()` and `biasmed run`, and a bad file is one line `path:line: field: problem`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakeapi import FakeAPI
from typer.testing import CliRunner

import biasmed
from biasmed.cli import app
from biasmed.dataset.mitigations import load_mitigation_file
from biasmed.errors import DataError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mitigation-consider-alternatives.yaml"
KEY = "sk-test-user-mitigations-0123"


def test_the_example_loads() -> None:
    ms = load_mitigation_file(EXAMPLE)
    ca, sl = ms["consider_alternatives"], ms["second_look"]
    assert ca.kind == "instruction" and ca.answer == "letter" and ca.text.startswith("Before you answer")
    assert sl.kind == "chain" and sl.formats == ("letter", "answer-line") and "{letters}" in sl.follow_ups[0]


def test_the_example_runs_through_evaluate(tmp_path: Path) -> None:
    """A function model sees the instruction in the prompt and the chain's follow-up turn."""
    seen: list[list[dict[str, str]]] = []

    def model(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return "B" if len(messages) == 1 else "On a second look the findings fit C better.\nAnswer: C"

    res = biasmed.evaluate(model, medqa="demo", biases="none,recency", limit=2, out=tmp_path / "run",
                           mitigations="none,consider_alternatives,second_look", mitigation_files=[str(EXAMPLE)],
                           n_boot=20, cache=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * 2 * 3 and {r["mitigation"] for r in recs} == {"none", "consider_alternatives",
                                                                            "second_look"}
    ca_text = load_mitigation_file(EXAMPLE)["consider_alternatives"].text
    firsts = [m[0]["content"] for m in seen if len(m) == 1]
    assert sum(ca_text in t for t in firsts) == 4  # the instruction reached the 4 prompts it belongs to
    follow = [m for m in seen if len(m) == 3]
    assert len(follow) == 4 and all(m[1] == {"role": "assistant", "content": "B"} for m in follow)
    assert all(m[2]["role"] == "user" and m[2]["content"].startswith("Take a second look") and
               "one of A, B, C, D or E." in m[2]["content"] for m in follow)
    for r in recs:
        if r["mitigation"] == "second_look":
            assert r["extracted"] == "C" and r["rule"] == "answer-line" and r["extra"]["first_letter"] == "B"
            assert r["extra"]["change"] in ("toward", "other")
        else:
            assert r["extracted"] == "B"
    table = res.summary.table
    assert set(table["mitigation"]) == {"none", "consider_alternatives", "second_look"}
    row = table[(table["bias"] == "recency") & (table["mitigation"] == "second_look")].iloc[0]
    assert row["n_chain"] == 2 and row["changed_rate"] == 1.0
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "second_look" in meta["mitigations"]
    user = meta["mitigation_set"]["user"]  # what was asked is recorded, text included
    assert user["second_look"]["follow_ups"][0].startswith("Take a second look") and user["consider_alternatives"]["text"]


def test_the_example_runs_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))
    with FakeAPI(api_key=KEY) as api:
        r = CliRunner().invoke(app, ["run", "--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--limit", "1",
                                     "--mitigation-file", str(EXAMPLE), "--mitigations", "consider_alternatives,second_look",
                                     "--out", str(tmp_path / "run"), "--quiet"])
        assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 16 and all(r["error"] is None for r in recs)
    chains = [r for r in recs if r["mitigation"] == "second_look"]
    assert len(chains) == 8 and all(r["response"].startswith("Answer: ") and len(r["extra"]["turns"]) == 2
                                    for r in chains)


GOOD = 'mitigations:\n  - name: ok\n    text: "Think."\n'


@pytest.mark.parametrize("text, line, field, problem", [
    ("", 1, "file", "empty"),
    ("mitigations: []\n", 1, "mitigations", "must be a non-empty list"),
    ("schema: 2\nmitigations:\n  - name: a\n    text: t\n", 1, "schema", "only schema 1"),
    ("mitigation:\n  - name: a\n", 1, "mitigation", "unknown top-level field"),
    ("mitigations:\n  - text: t\n", 2, "mitigations[0].name", "missing"),
    ("mitigations:\n  - name: Bad Name\n    text: t\n", 2, "mitigations[0].name", "must match"),
    ("mitigations:\n  - name: reflect\n    text: t\n", 2, "mitigations[0].name", "reserved"),
    ("mitigations:\n  - name: a\n    text: t\n  - name: a\n    text: u\n", 4, "mitigations[1].name",
     "already defined at line 2"),
    ("mitigations:\n  - name: a\n    kind: demos\n    text: t\n", 3, "mitigations[0].kind", "one-shot/few-shot only"),
    ("mitigations:\n  - name: a\n    kind: instruction\n", 2, "mitigations[0].text", "missing or empty"),
    ("mitigations:\n  - name: a\n    text: t\n    follow_ups: [x]\n", 4, "mitigations[0].follow_ups",
     "only a chain"),
    ("mitigations:\n  - name: a\n    kind: chain\n", 2, "mitigations[0].follow_ups", "missing"),
    ("mitigations:\n  - name: a\n    kind: chain\n    follow_ups: ['']\n", 4, "mitigations[0].follow_ups",
     "non-empty"),
    ("mitigations:\n  - name: a\n    text: t\n    answer: essay\n", 4, "mitigations[0].answer", "'essay' is not one of"),
    ("mitigations:\n  - name: a\n    text: 'Pick from {options}.'\n", 3, "mitigations[0].text",
     "unknown placeholder {options}"),
    ("mitigations:\n  - name: a\n    text: [1, 2]\n", 3, "mitigations[0].text", "must be a string"),
    ("mitigations:\n  - name: a\n    txet: t\n", 3, "mitigations[0].txet", "unknown field"),
    ("mitigations:\n  - name: a\n    text: t\n    text: u\n", 4, "text", "given twice (first at line 3)"),
    ("mitigations:\n  - name: a\n    text: \"t\n", 4, "yaml", "unexpected end of stream"),
])
def test_bad_mitigation_file_is_one_line(tmp_path: Path, text: str, line: int, field: str, problem: str) -> None:
    path = tmp_path / "mits.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_mitigation_file(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}:{line}: {field}: "), msg
    assert problem in msg, msg


def test_bad_mitigation_file_through_the_cli_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "mits.yaml"
    bad.write_text("mitigations:\n  - name: a\n    kind: chain\n    follow_ups: 3\n    answer: letter\n")
    # a follow-up that is not text: the line of the value, and nothing in front of the path
    r = CliRunner().invoke(app, ["run", "--model", "openai:gpt-test", "--base-url", "http://127.0.0.1:9/v1",
                                 "--mitigation-file", str(bad), "--mitigations", "a", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    errors = [x for x in r.stderr.splitlines() if x.strip()]
    assert errors == [f"biasmed: error: {bad}:4: mitigations[0].follow_ups[0]: must be a string, not a number"], errors
    assert not (tmp_path / "run").exists()
    # a good file whose mitigation is not asked for is fine; an unknown name is one line too
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    r = CliRunner().invoke(app, ["run", "--model", "openai:gpt-test", "--mitigation-file", str(good),
                                 "--mitigations", "nope", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1 and "unknown mitigation 'nope'" in r.stderr, r.stderr
