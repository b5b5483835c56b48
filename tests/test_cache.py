"""The SQLite response cache: key components, round trips, WAL, and concurrency without
"database is locked" (several processes writing at once while another holds the write lock)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fakeapi import FakeAPI
from typer.testing import CliRunner

from biasmed.run.cache import ResponseCache, cache_key, default_cache_path
from biasmed.cli import app
from biasmed.models import GenParams, resolve_model

IDENT = {"provider": "openai", "model": "gpt-x", "base_url": "https://api.openai.com/v1", "adapter": "a/1"}
MSGS = [{"role": "system", "content": "### Question: ... ### Answer: "}]


def test_key_changes_with_every_component():
    base = cache_key(IDENT, GenParams().as_dict(), MSGS)
    assert base == cache_key(dict(IDENT), GenParams().as_dict(), [dict(m) for m in MSGS])  # stable
    variants = [
        cache_key({**IDENT, "provider": "openai-compatible"}, GenParams().as_dict(), MSGS),
        cache_key({**IDENT, "model": "gpt-y"}, GenParams().as_dict(), MSGS),
        cache_key({**IDENT, "base_url": "http://127.0.0.1:8000/v1"}, GenParams().as_dict(), MSGS),
        cache_key(IDENT, GenParams(mode="logprob").as_dict(), MSGS),
        cache_key(IDENT, GenParams(max_tokens=17).as_dict(), MSGS),
        cache_key(IDENT, GenParams(temperature=0.7).as_dict(), MSGS),
        cache_key(IDENT, GenParams(top_p=0.9).as_dict(), MSGS),
        cache_key(IDENT, GenParams(seed=1).as_dict(), MSGS),
        cache_key(IDENT, GenParams(role="user").as_dict(), MSGS),
        cache_key(IDENT, GenParams().as_dict(), [{"role": "user", "content": MSGS[0]["content"]}]),
        cache_key(IDENT, GenParams().as_dict(), [{"role": "system", "content": MSGS[0]["content"] + " "}]),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_model_identity_has_no_key_and_ignores_it(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-one-AAAAAAAAAAAA")
    a = resolve_model("openai:gpt-x", base_url="https://user:pw@example.com/v1?token=zzz").cache_identity()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-two-BBBBBBBBBBBB")
    b = resolve_model("openai:gpt-x", base_url="https://user:pw@example.com/v1?token=zzz").cache_identity()
    assert a == b
    text = repr(a)
    assert "sk-" not in text and "pw" not in text and "zzz" not in text
    assert a["base_url"] == "https://example.com/v1"


def test_round_trip_and_bulk_lookup(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as c:
        assert c.get("k1") is None
        c.put("k1", {"text": "A", "usage": {"input_tokens": 3}}, "m")
        c.put("k2", {"text": "B"}, "m")
        c.flush()
        assert c.get("k1") == {"text": "A", "usage": {"input_tokens": 3}}
        assert set(c.get_many(["k1", "k2", "k3"] + [f"x{i}" for i in range(1200)])) == {"k1", "k2"}
        assert len(c) == 2 and "k2" in c
        mode = sqlite3.connect(c.path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    # shared across instances (runs): a new process-level handle sees it
    with ResponseCache(tmp_path / "c.sqlite") as c2:
        assert c2.get("k2") == {"text": "B"}


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_path() == tmp_path / "x" / "responses.sqlite"
    monkeypatch.delenv("BIASMED_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "biasmed" / "responses.sqlite"


_WRITER = textwrap.dedent("""
    import sys, threading
    from biasmed.run.cache import ResponseCache
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = ResponseCache(path)
    def reader():
        for i in range(n):
            c.get(f"{tag}-{i}")
            c.get_many([f"{tag}-{j}" for j in range(0, i, 7)])
    t = threading.Thread(target=reader)
    t.start()
    for i in range(n):
        c.put(f"{tag}-{i}", {"text": f"{tag}{i}"}, "m")
        if i % 50 == 0:
            c.flush()  # many small transactions: maximum contention
    t.join()
    c.close()
    print("ok")
""")


def test_concurrent_writers_never_see_database_locked(tmp_path):
    path = tmp_path / "c.sqlite"
    ResponseCache(path).close()
    n, procs = 400, 4
    # one connection grabs the write lock for a while, as a slow writer in another run would
    hold = sqlite3.connect(path, timeout=30, isolation_level=None)
    hold.execute("BEGIN IMMEDIATE")
    ps = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{k}", str(n)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(procs)]
    # and, in this process, threads putting through one shared cache object
    shared = ResponseCache(path)
    threads = [threading.Thread(target=lambda k=k: [shared.put(f"t{k}-{i}", {"i": i}) for i in range(n)])
               for k in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.7)
    hold.execute("COMMIT")
    hold.close()
    for t in threads:
        t.join()
    shared.flush()
    outs = [p.communicate(timeout=60) for p in ps]
    for p, (out, err) in zip(ps, outs):
        assert p.returncode == 0 and out.strip() == "ok", err
        assert "locked" not in err
    with ResponseCache(path) as c:
        assert len(c) == procs * n + 8 * n
        assert c.get("p3-399") == {"text": "p3399"} and c.get("t7-399") == {"i": 399}
    shared.close()


# -- the CLI flags ------------------------------------------------------------------------------
def _cli(*args):
    r = CliRunner().invoke(app, ["run", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r


@pytest.fixture
def api():
    with FakeAPI() as server:
        yield server


def test_no_cache_and_refresh_cache_flags(api, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000000000")
    cache_dir = tmp_path / "cache"
    base = ["--model", "openai:gpt-test", "--base-url", api.url + "/v1", "--limit", "1", "--cache-dir", str(cache_dir)]
    _cli(*base, "--out", str(tmp_path / "a"))
    assert sum(api.received.values()) == 8
    with ResponseCache(cache_dir / "responses.sqlite") as c:
        assert len(c) == 8
    _cli(*base, "--out", str(tmp_path / "b"))  # another run folder: answered from the cache
    assert sum(api.received.values()) == 8
    _cli(*base, "--out", str(tmp_path / "c"), "--no-cache")  # asks again, writes nothing
    assert sum(api.received.values()) == 16
    api.answers = {sha: "C" for sha in api.received}  # the model "changed its mind"
    _cli(*base, "--out", str(tmp_path / "d"), "--refresh-cache")  # asks again, overwrites
    assert sum(api.received.values()) == 24
    _cli(*base, "--out", str(tmp_path / "e"))
    assert sum(api.received.values()) == 24
    import json

    e = [json.loads(x) for x in (tmp_path / "e" / "samples.jsonl").read_text().splitlines()]
    assert {s["response"] for s in e} == {"C"} and all(s["cached"] for s in e)
    r = CliRunner().invoke(app, ["run", *base, "--out", str(tmp_path / "f"), "--no-cache", "--refresh-cache"])
    assert r.exit_code == 2


def test_cache_file_is_private(tmp_path):
    with ResponseCache(tmp_path / "c.sqlite") as c:
        assert (c.path.stat().st_mode & 0o077) == 0
