"""Helpers shared by the CLI commands: one-line errors with exit code 2, consoles."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import typer

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ONE line to stderr and exit (2 = bad input, as documented)."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    typer.echo(f"biasmed: error: {first}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into the one-line exit-2 form; everything else propagates."""
    from biasmed.dataset.medqa import DataError

    try:
        yield
    except DataError as e:
        fail(str(e))
    except (ValueError, KeyError, FileNotFoundError) as e:
        fail(e.args[0] if e.args else repr(e))


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def split_list(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    return [s.strip() for s in spec.split(",") if s.strip()]


def echo_err(msg: str) -> None:
    print(msg, file=sys.stderr)


def call(fn: Callable[[], T]) -> T:
    with user_errors():
        return fn()
