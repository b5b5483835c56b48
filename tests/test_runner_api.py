"""The runner with the official openai and anthropic SDKs against a real loopback HTTP server.

Every fault the server can inject is either retried (the sample arrives, retries are counted) or
recorded with its reason; the run never crashes; 401/403 stop the run at once and keep what was
written. Also: single flight, concurrency, rate limits, cache use, replay, dry-run, max-cost.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest
from fakeapi import FakeAPI, letter_for, prompt_sha
from typer.testing import CliRunner

from biasmed.dataset.build import build_benchmark
from biasmed.run.cache import ResponseCache
from biasmed.cli import app
from biasmed.dataset.medqa import load_demo
from biasmed.models import GenParams, resolve_model
from biasmed.run.pricing import Price
from biasmed.results import SamplesWriter, iter_jsonl
from biasmed.run.runner import RateLimiter, RunConfig, Runner, question_chunks

KEYS = {"OPENAI_API_KEY": "sk-test-openai-0123456789", "ANTHROPIC_API_KEY": "sk-ant-test-0123456789"}
FAST = dict(backoff_base=0.01, backoff_max=0.05, timeout=5.0)


@pytest.fixture
def api():
    with FakeAPI() as server:
        yield server


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    for k, v in KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))


def prompts(limit=2, biases=None, mitigations=("none",)):
    return build_benchmark(load_demo(), biases, seed=0, mitigations=list(mitigations), limit=limit).prompts()


def make_model(api, provider="openai", **opts):
    if provider == "anthropic":
        return resolve_model("anthropic:claude-test", base_url=api.url, **opts)
    return resolve_model("openai:gpt-test", base_url=api.url + "/v1", **opts)


def run(model, ps, out: Path, params=None, cache=None, price=None, **cfg):
    params = params or GenParams()
    writer = SamplesWriter(out / "samples.jsonl")
    runner = Runner(model, params, writer, cache=cache, price=price, config=RunConfig(**{**FAST, **cfg}),
                    errors_path=out / "errors.jsonl")

    async def go():
        try:
            return await runner.run(ps)
        finally:
            await model.aclose()

    try:
        result = asyncio.run(go())
    finally:
        writer.close()
        if cache is not None:
            cache.flush()
    return result, list(iter_jsonl(out / "samples.jsonl"))


def ordered(samples, ps):
    """Samples in the order of `ps` (they are written as answers arrive), each exactly once."""
    by_id = {s["sample_id"]: s for s in samples}
    assert len(by_id) == len(samples) == len(ps)
    return [by_id[p.sample_id] for p in ps]


# -- happy paths -------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_generate_writes_one_scored_sample_per_prompt(api, tmp_path, provider):
    ps = prompts(2)
    res, samples = run(make_model(api, provider), ps, tmp_path, price=Price(1.0, 2.0, "test"))
    assert res.status == "complete" and res.stats.done == len(ps) == 16
    samples = ordered(samples, ps)
    for p, s in zip(ps, samples):
        want = letter_for(p.text)
        assert s["response"] == want and s["extracted"] == want
        assert s["correct"] == (want == p.item.question.answer_idx)
        assert s["prompt_sha256"] == p.sha256 and s["bias_target"] == p.item.target
        assert s["usage"]["input_tokens"] == len(p.text) // 4
        assert s["cost_usd"] == pytest.approx((s["usage"]["input_tokens"] + 2 * s["usage"]["output_tokens"]) / 1e6)
        assert s["error"] is None and s["nr"] is False and s["cached"] is False
    assert sum(api.answered.values()) == len(ps)


def test_anthropic_system_role_sends_system_and_minimal_user_turn(api, tmp_path):
    api.keep_bodies = True
    p = prompts(1)[:1]
    run(make_model(api, "anthropic"), p, tmp_path / "a")
    run(make_model(api, "anthropic"), p, tmp_path / "b", params=GenParams(role="user"))
    sys_body, user_body = api.bodies
    assert sys_body["system"] == p[0].text
    assert sys_body["messages"] == [{"role": "user", "content": "Please answer."}]
    assert "system" not in user_body and user_body["messages"] == [{"role": "user", "content": p[0].text}]


def test_openai_logprob_mode(api, tmp_path):
    api.keep_bodies = True
    ps = prompts(2)
    res, samples = run(make_model(api), ps, tmp_path, params=GenParams(mode="logprob"))
    assert res.status == "complete"
    samples = ordered(samples, ps)
    for body in api.bodies:
        assert body["max_completion_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    assert sorted(b["messages"][0]["content"] for b in api.bodies) == sorted(p.text for p in ps)
    assert {b["messages"][0]["role"] for b in api.bodies} == {"system"}
    for p, s in zip(ps, samples):
        lp = s["logprobs"]
        assert set(lp) == set(p.item.question.letters)
        assert s["extracted"] == letter_for(p.text) and s["rule"] == "logprob"
        # "A" and " A" are both counted: log(exp(-0.1) + exp(-3.0)) for the top letter
        assert lp[s["extracted"]] == pytest.approx(math.log(math.exp(-0.1) + math.exp(-3.0)), abs=1e-9)


# -- faults ------------------------------------------------------------------------------------
RETRIED = ["429", "500", "529", "hang", "reset", "malformed"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", RETRIED)
def test_transient_faults_are_retried(api, tmp_path, provider, fault):
    api.hang_s = 3.0
    ps = prompts(1)
    api.inject(fault, times=2)
    t0 = time.monotonic()
    res, samples = run(make_model(api, provider, timeout=0.8), ps, tmp_path, timeout=0.8, concurrency=4)
    assert res.status == "complete", res.message
    assert res.stats.retries == 2 and res.stats.failed == 0 and res.stats.errors == 0
    samples = ordered(samples, ps)
    assert all(s["response"] == letter_for(p.text) for p, s in zip(ps, samples))
    if fault == "429":  # Retry-After (200 ms) is honored, by every worker
        assert time.monotonic() - t0 >= 0.2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_persistent_fault_gives_up_then_resume_retries(api, tmp_path, provider):
    ps = prompts(1)[:4]
    api.inject("500", times=1000)
    res, samples = run(make_model(api, provider), ps, tmp_path, max_retries=2)
    assert res.status == "incomplete" and res.stats.failed == 4 and samples == []
    errors = list(iter_jsonl(tmp_path / "errors.jsonl"))
    assert {e["sample_id"] for e in errors} == {p.sample_id for p in ps}
    assert all("gave up after 3 attempt(s)" in e["error"] and "500" in e["error"] for e in errors)
    api.clear_faults()
    res, samples = run(make_model(api, provider), ps, tmp_path)
    assert res.status == "complete" and len(samples) == 4


def test_max_retry_time_bounds_retrying(api, tmp_path):
    api.inject("429", times=1000)  # Retry-After 200 ms each time
    t0 = time.monotonic()
    res, _ = run(make_model(api), prompts(1)[:1], tmp_path, max_retries=100, max_retry_time=0.5)
    assert res.status == "incomplete" and time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_empty_and_refusal_are_recorded_as_nr(api, tmp_path, provider):
    ps = prompts(1)[:2]
    api.inject("empty", match=lambda sha: sha == ps[0].sha256)
    api.inject("refusal", match=lambda sha: sha == ps[1].sha256)
    res, samples = run(make_model(api, provider), ps, tmp_path)
    assert res.status == "complete" and res.stats.retries == 0
    empty, refused = ordered(samples, ps)
    assert empty["response"] == "" and empty["nr"] is True and empty["extracted"] is None
    assert refused["nr"] is True and refused["extracted"] is None
    assert refused["extra"].get("refusal") or refused["extra"].get("finish_reason") == "refusal"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_context_too_long_is_a_sample_error(api, tmp_path, provider):
    ps = prompts(1)
    api.inject("400-context", match=lambda sha: sha == ps[3].sha256)
    res, samples = run(make_model(api, provider), ps, tmp_path)
    assert res.status == "complete" and res.stats.errors == 1
    samples = ordered(samples, ps)
    bad = samples[3]
    assert bad["error"].startswith("context_length: 400") and bad["nr"] is True and bad["correct"] is None
    assert all(s["error"] is None for i, s in enumerate(samples) if i != 3)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("status", ["401", "403"])
def test_auth_failure_stops_at_once_and_keeps_samples(api, tmp_path, provider, status):
    ps = prompts(4)
    res, first = run(make_model(api, provider), ps[:5], tmp_path)
    assert res.status == "complete"
    api.latency = 0.05
    api.inject(status, times=10_000)
    t0 = time.monotonic()
    res, samples = run(make_model(api, provider), ps, tmp_path, concurrency=8)
    assert res.status == "fatal" and time.monotonic() - t0 < 2.0
    assert status in res.message and "\n" not in res.message
    assert samples == first  # nothing lost, nothing half-written
    assert sum(api.received.values()) <= 5 + 8 + 1  # stopped at once: no new requests after the first 401


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_parameter_stops_the_run_before_writing(api, tmp_path, provider):
    api.inject("400-param", times=10_000)
    res, samples = run(make_model(api, provider), prompts(2), tmp_path, concurrency=4)
    assert res.status == "fatal" and "400" in res.message and "temperature" in res.message
    assert samples == []


def test_missing_key_is_fatal_with_a_clear_message(api, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    res, samples = run(make_model(api), prompts(1), tmp_path)
    assert res.status == "fatal" and "OPENAI_API_KEY" in res.message and samples == []


def test_connection_refused_is_retryable_then_gives_up(tmp_path):
    model = resolve_model("openai-compatible:m", base_url="http://127.0.0.1:9/v1")
    res, samples = run(model, prompts(1)[:2], tmp_path, max_retries=1)
    assert res.status == "incomplete" and res.stats.failed == 2 and samples == []


# -- scheduling ----------------------------------------------------------------------------------
def test_identical_prompts_are_sent_once(api, tmp_path):
    # an unbiased prompt under "education" is the unbiased prompt itself (nothing to educate about)
    ps = prompts(2, mitigations=("none", "education"))
    distinct = {p.sha256 for p in ps}
    assert len(distinct) < len(ps)
    res, samples = run(make_model(api), ps, tmp_path, concurrency=8)
    assert res.status == "complete" and len(samples) == len(ps)
    assert set(api.answered) == distinct and set(api.answered.values()) == {1}


def test_concurrency_is_bounded_and_used(api, tmp_path):
    api.latency = 0.1
    ps = prompts(3)  # 24 prompts
    t0 = time.monotonic()
    res, _ = run(make_model(api), ps, tmp_path, concurrency=8)
    elapsed = time.monotonic() - t0
    assert res.status == "complete"
    assert api.max_inflight == 8
    assert elapsed < 24 * 0.1 / 2  # far from serial


def test_rate_limiter_paces_requests_and_tokens():
    async def go(limiter, n, tokens):
        t0 = time.monotonic()
        for _ in range(n):
            await limiter.acquire(tokens)
        return time.monotonic() - t0

    # 1200 rpm = 20/s with one second of burst: 30 requests need >= ~0.45 s
    assert asyncio.run(go(RateLimiter(rpm=1200), 30, 1)) >= 0.4
    # 60k tpm = 1000 tokens/s: 15 x 100 tokens, 1 s of burst -> >= ~0.4 s
    assert asyncio.run(go(RateLimiter(tpm=60_000), 15, 100)) >= 0.35
    assert asyncio.run(go(RateLimiter(), 200, 100)) < 0.1


def test_question_chunks_keep_questions_together():
    ps = prompts(5)  # 5 questions x 8 conditions
    chunks = list(question_chunks(ps, 20))
    assert [len(c) for c in chunks] == [16, 16, 8]
    assert all(len({p.item.question.id for p in c}) * 8 == len(c) for c in chunks)
    assert [p for c in chunks for p in c] == ps
    assert [len(c) for c in question_chunks(ps, 5)][:2] == [5, 3]  # a question larger than a chunk


# -- cache and replay --------------------------------------------------------------------------
def test_cache_makes_a_repeat_free_and_refresh_asks_again(api, tmp_path):
    ps = prompts(2)
    cache = ResponseCache(tmp_path / "c.sqlite")
    run(make_model(api), ps, tmp_path / "r1", cache=cache)
    assert sum(api.received.values()) == len(ps)
    res, samples = run(make_model(api), ps, tmp_path / "r2", cache=cache, price=Price(1, 1, "t"))
    assert sum(api.received.values()) == len(ps)  # nothing sent
    assert res.stats.cache_hits == len(ps) and all(s["cached"] and s["cost_usd"] == 0 for s in samples)
    res, samples = run(make_model(api), ps, tmp_path / "r3", cache=cache, refresh_cache=True)
    assert sum(api.received.values()) == 2 * len(ps) and not any(s["cached"] for s in samples)
    cache.close()


def test_replay_answers_from_an_earlier_run(api, tmp_path):
    ps = prompts(2)
    _, original = run(make_model(api), ps, tmp_path / "orig")
    seen = sum(api.received.values())
    replay = resolve_model(f"replay:{tmp_path / 'orig'}")
    extra = prompts(3)[16:17]  # a prompt the earlier run never saw
    res, samples = run(replay, ps + extra, tmp_path / "replayed", cache=ResponseCache(tmp_path / "c.sqlite"))
    assert sum(api.received.values()) == seen
    samples, original = ordered(samples, ps + extra), ordered(original, ps)
    assert [s["response"] for s in samples[:-1]] == [s["response"] for s in original]
    assert [s["extracted"] for s in samples[:-1]] == [s["extracted"] for s in original]
    assert samples[-1]["error_kind"] == "not_found" and "no answer for" in samples[-1]["error"]
    assert res.stats.errors == 1


# -- the CLI: dry-run, max-cost, resume checks -------------------------------------------------
def cli(*args):
    r = CliRunner().invoke(app, ["run", *args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def test_dry_run_prints_counts_and_cost_and_sends_nothing(api, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = cli("--model", "openai:gpt-4o-mini", "--base-url", api.url + "/v1", "--limit", "3",
                               "--mitigations", "none,education", "--out", str(out), "--dry-run")
    assert code == 0, stderr
    assert "prompts: 48 (3 questions)" in stdout and "requests to send: 45" in stdout
    assert "estimated cost: at most $" in stdout and "gpt-4o-mini" in stdout
    assert "DEMO SET" in stderr
    assert sum(api.received.values()) == 0 and not out.exists()


def test_max_cost_stops_cleanly_and_resume_continues(api, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('[models]\n"gpt-test" = { input = 1000.0, output = 1000.0 }\n')  # ~$0.3 a request
    out = tmp_path / "run"
    base = ["--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--limit", "2", "--out", str(out),
            "--prices", str(prices), "--concurrency", "4"]
    code, _, stderr = cli(*base, "--max-cost", "2")
    assert code == 3 and "--max-cost" in stderr
    first = list(iter_jsonl(out / "samples.jsonl"))
    spent = sum(s["cost_usd"] for s in first)
    assert 0 < len(first) < 16 and spent <= 2.0
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "max-cost" and meta["totals"]["cost_usd"] == pytest.approx(spent, abs=1e-6)
    code, _, stderr = cli(*base, "--max-cost", "100")
    assert code == 0, stderr
    samples = list(iter_jsonl(out / "samples.jsonl"))
    assert len(samples) == 16 == len({s["sample_id"] for s in samples})
    assert samples[: len(first)] == first


def test_max_cost_needs_a_known_price(api, tmp_path):
    code, _, stderr = cli("--model", "openai-compatible:unknown-model", "--base-url", api.url + "/v1",
                          "--limit", "1", "--out", str(tmp_path / "r"), "--max-cost", "1")
    assert code == 2 and "no price known" in stderr


def test_rerun_resumes_and_a_different_config_is_refused(api, tmp_path):
    out = tmp_path / "run"
    base = ["--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--out", str(out)]
    assert cli(*base, "--limit", "1")[0] == 0
    assert cli(*base, "--limit", "2")[0] == 0  # growing --limit continues the folder
    assert sum(api.answered.values()) == 16 and len(list(iter_jsonl(out / "samples.jsonl"))) == 16
    code, _, stderr = cli(*base, "--limit", "2", "--temperature", "0.5")
    assert code == 2 and "params" in stderr and "another --out" in stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["totals"]["samples"] == 16 and len(meta["invocations"]) == 2
    assert meta["dataset"]["is_demo"] is True and meta["template_sha256"]


def test_cli_fatal_401_is_one_line_exit_2(api, tmp_path):
    api.inject("401", times=100)
    code, stdout, stderr = cli("--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--limit", "1",
                               "--out", str(tmp_path / "r"))
    lines = [ln for ln in stderr.splitlines() if ln.startswith("biasmed: error:")]
    assert code == 2 and len(lines) == 1 and "401 authentication failed" in lines[0]
    assert "Traceback" not in stderr


def test_data_file_from_build(api, tmp_path):
    data = tmp_path / "bench.jsonl"
    r = CliRunner().invoke(app, ["build", "--medqa", "demo", "--limit", "3", "--mitigations", "none,education",
                                 "--out", str(data)])
    assert r.exit_code == 0, r.stderr
    code, _, stderr = cli("--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--data", str(data),
                          "--biases", "recency", "--limit", "2", "--mitigations", "education", "--out",
                          str(tmp_path / "r"))
    assert code == 0, stderr
    samples = list(iter_jsonl(tmp_path / "r" / "samples.jsonl"))
    assert sorted(s["sample_id"] for s in samples) == sorted(
        f"test-000{q}|{b}|education" for q in (0, 1) for b in ("none", "recency"))
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["data_file"] == str(data) and meta["dataset"]["is_demo"] is True


def test_unknown_mode_for_anthropic_is_refused(api, tmp_path):
    code, _, stderr = cli("--model", "anthropic:claude-x", "--mode", "logprob", "--limit", "1",
                          "--out", str(tmp_path / "r"))
    assert code == 2 and "logprob" in stderr


def test_prompt_sha_matches_records():
    p = prompts(1)[0]
    assert prompt_sha(p.text) == p.sha256


def test_an_api_run_imports_no_heavy_library(api, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\nfrom biasmed.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'scipy', 'matplotlib', 'datasets') "
        "if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code, "run", "--model", "openai:gpt-test", "--base-url",
                        api.url + "/v1", "--limit", "1", "--out", str(tmp_path / "r"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert sum(api.answered.values()) == 8


def test_models_lists_every_provider_and_what_it_needs(monkeypatch):
    from biasmed.models.registry import PROVIDERS

    monkeypatch.delenv("ANTHROPIC_API_KEY")
    r = CliRunner().invoke(app, ["models", "--plain"])
    assert r.exit_code == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}
    assert set(rows) == set(PROVIDERS)
    assert rows["openai"][4] == "ready" and rows["anthropic"][4] == "missing $ANTHROPIC_API_KEY"
    assert rows["replay"][4] == "ready" and KEYS["OPENAI_API_KEY"] not in r.stdout
    wide = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert "biasmed[vllm]" in wide.stdout  # no markup eaten
