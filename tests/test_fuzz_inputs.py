"""Property-based fuzzing of the three readers of untrusted files: the MedQA loader, the bias-YAML
loader and the run-folder reader. Any bytes give a loaded result or ONE DataError line naming the
file, never another exception; through `biasmed build`, never an output file on failure.

Examples are derandomized (the same inputs every run, so CI is stable); set BIASMED_FUZZ_RANDOM=1
to explore new ones. Inputs mix raw bytes with valid files mutated (bytes dropped, cut, inserted;
values swapped for random JSON of any type), which reach much deeper than bytes alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from biasmed.analysis.summary import load_run
from biasmed.cli import app
from biasmed.dataset.custom_biases import load_bias_file
from biasmed.dataset.medqa import QuestionSet, load_medqa
from biasmed.errors import DataError, InputError
from biasmed.results import read_run_json, read_samples

FUZZ = settings(max_examples=200, deadline=None, database=None,
                derandomize=not os.environ.get("BIASMED_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

GOOD_Q = {"question": "A 30-year-old man has a cough. What is the diagnosis?",
          "options": {"A": "Asthma", "B": "Bronchitis", "C": "Croup", "D": "Dengue", "E": "Emphysema"},
          "answer_idx": "B", "answer": "Bronchitis", "meta_info": "step1"}
GOOD_YAML = ("schema: 1\nbiases:\n  - name: anchoring_lab\n    text: \"An initial lab panel pointed towards {X}.\"\n"
             "    placement: append\n    education: \"Interpret each value in context.\"\n"
             "    placebo: \"One of the options is {X}.\"\n")
GOOD_SAMPLE = {"sample_id": "test-0000|none|none", "question_id": "test-0000", "bias": "none", "mitigation": "none",
               "template_version": "paper-2024", "answer_idx": "B", "bias_target": None, "prompt_sha256": "ab" * 32,
               "model": "openai:gpt-test", "response": "B", "extracted": "B", "rule": "robust", "correct": True,
               "nr": False, "error": None, "draw": 0, "n_options": 5, "usage": {"input_tokens": 3}, "cost_usd": 0.0,
               "cached": False, "extra": {}, "choices": list("ABCDE"), "schema": 2}
GOOD_RUN = {"kind": "run", "model": "openai:gpt-test", "dataset": {"source": "demo", "sha256": "00", "is_demo": True},
            "status": "complete"}

# any JSON value, text with lone surrogates included (json.dumps writes them as \udXXX escapes)
_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12)
_insertions = st.sampled_from([b"\\ud800", b"\\udfff", b"\xff", b"\xc3", b"\x00", b"\n", b"\r\n", b"[" * 3000,
                               b"{" * 3000, b'"', b",", b"}", b"{X}", b"{Y}", b"\t", b"&a [*a]", b"\xef\xbb\xbf",
                               b": :", b"- ", b"  ", b"\\", b"\xed\xa0\x80"])


@st.composite
def mutated(draw, good: bytes) -> bytes:
    """`good` with a few edits: cuts, drops, insertions of troublesome bytes."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cut", "drop", "insert", "insert", "flip"]))
        i = draw(st.integers(0, len(data)))
        if op == "cut":
            del data[i:]
        elif op == "drop":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "insert":
            data[i:i] = draw(_insertions | st.binary(min_size=1, max_size=4))
        elif data:
            data[min(i, len(data) - 1)] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def swapped_json(draw, good: dict) -> bytes:
    """`good` with one value (or one option) replaced by a random JSON value of any type."""
    rec = json.loads(json.dumps(good))
    key = draw(st.sampled_from(sorted(rec)))
    target = rec
    if isinstance(rec[key], dict) and rec[key] and draw(st.booleans()):
        target, key = rec[key], draw(st.sampled_from(sorted(rec[key])))
    target[key] = draw(json_values)
    return json.dumps(rec).encode()


def _lines(*parts: bytes) -> bytes:
    return b"".join(p + b"\n" for p in parts)


