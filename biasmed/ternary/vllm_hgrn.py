"""HGRN-bit (the MatMul-free LM) as a vLLM model: packed ternary BitLinears + an element-wise RNN.

Loaded by vLLM through ``biasmed.ternary.vllm_plugin`` (architecture ``HGRNBitForCausalLM``).
Module and parameter names mirror the published checkpoint layout, so vLLM's safetensors
iterator feeds ``load_weights`` directly. Every BitLinear (lm_head included) is a vLLM
``ReplicatedLinear`` whose weights the ``ternary`` method (``vllm_ternary``) packs at load.

Per layer, the recurrent state is one float32 vector ``h`` of ``hidden_size * expand_ratio``
values per sequence, kept in vLLM's state cache (``vllm_state``). All math runs in float32,
whatever ``dtype`` vLLM was given (it only sets the storage of embeddings and norms), and
``forward`` returns float32 hidden states, exactly like the transformers model.

Equations (per layer l, x̂ = RMSNorm(x)):
  f = σ(f_proj x̂), for l > 0: f = lb_l + (1 − lb_l)·f
  i = SiLU(i_proj x̂)·(1 − f);  h_t = f_t ⊙ h_{t−1} + i_t
  o = o_proj(RMSNorm_g(g_proj x̂) ⊙ SiLU(h));  r = x + o
  gate, y = chunk(gate_proj(RMSNorm(r)), 2);  out = r + down_proj(SiLU(gate)·y)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ReplicatedLinear
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsAttentionFree
from vllm.sequence import IntermediateTensors

from biasmed.ternary.hgrn_bit import BITLINEAR_NORM_EPS, HGRNBitConfig, hgrn_recurrence
from biasmed.ternary.quant import rms_norm
from biasmed.ternary.vllm_state import RecurrentStateLayer
from biasmed.ternary.vllm_ternary import TernaryConfig


def _hf_config(vllm_config: VllmConfig) -> HGRNBitConfig:
    config = vllm_config.model_config.hf_config
    if not isinstance(config, HGRNBitConfig):  # e.g. parsed before the plugin registered it
        config = HGRNBitConfig(**config.to_dict())
    return config


class _Norm(nn.Module):
    """RMSNorm holding ``weight`` (the checkpoint's ``*.norm.weight`` / ``*_norm.weight``)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class BitLinear(ReplicatedLinear):
    """RMSNorm on the input, then a linear layer served by the ``ternary`` method."""

    def __init__(self, in_features: int, out_features: int, quant_config: QuantizationConfig, prefix: str) -> None:
        super().__init__(
            in_features, out_features, bias=False, quant_config=quant_config, prefix=prefix, return_bias=False
        )
        self.norm = _Norm(in_features, BITLINEAR_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x)).float()


