"""JSON read from untrusted files: every way a line can be bad becomes ONE `DataError`.

`json.loads` alone lets three things through that fail later, far from the file and line: invalid
UTF-8 (a `UnicodeDecodeError` with no path), nesting deep enough to raise `RecursionError`, and
`\\ud800`-style escapes that decode to lone surrogates (valid JSON, but not text: writing them
out as UTF-8 fails). `loads` turns each into `path:line: field: problem`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from biasmed.errors import DataError

MAX_DEPTH = 64  # far beyond any biasmed record (MedQA: 3; a sample: 4)
_SURROGATE = re.compile("[\ud800-\udfff]")
# a lone surrogate in decoded JSON can only come from a \uD8xx..\uDFxx escape in the raw text
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
REPLACEMENT = "\ufffd"


def has_surrogate(s: str) -> bool:
    return _SURROGATE.search(s) is not None


def scrub(s: str) -> str:
    """`s` with every lone surrogate replaced by U+FFFD, so it can be written as UTF-8."""
    return _SURROGATE.sub(REPLACEMENT, s)


def first_problem(obj: Any, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """(field, problem) for the first too-deep value or lone surrogate in `obj`, else None.

    Iterative, so a deep value is reported, not a RecursionError. Fields are dotted paths
    (`options.B`, `extra.notes[3]`), cut after a few levels (a deep path is no help).
    """
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > max_depth:
            return _short(where) or "value", f"nested deeper than {max_depth} levels"
        if isinstance(value, str):
            if has_surrogate(value):
                return _short(where) or "value", "a lone surrogate (an unpaired \\ud800-\\udfff escape): not valid text"
        elif isinstance(value, dict):
            for k, v in value.items():
                if has_surrogate(k):
                    return _short(where) or "key", "a key with a lone surrogate: not valid text"
                stack.append((v, f"{where}.{k}" if where else str(k), depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    return None


def _short(where: str, limit: int = 60) -> str:
    return where if len(where) <= limit else where[: limit - 1] + "…"


def loads(
    raw: bytes | str,
    path: str,
    line: int,
    field: str = "line",
    *,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    surrogates: str = "error",
) -> Any:
    """Parse one JSON document read from `path` at `line`; every failure is a DataError.

    `surrogates`: "error" reports a lone surrogate; "replace" turns it into U+FFFD (for readers
    of run folders, which must load whatever a run wrote).
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                path, line, field, f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            ) from None
    else:
        text = raw
    try:
        obj = json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise DataError(path, line, field, f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as e:
        raise DataError(path, line, field, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if surrogates == "replace":
        if _SURROGATE_ESCAPE.search(text.encode("utf-8", "surrogatepass")):
            try:
                obj = _scrub_all(obj)
            except RecursionError:
                raise DataError(path, line, field, f"nested deeper than {MAX_DEPTH} levels") from None
        return obj
    problem = first_problem(obj)
    if problem is not None:
        raise DataError(path, line, problem[0], problem[1])
    return obj


def _scrub_all(obj: Any) -> Any:
    """A copy of `obj` with lone surrogates replaced."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, list):
        return [_scrub_all(v) for v in obj]
    if isinstance(obj, dict):
        return {scrub(k): _scrub_all(v) for k, v in obj.items()}
    return obj