def _one_line(e: DataError, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(f"{path}:"), msg


def _fresh_dir(tmp_path: Path) -> Path:
    # hypothesis runs many examples in one test call: each gets its own folder
    return Path(tempfile.mkdtemp(dir=tmp_path))


# --------------------------------------------------------------------------- MedQA

_good_q = json.dumps(GOOD_Q).encode()
medqa_inputs = st.one_of(
    st.binary(max_size=400),
    mutated(_lines(_good_q, _good_q)),
    swapped_json(GOOD_Q).map(lambda line: _lines(_good_q, line)),
    json_values.map(lambda v: _lines(json.dumps(v).encode())),
)


@FUZZ
@given(data=medqa_inputs)
def test_medqa_loader_loads_or_says_one_line(tmp_path, data):
    d = _fresh_dir(tmp_path)
    f = d / "test.jsonl"
    f.write_bytes(data)
    try:
        qs = load_medqa(f)
    except DataError as e:
        _one_line(e, f)
    else:
        assert isinstance(qs, QuestionSet) and len(qs) >= 1
        for q in qs:  # what loads can be written out again
            json.dumps(q.options, ensure_ascii=False).encode("utf-8")
            q.question.encode("utf-8")


def _build(args: list[str], out: Path):
    return CliRunner().invoke(app, ["build", *args, "--out", str(out), "--limit", "2"], catch_exceptions=True)


def _check_build(r, out: Path) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    if r.exit_code == 0:
        assert out.is_file() and out.read_bytes().endswith(b"\n")
    else:
        assert r.exit_code == 2, r.output
        errors = [line for line in r.stderr.splitlines() if line.startswith("biasmed: error: ")]
        assert len(errors) == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        assert not out.exists(), "a partial output file was left"
        assert [p.name for p in out.parent.iterdir()] == [], "temporary files were left"


@settings(FUZZ, max_examples=60)
@given(data=medqa_inputs)
def test_build_from_fuzzed_medqa_writes_all_or_nothing(tmp_path, data):
    d = _fresh_dir(tmp_path)
    f = d / "test.jsonl"
    f.write_bytes(data)
    out = d / "out" / "bench.jsonl"
    (d / "out").mkdir()
    _check_build(_build(["--medqa", str(f)], out), out)


# --------------------------------------------------------------------------- bias YAML

_yaml_docs = json_values.map(lambda v: yaml.safe_dump({"biases": [v] if not isinstance(v, list) else v},
                                                       allow_unicode=True).encode("utf-8", "surrogatepass"))
yaml_inputs = st.one_of(
    st.binary(max_size=400),
    mutated(GOOD_YAML.encode()),
    _yaml_docs,
    st.tuples(st.sampled_from(["name", "text", "placement", "education", "placebo", "demo_header"]),
              json_values).map(lambda kv: yaml.safe_dump(
                  {"schema": 1, "biases": [{"name": "anch", "text": "t {X}", kv[0]: kv[1]}]}).encode(
                  "utf-8", "surrogatepass")),
)


@FUZZ
@given(data=yaml_inputs)
def test_bias_yaml_loader_loads_or_says_one_line(tmp_path, data):
    d = _fresh_dir(tmp_path)
    f = d / "bias.yaml"
    f.write_bytes(data)
    try:
        biases = load_bias_file(f)
    except DataError as e:
        _one_line(e, f)
    else:
        assert biases
        for b in biases.values():
            assert b.text.count("{X}") == 1
            (b.text + b.education + b.demo_header).encode("utf-8")


@settings(FUZZ, max_examples=60)
@given(data=yaml_inputs)
def test_build_with_fuzzed_bias_file_writes_all_or_nothing(tmp_path, data):
    d = _fresh_dir(tmp_path)
    f = d / "bias.yaml"
    f.write_bytes(data)
    out = d / "out" / "bench.jsonl"
    (d / "out").mkdir()
    _check_build(_build(["--medqa", "demo", "--bias-file", str(f), "--biases", "all"], out), out)


# --------------------------------------------------------------------------- run folders

_good_s = json.dumps(GOOD_SAMPLE).encode()
samples_inputs = st.one_of(
    st.binary(max_size=400),
    mutated(_lines(_good_s, _good_s.replace(b"test-0000|none", b"test-0001|none"))),
    swapped_json(GOOD_SAMPLE).map(lambda line: _lines(_good_s, line)),
    json_values.map(lambda v: _lines(json.dumps(v).encode())),
)
run_json_inputs = st.one_of(
    st.just(json.dumps(GOOD_RUN).encode()),
    mutated(json.dumps(GOOD_RUN).encode()),
    swapped_json(GOOD_RUN),
    st.binary(max_size=100),
)


@FUZZ
@given(samples=samples_inputs, run_json=run_json_inputs)
def test_run_folder_reader_loads_or_says_one_line(tmp_path, samples, run_json):
    d = _fresh_dir(tmp_path)
    (d / "samples.jsonl").write_bytes(samples)
    (d / "run.json").write_bytes(run_json)
    before = sorted(p.name for p in d.iterdir())
    for read in (read_samples, read_run_json, load_run):
        try:
            got = read(d)
        except InputError as e:  # DataError, or load_run's InputError for a missing field
            assert "\n" not in str(e) and str(e).startswith(str(d)), str(e)
        else:
            assert got is not None
    assert sorted(p.name for p in d.iterdir()) == before  # readers write nothing