class HGRNBitAttention(RecurrentStateLayer):
    """The token mixer: gated element-wise linear recurrence, state ``h`` per sequence."""

    def __init__(self, config, layer_idx: int, quant_config: QuantizationConfig, prefix: str) -> None:
        self.input_dim = config.inner_size
        super().__init__(prefix, state_shapes=[(self.input_dim,)])
        self.layer_idx = layer_idx
        hidden = config.hidden_size
        self.i_proj = BitLinear(hidden, self.input_dim, quant_config, f"{prefix}.i_proj")
        self.f_proj = BitLinear(hidden, self.input_dim, quant_config, f"{prefix}.f_proj")
        self.g_proj = BitLinear(hidden, self.input_dim, quant_config, f"{prefix}.g_proj")
        self.g_norm = _Norm(self.input_dim, config.rms_norm_eps)
        self.o_proj = BitLinear(self.input_dim, hidden, quant_config, f"{prefix}.o_proj")

    def forward(self, x: torch.Tensor, lower_bound: torch.Tensor | None) -> torch.Tensor:
        f = torch.sigmoid(self.f_proj(x))
        if lower_bound is not None and self.layer_idx > 0:
            f = lower_bound + (1 - lower_bound) * f
        i = F.silu(self.i_proj(x)) * (1 - f)
        h = self._scan(i, f)
        return self.o_proj(self.g_norm(self.g_proj(x)) * F.silu(h))

    def _scan(self, i: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``h_t = f_t ⊙ h_{t-1} + i_t`` over each sequence of the flat batch, via the cache."""
        out = torch.zeros_like(i)  # tokens past the scheduled ones (padding) stay zero
        for group in self.step_groups(i.shape[0]):
            (h0,) = self.read_states(group)
            # The transformers model's recurrence, on [sequences, time, features].
            h, last = hgrn_recurrence(group.gather(i), group.gather(f), h0)
            group.scatter(out, h)
            self.write_states(group, [last])
        return out


class HGRNBitMLP(nn.Module):
    def __init__(self, config, quant_config: QuantizationConfig, prefix: str) -> None:
        super().__init__()
        inter = config.resolved_intermediate_size
        self.gate_proj = BitLinear(config.hidden_size, 2 * inter, quant_config, f"{prefix}.gate_proj")
        self.down_proj = BitLinear(inter, config.hidden_size, quant_config, f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, y = self.gate_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * y)


class HGRNBitBlock(nn.Module):
    def __init__(self, config, layer_idx: int, quant_config: QuantizationConfig, prefix: str) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.attn_norm = _Norm(config.hidden_size, eps)
        self.attn = HGRNBitAttention(config, layer_idx, quant_config, f"{prefix}.attn")
        self.mlp_norm = _Norm(config.hidden_size, eps)
        self.mlp = HGRNBitMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, lower_bound: torch.Tensor | None) -> torch.Tensor:
        r = x + self.attn(self.attn_norm(x), lower_bound)
        return r + self.mlp(self.mlp_norm(r))


class HGRNBitModel(nn.Module):
    def __init__(self, config, quant_config: QuantizationConfig, prefix: str) -> None:
        super().__init__()
        if getattr(config, "use_short_conv", False):
            raise NotImplementedError("HGRN-bit with use_short_conv=true is not supported")
        self.use_lower_bound = bool(getattr(config, "use_lower_bound", True))
        self.embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        if self.use_lower_bound:
            self.lower_bounds = nn.Parameter(
                torch.zeros(config.num_hidden_layers, config.hidden_size), requires_grad=False
            )
        self.layers = nn.ModuleList(
            HGRNBitBlock(config, i, quant_config, f"{prefix}.layers.{i}") for i in range(config.num_hidden_layers)
        )
        self.norm = _Norm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        bounds = None
        if self.use_lower_bound:
            soft = self.lower_bounds.float().softmax(dim=0)
            bounds = soft.cumsum(dim=0) - soft[0]
        for i, layer in enumerate(self.layers):
            x = layer(x, bounds[i] if bounds is not None else None)
        return self.norm(x)


class VllmHGRNBitForCausalLM(nn.Module, HasInnerState, IsAttentionFree):
    """vLLM's view of ``HGRNBitForCausalLM`` checkpoints."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = _hf_config(vllm_config)
        self.config = config
        # BitLinear layers are ternary by definition; "ternary" is also accepted explicitly.
        quant_config = vllm_config.quant_config or TernaryConfig()
        if not isinstance(quant_config, TernaryConfig):
            raise ValueError(f"HGRN-bit serves only with quantization='ternary', got {quant_config.get_name()}")
        base = f"{prefix}." if prefix else ""
        self.model = HGRNBitModel(config, quant_config, f"{base}model")
        self.lm_head = BitLinear(config.hidden_size, config.vocab_size, quant_config, f"{base}lm_head")

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        x = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        # float32 whatever the model dtype: rounding the last hidden state to bf16 could move
        # the lm_head's int8 activation levels away from the transformers path.
        return self.model(x)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"HGRN-bit checkpoint has an unexpected tensor: {name}")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        return loaded

    # Model-level state description (vLLM asks the class before building layers).
    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
        return ((_hf_config(vllm_config).inner_size,),)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
        return (torch.float32,)
