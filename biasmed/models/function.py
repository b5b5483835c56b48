"""A plain Python function as the model: how a user brings their own.

The function receives the chat messages (`[{"role": ..., "content": ...}]`) and returns the reply
text; it may be sync (run in a worker thread, so `concurrency` calls overlap) or async. Generate
mode only. Its answers are not cached: biasmed cannot tell when the function's code changes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Union

from biasmed.errors import FatalRunError, RetryableError
from biasmed.models.base import Model
from biasmed.records import Answer, GenParams, Prompt

ReplyFn = Callable[[list[dict[str, str]]], Union[str, None, Awaitable[Union[str, None]]]]


def function_spec(fn: Callable[..., Any]) -> str:
    """`python:<module>.<qualname>`: the name a function's runs are recorded under."""
    mod = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"python:{mod}.{name}"


class FunctionModel(Model):
    """Wraps `fn(messages) -> reply` (sync or async) as a Model."""

    cacheable = False
    modes = frozenset({"generate"})

    def __init__(self, fn: ReplyFn, spec: str | None = None):
        if not callable(fn):
            raise TypeError("the model must be a spec string, a biasmed.Model, or a function messages -> reply")
        self.fn = fn
        self.spec = spec or function_spec(fn)
        # an `async def` function, or an object whose class defines `async def __call__`
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)

    def cache_identity(self) -> dict[str, Any]:
        return {"provider": "python", "function": self.spec}

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        out = []
        for p in prompts:
            messages = p.messages(params.role)
            try:
                if self._is_async:
                    reply = await self.fn(messages)  # type: ignore[misc]
                else:
                    reply = await asyncio.to_thread(self.fn, messages)
                    if inspect.isawaitable(reply):
                        reply = await reply
            except (RetryableError, FatalRunError):
                raise
            except Exception as e:  # the user's function failed on this prompt: say where
                raise FatalRunError(f"{self.spec} raised {type(e).__name__}: {e}") from e
            if reply is not None and not isinstance(reply, str):
                raise FatalRunError(f"{self.spec} returned {type(reply).__name__}, not the reply text (str)")
            out.append(Answer(text=reply))
        return out
