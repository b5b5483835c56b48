"""The one contract every model implements, declared in full: `Model`.

One abstract method, `answer`; every other member the runner uses is declared here with a
default, so the runner never has to guess (inspect_ai's `ModelAPI` is the pattern). Hosted APIs
answer one prompt per call (`max_chunk = 1`: the runner supplies concurrency); local models take a
batch (`max_chunk > 1`: they supply batching and prefix sharing). A model reads only what a
`Prompt` offers (`messages()`, `choices`, `text`), never the question behind it, and reports a
failure of one sample as `Answer.failure(ErrorKind..., reason)`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from biasmed.errors import FatalRunError, RetryableError
from biasmed.records import MODES, Answer, ErrorKind, GenParams, Prompt

__all__ = ["MODES", "Answer", "ErrorKind", "FatalRunError", "GenParams", "Model", "RetryableError"]


class Model(abc.ABC):
    """Base class of every model adapter (and of a user's own model object)."""

    #: the spec string it was made from, e.g. "openai:gpt-4o-mini" (recorded in every sample);
    #: set by every subclass (no default here, so dataclass subclasses may take it first)
    spec: str
    #: answer modes offered: "generate" (a reply), "logprob" (letter log-probs)
    modes: frozenset[str] = frozenset({"generate"})
    #: whether answers may be stored in / read from the shared response cache
    cacheable: bool = True
    #: prompts per `answer()` call: 1 for hosted APIs, more for local models that batch
    max_chunk: int = 1

    @property
    def notes(self) -> Sequence[str]:
        """Lines the user should see before a run (recorded in run.json)."""
        return ()

    @property
    def batched(self) -> bool:
        return self.max_chunk > 1

    def cache_identity(self) -> dict[str, Any]:
        """Explicit parts of the cache key (provider, model, base URL...), never a secret."""
        return {"spec": self.spec}

    async def prepare(self) -> None:  # noqa: B027  (optional: a default that does nothing)
        """Load weights or open clients; called once before the first `answer()`."""

    @abc.abstractmethod
    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        """One Answer per prompt, in order. Raise `RetryableError` for a transient failure of the
        call, `FatalRunError` when no prompt can succeed; a failure of one prompt is its Answer's
        `error`."""

    async def aclose(self) -> None:  # noqa: B027  (optional: a default that does nothing)
        """Release clients, threads, memory."""
