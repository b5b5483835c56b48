"""SpikeGPT (RWKV-4 + LIF neurons) as a vLLM model, reusing biasmed's transformers blocks.

Loaded by vLLM through ``biasmed.ternary.vllm_plugin`` (architecture ``SpikeGPTForCausalLM``).
The blocks are :class:`biasmed.ternary.spikegpt.SpikeGPTBlock` themselves, so both serving paths
run the same per-layer code; parameter names equal the published ``.pth`` keys, and
``allow_patterns_overrides`` lets vLLM's default loader read the published ``.pth`` directly
(or ``*.safetensors`` written by ``convert_pth_to_hf``).

Per layer and sequence, the whole RNN state (token shifts, WKV numerator/denominator/max
exponent, both LIF membranes) is one float32 ``(7, hidden)`` block in vLLM's state cache.

Published checkpoints ship no ``config.json``; vLLM needs one with
``"model_type": "spikegpt"`` and ``"architectures": ["SpikeGPTForCausalLM"]`` (or pass
``hf_overrides={"architectures": ["SpikeGPTForCausalLM"]}``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import HasInnerState, IsAttentionFree
from vllm.sequence import IntermediateTensors

from biasmed.ternary.spikegpt import SpikeGPTBlock, SpikeGPTConfig, init_state, state_shape
from biasmed.ternary.vllm_state import RecurrentStateLayer


def _hf_config(vllm_config: VllmConfig) -> SpikeGPTConfig:
    config = vllm_config.model_config.hf_config
    if not isinstance(config, SpikeGPTConfig):
        config = SpikeGPTConfig(**config.to_dict())
    return config


class SpikeGPTState(RecurrentStateLayer):
    """Holds one block's ``(7, hidden)`` RNN state per sequence in vLLM's cache."""

    def __init__(self, config: SpikeGPTConfig, prefix: str) -> None:
        super().__init__(prefix, state_shapes=[state_shape(config)])
        # A new sequence starts from the transformers model's fresh state (WKV max at -1e38).
        self.register_buffer("_fresh", init_state(config, 1)[0, 0], persistent=False)

    def fresh_state(self, k: int) -> torch.Tensor:
        return self._fresh.clone()


class VllmSpikeGPTForCausalLM(nn.Module, HasInnerState, IsAttentionFree):
    """vLLM's view of SpikeGPT checkpoints (``emb``, ``blocks.{i}``, ``ln_out``, ``head``)."""

    # vLLM's loader reads the published .pth (torch.load, weights only) when no safetensors exist.
    allow_patterns_overrides = ["*.safetensors", "*.pth", "*.pt", "*.bin"]

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = _hf_config(vllm_config)
        if vllm_config.quant_config is not None:
            raise ValueError("SpikeGPT has full-precision weights: serve it without quantization")
        self.config = config
        self.dtype = vllm_config.model_config.dtype
        base = f"{prefix}." if prefix else ""
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(SpikeGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.states = nn.ModuleList(SpikeGPTState(config, f"{base}states.{i}") for i in range(config.num_hidden_layers))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(input_ids)
        return (x >= 0).to(x.dtype) if self.config.spiking_embedding else x

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        x = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        for block, holder in zip(self.blocks, self.states):
            y = torch.zeros_like(x)  # tokens past the scheduled ones (padding) stay zero
            for group in holder.step_groups(x.shape[0]):
                (state,) = holder.read_states(group)
                out, new_state, _ = block(group.gather(x), state)
                group.scatter(y, out)
                holder.write_states(group, [new_state])
            x = y
        return self.ln_out(x).to(self.dtype)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head(hidden_states).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            for wrapper in ("module.", "_orig_mod."):  # DDP / torch.compile prefixes
                if name.startswith(wrapper):
                    name = name[len(wrapper) :]
            if name not in params:
                raise KeyError(f"SpikeGPT checkpoint has an unexpected tensor: {name}")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(name)
        for block in self.blocks:  # decay and bonus are exponentiated: keep them float32
            block.att.time_decay.data = block.att.time_decay.data.float()
            block.att.time_first.data = block.att.time_first.data.float()
        return loaded

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
        return (state_shape(_hf_config(vllm_config)),)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
        return (torch.float32,)
