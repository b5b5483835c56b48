"""The runner: puts prompts to a model and appends one sample per prompt; never loses or re-pays work.

- Unbatched models (hosted APIs): `concurrency` requests in flight, paced by optional requests/min
  and tokens/min limits; each request has a timeout and is retried with exponential backoff and
  jitter (Retry-After honored, and a 429's pause applies to every worker) until `max_retries` or
  `max_retry_time` runs out. Batched models (local) get chunks cut at question boundaries.
- Failures: `RetryableError` (429, 5xx, 529, timeouts, resets) is retried; `FatalRunError`
  (401/403, no key...) stops the run at once; a one-sample failure (`Answer.error`, e.g. a prompt
  too long for the context) is written as a sample carrying the reason; a sample that still fails
  after its retries is NOT written (so running again retries it) but logged in `errors.jsonl`.
- Cache: answers are looked up in bulk first (a resumed or repeated run costs nothing) and every
  new answer is stored; identical prompts in one run are sent once (single flight).
- Accounting: tokens from responses, cost from the price table; `max_cost` stops launching new
  requests before the next one could exceed it, lets those in flight finish, and keeps them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from biasmed.errors import FatalRunError, RetryableError
from biasmed.models.base import Model
from biasmed.records import NONE, Answer, ErrorKind, GenParams, Prompt, Sample
from biasmed.run.cache import cache_key
from biasmed.run.pricing import estimate_tokens
from biasmed.scoring import chain_change, verdict

ERRORS_FILE = "errors.jsonl"


@dataclass
class RunConfig:
    concurrency: int = 8
    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute (input estimate + max output)
    timeout: float = 120.0  # per request, seconds
    max_retries: int = 8
    max_retry_time: float = 600.0  # per sample: stop retrying once this much time has gone by
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_cost: float | None = None  # USD, this invocation plus `spent_before`
    spent_before: float = 0.0
    chunk_size: int | None = None  # batched models: prompts per answer() call
    refresh_cache: bool = False  # do not read the cache (still write it)
    max_response_chars: int | None = 20_000  # longer replies are cut (and marked) before anything stores them
    # --max-tokens of turns read as `Answer: X` (reasoning); None: the run's max_tokens
    answer_line_max_tokens: int | None = None


@dataclass
class RunStats:
    total: int = 0  # prompts this invocation had to do
    done: int = 0  # samples written
    cache_hits: int = 0
    requests: int = 0  # requests that returned an answer
    retries: int = 0
    errors: int = 0  # samples written with an error (one-sample failures)
    failed: int = 0  # samples not written: still failing after retries (in errors.jsonl)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0  # spent in this invocation (cache hits cost nothing)
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        dt = time.monotonic() - self.started
        return self.done / dt if dt > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("started")
        d["cost_usd"] = round(self.cost_usd, 6)
        return d


@dataclass
class RunResult:
    status: str  # "complete" | "incomplete" (failed samples) | "max-cost" | "fatal" | "interrupted"
    message: str | None
    stats: RunStats


@dataclass
class _Failure:
    reason: str


# -- samples -------------------------------------------------------------------------------------
SCORING_RULE = "robust"  # the rule a sample's stored verdict uses (analysis may apply "paper")


def cap_reply(ans: Answer, limit: int | None) -> Answer:
    """`ans` with its reply cut to `limit` characters, the cut marked (`truncated_chars`): a server
    that ignores max_tokens must not fill the disk or the cache."""
    if limit is None or ans.text is None or len(ans.text) <= limit:
        return ans
    return replace(ans, text=ans.text[:limit], truncated_chars=len(ans.text) - limit)


def make_sample(
    prompt: Prompt,
    ans: Answer,
    model_spec: str,
    mode: str,
    cost: float,
    cached: bool,
    turns: Sequence[Mapping[str, Any]] | None = None,
) -> Sample:
    """The one Sample for one answered prompt, its verdict from `biasmed.scoring.verdict`.
    `turns`: a chain's per-turn detail (response, usage, cost, cached); `ans` is its last turn."""
    it, q = prompt.item, prompt.item.question
    letters = "".join(prompt.choices)
    v = verdict(
        mode=mode,
        response=ans.text,
        logprobs=ans.logprobs,
        answer_idx=q.answer_idx,
        letters=letters,
        options=q.options,
        failed=ans.error is not None,
        rule=SCORING_RULE,
        answer_format=prompt.answer_format,
    )
    extra: dict[str, Any] = {}
    if prompt.answer_format != "letter":
        extra["answer_format"] = prompt.answer_format
    usage = dict(ans.usage or {})
    if turns:
        extra["kind"] = prompt.kind
        extra["turns"] = [dict(t) for t in turns]
        first = verdict(
            mode=mode,
            response=turns[0].get("response"),
            logprobs=None,
            answer_idx=q.answer_idx,
            letters=letters,
            options=q.options,
            rule=SCORING_RULE,
            answer_format=prompt.formats[0],
        )
        extra["first_letter"] = first.letter
        if len(turns) == prompt.turns and ans.error is None:
            extra["change"] = chain_change(first.letter, v.letter, it.target)
        usage = {}
        for t in turns:
            for k, n in (t.get("usage") or {}).items():
                usage[k] = usage.get(k, 0) + int(n or 0)
    if ans.truncated_chars:
        extra["truncated_chars"] = ans.truncated_chars
    if ans.finish_reason:
        extra["finish_reason"] = ans.finish_reason
    if ans.refusal:
        extra["refusal"] = ans.refusal
    if prompt.demo_ids:
        extra["demo_ids"] = list(prompt.demo_ids)
    kind = ans.error_kind or (ErrorKind.OTHER if ans.error is not None else None)
    return Sample(
        sample_id=prompt.sample_id,
        question_id=q.id,
        bias=it.bias,
        mitigation=prompt.mitigation,
        template_version=it.template_version,
        answer_idx=q.answer_idx,
        bias_target=it.target,
        prompt_sha256=prompt.sha256,
        model=model_spec,
        response=ans.text,
        extracted=v.letter,
        rule=v.rule,
        correct=None if ans.error is not None else v.correct,
        nr=v.nr,
        error=ans.error,
        target_mode=it.target_mode if it.bias != NONE else None,  # type: ignore[arg-type]
        draw=it.draw,
        n_options=len(prompt.choices),
        mode=mode,
        logprobs=ans.logprobs,
        usage=usage,
        cost_usd=round(cost, 8),
        cached=cached,
        latency_s=None if ans.latency_s is None else round(ans.latency_s, 4),
        extra=extra,
        choices=list(prompt.choices),
        options=dict(q.options),
        text=it.text,
        error_kind=None if kind is None else kind.value,
    )


