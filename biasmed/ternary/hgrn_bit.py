"""HGRN-bit, the MatMul-free LM (``ridger/MMfreeLM-370M``, ``-1.3B``, ``-2.7B``), for transformers.

Written from the published equations and checked against the public model code
(``ridgerchu/matmulfreellm``: ``mmfreelm/models/hgrn_bit``, ``mmfreelm/layers/hgrn_bit.py``,
``mmfreelm/ops/fusedbitnet.py``).  Module and parameter names follow the published checkpoints,
so ``from_pretrained`` reads them as they are.

Per layer ``l`` with input ``x`` (activations in float32, float64 for a float64 model):

* ``x̂ = RMSNorm_attn(x)``; ``f = σ(f_proj x̂)``; for ``l > 0``: ``f = lb_l + (1 - lb_l) f`` where
  ``lb = cumsum(softmax(lower_bounds, 0), 0) - softmax(lower_bounds, 0)[0]``;
* ``i = SiLU(i_proj x̂) · (1 - f)`` (zeroed at masked positions, so left padding is exact);
* ``h_t = f_t ⊙ h_{t-1} + i_t``;
* ``o = o_proj(RMSNorm_g(g_proj x̂) ⊙ SiLU(h))`` (the public ``FusedRMSNormSwishGate`` normalises
  the ``g_proj`` output, applies its weight, and multiplies by ``h · σ(h)``);
* ``r = x + o``; ``gate, y = chunk(gate_proj(RMSNorm_mlp(r)), 2)``;
  ``out = r + down_proj(SiLU(gate) · y)``.

Then a final RMSNorm and ``lm_head``.  Every projection, ``lm_head`` included, is a
:class:`BitLinear`: RMSNorm (own weight, eps 1e-6: the fused public kernel ignores the module's
1e-8) -> per-token int8 activations -> per-tensor ternary weights.

Two BitLinear paths that agree bit for bit: *latent* (ternarizes the stored latent weight on the
fly and multiplies the integer-valued operands in float, which is exact) and *packed* (after
:meth:`HGRNBitForCausalLM.to_ternary`: 2-bit weights, int8 x ternary integer matmul by
:mod:`biasmed.ternary.kernels`).  Both dequantize after the matmul; the public code dequantizes
before it, which is the same product up to float rounding (see :mod:`biasmed.ternary.quant`).

Generation keeps one ``[batch, hidden]`` float32 state per layer (:class:`HGRNBitCache`) and
feeds one token per step, so memory is constant in the sequence length.  Outputs carry it under
the name the installed transformers' ``generate()`` uses (``cache`` from 5.2x, ``past_key_values``
before; ``output.recurrent_cache`` reads either), so ``generate()`` works with 5.16-5.24.
"""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from biasmed.ternary import native
from biasmed.ternary.kernels import layout_for, normed_bitlinear
from biasmed.ternary.packing import PackedTernary, pack_weight, repack
from biasmed.ternary.quant import compute_dtype, rms_norm

BITLINEAR_NORM_EPS = 1e-6  # the fused public kernel's default, used for every BitLinear


