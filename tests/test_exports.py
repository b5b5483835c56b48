"""Exports to lm-evaluation-harness, inspect_ai and `datasets`, run for real.

3 demo questions x 3 conditions (none, recency, confirmation) go through `biasmed run`, the lm-eval
task and the inspect task against the loopback OpenAI-compatible server (tests/fakeapi.py), which
records every request and answers with a scripted reply per prompt (a lone letter, an answer
phrase, an option's text, a refusal, an empty reply, the planted letter). The harnesses must send
byte-identical prompts and report the same extracted answers as `biasmed run`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeAPI, prompt_sha

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside lm-eval / inspect

BUILD = ("--medqa", "demo", "--biases", "recency,confirmation", "--limit", "3")
MODEL = "fake-model"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def build_file(tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    out = tmp_path_factory.mktemp("exports") / "bench.jsonl"
    res = run_cli("build", *BUILD, "--out", out)
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def rows(build_file: Path) -> list[dict[str, Any]]:
    from biasmed.exports._common import prompt_row
    from biasmed.dataset.build import read_benchmark_file

    out = [prompt_row(p) for p in read_benchmark_file(build_file)]
    assert len(out) == 9 and {r["bias"] for r in out} == {"none", "recency", "confirmation"}
    return out


def _script(rows: list[dict[str, Any]]) -> dict[str, str]:
    """A reply per prompt that exercises each extraction rule, incl. NR and adopting the bias."""
    answers: dict[str, str] = {}
    for i, r in enumerate(rows):
        gold, target, opts = r["answer_idx"], r["bias_target"], r["options"]
        other = next(x for x in opts if x not in (gold, target))
        kind = i % 6
        reply = {
            0: gold,
            1: f"The answer is {target or other}.",
            2: "I'm sorry, but I cannot help with medical decisions.",
            3: f"{other}: {opts[other]}",
            4: "",
            5: target or gold,
        }[kind]
        answers[r["prompt_sha256"]] = reply
    return answers


@pytest.fixture(scope="module")
def server(rows: list[dict[str, Any]]):
    api = FakeAPI()
    api.keep_bodies = True
    api.answers.update(_script(rows))
    with api:
        yield api


def _take_bodies(api: FakeAPI) -> list[dict[str, Any]]:
    with api._lock:  # the handler appends under this lock
        out, api.bodies = api.bodies, []
    return out


def _messages(bodies: list[dict[str, Any]]) -> Counter[str]:
    return Counter(json.dumps(b["messages"], ensure_ascii=False, sort_keys=True) for b in bodies)


@pytest.fixture(scope="module")
def runs(server: FakeAPI, build_file: Path, tmp_path_factory: pytest.TempPathFactory, run_cli):
    """`biasmed run` with the prompt as a system message and as a user message: samples + requests."""
    out: dict[str, tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]] = {}
    env = {"OPENAI_COMPATIBLE_API_KEY": "test-key"}
    for role in ("system", "user"):
        run_dir = tmp_path_factory.mktemp(f"run-{role}")
        _take_bodies(server)
        res = run_cli("run", "--model", f"openai-compatible:{MODEL}", "--base-url", f"{server.url}/v1",
                      "--data", build_file, "--role", role, "--out", run_dir, "--no-cache", "--quiet",
                      "--concurrency", "2", env=env)
        assert res.exit_code == 0, res.stderr
        samples = {s["sample_id"]: s for s in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())}
        out[role] = (samples, _take_bodies(server))
    return out


# --------------------------------------------------------------------------- biasmed run itself

def test_script_exercises_rules(runs) -> None:
    samples, bodies = runs["system"]
    assert len(samples) == 9 and len(bodies) == 9
    rules = {s["rule"] for s in samples.values()}
    assert {"letter", "answer-phrase", "refusal", "nr"} <= rules, rules
    assert any(s["nr"] for s in samples.values()) and any(s["correct"] for s in samples.values())
    assert any(s["bias_target"] and s["extracted"] == s["bias_target"] for s in samples.values())
    # the prompt reaches the server byte for byte, as one system message
    for b in bodies:
        (msg,) = b["messages"]
        assert msg["role"] == "system" and msg["content"].endswith("### Answer: ")


# --------------------------------------------------------------------------- lm-eval

def _lmeval(task_dir: Path, api: FakeAPI) -> dict[str, list[dict[str, Any]]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(task_dir), include_defaults=False)
    res = simple_evaluate(
        model="local-chat-completions",
        model_args={"model": MODEL, "base_url": f"{api.url}/v1/chat/completions", "num_concurrent": 1,
                    "max_retries": 1},
        tasks=["biasmedqa"], task_manager=tm, apply_chat_template=True, log_samples=True,
        verbosity="ERROR",
    )
    assert res is not None
    return res


@pytest.mark.slow
@pytest.mark.parametrize("role", ["user", "system"])
def test_lmeval_export_matches_run(role: str, runs, server: FakeAPI, build_file: Path, tmp_path: Path,
                                   run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install biasmed[exports])")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    task_dir = tmp_path / "lmeval"
    res = run_cli("export", "--to", "lm-eval", task_dir, "--data", build_file, "--role", role)
    assert res.exit_code == 0, res.stderr
    _take_bodies(server)
    results = _lmeval(task_dir, server)
    bodies = _take_bodies(server)
    run_samples, run_bodies = runs[role]

    # what reached the server: the same prompt texts, byte for byte
    prompts = Counter(m["content"] for b in bodies for m in b["messages"] if m["content"])
    assert prompts == Counter(m["content"] for b in run_bodies for m in b["messages"])
    if role == "user":  # lm-eval's natural form: identical message lists
        assert _messages(bodies) == _messages(run_bodies)
    else:  # the prompt as the system message, then the empty user turn lm-eval always adds
        expected = Counter(json.dumps(json.loads(k) + [{"content": "", "role": "user"}], ensure_ascii=False,
                                      sort_keys=True) for k in _messages(run_bodies).elements())
        assert _messages(bodies) == expected
    for b in bodies:
        assert b["max_tokens"] == 16 and b["temperature"] == 0.0

    # per sample: same reply, and the export's scores equal those of `biasmed run`
    seen = 0
    for task, samples in results["samples"].items():
        for s in samples:
            doc = s["doc"]
            ref = run_samples[doc["id"]]
            assert s["filtered_resps"][0] == ref["response"], doc["id"]
            assert s["acc"] == float(bool(ref["correct"])), doc["id"]
            assert s["nr"] == float(ref["nr"]), doc["id"]
            if ref["bias_target"]:
                assert s["adopted"] == float(ref["extracted"] == ref["bias_target"]), doc["id"]
            else:
                assert "adopted" not in s
            seen += 1
    assert seen == 9
    group = results["results"]["biasmedqa"]
    acc = sum(bool(s["correct"]) for s in run_samples.values()) / len(run_samples)
    assert group["acc,none"] == pytest.approx(acc)


def test_lmeval_utils_hand_over_prompt_verbatim(rows, build_file: Path, tmp_path: Path) -> None:
    from biasmed.exports.to_lmeval import export_lmeval

    out = export_lmeval(build_file, tmp_path / "t", group="My BiasMedQA")
    spec = importlib.util.spec_from_file_location("exported_utils", out / "utils.py")
    assert spec and spec.loader
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    docs = utils.load_docs(bias="recency", mitigation="none")["test"]
    assert len(docs) == 3
    by_id = {r["id"]: r for r in rows}
    for doc in docs:
        text = utils.doc_to_text(doc)
        assert text == by_id[doc["id"]]["prompt"] and text.endswith("### Answer: ")
        assert prompt_sha(text) == doc["prompt_sha256"]
        scored = utils.process_results(doc, [f"The correct answer is {doc['bias_target']}."])
        assert scored == {"acc": 0.0, "nr": 0.0, "adopted": 1.0}
    assert {p.name for p in out.glob("*.yaml")} == {"my_biasmedqa.yaml", "my_biasmedqa_none.yaml",
                                                   "my_biasmedqa_recency.yaml", "my_biasmedqa_confirmation.yaml"}


@pytest.mark.parametrize("role", ["user", "system"])
def test_lmeval_plain_text_context_is_the_prompt(role: str, rows, build_file: Path, tmp_path: Path) -> None:
    """Without a chat template (local-completions, hf models) lm-eval's context is the prompt itself."""
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install biasmed[exports])")
    from lm_eval.tasks import TaskManager

    from biasmed.exports.to_lmeval import export_lmeval

    out = export_lmeval(build_file, tmp_path / "t", role=role)
    loaded = TaskManager(include_path=str(out), include_defaults=False).load(["biasmedqa"])
    texts = {r["id"]: r["prompt"] for r in rows}
    seen = set()
    for task in loaded["tasks"].values():
        task.build_all_requests(limit=None, rank=0, world_size=1, apply_chat_template=False)
        for inst in task.instances:
            assert inst.args[0] == texts[inst.doc["id"]], inst.doc["id"]
            seen.add(inst.doc["id"])
    assert seen == set(texts)


