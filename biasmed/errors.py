"""The kinds of failure biasmed reports, each defined once; the CLI maps them to exit codes.

A user's mistake or the environment's failure is one of these, with a one-line message that names
the file, line and field where there is one. Anything else escaping biasmed is a bug.
"""

from __future__ import annotations

import os
from typing import Any

EXIT_OK, EXIT_INCOMPLETE, EXIT_BAD_INPUT, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BiasmedError(Exception):
    """Base of every error biasmed reports as one line; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_INCOMPLETE
    #: the run (if any) as it stood when this was raised: `biasmed.EvalResult`, or None
    result: Any = None


class InputError(BiasmedError, ValueError):
    """Bad input (a file, an option, a setting): nothing was written for it."""

    exit_code = EXIT_BAD_INPUT


class DataError(InputError):
    """A bad input file: the message is one line, `path:line: field: problem`."""

    def __init__(self, path: str | os.PathLike[str], line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), line, field, problem
        super().__init__(one_line(f"{path}:{line}: {field}: {problem}"))


def one_line(text: str, limit: int = 500) -> str:
    """`text` as one printable line: control characters (newlines from a file's keys or names
    included) escaped, and cut at `limit` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


class FatalRunError(BiasmedError):
    """The whole run must stop now (401/403, missing key, model not found): nothing is lost."""

    exit_code = EXIT_BAD_INPUT


class RetryableError(Exception):
    """Transient failure (429, 5xx, 529, timeout, connection reset): the runner retries it."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class EnvironmentFailure(BiasmedError):
    """The machine failed us (disk full, permission denied, a corrupt cache): exit 1."""

    exit_code = EXIT_INCOMPLETE


class RunIncomplete(BiasmedError):
    """Some samples still fail after their retries (errors.jsonl); running again retries them."""

    exit_code = EXIT_INCOMPLETE


class BudgetReached(BiasmedError):
    """`max_cost` stopped the run cleanly; raise it and run again to continue."""

    exit_code = EXIT_BUDGET


class RunInterrupted(BiasmedError):
    """Ctrl-C / SIGTERM: everything written so far is valid; run again to continue."""

    exit_code = EXIT_INTERRUPTED