# -- pacing ----------------------------------------------------------------------------------------
class _Pacer:
    """Virtual-time pacing at `rate` units/s with one second of burst (GCRA)."""

    def __init__(self, rate: float, burst_s: float = 1.0):
        self.rate = rate
        self.burst = burst_s
        self.tat = -math.inf  # theoretical arrival time of the next unit

    def reserve(self, amount: float) -> float:
        now = time.monotonic()
        start = max(now, self.tat - self.burst)
        self.tat = max(self.tat, now) + amount / self.rate
        return start - now


class RateLimiter:
    """requests/min and tokens/min limits, plus a shared pause after a 429 with Retry-After."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self._req = _Pacer(rpm / 60.0) if rpm else None
        self._tok = _Pacer(tpm / 60.0) if tpm else None
        self._pause_until = 0.0

    def pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)

    async def acquire(self, tokens: int) -> None:
        while (wait := self._pause_until - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        waits = [0.0]
        if self._req:
            waits.append(self._req.reserve(1))
        if self._tok:
            waits.append(self._tok.reserve(tokens))
        if max(waits) > 0:
            await asyncio.sleep(max(waits))


async def _with_timeout(coro: Any, seconds: float) -> Any:
    """`await coro` with a deadline; asyncio.timeout (3.11+) spares wait_for's extra task."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)


def backoff_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with jitter; a server's Retry-After is a floor, never shortened."""
    if retry_after is not None and retry_after >= 0:
        return retry_after + random.uniform(0, min(1.0, 0.1 * retry_after + 0.01))
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def question_chunks(prompts: Sequence[Prompt], size: int) -> Iterator[list[Prompt]]:
    """Chunks of at most `size` prompts that keep each question's conditions together when they fit
    (local models share the question's prefix across its conditions)."""
    size = max(1, size)
    chunk: list[Prompt] = []
    for group in _question_groups(prompts):
        if chunk and len(chunk) + len(group) > size:
            yield chunk
            chunk = []
        while len(group) > size:  # one question with more conditions than a chunk holds
            yield group[:size]
            group = group[size:]
        chunk.extend(group)
    if chunk:
        yield chunk


