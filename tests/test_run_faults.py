"""`biasmed run` under faults, in real processes against the loopback API server: bad settings are
one line before anything is written; one writer per folder; a full disk stops cleanly and a rerun
completes; replies are capped; kill -9 at 20 seeded random moments loses nothing and pays nothing
twice except what was in flight."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeapi import FakeAPI
from typer.testing import CliRunner

from biasmed.cli import app
from biasmed.dataset.build import build_benchmark
from biasmed.dataset.medqa import load_demo

KEY = "sk-test-faults-0123456789"


def _args(url: str, out: Path, *extra: str, limit: int = 2) -> list[str]:
    return [
        "run",
        "--model",
        "openai:gpt-test",
        "--base-url",
        url + "/v1",
        "--limit",
        str(limit),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _proc(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from biasmed.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))
    return {**os.environ, "OPENAI_API_KEY": KEY, "BIASMED_CACHE_DIR": str(tmp_path / "cache")}


def _ids(samples: Path) -> list[str]:
    return [json.loads(line)["sample_id"] for line in samples.read_text().splitlines()]


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "0"], "--limit: must be at least 1"),
        (["--limit", "-1"], "--limit: must be at least 1"),
        (["--draws", "0"], "--draws: must be at least 1"),
        (["--temperature", "nan"], "--temperature: must be a finite number"),
        (["--temperature", "-0.5"], "--temperature: must be >= 0"),
        (["--timeout", "nan"], "--timeout: must be a finite number"),
        (["--timeout", "0"], "--timeout: must be > 0"),
        (["--rpm", "0"], "--rpm: must be > 0"),
        (["--rpm", "-5"], "--rpm: must be > 0"),
        (["--tpm", "0"], "--tpm: must be > 0"),
        (["--max-cost", "nan"], "--max-cost: must be a finite number"),
        (["--max-cost", "-1"], "--max-cost: must be >= 0"),
        (["--concurrency", "0"], "--concurrency: must be at least 1"),
        (["--max-response-chars", "0"], "--max-response-chars: must be at least 1"),
        (["--biases", ""], "--biases: is empty"),
        (["--mitigations", ""], "--mitigations: is empty"),
        (["--mitigations", "nope"], "--mitigations: unknown mitigation 'nope'"),
        (["--biases", "nope"], "unknown bias 'nope'"),
        (["--split", "train"], "--split: must be one of test, dev"),
        (["--template-version", "paper-1999"], "--template-version: must be one of"),
        (["--target-mode", "sideways"], "--target-mode: must be one of"),
    ],
)
def test_bad_setting_is_one_line_exit_2_and_nothing_written(tmp_path, env, extra, message):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, _args("http://127.0.0.1:9", out, *extra))
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("biasmed: error: ")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_out_that_is_a_file_or_below_one_is_one_line(tmp_path, env):
    f = tmp_path / "file"
    f.write_text("x")
    for out, message in ((f, "is a file, not a run folder"), (f / "run", "is a file, not a folder")):
        r = CliRunner().invoke(app, _args("http://127.0.0.1:9", out))
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a read-only file system needs root")
def test_out_on_a_read_only_file_system_is_one_line(tmp_path, env):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
        pytest.skip("mount is not permitted here")
    try:
        r = CliRunner().invoke(app, _args("http://127.0.0.1:9", ro / "run"))
        assert r.exit_code == 2 and "is not writable" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_debug_shows_the_traceback_and_the_line(tmp_path, env):
    for flag, extra_env in ((["--debug"], {}), ([], {"BIASMED_DEBUG": "1"})):
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                "from biasmed.cli import main; main()",
                *flag,
                *_args("http://127.0.0.1:9", tmp_path / "run", "--limit", "0"),
            ],
            env={**env, **extra_env},
            capture_output=True,
            text=True,
        )
        assert p.returncode == 2 and "Traceback" in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1] == "biasmed: error: --limit: must be at least 1"


def test_markup_in_a_model_spec_is_shown_as_typed(tmp_path, env):
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY) as api:
        r = CliRunner().invoke(
            app,
            ["run", "--model", "openai:[bold]x[/]", "--base-url", api.url + "/v1", "--limit", "1", "--out", str(out)],
        )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["model"] == "openai:[bold]x[/]"
    from biasmed.cli.run import _ProgressView  # the progress bar's label goes through rich markup

    view = _ProgressView(3, "openai:[bold]x[/]", enabled=False)
    assert view.progress is None
    from rich.markup import escape, render

    assert render(escape("openai:[bold]x[/]")).plain == "openai:[bold]x[/]"


# --------------------------------------------------------------------------- one writer


def test_second_writer_exits_2_naming_the_first_and_nothing_is_doubled(tmp_path, env):
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY) as api:
        api.freeze()  # the first run holds its requests (and the lock) until released
        first = _proc(_args(api.url, out), env)
        t0 = time.monotonic()
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip() or not api.received:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        second = subprocess.run(
            [sys.executable, "-c", "from biasmed.cli import main; main()", *_args(api.url, out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2, second.stderr
        (line,) = [x for x in second.stderr.splitlines() if x.startswith("biasmed: error: ")]
        assert f"pid {first.pid} on " in line and "another biasmed run is writing this folder" in line
        # the second paid for nothing: it would have asked the same prompts again (the first keeps
        # sending up to --concurrency requests meanwhile, so a count taken before is no baseline)
        assert max(api.received.values()) == 1
        api.release()
        assert first.wait(120) == 0, first.communicate()
    ids = _ids(out / "samples.jsonl")
    assert len(ids) == len(set(ids)) == 16
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# --------------------------------------------------------------------------- full disk


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if r.returncode:
        pytest.skip(f"mount is not permitted here: {r.stderr.decode().strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (see the RLIMIT_FSIZE test)")
def test_full_disk_stops_with_one_line_then_resume_completes(tmp_path, env):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "40k")
    out = disk / "run"
    try:
        with FakeAPI(api_key=KEY) as api:
            r = subprocess.run(
                [sys.executable, "-c", "from biasmed.cli import main; main()", *_args(api.url, out, limit=6)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert r.returncode == 1, r.stderr
            (line,) = [x for x in r.stderr.splitlines() if x.startswith("biasmed: error: ")]
            assert "Traceback" not in r.stderr
            assert line.startswith("biasmed: error: disk full (ENOSPC) writing ") and "nothing lost" in line
            assert "run the same command again to resume" in line
            meta = json.loads((out / "run.json").read_text())
            assert meta["status"] == "failed" and "ENOSPC" in meta["message"]
            partial = _ids(out / "samples.jsonl") if (out / "samples.jsonl").read_bytes().endswith(b"\n") else None
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
            done = subprocess.run(
                [sys.executable, "-c", "from biasmed.cli import main; main()", *_args(api.url, out, limit=6)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
        ids = _ids(out / "samples.jsonl")
        assert len(ids) == len(set(ids)) == 48  # every sample exactly once
        assert partial is None or ids[: len(partial)] == partial  # what the full disk kept was kept
        assert json.loads((out / "run.json").read_text())["status"] == "complete"
        assert set(api.answered.values()) == {1}  # cache (elsewhere) + samples: nothing paid twice
    finally:
        subprocess.run(["umount", str(disk)], check=False)


_FSIZE_CHILD = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.argv = ["biasmed", *sys.argv[2:]]
from biasmed.cli import main
main()
"""


