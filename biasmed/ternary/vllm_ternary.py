"""The ``ternary`` quantization method for vLLM: BitLinear weights packed 4 trits per byte.

Checkpoints hold latent (bf16/fp32) weights. :class:`TernaryLinearMethod` lets vLLM load them
into an ordinary weight parameter, then ``process_weights_after_loading`` ternarizes each
output partition with its own absmean scale (a merged QKV keeps one scale per original
tensor), packs the trits (``biasmed.ternary.packing``: uint8 ``[N, ceil(K/4)]``) and *drops*
the latent weight. ``apply`` quantizes activations per token to int8 and runs the packed kernel
(``biasmed.ternary.kernels``: the native C++ kernel on CPU, with the quantization fused into
the call, Triton on CUDA, the PyTorch reference where neither runs), which accumulates
``x_q @ trits^T`` exactly in int32 before the float epilogue.  The packed bytes are kept in the
layout that backend reads (``block256`` on CPU), chosen once at load.

Used by the HGRN-bit model for every BitLinear, and by any model served with
``LLM(..., quantization="ternary")`` (which then ternarizes all its linear layers).
Tensor parallelism is not supported: one scale spans the whole unsharded tensor.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearBase, LinearMethodBase
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)
from vllm.model_executor.utils import set_weight_attrs

from biasmed.ternary.kernels import bitlinear, layout_for
from biasmed.ternary.packing import PackedTernary, pack_ternary
from biasmed.ternary.quant import ternarize

NAME = "ternary"


class TernaryConfig(QuantizationConfig):
    """Quantization config for BitNet-b1.58-style ternary linear layers (no checkpoint file)."""

    def get_name(self) -> str:
        return NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float32, torch.bfloat16, torch.float16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # pure PyTorch on CPU; Triton needs no particular GPU generation

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # the weights are ternarized at load: nothing extra to read

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TernaryConfig:
        return cls()

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, LinearBase):
            return TernaryLinearMethod()
        return None  # embeddings and everything else stay unquantized


class TernaryLinearMethod(LinearMethodBase):
    """Load latent weights, then serve them packed 2 bits per weight with int8 activations."""

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        if input_size_per_partition != input_size or sum(output_partition_sizes) != output_size:
            raise ValueError("the ternary method does not support tensor parallelism")
        weight_loader = extra_weight_attrs.pop("weight_loader")
        # The latent weight lives only until process_weights_after_loading packs it. A plain
        # Parameter (not vLLM's sharded parameter classes): the layer is never split across ranks.
        weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=params_dtype), requires_grad=False)
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, "weight_loader": weight_loader})
        set_weight_attrs(weight, extra_weight_attrs)
        layer.ternary_partition_sizes = list(output_partition_sizes)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        latent = layer.weight.data
        sizes = layer.ternary_partition_sizes
        parts = [ternarize(w) for w in torch.split(latent, sizes, dim=0)]
        trits = torch.cat([t for t, _ in parts], dim=0)
        row_scale = torch.cat([s.reshape(1).expand(n) for (_, s), n in zip(parts, sizes)])
        # Packing is row-wise, so the merged partitions share one packed tensor.
        layer.ternary_layout = layout_for("auto", latent.device)
        layer.weight_packed = torch.nn.Parameter(pack_ternary(trits, layer.ternary_layout), requires_grad=False)
        layer.weight_scale = torch.nn.Parameter(row_scale.float().contiguous(), requires_grad=False)
        del layer.weight  # free the latent weight: only the packed copy stays in memory

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        out = ternary_forward(layer, x)
        if bias is not None:
            out = out + bias.float()
        return out.to(x.dtype)


def packed_weight(layer: torch.nn.Module) -> PackedTernary:
    """The layer's packed weight as a :class:`PackedTernary` (scalar scale for one partition)."""
    scale = layer.weight_scale
    if len(layer.ternary_partition_sizes) == 1:
        scale = scale[0]
    return PackedTernary(
        data=layer.weight_packed.data,
        scale=scale.data,
        in_features=int(layer.input_size),
        out_features=int(layer.output_size),
        layout=getattr(layer, "ternary_layout", "quarter"),
    )


def ternary_forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float32 BitLinear output ``(quant(x) @ trits^T) * w_scale / x_scale`` of a packed layer.

    Merged partitions carry one scale per output row; the kernels take either."""
    return bitlinear(x, packed_weight(layer)).float()
