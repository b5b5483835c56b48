"""The run folder's file format under stress: lines of any size survive a resume, only a torn final
fragment is dropped, one writer at a time (flock), and every damaged file read is one DataError."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from biasmed.errors import DataError, InputError
from biasmed.results import (
    FolderLocked,
    RunLock,
    SamplesWriter,
    iter_jsonl,
    read_run_json,
    read_samples,
    repair_jsonl,
)

BIG = 5 << 20  # over the 4 MiB the old repair looked back


def _rec(i: int, response: str = "A") -> dict:
    return {"sample_id": f"q{i}", "question_id": f"q{i}", "bias": "none", "mitigation": "none",
            "answer_idx": "A", "model": "m", "response": response}


def _write(path: Path, recs: list[dict], tail: bytes = b"") -> bytes:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in recs) + tail
    path.write_bytes(data)
    return data


# --------------------------------------------------------------------------- repair / resume

def test_complete_last_line_over_4_mib_is_kept(tmp_path):
    f = tmp_path / "samples.jsonl"
    data = _write(f, [_rec(0), _rec(1, "x" * BIG)])
    assert repair_jsonl(f) == 0
    assert f.read_bytes() == data
    assert [len(r["response"]) for r in iter_jsonl(f)] == [1, BIG]


def test_torn_fragment_after_a_line_over_4_mib_drops_only_the_fragment(tmp_path):
    f = tmp_path / "samples.jsonl"
    good = _write(f, [_rec(0), _rec(1, "y" * BIG)])
    with open(f, "ab") as fh:
        fh.write(b'{"sample_id": "q2", "response": "' + b"z" * BIG)  # killed mid-line, > 4 MiB too
    assert repair_jsonl(f) == BIG + len(b'{"sample_id": "q2", "response": "')
    assert f.read_bytes() == good


def test_invalid_last_line_with_newline_is_dropped_and_earlier_lines_kept(tmp_path):
    f = tmp_path / "samples.jsonl"
    good = _write(f, [_rec(0, "w" * BIG)])
    with open(f, "ab") as fh:
        fh.write(b'{"sample_id": "q1", "resp\n')
    repair_jsonl(f)
    assert f.read_bytes() == good


def test_a_single_torn_line_empties_the_file_and_nothing_else_is_touched(tmp_path):
    f = tmp_path / "samples.jsonl"
    f.write_bytes(b'{"sample_id": "q0"')
    assert repair_jsonl(f) == 18 and f.read_bytes() == b""
    assert repair_jsonl(f) == 0  # empty and missing files are left alone
    assert repair_jsonl(tmp_path / "missing.jsonl") == 0


def test_repeated_resumes_keep_a_big_line(tmp_path):
    """The reported loss: each reopen used to cut the big last line, then everything before it."""
    f = tmp_path / "samples.jsonl"
    for i in range(3):
        with SamplesWriter(f) as w:
            assert w.dropped_bytes == 0
            w.append(_rec(i, "v" * BIG if i == 0 else "B"))
    with SamplesWriter(f) as w:
        w.append(_rec(3, "u" * BIG))
    with SamplesWriter(f) as w:  # big line last: a resume must keep it
        assert w.dropped_bytes == 0
    assert [r["sample_id"] for r in read_samples(tmp_path)] == ["q0", "q1", "q2", "q3"]


def test_a_reply_with_a_lone_surrogate_is_written_as_valid_utf8(tmp_path):
    f = tmp_path / "samples.jsonl"
    with SamplesWriter(f) as w:
        w.append(_rec(0, "bad \ud800 reply"))
    f.read_bytes().decode("utf-8")
    assert read_samples(tmp_path)[0]["response"] == "bad \ufffd reply"


# --------------------------------------------------------------------------- readers

@pytest.mark.parametrize("content, field, problem", [
    (b'{"sample_id": "q0"}\n{oops}\n{"sample_id": "q2"}\n', "line", "not valid JSON"),
    (b'{"sample_id": "q0"}\n\xff\xfe\n{"sample_id": "q2"}\n', "line", "not UTF-8"),
    (b'[1, 2]\n', "line", "expected a JSON object, got an array"),
    (b'{"sample_id": ["a"]}\n', "sample_id", "an array where a sample has str"),
    (b'{"sample_id": "q", "draw": "1"}\n', "draw", "a string where a sample has int"),
    (b'{"sample_id": "q", "extra": 3}\n', "extra", "a number where a sample has dict"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line", "nested deeper than"),
])
def test_damaged_samples_are_one_data_error_naming_the_line(tmp_path, content, field, problem):
    (tmp_path / "samples.jsonl").write_bytes(content)
    with pytest.raises(DataError) as e:
        read_samples(tmp_path)
    line = 2 if content.startswith(b'{"sample_id": "q0"}') else 1
    assert e.value.line == line and e.value.field == field and problem in e.value.problem
    assert "\n" not in str(e.value)


def test_a_lone_surrogate_escape_in_a_sample_is_read_as_a_replacement_character(tmp_path):
    (tmp_path / "samples.jsonl").write_bytes(b'{"sample_id": "q0", "response": "a\\udc00b"}\n')
    assert read_samples(tmp_path)[0]["response"] == "a\ufffdb"


@pytest.mark.parametrize("content, field", [
    (b"{not json", "run.json"), (b"[1]", "run.json"), (b"\xff", "run.json"),
    (b'{"dataset": [1]}', "dataset"),
])
def test_damaged_run_json_is_one_data_error(tmp_path, content, field):
    (tmp_path / "run.json").write_bytes(content)
    with pytest.raises(DataError) as e:
        read_run_json(tmp_path)
    assert e.value.field == field and str(e.value).startswith(str(tmp_path / "run.json") + ":1:")


# --------------------------------------------------------------------------- the run lock

_HOLD = textwrap.dedent("""
    import sys, time
    from biasmed.results import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def _holder(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_fails_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    p = _holder(out)
    try:
        with pytest.raises(FolderLocked) as e, RunLock(out):
            pass
        msg = str(e.value)
        assert f"pid {p.pid} on " in msg and "another biasmed run is writing this folder" in msg
        assert e.value.exit_code == 2 and isinstance(e.value, InputError) and "\n" not in msg
    finally:
        p.kill()
        p.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    p = _holder(out)
    p.send_signal(signal.SIGKILL)
    p.wait()
    with RunLock(out) as lock:
        assert lock.took_over is not None and f"pid {p.pid} " in lock.took_over
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == os.getpid()
    assert (out / ".lock").read_bytes() == b""  # a clean release: nothing to take over next time
    with RunLock(out) as lock:
        assert lock.took_over is None


def test_two_locks_in_one_process_conflict_and_release_lets_the_next_in(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(FolderLocked, match=f"pid {os.getpid()} "):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()


def test_readers_do_not_need_the_lock(tmp_path):
    _write(tmp_path / "samples.jsonl", [_rec(0)])
    with RunLock(tmp_path):
        assert len(read_samples(tmp_path)) == 1


def _in_child(fn, as_nobody: bool) -> str:
    """fn() in a forked child (as `nobody` when asked): what it returned, or the error it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, so it needs no access to the interpreter's files
        try:
            if as_nobody:
                os.setgid(65534)
                os.setuid(65534)
            msg = f"ok {fn()}"
        except BaseException as e:  # report any failure to the parent, whatever it is
            msg = f"{type(e).__name__} {e}"
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def test_unwritable_folder_is_one_input_error(tmp_path):
    """Root ignores permissions, so the lock is tried as `nobody` there."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    tmp_path.chmod(0o755)
    got = _in_child(lambda: RunLock(ro / "run").acquire(), as_nobody=os.geteuid() == 0)
    assert got.startswith("InputError ") and "cannot create the run folder (Permission denied)" in got, got
    assert not (ro / "run").exists()


def test_out_below_a_file_is_one_input_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        RunLock(tmp_path / "file").acquire()
    with pytest.raises(InputError, match="not a folder"):
        RunLock(tmp_path / "file" / "run").acquire()