class HGRNBitConfig(PretrainedConfig):
    """Configuration of HGRN-bit; field names and defaults follow the published config.json.

    ``packed_ternary`` (not in published configs) asks ``from_pretrained`` to ternarize and pack
    every BitLinear right after loading; ``ternary_backend`` picks the packed kernel
    (``auto``/``reference``/``triton``).
    """

    model_type = "hgrn_bit"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 32000
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    attn_mode: str = "fused_recurrent"
    num_heads: int | None = 1
    expand_ratio: int | None = 1
    use_short_conv: bool = False
    conv_size: int = 4
    share_conv_kernel: bool = True
    use_lower_bound: bool = True
    hidden_ratio: int | None = 4
    intermediate_size: int | None = None
    hidden_act: str = "swish"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    fuse_cross_entropy: bool = True
    packed_ternary: bool = False
    ternary_backend: str = "auto"

    @property
    def resolved_intermediate_size(self) -> int:
        """``intermediate_size`` or the published default ``256 * ceil(int(h * r * 2/3) / 256)``."""
        if self.intermediate_size is not None:
            return int(self.intermediate_size)
        ratio = self.hidden_ratio if self.hidden_ratio is not None else 4
        raw = int(self.hidden_size * ratio * 2 / 3)
        return 256 * ((raw + 255) // 256)

    @property
    def inner_size(self) -> int:
        """Width of the recurrence: ``hidden_size * expand_ratio``."""
        return int(self.hidden_size * (self.expand_ratio or 1))


class RMSNorm(nn.Module):
    """RMSNorm with a weight, computed in float32 (float64 for a float64 model)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class BitLinear(nn.Module):
    """Ternary linear layer (no bias) with its own input RMSNorm (``norm.weight``).

    Both paths run the same packed kernel (exact, so they agree bit for bit): after
    :meth:`to_ternary` the layer holds only the packed weight; before it (the latent path,
    ``packed=False``) it ternarizes its latent weight once, on the first forward after the weight
    last changed, and keeps that packed copy beside it, so inference never re-quantizes weights.
    The packed bytes are kept in the layout the chosen backend reads (``block256`` for the native
    CPU kernel, ``quarter`` otherwise), repacked once whenever backend or device change.
    """

    packed_weight: torch.Tensor  # buffers registered by to_ternary()
    weight_scale: torch.Tensor

    def __init__(self, in_features: int, out_features: int, norm_eps: float = BITLINEAR_NORM_EPS) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.norm = RMSNorm(in_features, eps=norm_eps)
        self.backend = "auto"
        self.is_packed = False
        self.packed_layout = "quarter"
        self._latent_cache: tuple[tuple[Any, ...], PackedTernary] | None = None

    def to_ternary(self) -> None:
        """Replace the latent weight by 2-bit packed trits plus one float32 scale (idempotent)."""
        if self.is_packed:
            return
        layout = layout_for(self.backend, self.weight.device)
        packed = pack_weight(self.weight.detach(), layout)
        del self.weight  # drop the latent copy: the packed bytes are all that stays in memory
        self._latent_cache = None
        self.register_buffer("packed_weight", packed.data, persistent=False)
        self.register_buffer("weight_scale", packed.scale, persistent=False)
        self.packed_layout = layout
        self.is_packed = True

    def packed(self) -> PackedTernary:
        """The packed weight (after :meth:`to_ternary`)."""
        if not self.is_packed:
            raise RuntimeError("BitLinear.packed() needs to_ternary() first")
        return PackedTernary(
            self.packed_weight, self.weight_scale, self.in_features, self.out_features, self.packed_layout
        )

    def _kernel_weight(self) -> PackedTernary:
        """The packed weight in the layout the backend reads (repacked once when that changes)."""
        if self.is_packed:
            want = layout_for(self.backend, self.packed_weight.device)
            if want != self.packed_layout:
                w = repack(self.packed(), want)
                self.packed_weight, self.packed_layout = w.data, want
            return self.packed()
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, self.backend)
        if self._latent_cache is None or self._latent_cache[0] != key:
            with torch.no_grad():
                packed = pack_weight(weight.detach(), layout_for(self.backend, weight.device))
            self._latent_cache = (key, packed)
        return self._latent_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = normed_bitlinear(x, self.norm.weight, self.norm.eps, self._kernel_weight(), self.backend)
        return out.to(compute_dtype(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed={self.is_packed}"


class HGRNBitCache:
    """Recurrent state for generation: one float32 ``[batch, inner]`` tensor per layer.

    Duck-types the bits of transformers' ``Cache`` that ``generate()`` touches (sequence length,
    beam reordering, "not compileable", "linear" layers).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int) -> None:
        self.states: list[torch.Tensor | None] = [None] * num_layers
        self.seen_tokens = 0

    def __len__(self) -> int:
        return len(self.states)

    @property
    def is_linear(self) -> list[bool]:
        return [True] * len(self.states)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.states = [None if s is None else s.index_select(0, beam_idx.to(s.device)) for s in self.states]

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states if s is not None)


