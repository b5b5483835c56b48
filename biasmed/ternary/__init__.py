"""Ternary LMs: the MatMul-free LM (HGRN-bit) and packed 2-bit ternary kernels.

Importing this package registers ``HGRNBitConfig`` / ``HGRNBitModel`` / ``HGRNBitForCausalLM``
with transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` (model type
``hgrn_bit``), so ``AutoModelForCausalLM.from_pretrained(dir)`` reads published checkpoints.

Loading for the harness (the ``mmfree:<path or hub id>`` model spec)::

    from biasmed.ternary import load_mmfree
    model, tokenizer = load_mmfree("ridger/MMfreeLM-370M", device="cpu", packed=True)
    logits = model.next_token_logits(ids, attention_mask)   # [batch, vocab], float32
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)

``packed=True`` ternarizes every BitLinear at load and keeps only 2-bit weights (4 per byte)
plus one float32 scale per tensor; the int8 x ternary matmul then runs on the native C++ kernel
on CPU (``native``: built on first use, AVX-512 VNNI / AVX2 / scalar chosen at run time; the
PyTorch reference where no compiler is found) and on the Triton kernel on CUDA
(``model.set_ternary_backend`` or the ``BIASMED_TERNARY_BACKEND`` environment variable override
the choice).  ``packed=False`` keeps the latent weights, ternarizes them once (not per forward)
and runs the same kernels; both paths give the same logits.  Tokenizers pad on the left; the model masks padded positions exactly.

Submodules: ``quant`` (BitLinear math), ``packing`` (2-bit formats), ``kernels`` (reference and
dispatcher), ``native`` (CPU kernel), ``triton_kernel`` (GPU kernel), ``hgrn_bit`` (model), ``checkpoint`` (tiny
checkpoints in the published layout).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from biasmed.ternary.hgrn_bit import (
    BitLinear,
    HGRNBitCache,
    HGRNBitConfig,
    HGRNBitForCausalLM,
    HGRNBitModel,
    register_auto_classes,
)
from biasmed.ternary.packing import PackedTernary, pack_weight

if TYPE_CHECKING:
    import torch

register_auto_classes()

__all__ = [
    "BitLinear",
    "HGRNBitCache",
    "HGRNBitConfig",
    "HGRNBitForCausalLM",
    "HGRNBitModel",
    "PackedTernary",
    "load_mmfree",
    "pack_weight",
]


def _resolve_dtype(dtype: Any) -> torch.dtype | str:
    import torch

    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    resolved = getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    return resolved


def load_mmfree(
    path_or_hub_id: str,
    device: str = "cpu",
    dtype: Any = "auto",
    packed: bool = True,
    backend: str = "auto",
    **from_pretrained_kwargs: Any,
) -> tuple[HGRNBitForCausalLM, Any]:
    """Load an HGRN-bit checkpoint directory or hub id; return ``(model, tokenizer)`` in eval mode.

    ``dtype`` (``"auto"``: as stored, or a float dtype or its name such as ``"bfloat16"``) is the
    storage dtype of the embeddings and norms (and of the latent weights when ``packed=False``);
    compute is float32 whatever it is.  With ``packed=True`` weights are ternarized and packed
    on CPU before the move to ``device``, so the device never holds the latent copy.
    Extra keyword arguments go to ``from_pretrained`` (e.g. ``revision``, ``local_files_only``).
    """
    from transformers import AutoTokenizer

    model = HGRNBitForCausalLM.from_pretrained(path_or_hub_id, dtype=_resolve_dtype(dtype), **from_pretrained_kwargs)
    model.set_ternary_backend(backend)
    if packed:
        model.to_ternary()
    model = model.to(device).eval()
    tok_kwargs = {k: v for k, v in from_pretrained_kwargs.items() if k in ("revision", "local_files_only", "token")}
    tokenizer = AutoTokenizer.from_pretrained(path_or_hub_id, **tok_kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
