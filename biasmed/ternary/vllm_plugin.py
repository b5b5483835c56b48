"""vLLM plugin entry point: teaches vLLM biasmed's ternary and spiking architectures.

vLLM calls :func:`register` in every one of its processes (the front end, the engine core and
each worker) through the entry-point group ``vllm.general_plugins``::

    [project.entry-points."vllm.general_plugins"]
    biasmed_ternary = "biasmed.ternary.vllm_plugin:register"

``register`` must stay cheap and idempotent: it only records lazy ``module:Class`` strings (the
model modules import vLLM's layers and are loaded by vLLM when first needed), registers the
``ternary`` quantization method, the Hugging Face config classes of both architectures, and the
per-architecture config hook that gives attention-free models their recurrent-state block size.
vLLM is imported only inside :func:`register`, so importing this module works without vLLM.
"""

from __future__ import annotations

# Architecture name (config.json "architectures") -> lazy "module:Class" for vLLM's registry.
MODEL_CLASSES: dict[str, str] = {
    "HGRNBitForCausalLM": "biasmed.ternary.vllm_hgrn:VllmHGRNBitForCausalLM",
    "SpikeGPTForCausalLM": "biasmed.ternary.vllm_spikegpt:VllmSpikeGPTForCausalLM",
}
QUANT_METHOD = "ternary"


def register() -> None:
    """Register both architectures, their HF configs and the ``ternary`` quantization method.

    Safe to call any number of times, in any process.
    """
    from vllm import ModelRegistry

    for arch, target in MODEL_CLASSES.items():
        # Lazy string form: the model module (and its vLLM layer imports) loads only on use.
        ModelRegistry.register_model(arch, target)
    _register_config_hooks()
    _register_hf_configs()
    _register_quantization()


def _register_quantization() -> None:
    from vllm.model_executor.layers.quantization import register_quantization_config

    from biasmed.ternary.vllm_ternary import TernaryConfig

    # Re-registering the same name simply overwrites, so this is idempotent.
    register_quantization_config(QUANT_METHOD)(TernaryConfig)


def _register_config_hooks() -> None:
    """Give our attention-free architectures vLLM's Mamba config hook.

    That hook sets ``cache_config.mamba_block_size`` (one state slot per sequence), which vLLM
    applies only to architectures listed in ``MODELS_CONFIG_MAP``.
    """
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, MambaModelConfig

    for arch in MODEL_CLASSES:
        MODELS_CONFIG_MAP.setdefault(arch, MambaModelConfig)


def _register_hf_configs() -> None:
    """Let ``AutoConfig`` parse ``model_type`` ``hgrn_bit`` and ``spikegpt``: vLLM reads
    config.json through transformers, in every process."""
    from transformers import AutoConfig

    from biasmed.ternary.hgrn_bit import HGRNBitConfig
    from biasmed.ternary.spikegpt import SpikeGPTConfig

    for config_cls in (HGRNBitConfig, SpikeGPTConfig):
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