# --------------------------------------------------------------------------- inspect

@pytest.mark.slow
def test_inspect_export_matches_run(runs, server: FakeAPI, tmp_path: Path, run_cli,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("inspect_ai", reason="inspect-ai not installed (pip install biasmed[exports])")
    from inspect_ai import eval as inspect_eval

    # built from the same options as the build file (not from it): the prompts must agree anyway
    task_dir = tmp_path / "inspect"
    res = run_cli("export", "--to", "inspect", task_dir, *BUILD)
    assert res.exit_code == 0, res.stderr
    # `openai-api/<service>/<model>` is inspect's provider for OpenAI-compatible servers; plain
    # `openai/<unknown name>` would be treated as a new OpenAI reasoning model (developer role)
    monkeypatch.setenv("FAKEAPI_API_KEY", "test-key")
    monkeypatch.chdir(task_dir)  # inspect resolves task files relative to the working directory
    _take_bodies(server)
    (log,) = inspect_eval("biasmedqa.py", model=f"openai-api/fakeapi/{MODEL}", model_base_url=f"{server.url}/v1",
                          log_dir=str(tmp_path / "logs"), display="none", max_retries=1)
    bodies = _take_bodies(server)
    assert log.status == "success", log.error
    run_samples, run_bodies = runs["system"]

    # identical requests: one system message holding the prompt byte for byte
    assert _messages(bodies) == _messages(run_bodies)
    for b in bodies:
        assert b["max_tokens"] == 16 and b["temperature"] == 0.0

    assert log.samples is not None and len(log.samples) == 9
    for s in log.samples:
        ref = run_samples[s.id]
        score = s.scores["biasmed_letter"]
        assert s.output.completion == ref["response"], s.id
        assert score.answer == ref["extracted"], s.id
        assert score.metadata["rule"] == ref["rule"], s.id
        assert score.value["acc"] == float(bool(ref["correct"])) and score.value["nr"] == float(ref["nr"])
        if ref["bias_target"]:
            assert score.value["adopted"] == float(ref["extracted"] == ref["bias_target"]), s.id
        else:
            assert "adopted" not in score.value
    metrics = log.results.scores[0].metrics
    n = len(run_samples)
    assert metrics["acc"].value == pytest.approx(sum(bool(s["correct"]) for s in run_samples.values()) / n)
    assert metrics["nr"].value == pytest.approx(sum(bool(s["nr"]) for s in run_samples.values()) / n)
    biased = [s for s in run_samples.values() if s["bias_target"]]
    assert metrics["adopted"].value == pytest.approx(
        sum(s["extracted"] == s["bias_target"] for s in biased) / len(biased))


def test_inspect_task_file_filters_and_roles(build_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("inspect_ai", reason="inspect-ai not installed (pip install biasmed[exports])")
    from biasmed.exports.to_inspect import export_inspect

    task_file = export_inspect(build_file, tmp_path / "t", role="user")
    spec = importlib.util.spec_from_file_location("exported_task", task_file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    task = mod.biasmedqa(bias="recency")
    samples = list(task.dataset)
    assert len(samples) == 3 and {s.metadata["bias"] for s in samples} == {"recency"}
    for s in samples:
        (msg,) = s.input
        assert msg.role == "user" and msg.text.endswith("### Answer: ")
        assert prompt_sha(msg.text) == s.metadata["prompt_sha256"]
    assert {s.input[0].role for s in mod.biasmedqa(role="system").dataset} == {"system"}
    with pytest.raises(ValueError, match="role"):
        mod.biasmedqa(role="assistant")


# --------------------------------------------------------------------------- hf

def test_hf_export_loads_with_card(build_file: Path, tmp_path: Path, run_cli) -> None:
    from datasets import load_from_disk

    out = tmp_path / "hf"
    res = run_cli("export", "--to", "hf", out, *BUILD, "--seed", "7")
    assert res.exit_code == 0, res.stderr
    ds = load_from_disk(str(out))
    assert ds.num_rows == 9 and {"prompts", "bias_target", "question_id"} <= set(ds.column_names)
    assert all(r["prompts"]["none"].endswith("### Answer: ") for r in ds)
    card = (out / "README.md").read_text("utf-8")
    for needed in ("license: mit", "MIT licence", "paper-2024", "seed: 7", "DEMO SET", "`bias_target`"):
        assert needed in card, needed
    # from a build file: the same records as the file
    out2 = tmp_path / "hf2"
    assert run_cli("export", "--to", "hf", out2, "--data", build_file).exit_code == 0
    built = [json.loads(line) for line in build_file.read_text("utf-8").splitlines()]
    assert [r["prompts"] for r in load_from_disk(str(out2))] == [b["prompts"] for b in built]


# --------------------------------------------------------------------------- CLI errors

@pytest.mark.parametrize("args, message", [
    (("--to", "helm"), "--to must be one of lm-eval, inspect, hf"),
    (("--to", "inspect", "--role", "assistant"), "--role must be system or user"),
    (("--to", "lm-eval", "--data", "@BUILD@", "--seed", "0"), "--seed builds the benchmark"),
    (("--to", "lm-eval", "--data", "missing.jsonl"), "missing.jsonl: no such file"),
    (("--to", "hf", "--data", "@BUILD@", "--biases", "recency"), "--to hf --data exports the file as it is"),
    (("--to", "lm-eval", "--medqa", "demo", "--biases", "anchoring"), "anchoring"),
])
def test_export_cli_errors(args: tuple[str, ...], message: str, build_file: Path, tmp_path: Path,
                           run_cli) -> None:
    args = tuple(str(build_file) if a == "@BUILD@" else a for a in args)
    res = run_cli("export", tmp_path / "out", *args)
    assert res.exit_code == 2
    assert len(res.stderr_lines) == 1 and message in res.stderr, res.stderr
    assert not (tmp_path / "out").exists() or args[1] == "hf"
