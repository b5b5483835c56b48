"""Exports of the mitigations beyond the paper (issue 13), run for real against the loopback server.

A `biasmed build` file with none, reasoning, debias and reflect (2 demo questions x none/recency) is
run with `biasmed run`; the lm-eval export of the single-turn mitigations and the inspect export of
all four (reflect as a multi-turn solver) must send the same conversations, with the same per-turn
reply limits, and read the same answers. lm-eval refuses reflect with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakeapi import FakeAPI, letter_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside lm-eval / inspect

BUILD = ("--medqa", "demo", "--biases", "recency", "--limit", "2", "--mitigations", "none,reasoning,debias,reflect")
MODEL = "fake-model"


@pytest.fixture(scope="module")
def build_file(tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    out = tmp_path_factory.mktemp("exports-mit") / "bench.jsonl"
    res = run_cli("build", *BUILD, "--out", out)
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def server(build_file: Path):
    from biasmed.dataset.build import read_benchmark_file

    api = FakeAPI()
    api.keep_bodies = True
    for p in read_benchmark_file(build_file):
        if p.mitigation == "reasoning":
            gold, letter = p.item.question.answer_idx, letter_for(p.text)
            api.answers[p.sha256] = (f"Option {gold} is tempting, but the findings argue against it.\n\n"
                                     f"**Answer: {letter}**")
    with api:
        yield api


def _take(api: FakeAPI) -> list[dict[str, Any]]:
    with api._lock:
        out, api.bodies = api.bodies, []
    return out


def _conv(body: dict[str, Any]) -> str:
    return json.dumps([{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                        "".join(b.get("text", "") for b in m["content"])} for m in body["messages"]
                       if m["content"]], ensure_ascii=False)


@pytest.fixture(scope="module")
def run(server: FakeAPI, build_file: Path, tmp_path_factory: pytest.TempPathFactory, run_cli):
    out = tmp_path_factory.mktemp("run")
    _take(server)
    res = run_cli("run", "--model", f"openai-compatible:{MODEL}", "--base-url", f"{server.url}/v1", "--data",
                  build_file, "--role", "user", "--out", out, "--no-cache", "--quiet", "--concurrency", "2",
                  "--mitigations", "none,reasoning,debias,reflect", env={"OPENAI_COMPATIBLE_API_KEY": "k"})
    assert res.exit_code == 0, res.stderr
    samples = {s["sample_id"]: s for s in map(json.loads, (out / "samples.jsonl").read_text().splitlines())}
    assert len(samples) == 16
    bodies = _take(server)
    return samples, {_conv(b): b["max_tokens"] for b in bodies}


def test_lmeval_refuses_reflect_with_one_line(build_file: Path, tmp_path: Path, run_cli) -> None:
    res = run_cli("export", "--to", "lm-eval", tmp_path / "out", "--data", build_file)
    assert res.exit_code == 2 and len(res.stderr_lines) == 1, res.stderr
    assert "reflect is a multi-turn mitigation" in res.stderr and "--to inspect" in res.stderr
    assert not (tmp_path / "out").exists()
    res = run_cli("export", "--to", "lm-eval", tmp_path / "out", *BUILD)
    assert res.exit_code == 2 and "reflect is a multi-turn mitigation" in res.stderr


@pytest.mark.slow
def test_lmeval_exports_reasoning_and_debias(run, server: FakeAPI, build_file: Path, tmp_path: Path, run_cli,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install biasmed[exports])")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    task_dir = tmp_path / "lmeval"
    res = run_cli("export", "--to", "lm-eval", task_dir, "--data", build_file, "--mitigations",
                  "none,reasoning,debias")
    assert res.exit_code == 0, res.stderr
    _take(server)
    out = simple_evaluate(model="local-chat-completions",
                          model_args={"model": MODEL, "base_url": f"{server.url}/v1/chat/completions",
                                      "num_concurrent": 1, "max_retries": 1},
                          tasks=["biasmedqa"], task_manager=TaskManager(include_path=str(task_dir),
                                                                         include_defaults=False),
                          apply_chat_template=True, log_samples=True, verbosity="ERROR")
    bodies = _take(server)
    samples, run_convs = run
    # the same conversations, each with the reply limit `biasmed run` gave it (512 for reasoning)
    sent = {_conv(b): b["max_tokens"] for b in bodies}
    assert sent == {c: n for c, n in run_convs.items() if c in sent} and len(sent) == 12
    assert sorted(set(sent.values())) == [16, 512]
    seen = set()
    for task_samples in out["samples"].values():
        for s in task_samples:
            ref = samples[s["doc"]["id"]]
            assert s["filtered_resps"][0] == ref["response"]
            assert s["acc"] == float(bool(ref["correct"])) and s["nr"] == float(ref["nr"]), ref["sample_id"]
            seen.add(ref["mitigation"])
    assert seen == {"none", "reasoning", "debias"}
    assert any(r["mitigation"] == "reasoning" and r["correct"] for r in samples.values())


@pytest.mark.slow
def test_inspect_exports_all_four_with_reflect_as_a_multi_turn_solver(run, server: FakeAPI, tmp_path: Path,
                                                                      run_cli, monkeypatch) -> None:
    pytest.importorskip("inspect_ai", reason="inspect-ai not installed (pip install biasmed[exports])")
    from inspect_ai import eval as inspect_eval

    task_dir = tmp_path / "inspect"
    res = run_cli("export", "--to", "inspect", task_dir, *BUILD, "--role", "user")
    assert res.exit_code == 0, res.stderr
    monkeypatch.setenv("FAKEAPI_API_KEY", "k")
    monkeypatch.chdir(task_dir)
    _take(server)
    (log,) = inspect_eval("biasmedqa.py", model=f"openai-api/fakeapi/{MODEL}", model_base_url=f"{server.url}/v1",
                          log_dir=str(tmp_path / "logs"), display="none", max_retries=1)
    assert log.status == "success", log.error
    bodies = _take(server)
    samples, run_convs = run
    sent = {_conv(b): b["max_tokens"] for b in bodies}
    assert sent == run_convs  # every conversation, follow-up turns included, with the same limits
    assert log.samples is not None and len(log.samples) == 16
    for s in log.samples:
        ref = samples[s.id]
        score = s.scores["biasmed_letter"]
        assert s.output.completion == ref["response"] and score.answer == ref["extracted"], s.id
        assert score.metadata["rule"] == ref["rule"], s.id
        if ref["mitigation"] == "reflect":
            assert score.metadata["first_letter"] == ref["extra"]["first_letter"]
            assert score.metadata["change"] == ref["extra"]["change"]
            assert [m.role for m in s.messages] == ["user", "assistant", "user", "assistant"]
        else:
            assert "change" not in score.metadata
