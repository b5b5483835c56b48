"""The per-sample results format: `results/<run>/samples.jsonl` + `results/<run>/run.json`.

Lines are appended with one `write` each to a file opened O_APPEND, so a killed process leaves at
most a torn LAST line; opening the file again detects and drops it. `run.json` is replaced
atomically (write a temp file, then rename).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import types
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Union, get_args, get_origin, get_type_hints

from biasmed import _json
from biasmed._version import __version__
from biasmed.errors import DataError, EnvironmentFailure, InputError
from biasmed.records import Sample

SAMPLES = "samples.jsonl"
RUN_JSON = "run.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def biasmed_version() -> str:
    return __version__


def environment() -> dict[str, str]:
    """Versions worth recording beside any result."""
    from importlib.metadata import PackageNotFoundError, version

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "openai", "anthropic", "vllm", "datasets"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return env


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _line_start(f: BinaryIO, end: int, block: int = 1 << 20) -> int:
    """Offset just past the last b"\\n" before `end` (0 if there is none): the start of the line
    that ends at `end`, however long it is."""
    pos = end
    while pos > 0:
        start = max(0, pos - block)
        f.seek(start)
        cut = f.read(pos - start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def repair_jsonl(path: str | os.PathLike[str]) -> int:
    """Drop a torn final fragment: bytes after the last newline, or a last line that is not valid
    JSON. Every complete line before it is kept, whatever its size. Returns the bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
            keep = _line_start(f, size)  # a writer killed mid-line: no newline yet
        else:
            keep = start = _line_start(f, size - 1)
            f.seek(start)
            last = f.read(size - 1 - start)
            try:
                json.loads(last)
                keep = size
            except (ValueError, RecursionError):
                pass
        if keep != size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return size - keep


