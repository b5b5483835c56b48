"""kill -9 a `biasmed run` at several points, resume it, and check nothing is lost or paid twice.

Each kill happens at a point where no answer is half-delivered: the server is frozen first and the
test waits until every answer it has sent is in samples.jsonl (an answer still on the wire when
a process dies is lost by any client; that is what the freeze rules out). Requests held by the
frozen server die unanswered with the client, as in-flight requests do.

Checked at the end: every sample exactly once (no duplicate, no torn line), and the server
answered each distinct prompt exactly once across all the runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fakeapi import FakeAPI
from typer.testing import CliRunner

from biasmed.dataset.build import build_benchmark
from biasmed.cli import app
from biasmed.dataset.medqa import load_demo

KEY = "sk-test-kill-0123456789"


def _cmd(url: str, out: Path) -> list[str]:
    return [sys.executable, "-c", "from biasmed.cli import main; main()", "run", "--model", "openai:gpt-test",
            "--base-url", url + "/v1", "--limit", "6", "--mitigations", "none,education", "--concurrency", "6",
            "--out", str(out), "--quiet"]


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n") if path.exists() else []


def _sample_shas(path: Path) -> set[str]:
    out = set()
    for raw in _lines(path):
        try:
            out.add(json.loads(raw)["prompt_sha256"])
        except (ValueError, KeyError):
            pass  # the torn tail, if the writer is mid-line
    return out


def _kill_when(proc: subprocess.Popen, api: FakeAPI, samples: Path, ready, timeout: float = 60) -> None:
    """Wait for `ready()`, freeze the server, wait until every sent answer is written, SIGKILL."""
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"run ended before the kill point: {proc.communicate()[1]}"
        assert time.monotonic() - t0 < timeout, "kill point never reached"
        time.sleep(0.005)
    api.freeze()
    while True:
        answered = set(api.answered)
        time.sleep(0.05)
        if set(api.answered) == answered and answered <= _sample_shas(samples):
            break
        assert time.monotonic() - t0 < timeout, "answers sent but never written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    api.release(abandon=True)  # held requests die unanswered, as they would with the client gone


def test_kill_9_at_several_points_then_resume(tmp_path):
    out = tmp_path / "run"
    samples = out / "samples.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "BIASMED_CACHE_DIR": str(tmp_path / "cache")}
    expected = build_benchmark(load_demo(), seed=0, mitigations=["none", "education"], limit=6).prompts()
    distinct = {p.sha256 for p in expected}
    assert len(distinct) < len(expected)  # duplicates exist: single flight is exercised too

    with FakeAPI(latency=0.02, api_key=KEY) as api:
        points = [
            lambda: sum(api.received.values()) >= 1,  # before any answer
            lambda: len(_lines(samples)) > 25,  # mid-run
            lambda: len(_lines(samples)) > 60,  # later
        ]
        for k, ready in enumerate(points):
            proc = subprocess.Popen(_cmd(api.url, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _kill_when(proc, api, samples, ready)
            if k == 1:
                # a writer killed mid-line leaves a torn tail: resume must drop it, not choke on it
                with open(samples, "ab") as f:
                    f.write(b'{"sample_id": "test-0005|recency|none", "question_id": "te')
        done = subprocess.run(_cmd(api.url, out), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

        raw = samples.read_bytes()
        assert raw.endswith(b"\n")
        recs = [json.loads(line) for line in raw.decode().splitlines()]
        ids = [r["sample_id"] for r in recs]
        assert len(ids) == len(set(ids)) == len(expected)  # every sample exactly once
        assert set(ids) == {p.sample_id for p in expected}
        assert set(api.answered) == distinct  # every distinct prompt answered...
        assert set(api.answered.values()) == {1}  # ...exactly once, across 4 processes
        meta = json.loads((out / "run.json").read_text())
        assert meta["status"] == "complete" and meta["totals"]["samples"] == len(expected)
        assert len(meta["invocations"]) == 1  # the killed runs never reached their end


def test_lost_sample_lines_come_back_from_the_cache(tmp_path, monkeypatch, lost=17):
    """A process killed after caching an answer but before its sample line: no new request."""
    out = tmp_path / "run"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))

    def run_in_process(url):
        r = CliRunner().invoke(app, _cmd(url, out)[3:], catch_exceptions=False)
        assert r.exit_code == 0, r.stderr

    with FakeAPI(api_key=KEY) as api:
        run_in_process(api.url)
        lines = (out / "samples.jsonl").read_bytes().splitlines(keepends=True)
        (out / "samples.jsonl").write_bytes(b"".join(lines[:-lost]) + lines[-lost][:25])  # + a torn line
        sent = sum(api.received.values())
        run_in_process(api.url)
        assert sum(api.received.values()) == sent
        recs = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert len(recs) == len(lines) == len({r["sample_id"] for r in recs})
        assert all(r["cached"] for r in recs[-lost:])