def test_file_size_limit_stops_with_one_line_then_resume_completes(tmp_path, env):
    """RLIMIT_FSIZE works without root: no file can grow past 70 kB (samples.jsonl reaches it first)."""
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY) as api:
        r = subprocess.run(
            [sys.executable, "-c", _FSIZE_CHILD, "70000", *_args(api.url, out, limit=6)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 1, r.stderr
        (line,) = [x for x in r.stderr.splitlines() if x.startswith("biasmed: error: ")]
        assert "Traceback" not in r.stderr and f"writing {out / 'samples.jsonl'};" in line
        assert "file too large (EFBIG)" in line and "nothing lost" in line, line
        assert json.loads((out / "run.json").read_text())["status"] == "failed"
        kept = _shas(out / "samples.jsonl")
        done = subprocess.run(
            [sys.executable, "-c", "from biasmed.cli import main; main()", *_args(api.url, out, limit=6)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    ids = _ids(out / "samples.jsonl")
    assert len(ids) == len(set(ids)) == 48
    # the limit is per process, so it stopped the cache's writes too: answers not in samples.jsonl
    # may be asked again, those kept never are
    assert all(n == 1 for sha, n in api.answered.items() if sha in kept)


# --------------------------------------------------------------------------- reply cap


def test_long_replies_are_capped_and_marked_also_from_the_cache(tmp_path, env):
    prompts = build_benchmark(load_demo(), seed=0, limit=1).prompts()
    long = "B: Bronchitis. " + "x" * 50_000
    with FakeAPI(api_key=KEY) as api:
        for p in prompts:
            api.answers[p.sha256] = long
        r = CliRunner().invoke(app, _args(api.url, tmp_path / "a", "--max-response-chars", "1000", limit=1))
        assert r.exit_code == 0, r.output
        again = CliRunner().invoke(app, _args(api.url, tmp_path / "b", "--max-response-chars", "1000", limit=1))
        assert again.exit_code == 0, again.output
    for run, cached in (("a", False), ("b", True)):
        recs = [json.loads(x) for x in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
        assert len(recs) == len(prompts)
        for rec in recs:
            assert rec["response"] == long[:1000] and rec["extra"]["truncated_chars"] == len(long) - 1000
            assert rec["cached"] is cached and rec["extracted"] == "B"


def test_a_larger_cap_asks_again_instead_of_reusing_a_cut_reply(tmp_path, env):
    prompts = build_benchmark(load_demo(), seed=0, limit=1).prompts()
    long = "B: Bronchitis. " + "x" * 5_000
    with FakeAPI(api_key=KEY) as api:
        for p in prompts:
            api.answers[p.sha256] = long
        for run, cap in (("small", "1000"), ("large", "20000"), ("large-again", "20000")):
            r = CliRunner().invoke(app, _args(api.url, tmp_path / run, "--max-response-chars", cap, limit=1))
            assert r.exit_code == 0, r.output
        # each prompt asked twice: once under the small cap, once more for its whole reply; never a third time
        assert set(api.answered.values()) == {2}
    for run, cached in (("large", False), ("large-again", True)):
        recs = [json.loads(x) for x in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
        assert all(r["response"] == long and "truncated_chars" not in r["extra"] for r in recs)
        assert all(r["cached"] is cached for r in recs)


def test_replies_under_the_default_cap_are_untouched(tmp_path, env):
    with FakeAPI(api_key=KEY) as api:
        r = CliRunner().invoke(app, _args(api.url, tmp_path / "run", limit=1))
        assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert all("truncated_chars" not in (rec.get("extra") or {}) for rec in recs)


# --------------------------------------------------------------------------- signals


def test_sigterm_leaves_run_json_interrupted(tmp_path, env):
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY) as api:
        api.freeze()
        p = _proc(_args(api.url, out), env)
        t0 = time.monotonic()
        while not api.received:
            assert p.poll() is None and time.monotonic() - t0 < 60
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 130, p.communicate()
        api.release(abandon=True)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"


# --------------------------------------------------------------------------- kill -9, 20 times


def _shas(samples: Path) -> set[str]:
    out = set()
    for raw in samples.read_bytes().split(b"\n") if samples.exists() else []:
        try:
            out.add(json.loads(raw)["prompt_sha256"])
        except (ValueError, KeyError):
            pass  # the torn tail a kill leaves
    return out


@pytest.mark.slow
def test_kill_9_at_20_seeded_random_moments_then_resume(tmp_path, env):
    """No freezing: the kill lands anywhere (mid-line, mid-request, mid-cache-write). A prompt may
    be paid again only if its answer had arrived but was not yet written at some kill."""
    out = tmp_path / "run"
    samples = out / "samples.jsonl"
    limit = 12
    expected = build_benchmark(load_demo(), seed=0, mitigations=["none", "education"], limit=limit).prompts()
    args = _args("URL", out, "--mitigations", "none,education", "--concurrency", "4", limit=limit)
    rng = random.Random(20261130)
    thresholds = sorted(rng.randrange(0, len(expected)) for _ in range(20))
    lost: dict[str, int] = {}  # sha -> kills at which it was answered but not yet written
    with FakeAPI(latency=0.03, api_key=KEY) as api:
        args[args.index("URL/v1")] = api.url + "/v1"
        kills = 0
        for t in thresholds:
            before = set(api.answered)
            p = _proc(args, env)
            while p.poll() is None and (samples.read_bytes().count(b"\n") if samples.exists() else 0) < t:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.06))
            if p.poll() is not None:
                break  # finished before this moment: the remaining moments are past the end
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            time.sleep(0.1)  # let the server finish what it was sending to the dead client
            for sha in set(api.answered) - before - _shas(samples):
                lost[sha] = lost.get(sha, 0) + 1
        assert kills >= 15, f"only {kills} kills landed before the run ended"
        done = subprocess.run(
            [sys.executable, "-c", "from biasmed.cli import main; main()", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    raw = samples.read_bytes()
    assert raw.endswith(b"\n")
    ids = [json.loads(line)["sample_id"] for line in raw.decode().splitlines()]
    assert len(ids) == len(set(ids)) == len(expected)  # every sample exactly once
    assert set(ids) == {p.sample_id for p in expected}
    for sha, n in api.answered.items():
        assert n <= 1 + lost.get(sha, 0), f"{sha} paid {n} times, in flight at {lost.get(sha, 0)} kills"
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
