"""Issue 13 acceptance: `biasmed run --mitigations none,reasoning,debias,reflect` end to end against
the loopback server (tests/fakeapi.py) with faults injected, and killed with SIGKILL in the middle of
a `reflect` conversation, then resumed: every sample exactly once, no turn paid twice (counted per
conversation at the server) except the requests in flight at the kill.

The server keys each request on its whole conversation, so a chain's second turn is a request of its
own; it answers a follow-up turn with `Answer: X`. Reasoning prompts are scripted with multi-line
replies that end in a final answer line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeapi import FakeAPI, conversation_sha, letter_for
from typer.testing import CliRunner

from biasmed.cli import app
from biasmed.dataset.build import build_benchmark
from biasmed.dataset.medqa import load_demo

KEY = "sk-test-mitigations-0123456789"
MITS = "none,reasoning,debias,reflect"


def _expected(limit: int) -> list:
    return build_benchmark(load_demo(), seed=0, mitigations=MITS.split(","), limit=limit).prompts()


def _args(url: str, out: Path, limit: int, *extra: str) -> list[str]:
    return ["run", "--model", "openai:gpt-test", "--base-url", url + "/v1", "--limit", str(limit),
            "--mitigations", MITS, "--out", str(out), "--quiet", *extra]


def _reasoning_reply(p) -> str:
    """A realistic reasoning reply whose final line names a letter (derived from the prompt)."""
    letter = letter_for(p.text)
    other = next(x for x in p.choices if x != letter)
    return (f"The key findings point away from option {other}.\n"
            f"**Weighing the options:** ({other}) does not explain the imaging; {letter} fits best.\n\n"
            f"Answer: {letter}")


def _follow_up_key(p, first_reply: str) -> str:
    return conversation_sha(p.text, [("assistant", first_reply), ("user", p.follow_ups[0])])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))
    return {**os.environ, "OPENAI_API_KEY": KEY, "BIASMED_CACHE_DIR": str(tmp_path / "cache")}


def test_four_mitigations_end_to_end_under_faults(tmp_path, env):
    expected = _expected(2)
    firsts = {p.sha256 for p in expected}
    reflect = [p for p in expected if p.mitigation == "reflect"]
    follow_keys = {_follow_up_key(p, letter_for(p.text)) for p in reflect}
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY, retry_after_ms=30, hang_s=3.0) as api:
        api.keep_bodies = True
        for p in expected:
            if p.mitigation == "reasoning":
                api.answers[p.sha256] = _reasoning_reply(p)
        # faults on first turns and on follow-up turns alike
        for fault, times in (("429", 3), ("500", 2), ("529", 1), ("reset", 2), ("hang", 1)):
            api.inject(fault, times, match=lambda sha: sha in firsts)
        for fault, times in (("429", 2), ("500", 2), ("reset", 1), ("hang", 1)):
            api.inject(fault, times, match=lambda sha: sha in follow_keys)
        r = CliRunner().invoke(app, _args(api.url, out, 2, "--timeout", "1", "--backoff", "0.01",
                                          "--concurrency", "4"))
        assert r.exit_code == 0, r.output
        bodies = list(api.bodies)
    assert sum(api.faults_served.values()) == 15, api.faults_served
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["totals"]["retries"] >= 15

    recs = _records(out)
    ids = [r["sample_id"] for r in recs]
    assert len(ids) == len(set(ids)) == len(expected) == 64  # every sample exactly once
    assert set(ids) == {p.sample_id for p in expected}
    # every distinct conversation answered once: first turns (none = reflect's first turn) + follow-ups
    assert set(api.answered) == firsts | follow_keys and set(api.answered.values()) == {1}

    by_id = {p.sample_id: p for p in expected}
    for rec in recs:
        p = by_id[rec["sample_id"]]
        assert rec["error"] is None and rec["extracted"] in p.choices
        if p.mitigation == "reasoning":
            assert rec["extra"]["answer_format"] == "answer-line" and rec["rule"] == "answer-line"
            assert rec["extracted"] == letter_for(p.text)
        elif p.mitigation == "reflect":
            t1, t2 = rec["extra"]["turns"]
            assert t1["response"] == letter_for(p.text) and t1["format"] == "letter"
            key2 = _follow_up_key(p, t1["response"])
            assert rec["response"] == t2["response"] == f"Answer: {'ABCD'[bytes.fromhex(key2)[0] % 4]}"
            assert rec["extra"]["first_letter"] == t1["response"] and rec["extracted"] == rec["response"][-1]
            change = rec["extra"]["change"]
            if rec["extracted"] == t1["response"]:
                assert change == "kept"
            elif rec["extracted"] == p.item.target:
                assert change == "toward"
            elif t1["response"] == p.item.target:
                assert change == "away"
            else:
                assert change == "other"
            # tokens are counted per turn; the sample's usage is their sum
            for k in ("input_tokens", "output_tokens"):
                assert rec["usage"][k] == t1["usage"][k] + t2["usage"][k] > 0
            assert t1["usage"]["input_tokens"] < t2["usage"]["input_tokens"]
        else:
            assert rec["rule"] == "letter" and "answer_format" not in rec["extra"]
    changes = {r["extra"]["change"] for r in recs if r["mitigation"] == "reflect"}
    assert len(changes) >= 2, changes  # the deterministic script moves some answers, keeps others

    # per turn max tokens: 512 where the reply is read as `Answer: X`, the paper's 16 elsewhere
    for b in bodies:
        msgs = b["messages"]
        first = msgs[0]["content"]
        later = [(m["role"], m["content"]) for m in msgs[1:]]
        key = conversation_sha(first, later)
        if later:
            assert key in follow_keys and b["max_completion_tokens"] == 512
            assert [m["role"] for m in msgs] == ["system", "assistant", "user"]
        elif api.answers.get(key, "").endswith(f"Answer: {letter_for(first)}"):
            assert b["max_completion_tokens"] == 512  # a reasoning prompt
        else:
            assert b["max_completion_tokens"] == 16


def test_kill_9_in_a_chain_then_resume(tmp_path, env):
    """Killed while a reflect conversation's second turn is in flight (its first turn answered):
    the resume asks only the turns that were in flight, and no answered turn again."""
    limit = 3
    expected = _expected(limit)
    firsts = {p.sha256 for p in expected}
    out = tmp_path / "run"
    args = [sys.executable, "-c", "from biasmed.cli import main; main()"]
    with FakeAPI(latency=0.02, api_key=KEY) as api:
        cmd = [*args, *_args(api.url, out, limit, "--concurrency", "4")]
        held: set[str] = set()
        for point in (1, 8):  # the first follow-up turn seen, then a later one
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t0 = time.monotonic()
            while sum(n for k, n in api.received.items() if k not in firsts) < point:
                assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()[1]}"
                assert time.monotonic() - t0 < 60, "kill point never reached"
                time.sleep(0.002)
            api.freeze()
            # everything already answered reaches the client's cache before the kill
            while True:
                answered = dict(api.answered)
                time.sleep(0.3)
                if dict(api.answered) == answered:
                    break
            held |= {k for k, n in api.received.items() if n > api.answered.get(k, 0)}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            api.release(abandon=True)  # the held requests die unanswered with the client
            assert any(k not in firsts for k in held), "no follow-up turn was in flight at the kill"
            partial = {r["sample_id"] for r in _records(out)} if (out / "samples.jsonl").exists() else set()
            assert len(partial) < len(expected)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    recs = _records(out)
    ids = [r["sample_id"] for r in recs]
    assert len(ids) == len(set(ids)) == len(expected)  # every sample exactly once
    assert set(api.answered.values()) == {1}  # no turn paid twice...
    for k, n in api.received.items():  # ...and only the turns in flight at a kill were asked again
        assert n == 1 or k in held, k
    reflect = [r for r in recs if r["mitigation"] == "reflect"]
    assert reflect and all(len(r["extra"]["turns"]) == 2 and r["extra"]["change"] for r in reflect)
    # a conversation resumed mid-way: its first turn came from the cache, its second was paid now
    assert any(r["extra"]["turns"][0]["cached"] and not r["extra"]["turns"][1]["cached"] for r in reflect)
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["totals"]["samples"] == len(expected)