def _native_cache_field() -> str:
    """The name generate() carries the cache under: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (5.16-5.19).  Outputs fill only that field: newer ModelOutputs rename
    ``past_key_values`` to ``cache`` and refuse both."""
    from transformers.generation import utils as generation_utils

    names = getattr(generation_utils, "ALL_CACHE_NAMES", ())
    return "cache" if "cache" in names else "past_key_values"


_CACHE_FIELD = _native_cache_field()


def _output_class(name: str, doc: str, leading: list[str]) -> type:
    """A ModelOutput dataclass whose state field has the native name (``_CACHE_FIELD``)."""
    spec = [(f, Any, field(default=None)) for f in (*leading, _CACHE_FIELD, "hidden_states")]
    namespace = {
        "__doc__": doc,
        "recurrent_cache": property(lambda self: getattr(self, _CACHE_FIELD)),
    }
    cls = make_dataclass(name, spec, bases=(ModelOutput,), namespace=namespace)
    cls.__module__ = __name__
    return cls


HGRNBitModelOutput = _output_class(
    "HGRNBitModelOutput",
    "Base-model output: last_hidden_state, the state (``recurrent_cache``), hidden_states.",
    ["last_hidden_state"],
)
HGRNBitCausalLMOutput = _output_class(
    "HGRNBitCausalLMOutput",
    "Causal-LM output: loss, logits, the state (``recurrent_cache``), hidden_states.",
    ["loss", "logits"],
)


