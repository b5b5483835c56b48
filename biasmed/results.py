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
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biasmed._version import __version__

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


def repair_jsonl(path: str | os.PathLike[str]) -> int:
    """Drop a torn last line (no trailing newline, or not valid JSON). Returns bytes dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        # a line is at most a few hundred kB; read back until the previous newline
        block = min(size, 1 << 22)
        f.seek(size - block)
        tail = f.read(block)
        keep = size
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = size - block + cut + 1 if cut >= 0 else 0
        else:
            last = tail[:-1].rsplit(b"\n", 1)[-1]
            try:
                json.loads(last)
            except ValueError:
                keep = size - len(last) - 1
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
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # one write call per line: with O_APPEND the line lands whole or (killed mid-call) torn last
        written = os.write(self._fd, line)
        while written < len(line):
            written += os.write(self._fd, line[written:])
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            os.fsync(self._fd)
            self._since_sync = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "SamplesWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; a torn last line (a killed writer) is skipped, others raise."""
    path = Path(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    torn_tail = lines[-1] != b""
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except ValueError:
            if torn_tail and i == len(lines) - 1:
                return
            raise ValueError(f"{path}:{i + 1}: line: not valid JSON") from None


def read_samples(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Samples of a run, first occurrence of each sample_id kept."""
    path = Path(run_dir) / SAMPLES
    if not path.exists():
        raise FileNotFoundError(f"{path}: no samples file (is this a biasmed run folder?)")
    seen: set[str] = set()
    out = []
    for rec in iter_jsonl(path):
        sid = rec.get("sample_id")
        if sid in seen:
            continue
        seen.add(sid)
        out.append(rec)
    return out


def done_ids(run_dir: str | os.PathLike[str]) -> set[str]:
    path = Path(run_dir) / SAMPLES
    if not path.exists():
        return set()
    return {rec["sample_id"] for rec in iter_jsonl(path) if "sample_id" in rec}


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return {}
    return json.loads(path.read_text("utf-8"))


def new_run_meta(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "biasmed_version": biasmed_version(),
        "created_at": now_iso(),
        "environment": environment(),
        **fields,
    }
