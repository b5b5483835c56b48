"""Every bad input file is ONE line naming the file, the line and the field: MedQA JSONL and the
user's bias YAML, case by case (tests/test_fuzz_inputs.py throws random bytes at the same loaders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biasmed.dataset.custom_biases import load_bias_file
from biasmed.dataset.medqa import load_medqa
from biasmed.errors import DataError

GOOD_Q = {"question": "A 30-year-old man has a cough. What is the diagnosis?",
          "options": {"A": "Asthma", "B": "Bronchitis", "C": "Croup", "D": "Dengue", "E": "Emphysema"},
          "answer_idx": "B", "answer": "Bronchitis", "meta_info": "step1"}


def _medqa(tmp_path: Path, *lines: bytes) -> Path:
    f = tmp_path / "test.jsonl"
    f.write_bytes(b"".join(line + b"\n" for line in lines))
    return f


def _good() -> bytes:
    return json.dumps(GOOD_Q).encode()


def _error(fn, *args) -> DataError:
    with pytest.raises(DataError) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize("bad, field, problem", [
    # a lone surrogate used to pass the loader and fail later as "error: utf-8" with no path or line
    (_good().replace(b"a cough", b"a \\ud800 cough"), "question", "lone surrogate"),
    (_good().replace(b'"Croup"', b'"Cr\\udfffoup"'), "options.C", "lone surrogate"),
    (b'{"question": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "line", "nested deeper than 64 levels"),
    (b'{"question": "q", "meta_info": ' + b"[" * 100 + b"]" * 100 + b"}", "meta_info" + "[0]" * 15, "nested deeper"),
    (_good().replace(b'"answer_idx": "B"', b'"answer_idx": ["B"]'), "answer_idx", "must be a letter string, got list"),
    (_good().replace(b'"answer_idx": "B"', b'"answer_idx": {"B": 1}'), "answer_idx", "got dict"),
    (_good().replace(b'"answer": "Bronchitis"', b'"answer": 7'), "answer", "must be a string, got int"),
    (_good().replace(b'"Asthma"', b"null"), "options.A", "must be a non-empty string"),
    (_good().replace(b'"question": "A 30', b'"question": ["A 30').replace(b'diagnosis?"', b'diagnosis?"]'),
     "question", "must be a non-empty string"),
    (b"[1, 2, 3]", "record", "expected a JSON object, got list"),
    (b'"just a string"', "record", "got str"),
    (b"\xff\xfe{}", "line", "not UTF-8 (byte 0xff at column 1)"),
    (_good()[:-5], "line", "not valid JSON"),
])
def test_medqa_bad_line_is_one_line_with_path_line_field(tmp_path, bad, field, problem):
    f = _medqa(tmp_path, _good(), bad)
    e = _error(load_medqa, f)
    assert (e.path, e.line) == (str(f), 2)
    assert e.field.startswith(field.split("[")[0]) and problem in e.problem, str(e)
    assert str(e).startswith(f"{f}:2: ")


def test_medqa_deep_field_path_is_cut_short(tmp_path):
    f = _medqa(tmp_path, b'{"question": "q", "meta_info": ' + b"[" * 100 + b"]" * 100 + b"}")
    e = _error(load_medqa, f)
    assert e.field.startswith("meta_info[0]") and len(e.field) <= 60 and "nested deeper than 64" in e.problem


def test_medqa_unreadable_file_is_one_line(tmp_path):
    d = tmp_path / "test.jsonl"
    d.mkdir()  # a folder where the file should be: found, then unreadable
    e = _error(load_medqa, tmp_path)
    assert e.field == "path"


def test_medqa_key_with_a_newline_stays_one_line(tmp_path):
    f = _medqa(tmp_path, b'{"a\\nb": 1, "a\\nb": 2}')
    e = _error(load_medqa, f)
    assert "duplicate key" in str(e) and "a\\nb" in str(e)


# --------------------------------------------------------------------------- bias YAML

GOOD_YAML = """\
schema: 1
biases:
  - name: anchoring_lab
    text: "An initial lab panel pointed towards {X}."
    placement: append
    education: "Interpret each value in context."
    placebo: "One of the options is {X}."