def hgrn_recurrence(
    i: torch.Tensor, f: torch.Tensor, h0: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = f_t * h_{t-1} + i_t`` over dim 1 of ``[B, T, D]``; returns all ``h`` and the last."""
    bsz, seq, dim = i.shape
    if seq > 1 and i.device.type == "cpu" and i.dtype == f.dtype == torch.float32:
        kernel = native.load()  # one call instead of a Python loop of 2 ops per token
        if kernel is not None and (h0 is None or h0.dtype == torch.float32):
            return kernel.hgrn_scan_f32(i, f, h0)
    h = torch.zeros(bsz, dim, dtype=i.dtype, device=i.device) if h0 is None else h0
    out = torch.empty_like(i)
    for t in range(seq):
        h = torch.addcmul(i[:, t], f[:, t], h)
        out[:, t] = h
    return out, h


class HGRNBitAttention(nn.Module):
    """The HGRN token mixer with ternary projections (published name: ``attn``)."""

    def __init__(self, config: HGRNBitConfig, layer_idx: int) -> None:
        super().__init__()
        if config.use_short_conv:
            raise NotImplementedError(
                "HGRN-bit with use_short_conv=true is not supported (no published checkpoint uses it)"
            )
        hidden, inner = config.hidden_size, config.inner_size
        self.layer_idx = layer_idx
        self.i_proj = BitLinear(hidden, inner)
        self.f_proj = BitLinear(hidden, inner)
        self.g_proj = BitLinear(hidden, inner)
        self.g_norm = RMSNorm(inner, eps=config.rms_norm_eps)
        self.o_proj = BitLinear(inner, hidden)

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None,
        lower_bound: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.sigmoid(self.f_proj(x))
        if lower_bound is not None and self.layer_idx > 0:
            f = lower_bound + (1 - lower_bound) * f
        i = F.silu(self.i_proj(x)) * (1 - f)
        if mask is not None:
            i = i * mask.unsqueeze(-1).to(i.dtype)
        h, last = hgrn_recurrence(i, f, state)
        o = self.g_norm(self.g_proj(x)) * F.silu(h)
        return self.o_proj(o), last


class HGRNBitMLP(nn.Module):
    """GLU feed-forward with ternary projections (published name: ``mlp``)."""

    def __init__(self, config: HGRNBitConfig) -> None:
        super().__init__()
        inter = config.resolved_intermediate_size
        self.gate_proj = BitLinear(config.hidden_size, 2 * inter)
        self.down_proj = BitLinear(inter, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, y = self.gate_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * y)


class HGRNBitBlock(nn.Module):
    """One HGRN-bit layer: token mixing then GLU, each with a pre-norm and a residual."""

    def __init__(self, config: HGRNBitConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = HGRNBitAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = HGRNBitMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None,
        lower_bound: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        o, state = self.attn(self.attn_norm(x), state, lower_bound, mask)
        r = x + o
        return r + self.mlp(self.mlp_norm(r)), state


def _bitlinears(module: nn.Module) -> list[BitLinear]:
    return [m for m in module.modules() if isinstance(m, BitLinear)]


class HGRNBitPreTrainedModel(PreTrainedModel):
    """Shared loading, initialisation and ternary-packing logic."""

    config_class = HGRNBitConfig
    config: HGRNBitConfig
    base_model_prefix = "model"
    _no_split_modules = ["HGRNBitBlock"]
    _is_stateful = True
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, BitLinear) and not module.is_packed:
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, HGRNBitModel) and module.lower_bounds is not None:
            init.zeros_(module.lower_bounds)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a KV cache: the model makes its own HGRNBitCache

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):  # type: ignore[override]
        """transformers' ``from_pretrained``, then packing when ``config.packed_ternary`` is set."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        if getattr(model.config, "packed_ternary", False):
            model.to_ternary()
        return loaded

    def to_ternary(self):
        """Ternarize and pack every BitLinear in place (drops the latent weights); returns self."""
        for layer in _bitlinears(self):
            layer.to_ternary()
            layer.backend = self.config.ternary_backend
        return self

    @property
    def is_packed(self) -> bool:
        layers = _bitlinears(self)
        return bool(layers) and all(m.is_packed for m in layers)

    def set_ternary_backend(self, backend: str) -> None:
        """Choose the packed kernel: ``auto``, ``reference`` or ``triton``."""
        self.config.ternary_backend = backend
        for layer in _bitlinears(self):
            layer.backend = backend

    def ternary_memory(self) -> dict[str, int]:
        """Bytes of the BitLinear weights: ``packed`` (now) vs the same weights in ``bf16``."""
        packed = 0
        bf16 = 0
        for m in _bitlinears(self):
            bf16 += 2 * m.in_features * m.out_features
            if m.is_packed:
                packed += m.packed().nbytes
        return {"packed": packed, "bf16": bf16}

    def save_pretrained(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        if self.is_packed:
            raise RuntimeError("a packed HGRN-bit model has no latent weights to save; save before to_ternary()")
        return super().save_pretrained(*args, **kwargs)


class HGRNBitModel(HGRNBitPreTrainedModel):
    """Embeddings, HGRN-bit layers and the final norm (published prefix: ``model.``)."""

    def __init__(self, config: HGRNBitConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        if config.use_lower_bound:
            self.lower_bounds = nn.Parameter(torch.zeros(config.num_hidden_layers, config.hidden_size))
        else:
            self.register_parameter("lower_bounds", None)
        self.layers = nn.ModuleList(HGRNBitBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"HGRN-bit's input embeddings must be an nn.Embedding, got {type(value).__name__}")
        self.embeddings = value

    def layer_lower_bounds(self) -> torch.Tensor | None:
        """``cumsum(softmax(lower_bounds, 0), 0) - softmax(...)[0]``: row ``l`` bounds layer ``l``.

        Cached while gradients are off (inference) until the parameter changes: recomputing it
        cost about 1 ms per decode step (a strided softmax over all layers).
        """
        if self.lower_bounds is None:
            return None
        lb = self.lower_bounds
        key = (lb.data_ptr(), lb._version, lb.device, lb.dtype)
        cached = getattr(self, "_bounds_cache", None)
        if cached is not None and cached[0] == key and not torch.is_grad_enabled():
            return cached[1]
        probs = lb.to(compute_dtype(lb)).softmax(0)
        bounds = probs.cumsum(0) - probs[0]
        if not torch.is_grad_enabled():
            self._bounds_cache = (key, bounds)
        return bounds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: HGRNBitCache | None = None,
        cache: HGRNBitCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ModelOutput | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = bool(output_hidden_states)
        state = _pick_cache(past_key_values, cache)
        if use_cache and state is None:
            state = HGRNBitCache(len(self.layers))
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        x = inputs_embeds.to(compute_dtype(inputs_embeds))
        mask = None if attention_mask is None else attention_mask[:, -x.shape[1] :]
        bounds = self.layer_lower_bounds()
        hidden: tuple[torch.Tensor, ...] = ()
        for idx, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden += (x,)
            h0 = state.states[idx] if state is not None else None
            x, last = layer(x, h0, None if bounds is None else bounds[idx], mask)
            if state is not None:
                state.states[idx] = last
        x = self.norm(x)
        if output_hidden_states:
            hidden += (x,)
        if state is not None:
            state.seen_tokens += x.shape[1]
        out_cache = state if use_cache else None
        if not return_dict:
            return tuple(v for v in (x, out_cache, hidden or None) if v is not None)
        return HGRNBitModelOutput(last_hidden_state=x, hidden_states=hidden or None, **{_CACHE_FIELD: out_cache})


def _pick_cache(past_key_values: Any, cache: Any) -> HGRNBitCache | None:
    """Accept the state under either name; an empty foreign cache object is replaced."""
    for candidate in (cache, past_key_values):
        if isinstance(candidate, HGRNBitCache):
            return candidate
    for candidate in (cache, past_key_values):
        if candidate is not None and getattr(candidate, "get_seq_length", lambda: 0)() > 0:
            raise TypeError(f"HGRN-bit needs an HGRNBitCache, got {type(candidate).__name__}")
    return None


class HGRNBitForCausalLM(HGRNBitPreTrainedModel, GenerationMixin):
    """HGRN-bit with its ternary ``lm_head``; ``generate()`` runs as an RNN."""

    def __init__(self, config: HGRNBitConfig) -> None:
        super().__init__(config)
        self.model = HGRNBitModel(config)
        self.lm_head = BitLinear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> BitLinear:
        return self.lm_head

    def get_decoder(self) -> HGRNBitModel:
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: HGRNBitCache | None = None,
        cache: HGRNBitCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> ModelOutput | tuple:
        """Logits for every position (or the last ``logits_to_keep``), float32."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            past_key_values=past_key_values,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(logits.device)
            )
        if not return_dict:
            rest = tuple(v for v in (logits, out.recurrent_cache, out.hidden_states) if v is not None)
            return ((loss,) + rest) if loss is not None else rest
        return HGRNBitCausalLMOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{_CACHE_FIELD: out.recurrent_cache}
        )

    @torch.no_grad()
    def next_token_logits(
        self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """float32 ``[batch, vocab]`` logits for the token after the prompt (left padding ok).

        Runs the prompt once without keeping a cache and projects only the last position.
        """
        out = self(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1]

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: HGRNBitCache | None = None,
        cache: HGRNBitCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        next_sequence_length: int | None = None,
        is_first_iteration: bool | None = False,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Feed the whole prompt first, then only the tokens the recurrent state has not seen."""
        state = _pick_cache(past_key_values, cache)
        if state is not None and state.seen_tokens > 0:
            fresh = next_sequence_length or max(1, input_ids.shape[1] - state.seen_tokens)
            inputs: dict[str, Any] = {"input_ids": input_ids[:, -fresh:].contiguous()}
        elif inputs_embeds is not None:
            inputs = {"inputs_embeds": inputs_embeds}
        else:
            inputs = {"input_ids": input_ids.contiguous()}
        inputs["past_key_values"] = state
        inputs["use_cache"] = use_cache
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs


def register_auto_classes() -> None:
    """Register the config and models with transformers' Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    AutoConfig.register(HGRNBitConfig.model_type, HGRNBitConfig, exist_ok=True)
    AutoModel.register(HGRNBitConfig, HGRNBitModel, exist_ok=True)
    AutoModelForCausalLM.register(HGRNBitConfig, HGRNBitForCausalLM, exist_ok=True)
