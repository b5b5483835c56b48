"""`vllm:` (vLLM's offline engine) against the transformers adapter, on a tiny random Llama.

Where `vllm` imports in this interpreter, the adapter runs in process. Elsewhere, the separate
vLLM venv (`scripts/setup_vllm_venv.sh`: `$BIASMED_VLLM_VENV` or `<repo>/.venv-vllm`) runs this
file as a worker script in a subprocess. With neither, the tests skip and say why.

Both backends must read the same tokens and agree: letter log-probs (float32, ±2e-3) with the
same argmax, and the same greedy replies.

Worker usage (inside the vLLM venv): `python tests/test_vllm_local.py SPEC.json OUT.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS = 6
ENGINE_ARGS = {"enforce_eager": True, "gpu_memory_utilization": 0.3, "max_num_seqs": 16}  # small, quick
WORKER_ENV = {
    "PYTHONPATH": str(REPO),  # this checkout's biasmed
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB: the tiny model needs almost nothing
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # in-process engine: quicker to start
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def _prompts():
    from biasmed.dataset.build import build_benchmark
    from biasmed.dataset.medqa import load_demo

    return build_benchmark(load_demo("test"), limit=2).prompts()


def _too_long(prompt):
    """Longer than the 2048-token context (the byte tokenizer: one token per byte)."""
    import dataclasses

    return dataclasses.replace(prompt, text=prompt.text * 3)


def run_vllm(model_dir: str, roles: tuple[str, ...] = ("system", "user")) -> dict[str, Any]:
    """What the vLLM adapter answers (plain data, for JSON)."""
    from biasmed.models.base import GenParams
    from biasmed.models.registry import resolve_model

    prompts = _prompts()
    model = resolve_model(f"vllm:{model_dir}", dtype="float32", max_model_len=2048, engine_args=ENGINE_ARGS)

    async def main() -> dict[str, Any]:
        t0 = time.perf_counter()
        await model.prepare()
        out: dict[str, Any] = {"load_s": time.perf_counter() - t0}
        for role in roles:
            lp = await model.answer(prompts, GenParams(mode="logprob", role=role))
            out[f"logprob_{role}"] = [[a.logprobs, a.text, a.usage, a.error] for a in lp]
        gen = await model.answer(prompts[:4], GenParams(mode="generate", max_tokens=MAX_TOKENS))
        out["generate"] = [[a.text, a.usage, a.finish_reason] for a in gen]
        long = await model.answer([_too_long(prompts[0])], GenParams(mode="logprob"))
        out["too_long"] = [long[0].error, long[0].usage]
        out["identity"] = model.cache_identity()
        out["seconds"] = time.perf_counter() - t0
        await model.aclose()
        return out

    return asyncio.run(main())


if __name__ == "__main__":  # the worker, inside the vLLM venv (no pytest needed there)
    spec = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_vllm(spec["model_dir"])))
    sys.exit(0)


import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _vllm_python() -> Path:
    venv = Path(os.environ.get("BIASMED_VLLM_VENV", REPO / ".venv-vllm"))
    return venv / "bin" / "python"


def _vllm_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (head_dim 64, which vLLM's CPU attention supports) with a byte-level
    tokenizer and a chat template, saved as an ordinary checkpoint."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from test_prefix_sharing import byte_tokenizer

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=259, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # sharpen the random model: no near-ties in the tests
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_reference(tiny_dir: Path) -> dict[str, Any]:
    from biasmed.models.base import GenParams
    from biasmed.models.registry import resolve_model

    model = resolve_model(f"hf:{tiny_dir}", dtype="float32", batch_size=8)
    prompts = _prompts()
    out: dict[str, Any] = {}
    for role in ("system", "user"):
        lp = asyncio.run(model.answer(prompts, GenParams(mode="logprob", role=role)))
        out[f"logprob_{role}"] = [[a.logprobs, a.text, a.usage, a.error] for a in lp]
    gen = asyncio.run(model.answer(prompts[:4], GenParams(mode="generate", max_tokens=MAX_TOKENS)))
    out["generate"] = [[a.text, a.usage, a.finish_reason] for a in gen]
    long = asyncio.run(model.answer([_too_long(prompts[0])], GenParams(mode="logprob")))
    out["too_long"] = [long[0].error, long[0].usage]
    return out


@pytest.fixture(scope="module")
def vllm_result(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if _vllm_here():
        return run_vllm(str(tiny_dir))
    python = _vllm_python()
    if not python.exists():
        pytest.skip(f"vllm does not import here and no vLLM venv at {python.parent.parent} "
                    "(create it with scripts/setup_vllm_venv.sh)")
    work = tmp_path_factory.mktemp("vllm_local")
    (work / "spec.json").write_text(json.dumps({"model_dir": str(tiny_dir)}))
    proc = subprocess.run([str(python), __file__, str(work / "spec.json"), str(work / "out.json")],
                          cwd=work, env={**os.environ, **WORKER_ENV}, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (work / "out.json").exists():
        pytest.fail(f"vLLM worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads((work / "out.json").read_text())
    print(f"\nvLLM worker: engine load {result['load_s']:.1f} s, total {result['seconds']:.1f} s")
    return result


@pytest.mark.parametrize("role", ["system", "user"])
def test_vllm_logprobs_match_transformers(vllm_result, hf_reference, role):
    got, want = vllm_result[f"logprob_{role}"], hf_reference[f"logprob_{role}"]
    assert len(got) == len(want) == 16
    for (lp, text, usage, error), (lp_ref, text_ref, usage_ref, _) in zip(got, want):
        assert error is None and list(lp) == list(lp_ref)
        assert max(abs(lp[k] - lp_ref[k]) for k in lp) < 2e-3
        assert text == text_ref == max(lp, key=lp.get)
        assert usage == usage_ref  # same tokens: the prompts were encoded the same way


def test_vllm_generate_matches_transformers(vllm_result, hf_reference):
    assert vllm_result["generate"] == hf_reference["generate"]
    assert all(u["output_tokens"] > 0 for _, u, _ in vllm_result["generate"])


def test_vllm_too_long_prompt_is_a_sample_error(vllm_result, hf_reference):
    error, usage = vllm_result["too_long"]
    assert error and error.startswith("context_length: ") and usage["input_tokens"] > 2048
    assert vllm_result["too_long"][1] == hf_reference["too_long"][1]


def test_vllm_identity(vllm_result, tiny_dir):
    identity = vllm_result["identity"]
    assert identity["provider"] == "vllm" and identity["model"] == str(tiny_dir)
