"""Runs inside the vLLM venv (``scripts/setup_vllm_venv.sh``), driven by ``test_vllm_plugin.py``.

Usage: ``python tests/_vllm_worker.py SPEC.json OUT.json``. The spec names the checks to run;
every check writes plain data (never a verdict) into OUT.json, and a check that raises records
its traceback instead, so the test in the main venv reports exactly what failed and where:

* ``plugin``: the ``vllm.general_plugins`` entry point as vLLM discovers it, and what
  ``vllm.plugins.load_general_plugins()`` registered (architectures, ``ternary``, HF configs);
* ``ternary_method``: the ``ternary`` linear method on its own (packing, memory, outputs);
* ``engines``: each tiny checkpoint served through ``vllm.LLM`` (greedy tokens, timings).

Engines must start under ``if __name__ == "__main__"``: vLLM spawns its engine-core and worker
processes, and each of them loads the plugin again from its entry point.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PLUGIN_TARGET = "biasmed.ternary.vllm_plugin:register"
ARCHITECTURES = ("HGRNBitForCausalLM", "SpikeGPTForCausalLM")


def _config_class(auto_config, model_type: str) -> str | None:
    try:
        return type(auto_config.for_model(model_type)).__name__
    except ValueError:  # model type unknown to transformers: the plugin did not register it
        return None


def check_plugin() -> dict[str, Any]:
    from importlib.metadata import entry_points

    import biasmed

    found = [(e.name, e.value) for e in entry_points(group="vllm.general_plugins")]
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # vLLM's own loader: discovers and calls our entry point
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    def state() -> dict[str, Any]:
        archs = {}
        for arch in ARCHITECTURES:
            registered = ModelRegistry.models.get(arch)
            info: dict[str, Any] = {"registered": registered is not None}
            if registered is not None:
                cls = registered.load_model_cls()
                info.update(
                    cls=f"{cls.__module__}:{cls.__name__}",
                    lazy=type(registered).__name__,
                    is_attention_free=bool(getattr(cls, "is_attention_free", False)),
                    has_inner_state=bool(getattr(cls, "has_inner_state", False)),
                    config_hook=getattr(MODELS_CONFIG_MAP.get(arch), "__name__", None),
                )
            archs[arch] = info
        quant_cls = get_quantization_config("ternary") if "ternary" in QUANTIZATION_METHODS else None
        return {
            "architectures": archs,
            "quant_methods_has_ternary": "ternary" in QUANTIZATION_METHODS,
            "ternary_config": f"{quant_cls.__module__}:{quant_cls.__name__}" if quant_cls else None,
            "hf_configs": {mt: _config_class(AutoConfig, mt) for mt in ("hgrn_bit", "spikegpt")},
        }

    first = state()
    from biasmed.ternary.vllm_plugin import register

    register()  # vLLM may call it again in the same process: must be harmless
    register()
    return {
        "entry_points": found,
        "biasmed_file": biasmed.__file__,
        "after_load": first,
        "after_reregister_equal": state() == first,
    }


def check_ternary_method() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from vllm.model_executor.layers.linear import ReplicatedLinear
    from vllm.model_executor.model_loader.weight_utils import default_weight_loader

    from biasmed.ternary.kernels import ternary_matmul
    from biasmed.ternary.packing import unpack_ternary
    from biasmed.ternary.quant import (
        fake_quantize_activations,
        fake_quantize_weight,
        quantize_activations,
        ternarize,
    )
    from biasmed.ternary.vllm_ternary import TernaryConfig, TernaryLinearMethod, packed_weight

    gen = torch.Generator().manual_seed(0)
    k, n = 70, 24  # K not a multiple of 4: exercises the padding of the packed layout
    w = torch.randn(n, k, generator=gen) * 0.05
    x = torch.randn(5, k, generator=gen) * 3
    layer = ReplicatedLinear(k, n, bias=False, quant_config=TernaryConfig(), return_bias=False,
                             disable_tp=True, params_dtype=torch.bfloat16)
    method_name = type(layer.quant_method).__name__
    latent_bytes = layer.weight.numel() * layer.weight.element_size()
    layer.weight.weight_loader(layer.weight, w.to(torch.bfloat16))
    layer.quant_method.process_weights_after_loading(layer)
    params = {name: (str(p.dtype), list(p.shape)) for name, p in layer.named_parameters()}
    trits = unpack_ternary(layer.weight_packed.data, k)
    expected_trits, expected_scale = ternarize(w.to(torch.bfloat16))
    y = layer(x.to(torch.bfloat16)).float()
    y32 = layer.quant_method.apply(layer, x)  # float32 activations: compare tightly
    reference = F.linear(fake_quantize_activations(x), fake_quantize_weight(w.to(torch.bfloat16)))
    x_q, _ = quantize_activations(x)
    exact = torch.equal(ternary_matmul(x_q, packed_weight(layer)), x_q.int() @ trits.int().t())

    # Two output partitions (as a merged QKV would be) keep one absmean scale each.
    merged = torch.nn.Module()
    merged.input_size, merged.output_size = k, 2 * n
    method = TernaryLinearMethod()
    method.create_weights(merged, k, [n, n], k, 2 * n, torch.float32, weight_loader=default_weight_loader)
    w2 = torch.randn(n, k, generator=gen) * 0.5  # ten times the scale of w
    merged.weight.data.copy_(torch.cat([w, w2]))
    method.process_weights_after_loading(merged)
    merged_out = method.apply(merged, x)
    merged_ref = torch.cat(
        [F.linear(fake_quantize_activations(x), fake_quantize_weight(part)) for part in (w, w2)], dim=-1
    )
    return {
        "method": method_name,
        "params": params,
        "latent_bytes": latent_bytes,
        "packed_bytes": layer.weight_packed.numel() * layer.weight_packed.element_size(),
        "trit_values": sorted(torch.unique(trits).tolist()),
        "trits_equal_ternarize": torch.equal(trits, expected_trits),
        "scale_equal": torch.allclose(layer.weight_scale.data.float(), expected_scale.expand(n)),
        "out_dtype": str(y.dtype),
        "max_abs_diff_fp32": float((y32 - reference).abs().max()),
        "max_abs_diff_bf16": float((y - reference).abs().max()),
        "reference_max_abs": float(reference.abs().max()),
        "int_accumulation_exact": exact,
        "merged_scales": [float(s) for s in merged.weight_scale[[0, n]]],
        "merged_max_abs_diff": float((merged_out - merged_ref).abs().max()),
        "merged_reference_max_abs": float(merged_ref.abs().max()),
    }


_KERNEL_CALLS = ("gemm_i8", "linear_f32", "bitlinear_f32")


def probe_native(model: Any) -> dict[str, Any]:
    """Runs inside vLLM's model worker (``LLM.apply_model``): which ternary kernel the loaded
    model will use, and a call counter on the native kernel's entry points and on the PyTorch
    reference from now on (read back by :func:`native_calls` after generating)."""
    import torch

    from biasmed.ternary import kernels, native

    counts = getattr(native.NativeKernel, "_test_calls", None)
    if counts is None:
        counts = {name: 0 for name in (*_KERNEL_CALLS, "reference")}
        native.NativeKernel._test_calls = counts  # type: ignore[attr-defined]

        def counted(name: str, fn: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return fn(*args, **kwargs)

            return wrapper

        for name in _KERNEL_CALLS:
            setattr(native.NativeKernel, name, counted(name, getattr(native.NativeKernel, name)))
        kernels.ternary_matmul_reference = counted("reference", kernels.ternary_matmul_reference)
    kernel = native.load()
    layouts = [m.ternary_layout for m in model.modules() if hasattr(m, "ternary_layout")]
    return {
        "native_isa": kernel.isa_name if kernel is not None else None,
        "backend": kernels.resolve_backend("auto", torch.device("cpu")),
        "layouts": sorted(set(layouts)),
        "ternary_layers": len(layouts),
    }


def native_calls(model: Any) -> dict[str, int]:
    from biasmed.ternary import native

    return dict(native.NativeKernel._test_calls)  # type: ignore[attr-defined]


def _probes() -> Any:
    """This file imported under its own name: vLLM pickles the probe functions by reference, and
    ``__main__``'s are not importable in its worker process (PYTHONPATH carries the folder there)."""
    import os
    import sys

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), here) if p)
    import _vllm_worker

    return _vllm_worker


