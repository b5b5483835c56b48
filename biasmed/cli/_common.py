"""Helpers shared by the CLI commands: one-line errors with exit code 2, consoles."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import typer

from biasmed.errors import (
    EXIT_INTERRUPTED,
    BiasmedError,
    BudgetReached,
    RunIncomplete,
    RunInterrupted,
)
from biasmed.run.evaluate import split_list as split_list  # the one parser of comma lists

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ONE line to stderr and exit (2 = bad input, as documented)."""
    first = escape_line(str(message)) or "error"
    typer.echo(f"biasmed: error: {first}", err=True)
    raise typer.Exit(code)


def debug() -> bool:
    """--debug or BIASMED_DEBUG=1: show tracebacks behind the one-line errors."""
    return os.environ.get("BIASMED_DEBUG", "") not in ("", "0")


@contextmanager
def cli_errors() -> Iterator[None]:
    """biasmed's own errors as one line and their exit code (biasmed.errors); Ctrl-C as 130; an
    OSError (the environment) as one line, exit 1; anything else (a bug) as one line, exit 1, with
    the traceback under --debug."""
    try:
        yield
    except (typer.Exit, SystemExit):
        raise
    except BaseException as e:
        if debug() and not isinstance(e, KeyboardInterrupt):
            traceback.print_exc()
        _one_line_exit(e)


def _one_line_exit(e: BaseException) -> NoReturn:
    try:
        raise e
    except (RunIncomplete, BudgetReached) as e:
        typer.echo(f"biasmed: {escape_line(str(e))}", err=True)
        raise typer.Exit(e.exit_code) from None
    except RunInterrupted as e:
        raise typer.Exit(e.exit_code) from None
    except BiasmedError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail(f"{where}{e.strerror or e}", 1)
    except Exception as e:
        fail(f"internal error: {type(e).__name__}: {e} (run with --debug or BIASMED_DEBUG=1 for the traceback)", 1)


def escape_line(text: str) -> str:
    """The first line of `text`, as plain text (no terminal control characters)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return "".join(ch if ch.isprintable() else "?" for ch in first)


class _NoteHandler(logging.Handler):
    """biasmed's log records on stderr as `biasmed: note: ...` / `biasmed: warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = "note" if record.levelno < logging.WARNING else "warning"
        typer.echo(f"biasmed: {kind}: {escape_line(record.getMessage())}", err=True)


def setup_logging() -> None:
    logger = logging.getLogger("biasmed")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into the one-line exit-2 form; everything else propagates."""
    try:
        yield
    except BiasmedError as e:
        fail(str(e), e.exit_code)
    except (ValueError, KeyError, FileNotFoundError) as e:
        fail(e.args[0] if e.args else repr(e))


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def echo_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def call(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()