class SamplesWriter:
    """Appends one JSON line per sample; safe against kill -9 at any moment."""

    def __init__(self, path: str | os.PathLike[str], fsync_every: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_bytes = repair_jsonl(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._since_sync = 0
        self._fsync_every = fsync_every

    def append(self, record: Mapping[str, Any]) -> None:
        text = json.dumps(record, ensure_ascii=False) + "\n"
        try:
            line = text.encode("utf-8")
        except UnicodeEncodeError:  # a reply with a lone surrogate: U+FFFD keeps the line UTF-8
            line = _json.scrub(text).encode("utf-8")
        # one write call per line: with O_APPEND the line lands whole or (killed mid-call) torn last
        try:
            written = os.write(self._fd, line)
            while written < len(line):
                written += os.write(self._fd, line[written:])
        except OSError as e:  # name the file: os.write's errors do not
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            os.fsync(self._fd)
            self._since_sync = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SamplesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a killed writer) is skipped. Any other bad line
    is a DataError naming it (not JSON, not UTF-8, nested too deep, not an object)."""
    return (rec for _, rec in iter_jsonl_numbered(path))


def iter_jsonl_numbered(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs of `iter_jsonl`."""
    path = Path(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    torn_tail = lines[-1] != b""
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = _json.loads(raw, str(path), i + 1, surrogates="replace")
        except DataError:
            if torn_tail and i == len(lines) - 1:
                return
            raise
        if not isinstance(rec, dict):
            raise DataError(path, i + 1, "line", f"expected a JSON object, got {_json_type(rec)}")
        yield i + 1, rec


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
    }.get(type(value), "null")


def _runtime_types(tp: Any) -> tuple[type, ...]:
    """The JSON-decoded Python types a Sample annotation admits (None is always admitted)."""
    if tp is Any:
        return (object,)
    if get_origin(tp) in (Union, types.UnionType):
        return tuple(t for a in get_args(tp) for t in _runtime_types(a))
    if tp is float:
        return (int, float)
    return (get_origin(tp) or tp,)


@lru_cache(maxsize=1)
def _sample_types() -> dict[str, tuple[type, ...]]:
    return {k: _runtime_types(t) + (type(None),) for k, t in get_type_hints(Sample).items()}


def check_sample(rec: Mapping[str, Any], path: str | os.PathLike[str], line: int) -> None:
    """Raise DataError if a field of a sample line has a JSON type its Sample field cannot hold."""
    for k, allowed in _sample_types().items():
        v = rec.get(k)
        if not isinstance(v, allowed):
            raise DataError(
                path,
                line,
                k,
                f"{_json_type(v)} where a sample has "
                f"{' or '.join(sorted({t.__name__ for t in allowed} - {'NoneType'}))}",
            )


def read_samples(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Samples of a run, first occurrence of each sample_id kept; a bad line is a DataError."""
    path = Path(run_dir) / SAMPLES
    if not path.exists():
        raise FileNotFoundError(f"{path}: no samples file (is this a biasmed run folder?)")
    seen: set[str] = set()
    out = []
    for n, rec in iter_jsonl_numbered(path):
        check_sample(rec, path, n)
        sid = str(rec.get("sample_id"))
        if sid in seen:
            continue
        seen.add(sid)
        out.append(rec)
    return out


def done_ids(run_dir: str | os.PathLike[str]) -> set[str]:
    path = Path(run_dir) / SAMPLES
    if not path.exists():
        return set()
    return {rec["sample_id"] for rec in iter_jsonl(path) if isinstance(rec.get("sample_id"), str)}


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """run.json as a dict ({} when there is none); a damaged one is a DataError."""
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, 0, "file", e.strerror or str(e)) from None
    meta = _json.loads(raw, str(path), 1, "run.json", surrogates="replace")
    if not isinstance(meta, dict):
        raise DataError(path, 1, "run.json", f"expected a JSON object, got {_json_type(meta)}")
    for where, obj in (("", meta), ("dataset.", meta.get("dataset") or {})):
        for key, allowed in _RUN_JSON_TYPES[where].items():
            v = obj.get(key) if isinstance(obj, dict) else None
            if v is not None and not isinstance(v, allowed):
                raise DataError(
                    path,
                    1,
                    where + key,
                    f"{_json_type(v)} where run.json has {' or '.join(t.__name__ for t in allowed)}",
                )
    return meta


# the fields of run.json that readers (analysis, report, resume) use as values
_RUN_JSON_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "": {
        "kind": (str,),
        "model": (str,),
        "created_at": (str,),
        "status": (str,),
        "dataset": (dict,),
        "totals": (dict,),
        "invocations": (list,),
    },
    "dataset.": {"source": (str,), "sha256": (str,), "is_demo": (bool,)},
}


def new_run_meta(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "biasmed_version": biasmed_version(),
        "created_at": now_iso(),
        "environment": environment(),
        **fields,
    }


LOCK = ".lock"


class FolderLocked(InputError):
    """Another live process holds the run folder's lock (exit 2: pick another --out or wait)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _describe(holder: Mapping[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunLock:
    """The one-writer lock of a run folder: `flock` on `<out>/.lock`, held for the whole run.

    A second writer fails at once with `FolderLocked` naming the holder (pid, host, start time,
    written into the file by the holder). The kernel drops a flock when its holder dies (kill -9
    included), so a lock left by a dead process is simply taken over; `took_over` then describes
    the dead holder. The file stays (unlinking a lock file races with a process opening it); a
    clean release empties it. Readers (`report`) never take the lock.
    """

    def __init__(self, out: str | os.PathLike[str]):
        self.out = Path(out)
        self.path = self.out / LOCK
        self._fd = -1
        self.took_over: str | None = None

    def acquire(self) -> RunLock:
        import fcntl
        import socket

        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InputError(f"{self.out}: not a folder (a file is in the way); pick another --out") from None
        except OSError as e:  # no permission, a read-only or pseudo file system: a bad --out
            raise InputError(f"{self.out}: cannot create the run folder ({e.strerror}); pick another --out") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError as e:
            raise InputError(f"{self.path}: cannot create the run lock ({e.strerror}); pick a writable --out") from None
        except NotADirectoryError:
            raise InputError(f"{self.out}: not a folder (a file is in the way); pick another --out") from None
        except OSError as e:  # ENOSPC included: nothing can be written here
            raise EnvironmentFailure(f"{self.path}: cannot create the run lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = _describe(holder) if holder else "another process"
            if holder.get("pid") and holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"]):
                who += " (no longer running: a child process of it still holds the lock)"
            raise FolderLocked(
                f"{self.out}: another biasmed run is writing this folder ({who}); "
                "wait for it to finish or use another --out"
            ) from None
        except OSError as e:  # a filesystem without flock (some network mounts)
            os.close(fd)
            raise EnvironmentFailure(
                f"{self.path}: cannot lock the run folder ({e.strerror}); use an --out on a local disk"
            ) from None
        old = _read_holder(fd)
        if old:  # emptied on a clean release: what is left was written by a holder that died
            self.took_over = _describe(old)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError:  # a full disk: the flock holds all the same; only the holder's name is missing
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, 0)  # empty = released cleanly (a full disk cannot stop this)
        except OSError:
            pass
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = -1

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote into the lock file ({} when empty; {"pid": "?"} when unreadable)."""
    try:
        raw = os.pread(fd, 4096, 0)
    except OSError:
        return {"pid": "?"}
    if not raw.strip():
        return {}
    try:
        holder = json.loads(raw)
    except ValueError:  # the holder was killed while writing it
        return {"pid": "?"}
    return holder if isinstance(holder, dict) else {"pid": "?"}
