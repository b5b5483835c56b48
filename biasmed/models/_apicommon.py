"""What the hosted-API adapters share: API keys from the environment, redaction, Retry-After,
safe base URLs, and the sorting of HTTP failures into retryable / fatal-for-the-run / one-sample.

Error kinds a sample can carry (`Answer.error` starts with one of them and ": "):
`context_length` (prompt too long; final), `content_filter` (the provider blocked the prompt;
final), `bad_request` (another 400; the runner stops the run if no request has succeeded yet).
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from biasmed.models.base import Answer, ErrorKind, FatalRunError, RetryableError

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-*]{6,}|Bearer\s+\S+)")


def httpx_module(sdk: Any) -> Any:
    """The HTTP library `sdk` (the openai or anthropic module) is built on: `httpx2` or `httpx`,
    read off its default client class so both SDK generations work."""
    import importlib

    for base in sdk.DefaultAsyncHttpxClient.__mro__[1:]:
        root = base.__module__.split(".")[0]
        if root.startswith("httpx"):
            return importlib.import_module(root)
    return importlib.import_module("httpx")


def http_limits(sdk: Any, concurrency: int) -> Any:
    """A connection pool sized to the runner's concurrency, so no request queues for a socket."""
    return httpx_module(sdk).Limits(
        max_connections=max(100, 2 * concurrency), max_keepalive_connections=max(20, concurrency)
    )


def env_key(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n)
        if v and v.strip():
            return v.strip()
    return None


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret (and anything shaped like an API key) replaced by ***."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return _KEYLIKE.sub("***", text)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_url(url: str | None) -> str | None:
    """A base URL fit for records and cache keys: no user:password@, no query string."""
    if not url:
        return url
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` / `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            v = float(raw) / scale
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            when = email.utils.parsedate_to_datetime(raw).timestamp()
            return max(0.0, when - time.time())
        except (TypeError, ValueError):
            pass
    return None


def server_message(body: Any, fallback: str) -> tuple[str, str | None, str | None]:
    """(message, code, param) from an OpenAI or Anthropic error body."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        return str(err.get("message") or fallback), (str(code) if code else None), err.get("param")
    return fallback, None, None


_CONTEXT_HINTS = (
    "context length",
    "context_length",
    "maximum context",
    "too long",
    "too many tokens",
    "prompt is too long",
    "reduce the length",
)
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "invalid_prompt"})


def raise_for_status(
    provider: str, base_url: str | None, status: int, body: Any, headers: Mapping[str, str] | None, secret: str | None
) -> Answer:
    """Classify an HTTP error. Raises RetryableError / FatalRunError, or returns the failed Answer
    of this one sample."""
    msg, code, param = server_message(body, f"HTTP {status}")
    msg = one_line(redact(msg, secret))
    where = f"{provider} at {safe_url(base_url)}" if base_url else provider
    if status == 401:
        raise FatalRunError(f"{where}: 401 authentication failed: the API key was rejected ({msg})")
    if status == 403:
        raise FatalRunError(f"{where}: 403 permission denied ({msg})")
    if status == 404:
        raise FatalRunError(f"{where}: 404 not found: check the model name and --base-url ({msg})")
    if status == 429 and code in ("insufficient_quota", "billing_hard_limit_reached"):
        raise FatalRunError(f"{where}: 429 quota exhausted, retrying will not help ({msg})")
    if status in RETRYABLE_STATUS or status >= 500:
        raise RetryableError(f"{status} {msg}", retry_after=retry_after(headers), status=status)
    if status == 413 or (
        status == 400
        and (
            code in ("context_length_exceeded", "string_above_max_length")
            or any(h in msg.lower() for h in _CONTEXT_HINTS)
        )
    ):
        return Answer.failure(ErrorKind.CONTEXT_LENGTH, f"{status} {msg}")
    if status == 400 and code in _FILTER_CODES:
        return Answer.failure(ErrorKind.CONTENT_FILTER, f"{status} {msg}")
    if status in (400, 422):
        if param and param not in ("messages", "system", "input"):
            # a parameter this model does not take (temperature, logprobs...): same for every prompt
            raise FatalRunError(f"{where}: {status} parameter {param!r} rejected: {msg}")
        return Answer.failure(ErrorKind.BAD_REQUEST, f"{status} {msg}")
    raise FatalRunError(f"{where}: HTTP {status}: {msg}")


def fatal(message: str, secret: str | None = None) -> NoReturn:
    raise FatalRunError(one_line(redact(message, secret)))