"""


def _yaml(tmp_path: Path, text: str | bytes) -> Path:
    f = tmp_path / "bias.yaml"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    return f


def test_good_bias_file_loads(tmp_path):
    assert list(load_bias_file(_yaml(tmp_path, GOOD_YAML))) == ["anchoring_lab", "placebo_anchoring_lab"]


@pytest.mark.parametrize("text, line, field, problem", [
    # duplicate keys at every level: YAML itself keeps the last one silently
    (GOOD_YAML + "biases:\n  - name: other\n    text: '{X}'\n", 8, "biases", "given twice (first at line 2)"),
    (GOOD_YAML.replace("    placement: append\n", "    placement: append\n    placement: append\n"),
     6, "placement", "given twice (first at line 5)"),
    ("schema: 1\nschema: 1\nbiases: []\n", 2, "schema", "given twice (first at line 1)"),
    # placeholders other than {X}
    (GOOD_YAML.replace("towards {X}.", "towards {X} and {Y}."), 4, "biases[0].text", "unknown placeholder {Y}"),
    (GOOD_YAML.replace("towards {X}.", "towards {x}."), 4, "biases[0].text", "unknown placeholder {x}"),
    (GOOD_YAML.replace("options is {X}.", "options is {X} {option}."), 7, "biases[0].placebo",
     "unknown placeholder {option}"),
    (GOOD_YAML.replace("in context.", "in context of {X}."), 6, "biases[0].education",
     "unknown placeholder {X} (filled here: none)"),
    # wrong types
    (GOOD_YAML.replace("placement: append", "placement: [append]"), 5, "biases[0].placement", "must be a string, not a list"),
    (GOOD_YAML.replace("name: anchoring_lab", "name: 12"), 3, "biases[0].name", "must be a string, not a number"),
    (GOOD_YAML.replace("text: \"An", "text: {a: 1}\n    x: \"An"), 4, "biases[0].text", "must be a string, not a mapping"),
    ("biases: {name: a}\n", 1, "biases", "must be a non-empty list"),
    ("biases:\n  - just a string\n", 2, "biases[0]", "must be a mapping"),
    ("- a\n- b\n", 1, "file", "expected a mapping"),
    ("schema: [1]\nbiases: []\n", 1, "schema", "only schema 1"),
    ("? [a, b]\n: 1\n", 1, "file", "a key must be a plain name, not a list"),
    # nesting, characters, encodings
    ("biases:\n" + "  " + "[" * 5000 + "]" * 5000 + "\n", 2, "yaml", "nested deeper than 8 levels"),
    ("biases:\n  - name: a\n    text: " + "{b: " * 20 + "1" + "}" * 20 + "\n", 3, "yaml", "nested deeper"),
    (GOOD_YAML.replace("towards {X}.", 'towards {X} \\ud800.'), 4, "biases[0].text", "lone surrogate"),
    (GOOD_YAML + "  - name: b\x00\n", 8, "yaml", "character #x0000 is not allowed"),
    (GOOD_YAML.encode() + b"  - name: \xff\n", 8, "file", "not UTF-8 text (byte 0xff)"),
    ("biases: [a\n", 2, "yaml", "expected"),
    ("", 1, "file", "empty"),
])
def test_bias_yaml_problem_is_one_line_naming_the_line(tmp_path, text, line, field, problem):
    f = _yaml(tmp_path, text)
    e = _error(load_bias_file, f)
    assert (e.path, e.line, e.field) == (str(f), line, field) and problem in e.problem, str(e)


def test_bias_yaml_alias_cycle_is_an_error_not_a_hang(tmp_path):
    e = _error(load_bias_file, _yaml(tmp_path, "biases: &a [*a]\n"))
    assert e.field == "biases[0]"


def test_bias_yaml_that_is_a_folder_is_one_line(tmp_path):
    e = _error(load_bias_file, tmp_path)
    assert e.field == "file" and "cannot read" in e.problem
