"""The one protocol every model adapter implements, and the errors the runner understands.

Hosted APIs answer one prompt per request (the runner supplies concurrency); local models take a
whole batch (they supply batching and prefix sharing). The runner never knows which provider it
talks to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from biasmed.records import Prompt

MODES = ("generate", "logprob")


@dataclass(frozen=True)
class GenParams:
    """Generation parameters: part of every cache key."""

    mode: str = "generate"  # "generate": the model writes a reply; "logprob": letter log-probs
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    role: str = "system"  # the paper's one system message; "user" is the alternative

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """What a model said for one prompt."""

    text: str | None = None
    logprobs: dict[str, float] | None = None  # option letter -> log-prob (logprob mode)
    usage: dict[str, int] = field(default_factory=dict)  # input_tokens, output_tokens
    error: str | None = None  # a failure of THIS sample (e.g. context too long), with the reason
    finish_reason: str | None = None
    refusal: str | None = None
    cached: bool = False
    latency_s: float | None = None

    def to_cache(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("cached", None)
        d.pop("latency_s", None)
        return d

    @classmethod
    def from_cache(cls, d: dict[str, Any]) -> "Answer":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known}, cached=True)


class RetryableError(Exception):
    """Transient failure (429, 5xx, 529, timeout, connection reset): the runner retries."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class FatalRunError(Exception):
    """The whole run must stop now (401/403, missing key, model not found): nothing is lost."""


@runtime_checkable
class Model(Protocol):
    spec: str  # the spec string it was made from, e.g. "openai:gpt-4o-mini"
    modes: frozenset[str]
    batched: bool  # True: `answer` takes many prompts at once (local); False: one per call (API)

    def cache_identity(self) -> dict[str, Any]:
        """Explicit parts of the cache key (provider, model, base URL...), never a secret."""
        ...

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        ...

    async def aclose(self) -> None:
        ...
