"""API keys never reach a file under the run folder, the response cache, or the output/logs/errors,
not even when the server echoes the key back in an error message (as real services do)."""

from __future__ import annotations

import logging
import secrets
import traceback
from pathlib import Path

import pytest
from fakeapi import FakeAPI
from typer.testing import CliRunner

from biasmed.cli import app


def _run(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["run", *args])
    return r.exit_code, r.stdout + r.stderr + ("" if r.exception is None or isinstance(r.exception, SystemExit)
                                               else "".join(traceback.format_exception(r.exception)))


def _files(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()]


@pytest.mark.parametrize("provider,env_name", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_keys_never_written_or_printed(tmp_path, monkeypatch, caplog, provider, env_name):
    caplog.set_level(logging.DEBUG)  # SDK and HTTP client logs too, at their most talkative
    key = "sk-biasmedtest-" + secrets.token_hex(16)
    wrong = "sk-wrongkey-" + secrets.token_hex(16)
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    monkeypatch.setenv(env_name, key)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(cache))
    with FakeAPI(api_key=key) as api:
        url = api.url + ("/v1" if provider == "openai" else "")
        base = ["--model", f"{provider}:model-x", "--base-url", url, "--limit", "2", "--max-retries", "1",
                "--timeout", "5", "--backoff", "0.01"]
        api.inject("500", times=3)
        api.inject("malformed", times=1)
        api.inject("reset", times=3)
        api.inject("refusal", times=1)
        api.inject("400-context", times=1)
        code1, text1 = _run([*base, "--out", str(out)])
        assert key in api.keys_seen  # the key really was used, so the checks below mean something
        # a rejected key: the server's 401 message quotes it; biasmed must not repeat it
        api.clear_faults()
        monkeypatch.setenv(env_name, wrong)
        code2, text2 = _run([*base, "--out", str(tmp_path / "run2"), "--no-cache"])
        assert code2 == 2 and "401" in text2, text2
        assert wrong in api.keys_seen
    assert code1 in (0, 1), text1
    assert (out / "samples.jsonl").is_file() and (cache / "responses.sqlite").is_file()
    files = _files(out, tmp_path / "run2", cache)
    assert len(files) >= 4
    for f in files:
        data = f.read_bytes()
        for s in (key, wrong, key[-12:], wrong[-12:]):
            assert s.encode() not in data, f"{s[:14]}... found in {f}"
    logs = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert "HTTP Request" in logs or "Request options" in logs  # the SDK's debug logs were captured
    for text in (text1, text2, logs):
        for s in (key, wrong, key[-12:], wrong[-12:]):
            assert s not in text


def test_redaction_of_key_shaped_text():
    from biasmed.models._apicommon import redact

    k = "sk-proj-" + "x" * 40
    assert "x" * 20 not in redact(f"Incorrect API key provided: {k}.", None)
    assert redact("token abcdef123456 here", "abcdef123456") == "token *** here"
    assert "Bearer" not in redact("Authorization: Bearer abc.def", None)
