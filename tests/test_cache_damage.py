"""A damaged response cache never stops a run with a traceback: at open it is set aside (renamed
`.corrupt-<time>`) and rebuilt with one warning naming it; damage found mid-run turns the cache
off for the rest of the run with one warning."""

from __future__ import annotations

import logging
import os
import sqlite3

import pytest
from fakeapi import FakeAPI
from typer.testing import CliRunner

from biasmed.cli import app
from biasmed.run.cache import ResponseCache

KEY = "sk-test-cache-damage-0123456789"


def _filled(path, n=400) -> None:
    with ResponseCache(path) as c:
        for i in range(n):
            c.put(f"k{i}", {"text": "B" * 200, "i": i}, "m")
        c.flush()
    # fold the WAL into the main file, so the damage below hits real pages
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _aside(path) -> list:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name and not p.name.endswith(("-wal", "-shm")))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "biasmed" and r.levelno == logging.WARNING]


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("damage", ["garbage", "partly_overwritten", "truncated", "other_sqlite", "empty_table_pages"])
def test_damaged_cache_is_set_aside_and_rebuilt_with_one_warning(tmp_path, caplog, damage):
    path = tmp_path / "responses.sqlite"
    _filled(path)
    size = path.stat().st_size
    if damage == "garbage":
        path.write_bytes(os.urandom(size))
    elif damage == "partly_overwritten":
        _overwrite(path, size // 2, b"\x5a" * 8192)  # pages in the middle of the b-tree
    elif damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 3)
    elif damage == "other_sqlite":
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE responses (id INTEGER, blob BLOB)")
        conn.commit()
        conn.close()
    else:
        _overwrite(path, 4096 * 2, b"\x00" * 4096)  # a zeroed page (a crash mid-write on some disks)
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="biasmed"):
        with ResponseCache(path) as c:
            assert len(c) == 0
            c.put("new", {"text": "C"}, "m")
            c.flush()
            assert c.get("new") == {"text": "C"}
    (aside,) = _aside(path)
    assert aside.read_bytes() == before  # kept as it was, for whoever wants to look
    (msg,) = _warnings(caplog)
    assert str(path) in msg and aside.name in msg and "\n" not in msg
    with caplog.at_level(logging.WARNING, logger="biasmed"):
        with ResponseCache(path) as c:  # the new one is sound: no second warning
            assert c.get("new") == {"text": "C"}
    assert len(_warnings(caplog)) == 1


def test_damage_found_mid_run_turns_the_cache_off_with_one_warning(tmp_path, caplog):
    path = tmp_path / "responses.sqlite"
    _filled(path)
    c = ResponseCache(path)
    try:
        assert len(c.get_many([f"k{i}" for i in range(400)])) == 400
        for conn in list(c._conns):  # a fresh page cache: the reads below go to the disk
            conn.close()
        c._conns.clear()
        c._local = type(c._local)()
        _overwrite(path, 4096, b"\xa5" * (path.stat().st_size - 4096))
        with caplog.at_level(logging.WARNING, logger="biasmed"):
            assert c.get_many([f"k{i}" for i in range(400)]) == {}
            assert c.get("k1") is None
        (msg,) = _warnings(caplog)
        assert str(path) in msg and "continuing without it" in msg
        with pytest.raises(RuntimeError, match="damaged"):  # the runner turns the cache off on this
            c.put("x", {"text": "A"})
    finally:
        c.close()


def test_run_with_a_garbage_cache_completes_with_one_warning(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "responses.sqlite").write_bytes(b"this is not a database\n" * 500)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(cache_dir))
    out = tmp_path / "run"
    with FakeAPI(api_key=KEY) as api:
        r = CliRunner().invoke(app, ["run", "--model", "openai:gpt-test", "--base-url", api.url + "/v1",
                                     "--limit", "2", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if "responses.sqlite" in line]
    assert len(warnings) == 1 and warnings[0].startswith("biasmed: warning: ") and "set aside" in warnings[0]
    assert "Traceback" not in r.stderr
    assert len(_aside(cache_dir / "responses.sqlite")) == 1
    assert (out / "samples.jsonl").read_text().count("\n") == 16
