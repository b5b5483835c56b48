"""OpenAI chat completions through the official `openai` SDK (AsyncOpenAI), for `openai:<model>`
and `openai-compatible:<model> --base-url URL` (vLLM, SGLang, llama.cpp, Ollama servers).

One prompt per request (the runner supplies concurrency); the SDK's own retries are off (the
runner retries with backoff and honors Retry-After). Requests go through the SDK's generic
`client.post("/chat/completions", body=..., cast_to=httpx.Response)` (its documented way to send
a body as is): the SDK still does auth, base URL, headers, timeouts and maps HTTP errors to its
exception classes, but skips re-validating our plain dict against its TypedDicts and building
pydantic models of the reply, about a fifth of its CPU per request. The reply's JSON is parsed
here, so a malformed body becomes a retryable error instead of an exception deep in the SDK.

`logprob` mode: one generated token (`max_tokens=1`) with `logprobs` + `top_logprobs=20`; the
letter log-probs are the first token's alternatives that are an option letter (" A" and "A" both
count; their probabilities are summed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

from biasmed.models._apicommon import env_key, http_limits, httpx_module, one_line, raise_for_status, redact, safe_url
from biasmed.models.base import Answer, FatalRunError, GenParams, Model, RetryableError
from biasmed.records import Prompt

ADAPTER = "openai-chat/1"  # part of the cache key: bump when the request shape changes
OPENAI_URL = "https://api.openai.com/v1"
TOP_LOGPROBS = 20


class OpenAIChat(Model):
    """A chat-completions model (OpenAI, or any OpenAI-compatible server)."""

    def __init__(
        self,
        spec: str,
        provider: str,
        model: str,
        base_url: str | None,
        key_envs: tuple[str, ...],
        key_required: bool,
        timeout: float = 120.0,
        concurrency: int = 64,
    ):
        if not model:
            raise ValueError(f"model spec {spec!r} names no model: use {provider}:<model>")
        self.spec = spec
        self.provider = provider
        self.model = model
        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        self.modes = frozenset({"generate", "logprob"})
        self._key_envs = key_envs
        self._key_required = key_required
        self._timeout = timeout
        self._concurrency = concurrency
        self._client: Any = None
        self._response_cls: Any = None
        self._secret: str | None = None

    def cache_identity(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": safe_url(self.base_url), "adapter": ADAPTER}

    async def prepare(self) -> None:
        """Import the SDK and build the client before the first request (outside its timeout);
        a missing key stops the run here, before anything is sent."""
        self._get_client()

    def _get_client(self) -> Any:
        if self._client is None:
            key = env_key(*self._key_envs)
            if key is None and self._key_required:
                raise FatalRunError(f"{self.provider}: no API key: set {self._key_envs[0]} in the environment")
            import openai

            self._secret = key
            http = openai.DefaultAsyncHttpxClient(limits=http_limits(openai, self._concurrency), timeout=self._timeout)
            self._response_cls = httpx_module(openai).Response
            self._client = openai.AsyncOpenAI(
                api_key=key or "not-needed",
                base_url=self.base_url,
                max_retries=0,
                timeout=self._timeout,
                http_client=http,
            )
        return self._client

    def _request(self, prompt: Prompt, params: GenParams) -> dict[str, Any]:
        req: dict[str, Any] = {
            "model": self.model,
            "messages": prompt.messages(params.role),
            "temperature": params.temperature,
        }
        # the official API renamed max_tokens (o-series models reject the old name); servers
        # that speak the protocol mostly know only the old one
        tok_key = "max_completion_tokens" if self.provider == "openai" else "max_tokens"
        if params.mode == "logprob":
            req.update({tok_key: 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS})
        else:
            req[tok_key] = params.max_tokens
        if params.top_p is not None:
            req["top_p"] = params.top_p
        if params.seed is not None:
            req["seed"] = params.seed
        return req

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        return [await self._answer_one(p, params) for p in prompts]

    async def _answer_one(self, prompt: Prompt, params: GenParams) -> Answer:
        import openai

        client = self._get_client()
        t0 = time.perf_counter()
        try:
            raw = await client.post("/chat/completions", body=self._request(prompt, params), cast_to=self._response_cls)
        except openai.APIStatusError as e:
            try:
                body = e.response.json()
            except Exception:
                body = None
            failed = raise_for_status(
                self.provider, self.base_url, e.status_code, body, e.response.headers, self._secret
            )
            failed.latency_s = time.perf_counter() - t0
            return failed
        except openai.APITimeoutError:
            raise RetryableError(f"timeout after {self._timeout:g}s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise RetryableError(
                one_line(redact(f"connection error: {type(cause).__name__}: {cause}", self._secret))
            ) from None
        try:
            data = json.loads(raw.content)
            return self._parse(data, prompt, params, time.perf_counter() - t0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise RetryableError(f"malformed response from {safe_url(self.base_url)}: {type(e).__name__}") from None

    @staticmethod
    def _parse(data: dict[str, Any], prompt: Prompt, params: GenParams, latency: float) -> Answer:
        choice = data["choices"][0]
        msg = choice["message"]
        usage = data.get("usage") or {}
        ans = Answer(
            text=msg.get("content"),
            refusal=msg.get("refusal"),
            finish_reason=choice.get("finish_reason"),
            usage={
                "input_tokens": int(usage.get("prompt_tokens") or 0),
                "output_tokens": int(usage.get("completion_tokens") or 0),
            },
            latency_s=latency,
        )
        if params.mode == "logprob" and not ans.refusal:
            ans.logprobs = letter_logprobs((choice.get("logprobs") or {}).get("content") or [], prompt.choices)
        return ans

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def letter_logprobs(content: list[dict[str, Any]], letters: Sequence[str]) -> dict[str, float]:
    """{letter: log-prob} from the first generated token's alternatives ("A", " A" summed)."""
    if not content:
        return {}
    first = content[0]
    tops = list(first.get("top_logprobs") or [])
    if not tops and "token" in first:
        tops = [first]
    acc: dict[str, float] = {}
    for t in tops:
        tok = str(t.get("token", "")).strip()
        lp = t.get("logprob")
        if tok in letters and isinstance(lp, (int, float)) and math.isfinite(lp):
            acc[tok] = lp if tok not in acc else _logaddexp(acc[tok], float(lp))
    return {k: acc[k] for k in letters if k in acc}


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _opts(options: dict[str, Any]) -> tuple[str | None, float, int]:
    return options.get("base_url"), float(options.get("timeout") or 120.0), int(options.get("concurrency") or 64)


def make_openai(rest: str, **options: Any) -> OpenAIChat:
    """`openai:<model>`; key from OPENAI_API_KEY; `base_url` (or $OPENAI_BASE_URL) for proxies."""
    import os

    base_url, timeout, conc = _opts(options)
    return OpenAIChat(
        f"openai:{rest}",
        "openai",
        rest,
        base_url or os.environ.get("OPENAI_BASE_URL"),
        ("OPENAI_API_KEY",),
        True,
        timeout,
        conc,
    )


def make_openai_compatible(rest: str, **options: Any) -> OpenAIChat:
    """`openai-compatible:<model> --base-url URL`; key from OPENAI_COMPATIBLE_API_KEY if any."""
    base_url, timeout, conc = _opts(options)
    if not base_url:
        raise ValueError("openai-compatible models need --base-url (e.g. http://127.0.0.1:8000/v1)")
    return OpenAIChat(
        f"openai-compatible:{rest}",
        "openai-compatible",
        rest,
        base_url,
        ("OPENAI_COMPATIBLE_API_KEY",),
        False,
        timeout,
        conc,
    )