def _question_groups(prompts: Sequence[Prompt]) -> Iterator[list[Prompt]]:
    group: list[Prompt] = []
    for p in prompts:
        if group and p.item.question.id != group[0].item.question.id:
            yield group
            group = []
        group.append(p)
    if group:
        yield group


# -- the runner ------------------------------------------------------------------------------------
class Runner:
    def __init__(
        self,
        model: Model,
        params: GenParams,
        writer: Any,
        *,
        cache: Any = None,
        price: Any = None,
        config: RunConfig | None = None,
        errors_path: str | os.PathLike[str] | None = None,
        on_progress: Callable[[RunStats], None] | None = None,
        any_success_before: bool = False,
    ):
        self.model = model
        self.params = params
        self.writer = writer
        self.cache = cache if model.cacheable else None
        self.price = price
        self.config = config or RunConfig()
        self.errors_path = Path(errors_path) if errors_path else None
        self.on_progress = on_progress
        self.stats = RunStats()
        self._limiter = RateLimiter(self.config.rpm, self.config.tpm)
        self._identity = model.cache_identity()
        self._params_d = params.as_dict()
        self._stop: str | None = None  # why no new request may start
        self._fatal: str | None = None
        self._answers: dict[str, asyncio.Future[Answer | _Failure | None]] = {}
        self._prepared: asyncio.Future[None] | None = None
        self._reserved = 0.0
        self._any_success = any_success_before
        self.warnings: list[str] = []
        # a sample that could not be written (disk full...): no new request starts, those in flight
        # finish into the cache (so a rerun pays nothing twice), then run() raises it
        self.write_error: OSError | None = None

    # -- public ------------------------------------------------------------------------------
    def params_for(self, prompt: Prompt) -> GenParams:
        """The generation parameters of the prompt's current turn: a reasoning turn (read as
        `Answer: X`) gets the larger token limit."""
        fmt = prompt.formats[min(len(prompt.history) // 2, len(prompt.formats) - 1)]
        n = self.config.answer_line_max_tokens
        if fmt == "answer-line" and n and self.params.mode == "generate" and n != self.params.max_tokens:
            return replace(self.params, max_tokens=n)
        return self.params

    def key(self, prompt: Prompt) -> str:
        """The cache key of the prompt's current turn: the conversation so far."""
        params = self.params_for(prompt)
        pd = self._params_d if params is self.params else params.as_dict()
        return cache_key(self._identity, pd, prompt.messages(self.params.role))

    async def run(self, prompts: Sequence[Prompt]) -> RunResult:
        self.stats = RunStats(total=len(prompts))
        singles = [p for p in prompts if p.turns == 1]
        chains = [p for p in prompts if p.turns > 1]
        keys = {p.sample_id: self.key(p) for p in singles}
        try:
            todo = self._from_cache(singles, keys) + chains
            if todo and not self._stop:
                # the model is prepared (weights loaded) at its first request: a resumed run
                # whose chains are all in the cache loads nothing
                if self.model.batched:
                    await self._run_batched([p for p in todo if p.turns == 1], keys)
                    await self._chains_batched(chains)
                else:
                    await self._run_unbatched(todo, keys)
        except FatalRunError as e:
            self._fatal = str(e)
        except asyncio.CancelledError:
            self._stop = "interrupted"
            raise
        finally:
            self._notify()
        if self.write_error is not None:
            raise self.write_error
        return self._result()

    # -- paths -------------------------------------------------------------------------------
    def _cached(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The usable cache entries among `keys`. A reply cut by a smaller --max-response-chars
        than this run's is not usable: asking again is the only way to the longer reply."""
        if self.cache is None or self.config.refresh_cache:
            return {}
        cap = self.config.max_response_chars
        return {
            k: hit
            for k, hit in self.cache.get_many(keys).items()
            if not hit.get("truncated_chars") or (cap is not None and len(hit.get("text") or "") >= cap)
        }

    def _from_cache(self, prompts: Sequence[Prompt], keys: Mapping[str, str]) -> list[Prompt]:
        if self.cache is None or self.config.refresh_cache:
            return list(prompts)
        hits = self._cached(keys.values())
        todo = []
        for p in prompts:
            hit = hits.get(keys[p.sample_id])
            if hit is None:
                todo.append(p)
            else:
                self._record(p, Answer.from_cache(hit), keys[p.sample_id], cached=True)
        return todo

    async def _run_unbatched(self, todo: Sequence[Prompt], keys: Mapping[str, str]) -> None:
        it = iter(todo)

        async def worker() -> None:
            for p in it:  # one shared iterator: each worker pulls the next prompt
                if self._stop or self._fatal:
                    return
                if p.turns > 1:
                    await self._chain(p)
                else:
                    await self._one(p, keys[p.sample_id])

        tasks = [asyncio.create_task(worker()) for _ in range(max(1, min(self.config.concurrency, len(todo))))]
        try:
            # the first FatalRunError stops everything at once; the others are cancelled
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _get(self, p: Prompt, key: str) -> tuple[Answer | _Failure | None, bool]:
        """The answer to `p` (one turn), asked once per key in this run: (answer, reused)."""
        fut = self._answers.get(key)
        if fut is not None:
            # the same prompt text (e.g. an unbiased prompt under "education", which adds nothing
            # without a bias, or a chain's first turn = the "none" prompt) was asked already:
            # reuse its answer, free, like a cache hit
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._answers[key] = fut
        try:
            res = await self._request(p)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning if nobody waits
            raise
        fut.set_result(res)
        return res, False

    async def _one(self, p: Prompt, key: str) -> None:
        res, reused = await self._get(p, key)
        if res is None:
            return  # stopped before asking (max-cost)
        if isinstance(res, _Failure):
            self._fail(p, res.reason)
            return
        if not reused:
            self._check_first_error(res)
        self._record(p, res, key, cached=reused)

    async def _chain(self, p: Prompt) -> None:
        """A chain, turn by turn: each turn is looked up in the cache on its own key (the
        conversation so far) and stored as soon as it is answered, so a killed run resumes
        mid-conversation without paying again for the turns it had."""
        replies: list[str] = []
        turns: list[dict[str, Any]] = []
        cost = 0.0
        for t in range(p.turns):
            tp = p.at_turn(tuple(replies))
            key = self.key(tp)
            hit = self._cached([key]).get(key)
            if hit is not None:
                ans, cached = Answer.from_cache(hit), True
            else:
                res, cached = await self._get(tp, key)
                if res is None:
                    return  # stopped (max-cost): not written; the turns answered stay cached
                if isinstance(res, _Failure):
                    self._fail(p, f"turn {t + 1}: {res.reason}")
                    return
                if not cached:
                    self._check_first_error(res)
                ans = res
            cost += self._turn(tp, ans, key, cached, turns)
            if ans.error is not None:
                break
            replies.append(ans.text or "")
        self._write(p, ans, cost, turns)

    def _turn(self, tp: Prompt, ans: Answer, key: str, cached: bool, turns: list[dict[str, Any]]) -> float:
        """Account one answered chain turn and append its detail to `turns`; returns its cost."""
        cost = self._account(tp, ans, key, cached)
        turns.append(
            {
                "response": ans.text,
                "usage": dict(ans.usage or {}),
                "cost_usd": round(cost, 8),
                "cached": cached,
                "format": tp.formats[len(turns)],
                **({"finish_reason": ans.finish_reason} if ans.finish_reason else {}),
                **({"error": ans.error} if ans.error else {}),
            }
        )
        return cost

    async def _prepare(self) -> None:
        """`model.prepare()`, once, before the first request (every caller waits for the same one)."""
        if self._prepared is None:
            self._prepared = asyncio.ensure_future(self.model.prepare())
        await asyncio.shield(self._prepared)

    async def _request(self, p: Prompt) -> Answer | _Failure | None:
        await self._prepare()
        cfg = self.config
        params = self.params_for(p)
        est_in = estimate_tokens(p.transcript())
        est_out = 1 if params.mode == "logprob" else params.max_tokens
        est_cost = self.price.cost(est_in, est_out) if self.price else 0.0
        t0 = time.monotonic()
        attempt = 0
        while True:
            if self._stop or self._fatal:
                return None
            if cfg.max_cost is not None and (
                cfg.spent_before + self.stats.cost_usd + self._reserved + est_cost > cfg.max_cost
            ):
                self._stop = self._stop or "max-cost"
                return None
            self._reserved += est_cost
            try:
                await self._limiter.acquire(est_in + est_out)
                err: RetryableError
                try:
                    answers = await _with_timeout(self.model.answer([p], params), cfg.timeout)
                    ans = cap_reply(answers[0], cfg.max_response_chars)
                except asyncio.TimeoutError:
                    err = RetryableError(f"timeout after {cfg.timeout:g}s")
                except RetryableError as e:
                    err = e
                except FatalRunError:
                    raise
                except Exception as e:  # an adapter bug: it would hit every prompt, so stop now
                    raise FatalRunError(f"{self.model.spec}: internal error: {type(e).__name__}: {e}"[:400]) from e
                else:
                    self.stats.requests += 1
                    return ans
            finally:
                self._reserved -= est_cost
            attempt += 1
            delay = backoff_delay(attempt, err.retry_after, cfg.backoff_base, cfg.backoff_max)
            if attempt > cfg.max_retries or time.monotonic() - t0 + delay > cfg.max_retry_time:
                return _Failure(f"gave up after {attempt} attempt(s) in {time.monotonic() - t0:.1f}s: {err}")
            self.stats.retries += 1
            if err.status == 429 and err.retry_after:
                self._limiter.pause(delay)  # the server asked everyone to wait, not just this request
            self._notify()
            await asyncio.sleep(delay)

    async def _run_batched(self, todo: Sequence[Prompt], keys: Mapping[str, str]) -> None:
        size = self.config.chunk_size or self.model.max_chunk
        answered: dict[str, Answer] = {}  # key -> answer: identical prompts are asked once
        for chunk in question_chunks(todo, size):
            if self._stop or self._fatal:
                return
            unique: dict[str, Prompt] = {}
            for p in chunk:
                k = keys[p.sample_id]
                if k not in answered:
                    unique.setdefault(k, p)
            fresh = await self._answer_batch(unique)
            for p in chunk:
                k = keys[p.sample_id]
                if k in fresh:
                    answered[k] = fresh.pop(k)
                    self._record(p, answered[k], k, cached=False)
                else:
                    self._record(p, answered[k], k, cached=True)

    async def _answer_batch(self, unique: Mapping[str, Prompt]) -> dict[str, Answer]:
        """key -> answer for a batched model; prompts needing other parameters (a reasoning
        turn's token limit) go in their own call."""
        groups: dict[int, dict[str, Prompt]] = {}
        for k, p in unique.items():
            groups.setdefault(self.params_for(p).max_tokens, {})[k] = p
        out: dict[str, Answer] = {}
        if groups:
            await self._prepare()
        for group in groups.values():
            params = self.params_for(next(iter(group.values())))
            try:
                answers = await self.model.answer(list(group.values()), params)
                answers = [cap_reply(a, self.config.max_response_chars) for a in answers]
            except (FatalRunError, asyncio.CancelledError):
                raise
            except Exception as e:
                raise FatalRunError(f"{self.model.spec}: {type(e).__name__}: {e}") from e
            if len(answers) != len(group):
                raise FatalRunError(f"{self.model.spec}: answered {len(answers)} of {len(group)} prompts")
            self.stats.requests += len(answers)
            out.update(zip(group, answers, strict=True))
        return out

    async def _chains_batched(self, chains: Sequence[Prompt]) -> None:
        """Chains on a batched model: a chunk's chains advance turn by turn together."""
        size = self.config.chunk_size or self.model.max_chunk
        for chunk in question_chunks(chains, size):
            if self._stop or self._fatal:
                return
            replies: dict[str, list[str]] = {p.sample_id: [] for p in chunk}
            turns: dict[str, list[dict[str, Any]]] = {p.sample_id: [] for p in chunk}
            cost = dict.fromkeys(replies, 0.0)
            last: dict[str, Answer] = {}
            alive = list(chunk)
            while alive:
                tps = [(p, p.at_turn(tuple(replies[p.sample_id]))) for p in alive]
                keys = {p.sample_id: self.key(tp) for p, tp in tps}
                hits = self._cached(set(keys.values()))
                unique: dict[str, Prompt] = {}
                for p, tp in tps:
                    if keys[p.sample_id] not in hits:
                        unique.setdefault(keys[p.sample_id], tp)
                fresh = await self._answer_batch(unique) if unique else {}
                nxt = []
                for p, tp in tps:
                    k = keys[p.sample_id]
                    if k in fresh:
                        ans, cached = fresh.pop(k), False
                        hits[k] = ans.to_cache()  # an identical conversation later in the chunk reuses it
                    else:
                        ans, cached = Answer.from_cache(hits[k]), True
                    cost[p.sample_id] += self._turn(tp, ans, k, cached, turns[p.sample_id])
                    last[p.sample_id] = ans
                    if ans.error is None and len(turns[p.sample_id]) < p.turns:
                        replies[p.sample_id].append(ans.text or "")
                        nxt.append(p)
                alive = nxt
            for p in chunk:
                self._write(p, last[p.sample_id], cost[p.sample_id], turns[p.sample_id])

    # -- bookkeeping -------------------------------------------------------------------------
    def _check_first_error(self, ans: Answer) -> None:
        """A bad request before any success is a configuration problem: stop, write nothing."""
        if ans.error is None:
            self._any_success = True
        elif ans.error_kind is ErrorKind.BAD_REQUEST and not self._any_success:
            raise FatalRunError(f"{self.model.spec}: the first request was refused: {ans.error}")

    def _record(self, p: Prompt, ans: Answer, key: str, cached: bool) -> None:
        cost = self._account(p, ans, key, cached)
        self._write(p, ans, cost, None, cached)

    def _write(
        self, p: Prompt, ans: Answer, cost: float, turns: list[dict[str, Any]] | None, cached: bool | None = None
    ) -> None:
        if cached is None:
            cached = bool(turns) and all(t["cached"] for t in turns or ())
        if cached:
            self.stats.cache_hits += 1
        try:
            self.writer.append(make_sample(p, ans, self.model.spec, self.params.mode, cost, cached, turns).to_dict())
        except OSError as e:
            self.write_error = self.write_error or e
            self._stop = self._stop or "write-error"
            return
        self.stats.done += 1
        if ans.error is not None:
            self.stats.errors += 1
        self._notify()

    def _account(self, p: Prompt, ans: Answer, key: str, cached: bool) -> float:
        """Tokens and cost of one fresh answer (a cached one costs nothing), and store it."""
        usage = ans.usage or {}
        cost = 0.0
        if not cached:
            n_in, n_out = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
            if self.price and ans.error is None and not (n_in or n_out):
                n_in = estimate_tokens(p.transcript())  # a server without usage: charge the estimate
                n_out = max(1, len(ans.text or "") // 4)
            cost = self.price.cost(n_in, n_out) if self.price else 0.0
            self.stats.input_tokens += n_in
            self.stats.output_tokens += n_out
            self.stats.cost_usd += cost
            if self.cache is not None and ans.error is None:
                try:
                    self.cache.put(key, ans.to_cache(), self.model.spec)
                except RuntimeError as e:  # e.g. the disk filled up: keep running, uncached
                    self.warnings.append(f"response cache disabled: {e}")
                    self.cache = None
        return cost

    def _fail(self, p: Prompt, reason: str) -> None:
        self.stats.failed += 1
        if self.errors_path is not None:
            line = (
                json.dumps({"sample_id": p.sample_id, "prompt_sha256": p.sha256, "error": reason, "time": time.time()})
                + "\n"
            )
            with open(self.errors_path, "a", encoding="utf-8") as f:
                f.write(line)
        self._notify()

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def _result(self) -> RunResult:
        s = self.stats
        if self._fatal:
            return RunResult("fatal", self._fatal, s)
        if self._stop == "max-cost":
            spent = self.config.spent_before + s.cost_usd
            return RunResult(
                "max-cost",
                f"stopped at --max-cost ${self.config.max_cost:g} "
                f"(spent ${spent:.4f} so far); raise it and run again to continue",
                s,
            )
        if self._stop == "interrupted":
            return RunResult("interrupted", "interrupted", s)
        if s.failed:
            return RunResult(
                "incomplete",
                f"{s.failed} sample(s) still failing after retries "
                f"(see {ERRORS_FILE}); run the same command again to retry them",
                s,
            )
        return RunResult("complete", None, s)