def run_engine(spec: dict[str, Any]) -> dict[str, Any]:
    import os

    from vllm import LLM, SamplingParams

    os.environ.update(spec.get("env", {}))
    if spec.get("probe_native"):
        _probes()  # before the engine starts its worker process
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], **spec["llm_kwargs"])
    started = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], ignore_eos=True,
                            detokenize=False)
    prompts: list[Any] = [{"prompt_token_ids": ids} for ids in spec.get("prompt_ids", [])]
    prompts += spec.get("prompt_texts", [])
    probe = llm.apply_model(_probes().probe_native)[0] if spec.get("probe_native") else None
    t1 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generated = time.perf_counter() - t1
    calls = llm.apply_model(_probes().native_calls)[0] if spec.get("probe_native") else None
    result = {
        "tokens": [list(o.outputs[0].token_ids) for o in outputs],
        "prompt_token_ids": [list(o.prompt_token_ids) for o in outputs],
        "start_s": round(started, 2),
        "generate_s": round(generated, 2),
        "native_probe": probe,
        "native_calls": calls,
    }
    del llm  # shuts the engine-core and worker processes down before the next engine
    return result


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out: dict[str, Any] = {"errors": {}}

    def attempt(name: str, fn, *args) -> None:
        t0 = time.perf_counter()
        try:
            out[name] = fn(*args)
        except BaseException:  # record and go on: the test names what failed
            out["errors"][name] = traceback.format_exc()
        out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        Path(out_path).write_text(json.dumps(out, indent=1))

    if "plugin" in spec["checks"]:
        attempt("plugin", check_plugin)
    if "ternary_method" in spec["checks"]:
        attempt("ternary_method", check_ternary_method)
    for engine in spec.get("engines", []):
        attempt(f"engine:{engine['name']}", run_engine, engine)
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
