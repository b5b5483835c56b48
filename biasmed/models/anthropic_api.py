"""Anthropic's messages API through the official `anthropic` SDK (AsyncAnthropic): `anthropic:<model>`.

Roles: with `role=system` (the paper's way) the whole prompt goes in `system=`; the messages API
needs at least one user turn, so a minimal one, `SYSTEM_ONLY_USER_TURN`, follows it. That turn is
fixed, recorded in the cache identity, and carries no information the prompt lacks (the prompt
already ends with "### Answer: " and asks for a single letter). With `role=user` the prompt is
the one user message and there is no system prompt.

529 (overloaded), 429 and 5xx are retried by the runner; the SDK's own retries are off. Anthropic
returns no log-probs, so only `generate` mode is offered.

Sampling parameters: older SDKs (and API versions) take `temperature`/`top_p`; recent SDKs have
dropped them from `messages.create`. They are sent only when the installed SDK takes them; when it
does not, the provider's default sampling applies, `sampling_params` is False in the cache
identity (so such answers never mix with temperature-0 ones) and `notes` says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from biasmed.models._apicommon import env_key, http_limits, one_line, raise_for_status, redact, safe_url
from biasmed.models.base import Answer, FatalRunError, GenParams, Model, RetryableError
from biasmed.records import Prompt

ADAPTER = "anthropic-messages/1"
ANTHROPIC_URL = "https://api.anthropic.com"
SYSTEM_ONLY_USER_TURN = "Please answer."


class AnthropicMessages(Model):
    """Anthropic's messages API (official SDK)."""

    def __init__(self, spec: str, model: str, base_url: str | None, timeout: float = 120.0, concurrency: int = 64):
        if not model:
            raise ValueError(f"model spec {spec!r} names no model: use anthropic:<model>")
        self.spec = spec
        self.model = model
        self.base_url = (base_url or ANTHROPIC_URL).rstrip("/")
        self.modes = frozenset({"generate"})
        self._timeout = timeout
        self._concurrency = concurrency
        self._client: Any = None
        self._secret: str | None = None
        self._sampling: bool | None = None

    @property
    def sampling_params(self) -> bool:
        if self._sampling is None:
            self._sampling = _sdk_takes_sampling_params()
        return self._sampling

    @property
    def notes(self) -> Sequence[str]:
        return (
            []
            if self.sampling_params
            else ["the installed anthropic SDK takes no temperature/top_p: the API's default sampling is used"]
        )

    def cache_identity(self) -> dict[str, Any]:
        return {
            "provider": "anthropic",
            "model": self.model,
            "base_url": safe_url(self.base_url),
            "adapter": ADAPTER,
            "system_only_user_turn": SYSTEM_ONLY_USER_TURN,
            "sampling_params": self.sampling_params,
        }

    async def prepare(self) -> None:
        """Import the SDK and build the client before the first request (outside its timeout);
        a missing key stops the run here, before anything is sent."""
        self._get_client()

    def _get_client(self) -> Any:
        if self._client is None:
            key = env_key("ANTHROPIC_API_KEY")
            if key is None:
                raise FatalRunError("anthropic: no API key: set ANTHROPIC_API_KEY in the environment")
            import anthropic

            self._secret = key
            http = anthropic.DefaultAsyncHttpxClient(
                limits=http_limits(anthropic, self._concurrency), timeout=self._timeout
            )
            self._client = anthropic.AsyncAnthropic(
                api_key=key, base_url=self.base_url, max_retries=0, timeout=self._timeout, http_client=http
            )
        return self._client

    def _request(self, prompt: Prompt, params: GenParams) -> dict[str, Any]:
        req: dict[str, Any] = {"model": self.model, "max_tokens": params.max_tokens}
        if self.sampling_params:
            req["temperature"] = params.temperature
        if params.role == "system":
            req["system"] = prompt.text
            req["messages"] = [{"role": "user", "content": SYSTEM_ONLY_USER_TURN}]
        else:
            req["messages"] = [{"role": "user", "content": prompt.text}]
        req["messages"] += [{"role": r, "content": c} for r, c in prompt.history]  # a chain's later turns
        if params.top_p is not None and self.sampling_params:
            req["top_p"] = params.top_p  # newer models refuse temperature AND top_p: opt-in only
        return req

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        return [await self._answer_one(p, params) for p in prompts]

    async def _answer_one(self, prompt: Prompt, params: GenParams) -> Answer:
        import anthropic

        if params.mode != "generate":
            raise FatalRunError("anthropic: only --mode generate is available (the API returns no log-probs)")
        client = self._get_client()
        t0 = time.perf_counter()
        try:
            raw = await client.messages.with_raw_response.create(**self._request(prompt, params))
        except anthropic.APIStatusError as e:
            try:
                body = e.response.json()
            except Exception:
                body = None
            failed = raise_for_status("anthropic", self.base_url, e.status_code, body, e.response.headers, self._secret)
            failed.latency_s = time.perf_counter() - t0
            return failed
        except anthropic.APITimeoutError:
            raise RetryableError(f"timeout after {self._timeout:g}s") from None
        except anthropic.APIConnectionError as e:
            cause = e.__cause__ or e
            raise RetryableError(
                one_line(redact(f"connection error: {type(cause).__name__}: {cause}", self._secret))
            ) from None
        try:
            data = json.loads(raw.http_response.content)
            return self._parse(data, time.perf_counter() - t0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise RetryableError(f"malformed response from {safe_url(self.base_url)}: {type(e).__name__}") from None

    @staticmethod
    def _parse(data: dict[str, Any], latency: float) -> Answer:
        if data.get("type") == "error":
            raise KeyError("error body with status 200")
        blocks = data["content"]
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        stop = data.get("stop_reason")
        usage = data.get("usage") or {}
        return Answer(
            text=text,
            refusal=(text or "refusal") if stop == "refusal" else None,
            finish_reason=stop,
            usage={
                "input_tokens": int(usage.get("input_tokens") or 0),
                "output_tokens": int(usage.get("output_tokens") or 0),
            },
            latency_s=latency,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _sdk_takes_sampling_params() -> bool:
    """Whether the installed SDK's messages.create has a `temperature` parameter (cheap: no import
    of the SDK's client module beyond what answering needs anyway)."""
    import inspect

    from anthropic.resources.messages import AsyncMessages

    return "temperature" in inspect.signature(AsyncMessages.create).parameters


def make_anthropic(rest: str, **options: Any) -> AnthropicMessages:
    """`anthropic:<model>`; key from ANTHROPIC_API_KEY; `base_url` (or $ANTHROPIC_BASE_URL)."""
    base_url = options.get("base_url") or os.environ.get("ANTHROPIC_BASE_URL")
    return AnthropicMessages(
        f"anthropic:{rest}",
        rest,
        base_url,
        float(options.get("timeout") or 120.0),
        int(options.get("concurrency") or 64),
    )
