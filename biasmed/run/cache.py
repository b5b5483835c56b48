"""The response cache: SQLite in WAL mode, shared by every run, so one prompt to one model is paid once.

Keyed by the sha256 of explicit components (provider identity, generation parameters, answer mode,
the full messages) and never the API key. Safe under full concurrency: readers use their own
connection per thread (WAL lets them read while someone writes); all writes of a process go
through ONE writer thread with ONE connection, batched into transactions; across processes a busy
timeout plus retries absorb the remaining lock contention, so "database is locked" never reaches
the user.

A damaged cache file (overwritten, truncated, not SQLite) is set aside, renamed
`responses.sqlite.corrupt-<time>`, and a fresh one started, with one warning naming both; damage
found mid-run turns the cache off for the rest of the run (one warning), never a traceback. The
run folder, not the cache, is the record: nothing is lost, at most some answers are paid again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from biasmed._paths import cache_root
from biasmed.errors import EnvironmentFailure

log = logging.getLogger("biasmed")

KEY_VERSION = 1  # bump when the key's composition changes
_BUSY_MS = 30_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL,
    model   TEXT,
    created REAL NOT NULL
)
"""


_COLUMNS = ["key", "value", "model", "created"]
# what SQLite says about a file that is not (or no longer) a sound database
_DAMAGE = ("malformed", "not a database", "encrypted", "corrupt", "not a biasmed cache")


def _damaged(e: BaseException) -> bool:
    return isinstance(e, sqlite3.DatabaseError) and any(w in str(e).lower() for w in _DAMAGE)


def default_cache_path() -> Path:
    """`$BIASMED_CACHE_DIR/responses.sqlite`, else the user cache dir (XDG on Linux)."""
    return cache_root() / "responses.sqlite"


def cache_key(identity: Mapping[str, Any], params: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON of every part that changes a response (no secrets)."""
    parts = {"v": KEY_VERSION, "model": dict(identity), "params": dict(params), "messages": list(messages)}
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=_BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    return conn


def _with_retries(fn: Any, attempts: int = 20) -> Any:
    """Run `fn`; retry 'database is locked/busy' (busy_timeout covers most, not all, cases)."""
    delay = 0.01
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if ("locked" not in msg and "busy" not in msg) or i == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


class ResponseCache:
    """get / get_many from any thread; put queues to the writer thread; flush() waits for it."""

    def __init__(self, path: str | os.PathLike[str] | None = None, batch_window_s: float = 0.02):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        try:
            self._setup()
        except sqlite3.DatabaseError as e:
            if not _damaged(e):
                raise
            self._set_aside(e)
            self._setup()
        self._broken: BaseException | None = None
        self._queue: queue.Queue[tuple[str, str, str | None, float] | threading.Event | None] = queue.Queue()
        self._window = batch_window_s
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="biasmed-cache-writer", daemon=True)
        self._writer.start()
        self.hits = 0
        self.misses = 0

    def _setup(self) -> None:
        setup = _connect(self.path)
        try:
            # checks first, read-only, so a damaged file is set aside exactly as it was found
            cols = _with_retries(lambda: [r[1] for r in setup.execute("PRAGMA table_info(responses)")])
            if cols and cols != _COLUMNS:
                raise sqlite3.DatabaseError(f"not a biasmed cache (table responses has columns {cols})")
            # page-level damage (a partly overwritten file) shows only when pages are read
            check = _with_retries(lambda: setup.execute("PRAGMA quick_check(1)").fetchone())
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError("database disk image is malformed (quick_check failed)")
            # WAL is a property of the file: set once, every later connection inherits it
            _with_retries(lambda: setup.execute("PRAGMA journal_mode=WAL"))
            _with_retries(lambda: setup.execute(_SCHEMA))
        finally:
            setup.close()
        try:
            os.chmod(self.path, 0o600)  # responses may be private; the file is the user's alone
        except OSError:
            pass

    def _set_aside(self, e: BaseException) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):  # the journal belongs to the damaged file
                side = Path(f"{self.path}{suffix}")
                if side.exists():
                    os.replace(side, Path(f"{aside}{suffix}"))
        except FileNotFoundError:
            pass  # another process set it aside first
        except OSError as oe:
            raise EnvironmentFailure(
                f"response cache {self.path} is damaged ({e}) and cannot be set aside ({oe.strerror}): "
                "move it away, or run with --cache-dir DIR or --no-cache"
            ) from None
        log.warning(
            f"response cache {self.path} is damaged ({e}): set aside as {aside.name}, "
            "starting a new one (answers not in the run folder are asked again)"
        )

    def _lost(self, e: BaseException) -> None:
        """Damage found mid-run: the cache is off for the rest of the run."""
        if self._broken is None:
            self._broken = e
            log.warning(
                f"response cache {self.path} is damaged ({e}): continuing without it; "
                "the next run sets it aside and starts a new one"
            )

    # -- reads (any thread) ------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        if self._broken is not None:
            self.misses += 1
            return None
        try:
            row = _with_retries(
                lambda: self._conn().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            )
        except sqlite3.DatabaseError as e:
            if not _damaged(e):
                raise
            self._lost(e)
            row = None
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Bulk lookup (hundreds of keys per query): the fast path of a resumed or repeated run."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        if self._broken is not None:
            return out
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = _with_retries(
                    lambda chunk=chunk, marks=marks: (
                        self._conn()
                        .execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk)
                        .fetchall()
                    )
                )
                out.update((k, json.loads(v)) for k, v in rows)
        except sqlite3.DatabaseError as e:
            if not _damaged(e):
                raise
            self._lost(e)
            return {}
        return out

    def __contains__(self, key: str) -> bool:
        return (
            _with_retries(lambda: self._conn().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone())
            is not None
        )

    def __len__(self) -> int:
        return _with_retries(lambda: self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    # -- writes (queued to the writer thread) ------------------------------------------------
    def put(self, key: str, value: Mapping[str, Any], model: str | None = None) -> None:
        if self._broken is not None:
            raise RuntimeError(f"response cache {self.path}: damaged: {self._broken}")
        if self._error is not None:
            raise RuntimeError(f"response cache {self.path}: writer failed: {self._error}")
        self._queue.put((key, json.dumps(value, ensure_ascii=False), model, time.time()))

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything put so far is committed."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)
        if self._error is not None:
            raise RuntimeError(f"response cache {self.path}: writer failed: {self._error}")

    def close(self) -> None:
        if self._writer.is_alive():
            self._queue.put(None)
            self._writer.join(60)
        with self._conns_lock:
            for c in self._conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_loop(self) -> None:
        conn = _connect(self.path)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        stop = False
        while not stop:
            item = self._queue.get()
            rows: list[tuple[str, str, str | None, float]] = []
            events: list[threading.Event] = []
            deadline = time.monotonic() + self._window
            # gather a batch: one transaction for everything that arrives within the window
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    events.append(item)
                else:
                    rows.append(item)
                if stop or events:
                    break
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if rows:
                try:
                    _with_retries(lambda rows=rows: self._commit(conn, rows))
                except BaseException as e:  # keep serving flush() so callers see the error
                    self._error = e
            for ev in events:
                ev.set()
        conn.close()

    @staticmethod
    def _commit(conn: sqlite3.Connection, rows: list[tuple[str, str, str | None, float]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO responses (key, value, model, created) VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
