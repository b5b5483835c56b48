"""SpikeGPT (RWKV-4 blocks with LIF spiking neurons) as a transformers causal LM.

Importing this module registers ``model_type "spikegpt"`` with transformers' ``AutoConfig``,
``AutoModel`` and ``AutoModelForCausalLM``.

Architecture (checked against github.com/ridgerchu/SpikeGPT: ``src/model.py`` for training,
``src/model_run.py`` + ``run.py`` for the released ``ridger/SpikeGPT-OpenWebText-216M``
checkpoint ``SpikeGPT-216M.pth``; L18, D768, ctx 1024, vocab 50277, GPT-NeoX "20B" tokenizer)::

    x = emb[token]                      (spiking_embedding: x = 1[x >= 0], the char model only)
    x = ln0(x)                          (block 0 only)
    for block i:
        h = ln1(x);  h' = h of the previous token (token shift, 0 before the first token)
        xk, xv, xr = h·mix_k + h'·(1 − mix_k), …          (time_mix_k/v/r)
        r = σ(R xr);  k = K xk;  v = V xv
        wkv_t = (Σ_{j<t} e^{(t−1−j)w + k_j} v_j + e^{u + k_t} v_t)
              / (Σ_{j<t} e^{(t−1−j)w + k_j}     + e^{u + k_t})
                with w = −exp(time_decay), u = time_first
        x = x + LIF₁(O(r ⊙ wkv) · s_i)
        h = ln2(x);  xk, xr from the token shift as above
        x = x + LIF₂((σ(R' xr) ⊙ V'(relu(K' xk)²)) · s_i)
        if rescale_every and (i + 1) % rescale_every == 0:  x = x / 2
    logits = head(ln_out(x))

with s_i = 2^−⌊i / rescale_every⌋. The LIF neuron (spikingjelly ``LIFNode``: tau 2, threshold 1,
v_reset 0, decay_input) acts per channel over time: ``v ← v + (x − (v − v_reset)) / tau``;
``spike = 1[v ≥ threshold]``; hard reset ``v ← (1 − spike)·v + spike·v_reset``.

Training code vs the released inference script (we follow the inference script, ``run.py`` →
``model_run.RWKV_RNN``, because that is how the published checkpoint is meant to be run):

1. **Rescaling.** ``model_run`` divides ``att.output.weight`` and ``ffn.value.weight`` of block
   i by 2^⌊i/6⌋ and halves x after every 6th block (``RWKV_RESCALE_LAYER = 6``), a trick copied
   from RWKV-4 where it is exact because layer norms are scale invariant. Here a LIF threshold sits
   between those projections and the residual stream, so it changes the result; ``model.py``
   (training) has no rescaling. ``config.rescale_every`` (default 6 = the inference script;
   0 = training semantics). We scale the projection *outputs* instead of the weights (the same
   numbers: a power of two commutes with rounding), so weights stay exactly as published.
2. **Embedding spikes.** ``model.py`` applies spikingjelly's ``ATan`` surrogate to the embedding
   (its forward is the Heaviside step 1[x ≥ 0]); ``model_run`` does so only for the 77-symbol
   character model and feeds the 216M model the raw embedding. ``config.spiking_embedding``
   (default False).
3. **Neurons.** Training runs ``MultiStepLIFNode`` (cupy kernel, same equations) over (T, B, C)
   and resets membranes per batch; inference keeps one ``LIFNode`` per branch and layer whose
   membrane carries over from token to token, exactly like our state. Dropout (0.03) is training
   only. ``model.py``'s ``RWKV-ffnPre`` variant and positional embeddings are not used by the
   released checkpoint and are rejected on load.

Modes: a forward over T > 1 tokens is the *parallel* mode (projections for all tokens at once;
the WKV recurrence and the LIF neurons are a cheap element-wise loop over time); T = 1 with a
state is the *RNN* mode used by ``generate()`` (constant memory in sequence length). Both run
the same per-layer code and carry the same state, so prompt chunks can be fed in any split.

Recurrent state (``rnn_state``): one float32 tensor ``(num_layers, batch, 7, hidden)``; per layer
and sequence a ``(7, hidden)`` block with the slots ``STATE_*`` below. A fresh state is zeros
except ``STATE_WKV_MAX`` = -1e38 (see :func:`init_state`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

__all__ = [
    "STATE_ATT_SHIFT",
    "STATE_FFN_SHIFT",
    "STATE_LIF_ATT",
    "STATE_LIF_FFN",
    "STATE_SLOTS",
    "STATE_WKV_DEN",
    "STATE_WKV_MAX",
    "STATE_WKV_NUM",
    "SpikeGPTBlock",
    "SpikeGPTCausalLMOutput",
    "SpikeGPTConfig",
    "SpikeGPTForCausalLM",
    "config_from_state_dict",
    "convert_pth_to_hf",
    "init_state",
    "load_spikegpt",
    "load_tokenizer",
    "published_keys",
    "read_pth_state_dict",
    "state_shape",
]

# Slots of the per-layer recurrent state (7, hidden); kept in float32 whatever the weights' dtype.
STATE_ATT_SHIFT = 0  # ln1 output of the previous token (time-mix token shift)
STATE_FFN_SHIFT = 1  # ln2 output of the previous token (channel-mix token shift)
STATE_WKV_NUM = 2  # WKV numerator, scaled by exp(-STATE_WKV_MAX)   ("aa" in model_run)
STATE_WKV_DEN = 3  # WKV denominator, scaled by exp(-STATE_WKV_MAX) ("bb")
STATE_WKV_MAX = 4  # running max exponent; -1e38 for a fresh sequence ("pp")
STATE_LIF_ATT = 5  # membrane potential of the LIF neuron after the time mix
STATE_LIF_FFN = 6  # membrane potential of the LIF neuron after the channel mix
STATE_SLOTS = 7
_WKV_MAX_INIT = -1e38
_FP32_PARAMS = ("time_decay", "time_first")  # kept in float32 whatever the model dtype

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"  # same vocabulary as SpikeGPT's 20B_tokenizer.json
PUBLISHED_TOKENIZER_FILE = "20B_tokenizer.json"


class SpikeGPTConfig(PretrainedConfig):
    """Configuration of a SpikeGPT model; defaults are the released 216M OpenWebText model.

    ``ctx_len`` is the training context (1024); inference itself is unbounded (an RNN).
    ``rescale_every`` / ``spiking_embedding``: see the module docstring (0 / True reproduce the
    training code ``src/model.py`` instead of the inference script).
    """

    model_type = "spikegpt"
    attribute_map = {"max_position_embeddings": "ctx_len"}

    def __init__(
        self,
        vocab_size: int = 50277,
        hidden_size: int = 768,
        num_hidden_layers: int = 18,
        intermediate_size: int | None = None,
        ctx_len: int = 1024,
        layer_norm_epsilon: float = 1e-5,
        lif_tau: float = 2.0,
        lif_threshold: float = 1.0,
        lif_reset: float = 0.0,
        rescale_every: int = 6,
        spiking_embedding: bool = False,
        bos_token_id: int | None = 0,
        eos_token_id: int | None = 0,
        pad_token_id: int | None = 1,
        tie_word_embeddings: bool = False,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.ctx_len = ctx_len
        self.layer_norm_epsilon = layer_norm_epsilon
        self.lif_tau = float(lif_tau)
        self.lif_threshold = float(lif_threshold)
        self.lif_reset = float(lif_reset)
        self.rescale_every = int(rescale_every)
        self.spiking_embedding = bool(spiking_embedding)
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        # transformers' stub shows PretrainedConfig.__init__ without its dataclass fields; at run
        # time it is wrapped to accept every field (tie_word_embeddings included) as a keyword.
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)  # type: ignore[call-arg]


def state_shape(config: SpikeGPTConfig) -> tuple[int, int]:
    """Shape of one layer's recurrent state for one sequence: ``(7, hidden_size)``, float32."""
    return (STATE_SLOTS, config.hidden_size)


def init_state(config: SpikeGPTConfig, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A fresh state ``(num_layers, batch, 7, hidden)``: zeros, WKV max exponent at -1e38."""
    state = torch.zeros(
        config.num_hidden_layers, batch_size, STATE_SLOTS, config.hidden_size, dtype=torch.float32, device=device
    )
    state[:, :, STATE_WKV_MAX] = _WKV_MAX_INIT
    return state


# ---------------------------------------------------------------------------------------------
# Recurrences (element-wise over time; the projections around them are batched over time)
# ---------------------------------------------------------------------------------------------


def _token_shift(
    h: torch.Tensor, carried: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous valid token's features for every position, and the new carried value.

    h: (B, T, C); carried: (B, C) from the state; mask: (B, T) bool or None. With a mask, padded
    positions are skipped: each position sees the last *valid* earlier token (or the state).
    """
    carried = carried.to(h.dtype)
    if mask is None:
        if h.shape[1] == 1:  # RNN mode: the previous token is the carried value itself
            return carried[:, None], h[:, -1]
        prev = torch.cat([carried[:, None], h[:, :-1]], dim=1)
        return prev, h[:, -1]
    batch, steps, channels = h.shape
    positions = torch.arange(steps, device=h.device).expand(batch, steps)
    last_valid = torch.cummax(torch.where(mask, positions, -1), dim=1).values  # last valid index <= t
    prev_index = torch.cat([last_valid.new_full((batch, 1), -1), last_valid[:, :-1]], dim=1)
    extended = torch.cat([carried[:, None], h], dim=1)  # index 0 is the carried value
    prev = extended.gather(1, (prev_index + 1)[..., None].expand(batch, steps, channels))
    new_carried = extended.gather(1, (last_valid[:, -1:] + 1)[..., None].expand(batch, 1, channels))[:, 0]
    return prev, new_carried


def _wkv(
    decay: torch.Tensor,
    first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num: torch.Tensor,
    den: torch.Tensor,
    max_exp: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RWKV-4 WKV over time in float32, numerically stable via a running max exponent.

    decay = -exp(time_decay), first = time_first: (C,); k, v: (B, T, C); num/den/max_exp: (B, C).
    Returns wkv (B, T, C) and the new (num, den, max_exp).
    """
    out = torch.empty_like(k)
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        with_first = first + kt
        p = torch.maximum(max_exp, with_first)
        e_old, e_new = torch.exp(max_exp - p), torch.exp(with_first - p)
        out[:, t] = (e_old * num + e_new * vt) / (e_old * den + e_new)
        decayed = max_exp + decay
        p = torch.maximum(decayed, kt)
        e_old, e_new = torch.exp(decayed - p), torch.exp(kt - p)
        new_num, new_den = e_old * num + e_new * vt, e_old * den + e_new
        if mask is None:
            num, den, max_exp = new_num, new_den, p
        else:
            keep = mask[:, t, None]
            num = torch.where(keep, new_num, num)
            den = torch.where(keep, new_den, den)
            max_exp = torch.where(keep, p, max_exp)
    return out, num, den, max_exp


def _lif(
    x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, tau: float, threshold: float, reset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaky integrate-and-fire neurons with hard reset over time.

    x: (B, T, C) float32 input current; v: (B, C) membrane. Returns spikes (B, T, C) in {0, 1}
    (0 at padded positions) and the new membrane.
    """
    spikes = torch.empty_like(x)
    for t in range(x.shape[1]):
        charged = v + (x[:, t] - (v - reset)) / tau
        spike = (charged >= threshold).to(x.dtype)
        fired = (1.0 - spike) * charged + spike * reset
        if mask is None:
            v = fired
        else:
            keep = mask[:, t, None]
            spike = spike * keep
            v = torch.where(keep, fired, v)
        spikes[:, t] = spike
    return spikes, v


# ---------------------------------------------------------------------------------------------
# Modules (attribute names = the published state-dict keys)
# ---------------------------------------------------------------------------------------------


class _TimeMix(nn.Module):
    """RWKV-4 time mix (``blocks.{i}.att.*``)."""

    def __init__(self, config: SpikeGPTConfig) -> None:
        super().__init__()
        c = config.hidden_size
        self.time_decay = nn.Parameter(torch.zeros(c))
        self.time_first = nn.Parameter(torch.zeros(c))
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, c))
        self.time_mix_v = nn.Parameter(torch.ones(1, 1, c))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, c))
        self.key = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(c, c, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.output = nn.Linear(c, c, bias=False)

    def forward(self, h: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        """h: (B, T, C) = ln1(x); state: (B, 7, C), updated in place. Returns the LIF input current."""
        prev, shift = _token_shift(h, state[:, STATE_ATT_SHIFT], mask)
        mk, mv, mr = self.time_mix_k.view(-1), self.time_mix_v.view(-1), self.time_mix_r.view(-1)
        xk = h * mk + prev * (1 - mk)
        xv = h * mv + prev * (1 - mv)
        xr = h * mr + prev * (1 - mr)
        r = torch.sigmoid(self.receptance(xr))
        k = self.key(xk).float()
        v = self.value(xv).float()
        decay = -torch.exp(self.time_decay.float().view(-1))
        wkv, num, den, max_exp = _wkv(
            decay,
            self.time_first.float().view(-1),
            k,
            v,
            state[:, STATE_WKV_NUM],
            state[:, STATE_WKV_DEN],
            state[:, STATE_WKV_MAX],
            mask,
        )
        state[:, STATE_ATT_SHIFT] = shift.float()
        state[:, STATE_WKV_NUM] = num
        state[:, STATE_WKV_DEN] = den
        state[:, STATE_WKV_MAX] = max_exp
        return self.output(r * wkv.to(r.dtype)).float() * scale


class _ChannelMix(nn.Module):
    """RWKV-4 channel mix with squared ReLU (``blocks.{i}.ffn.*``)."""

    def __init__(self, config: SpikeGPTConfig) -> None:
        super().__init__()
        c, f = config.hidden_size, config.intermediate_size
        self.time_mix_k = nn.Parameter(torch.ones(1, 1, c))
        self.time_mix_r = nn.Parameter(torch.ones(1, 1, c))
        self.key = nn.Linear(c, f, bias=False)
        self.receptance = nn.Linear(c, c, bias=False)
        self.value = nn.Linear(f, c, bias=False)

    def forward(self, h: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        """h: (B, T, C) = ln2(x); state: (B, 7, C), updated in place. Returns the LIF input current."""
        prev, shift = _token_shift(h, state[:, STATE_FFN_SHIFT], mask)
        mk, mr = self.time_mix_k.view(-1), self.time_mix_r.view(-1)
        xk = h * mk + prev * (1 - mk)
        xr = h * mr + prev * (1 - mr)
        r = torch.sigmoid(self.receptance(xr))
        kv = self.value(torch.square(torch.relu(self.key(xk))))
        state[:, STATE_FFN_SHIFT] = shift.float()
        return (r * (kv * scale)).float()


class SpikeGPTBlock(nn.Module):
    """One SpikeGPT block: time mix → LIF → residual, channel mix → LIF → residual."""

    def __init__(self, config: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__()
        self.config = config
        self.layer_id = layer_id
        eps = config.layer_norm_epsilon
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.att = _TimeMix(config)
        self.ffn = _ChannelMix(config)
        every = config.rescale_every
        # Inference-script rescaling (see module docstring); exact powers of two.
        self.branch_scale = 2.0 ** -(layer_id // every) if every > 0 else 1.0
        self.halve_after = every > 0 and (layer_id + 1) % every == 0

    def forward(
        self, x: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None = None, inplace: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, T, C); state: (B, 7, C) float32; mask: (B, T) bool or None.

        Returns the new x, the new state and the spikes (B, T, 2, C) of both neurons.  With
        ``inplace`` the given state tensor is updated and returned (no per-layer copy).
        """
        cfg = self.config
        if not inplace:
            state = state.clone()
        if self.layer_id == 0:
            x = self.ln0(x)
        current = self.att(self.ln1(x), state, mask, self.branch_scale)
        spikes_att, v_att = _lif(current, state[:, STATE_LIF_ATT], mask, cfg.lif_tau, cfg.lif_threshold, cfg.lif_reset)
        state[:, STATE_LIF_ATT] = v_att
        x = x + spikes_att.to(x.dtype)
        current = self.ffn(self.ln2(x), state, mask, self.branch_scale)
        spikes_ffn, v_ffn = _lif(current, state[:, STATE_LIF_FFN], mask, cfg.lif_tau, cfg.lif_threshold, cfg.lif_reset)
        state[:, STATE_LIF_FFN] = v_ffn
        x = x + spikes_ffn.to(x.dtype)
        if self.halve_after:
            x = x / 2
        return x, state, torch.stack([spikes_att, spikes_ffn], dim=2)


@dataclass
class SpikeGPTCausalLMOutput(ModelOutput):
    """Output of :class:`SpikeGPTForCausalLM`.

    rnn_state: (num_layers, batch, 7, hidden) float32, the state after the last valid token.
    spikes: with ``output_spikes=True``, one bool tensor (B, T, 2, hidden) per layer.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    rnn_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    spikes: tuple[torch.Tensor, ...] | None = None


class SpikeGPTPreTrainedModel(PreTrainedModel):
    config_class = SpikeGPTConfig
    config: SpikeGPTConfig
    base_model_prefix = "spikegpt"
    main_input_name = "input_ids"
    _no_split_modules = ["SpikeGPTBlock"]
    _keep_in_fp32_modules_strict = list(_FP32_PARAMS)  # the decay is exponentiated twice
    _is_stateful = True  # no assisted / contrastive decoding: the state cannot be rolled back
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """RWKV-4 style initialization for models built from a config (tests, sanity checks).

        Uses transformers' ``initialization`` helpers, which leave loaded weights alone.
        """
        from transformers import initialization as init

        cfg = self.config
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=cfg.hidden_size**-0.5)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (_TimeMix, _ChannelMix)):
            c = cfg.hidden_size
            ramp = torch.arange(c, dtype=torch.float32, device=module.time_mix_k.device) / c
            init.copy_(module.time_mix_k, ramp.pow(0.5).view(1, 1, c))
            init.copy_(module.time_mix_r, ramp.pow(0.25).view(1, 1, c))
            if isinstance(module, _TimeMix):
                init.copy_(module.time_mix_v, ramp.pow(0.5).view(1, 1, c))
                init.copy_(module.time_decay, -5 + 8 * (ramp * c / max(c - 1, 1)) ** 0.7)
                init.copy_(module.time_first, torch.full_like(ramp, math.log(0.3)))


class SpikeGPTForCausalLM(SpikeGPTPreTrainedModel, GenerationMixin):
    """SpikeGPT language model. Parameter names equal the published ``.pth`` keys."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: SpikeGPTConfig) -> None:
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(SpikeGPTBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_out = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # -- transformers plumbing ----------------------------------------------------------------

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def set_input_embeddings(self, value: nn.Module) -> None:
        if not isinstance(value, nn.Embedding):
            raise TypeError(f"SpikeGPT's input embeddings must be an nn.Embedding, got {type(value).__name__}")
        self.emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the recurrent state travels as ``rnn_state``, not as a KV cache

    def init_state(self, batch_size: int) -> torch.Tensor:
        return init_state(self.config, batch_size, device=self.emb.weight.device)

    # -- forward --------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        rnn_state: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_spikes: bool = False,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> SpikeGPTCausalLMOutput | tuple[torch.Tensor, ...]:
        """Score a chunk of tokens, continuing from ``rnn_state`` (a fresh sequence if None).

        ``attention_mask`` (B, T) marks real tokens; padded positions (left or right padding)
        leave the state untouched, so a left-padded batch gives each row the logits of its
        unpadded prompt. ``logits_to_keep=n`` computes logits for the last n positions only.
        Other keyword arguments (position ids, caches from generate) are accepted and ignored.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("SpikeGPT.forward: pass exactly one of input_ids or inputs_embeds")
        x = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
        if self.config.spiking_embedding:
            x = (x >= 0).to(x.dtype)
        batch = x.shape[0]
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(device=x.device, dtype=torch.bool)
            if bool(mask.all()):
                mask = None
        state = self.init_state(batch) if rnn_state is None else rnn_state
        if state.shape != (self.config.num_hidden_layers, batch, STATE_SLOTS, self.config.hidden_size):
            raise ValueError(
                f"SpikeGPT.forward: rnn_state has shape {tuple(state.shape)}, expected "
                f"{(self.config.num_hidden_layers, batch, STATE_SLOTS, self.config.hidden_size)}"
            )
        # One copy of the whole state, updated layer by layer in place: the caller's state stays
        # untouched, and a decode step makes no per-layer copies and no final stack.
        new_state = state.clone()
        hidden_states = [x] if output_hidden_states else None
        spikes: list[torch.Tensor] | None = [] if output_spikes else None
        for i, block in enumerate(self.blocks):
            x, _, layer_spikes = block(x, new_state[i], mask, inplace=True)
            if hidden_states is not None:
                hidden_states.append(x)
            if spikes is not None:
                spikes.append(layer_spikes.bool())
        x = self.ln_out(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        keep_state = use_cache if use_cache is not None else self.config.use_cache
        output = SpikeGPTCausalLMOutput(
            loss=loss,
            logits=logits,
            rnn_state=new_state if keep_state else None,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            spikes=tuple(spikes) if spikes is not None else None,
        )
        return output.to_tuple() if return_dict is False else output

    # -- RNN mode and scoring helpers -----------------------------------------------------------

    @torch.no_grad()
    def step(
        self, token_ids: torch.LongTensor, rnn_state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RNN mode: one token per sequence (B,) → (logits (B, V), new state)."""
        out = self(input_ids=token_ids.view(-1, 1), rnn_state=rnn_state, use_cache=True)
        return out.logits[:, -1], out.rnn_state

    @torch.no_grad()
    def next_token_logits(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        rnn_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, V) float32 for the token after each (possibly padded) prompt, in parallel mode."""
        out = self(
            input_ids=input_ids,
            attention_mask=attention_mask,
            rnn_state=rnn_state,
            logits_to_keep=1,
            use_cache=False,
        )
        return out.logits[:, -1].float()

    # -- generate() ------------------------------------------------------------------------------

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        rnn_state: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """First step: the whole prompt; later steps: only the newest token plus the state."""
        if rnn_state is not None:
            return {"input_ids": input_ids[:, -1:], "rnn_state": rnn_state, "use_cache": True}
        if inputs_embeds is not None:
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "use_cache": use_cache}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["rnn_state"] = getattr(outputs, "rnn_state", None)
        model_kwargs.pop("inputs_embeds", None)  # only the prompt comes as embeddings
        return model_kwargs

    # -- loading the published layout ------------------------------------------------------------

    @classmethod
    def from_pth(
        cls,
        path: str | os.PathLike[str],
        config: SpikeGPTConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        **config_overrides: Any,
    ) -> SpikeGPTForCausalLM:
        """Build a model from a published SpikeGPT ``.pth`` state dict (e.g. ``SpikeGPT-216M.pth``).

        Without ``config`` the sizes are read off the tensors and the other fields take the
        defaults (the 216M model's inference-script semantics) or ``config_overrides``.
        """
        state_dict = read_pth_state_dict(path)
        if config is None:
            config = config_from_state_dict(state_dict, **config_overrides)
        elif config_overrides:
            raise ValueError("SpikeGPT.from_pth: pass either config or config overrides, not both")
        _check_shapes(state_dict, config, str(path))
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        for name, param in model.named_parameters():
            if not name.endswith(_FP32_PARAMS):  # decay/bonus stay float32, as model_run keeps them
                param.data = param.data.to(dtype)
        if device is not None:
            model.to(device)  # type: ignore[arg-type]  # (decorated PreTrainedModel.to, as below)
        return model.eval()


# ---------------------------------------------------------------------------------------------
# Published checkpoint layout
# ---------------------------------------------------------------------------------------------

_TOP_KEYS = ("emb.weight", "ln_out.weight", "ln_out.bias", "head.weight")
_BLOCK_KEYS = (
    "ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
    "att.time_decay", "att.time_first", "att.time_mix_k", "att.time_mix_v", "att.time_mix_r",
    "att.key.weight", "att.value.weight", "att.receptance.weight", "att.output.weight",
    "ffn.time_mix_k", "ffn.time_mix_r", "ffn.key.weight", "ffn.receptance.weight", "ffn.value.weight",
)  # fmt: skip


def published_keys(num_layers: int) -> list[str]:
    """All keys of a published SpikeGPT state dict with ``num_layers`` blocks."""
    keys = list(_TOP_KEYS) + ["blocks.0.ln0.weight", "blocks.0.ln0.bias"]
    keys += [f"blocks.{i}.{k}" for i in range(num_layers) for k in _BLOCK_KEYS]
    return keys


def read_pth_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` state dict (tensors only, never pickled code) and check its keys."""
    try:
        state_dict = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a corrupt or non-state-dict file
        raise ValueError(f"{path}: not a readable SpikeGPT state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a SpikeGPT state dict)")
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
    unsupported = [k for k in state_dict if "ffnPre" in k or k.startswith(("pos_emb", "head_q", "head_k", "copy_mask"))]
    if unsupported:
        raise ValueError(
            f"{path}: unsupported SpikeGPT variant (key {unsupported[0]!r}: ffnPre, positional "
            "embeddings and head_qk are not used by the released checkpoints)"
        )
    num_layers = _count_layers(state_dict, str(path))
    expected = set(published_keys(num_layers))
    missing = sorted(expected - state_dict.keys())
    extra = sorted(state_dict.keys() - expected)
    if missing or extra:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
        raise ValueError(
            f"{path}: not the published SpikeGPT layout ({what}; {len(missing)} missing, {len(extra)} unexpected)"
        )
    return state_dict


def _count_layers(state_dict: dict[str, torch.Tensor], source: str) -> int:
    ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not ids:
        raise ValueError(f"{source}: no 'blocks.N.*' keys; not a SpikeGPT state dict")
    return max(ids) + 1


def config_from_state_dict(state_dict: dict[str, torch.Tensor], **overrides: Any) -> SpikeGPTConfig:
    """A config whose sizes match the tensors; other fields take defaults or ``overrides``."""
    vocab_size, hidden_size = state_dict["emb.weight"].shape
    sizes: dict[str, Any] = dict(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden_size),
        num_hidden_layers=_count_layers(state_dict, "state dict"),
        intermediate_size=int(state_dict["blocks.0.ffn.key.weight"].shape[0]),
    )
    sizes.update(overrides)
    return SpikeGPTConfig(**sizes)


def _check_shapes(state_dict: dict[str, torch.Tensor], config: SpikeGPTConfig, source: str) -> None:
    for key, shape in _expected_shapes(config).items():
        got = tuple(state_dict[key].shape) if key in state_dict else None
        if got != shape:
            raise ValueError(f"{source}: tensor {key!r} has shape {got}, config expects {shape}")


def _expected_shapes(config: SpikeGPTConfig) -> dict[str, tuple[int, ...]]:
    c, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "emb.weight": (v, c), "ln_out.weight": (c,), "ln_out.bias": (c,), "head.weight": (v, c),
        "blocks.0.ln0.weight": (c,), "blocks.0.ln0.bias": (c,),
    }  # fmt: skip
    per_block = {
        "ln1.weight": (c,), "ln1.bias": (c,), "ln2.weight": (c,), "ln2.bias": (c,),
        "att.time_decay": (c,), "att.time_first": (c,),
        "att.time_mix_k": (1, 1, c), "att.time_mix_v": (1, 1, c), "att.time_mix_r": (1, 1, c),
        "att.key.weight": (c, c), "att.value.weight": (c, c), "att.receptance.weight": (c, c),
        "att.output.weight": (c, c),
        "ffn.time_mix_k": (1, 1, c), "ffn.time_mix_r": (1, 1, c),
        "ffn.key.weight": (f, c), "ffn.receptance.weight": (c, c), "ffn.value.weight": (c, f),
    }  # fmt: skip
    for i in range(config.num_hidden_layers):
        shapes.update({f"blocks.{i}.{k}": s for k, s in per_block.items()})
    return shapes


# ---------------------------------------------------------------------------------------------
# Tokenizer and one-call loading
# ---------------------------------------------------------------------------------------------


def load_tokenizer(source: str | os.PathLike[str] | None = None, model_dir: str | os.PathLike[str] | None = None):
    """The GPT-NeoX tokenizer SpikeGPT uses.

    Order: ``source`` (a tokenizer dir, a ``tokenizer.json``-style file or a hub id); tokenizer
    files in ``model_dir``; ``20B_tokenizer.json`` there (the file SpikeGPT's repo ships); the hub
    tokenizer ``EleutherAI/gpt-neox-20b``. ``<|padding|>`` becomes the pad token when none is set.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    def from_file(path: Path):
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path), eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
        )

    directory = Path(model_dir) if model_dir is not None else None
    if source is not None:
        path = Path(source)
        tokenizer = from_file(path) if path.is_file() else AutoTokenizer.from_pretrained(str(source))
    elif directory is not None and any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    elif directory is not None and (directory / PUBLISHED_TOKENIZER_FILE).is_file():
        tokenizer = from_file(directory / PUBLISHED_TOKENIZER_FILE)
    else:
        tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER)
    if tokenizer.pad_token is None and "<|padding|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|padding|>"
    return tokenizer


def load_spikegpt(
    path_or_hub_id: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **config_overrides: Any,
):
    """Load a SpikeGPT model and its tokenizer; returns ``(model, tokenizer)``.

    ``path_or_hub_id`` is one of:

    - a directory with ``config.json`` and transformers weights (``*.safetensors``/``*.bin``,
      e.g. written by :func:`convert_pth_to_hf`): loaded with ``from_pretrained``;
    - a ``.pth`` file, or a directory holding exactly one, in the published layout; a SpikeGPT
      ``config.json`` beside it supplies the config, otherwise sizes come from the tensors and
      the other fields from the defaults (the released 216M model's inference script);
    - a hub id such as ``ridger/SpikeGPT-OpenWebText-216M`` (fetched with huggingface_hub).

    ``config_overrides`` change config fields (e.g. ``rescale_every=0`` for training-code
    semantics). The tokenizer is found as described in :func:`load_tokenizer`.
    """
    source = Path(path_or_hub_id)
    if not source.exists():
        source = _download(str(path_or_hub_id))
    model_dir = source if source.is_dir() else source.parent
    has_hf_weights = source.is_dir() and any(
        any(source.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin")
    )
    config = _read_config(model_dir / "config.json", config_overrides)
    if has_hf_weights:
        if config is None:
            raise ValueError(f"{model_dir}: transformers weights without a config.json")
        model = SpikeGPTForCausalLM.from_pretrained(str(source), config=config, dtype=dtype)
    else:
        pth = source if source.is_file() else _single_pth(source)
        if config is None:
            model = SpikeGPTForCausalLM.from_pth(pth, dtype=dtype, **config_overrides)
        else:
            model = SpikeGPTForCausalLM.from_pth(pth, config=config, dtype=dtype)
    if device is not None:
        # transformers wraps PreTrainedModel.to in a decorator that its stub types badly
        model.to(device)  # type: ignore[arg-type]
    return model.eval(), load_tokenizer(tokenizer, model_dir=model_dir)


def _read_config(path: Path, overrides: dict[str, Any]) -> SpikeGPTConfig | None:
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if raw.get("model_type") != SpikeGPTConfig.model_type:
        raise ValueError(f"{path}: field model_type is {raw.get('model_type')!r}, expected 'spikegpt'")
    return SpikeGPTConfig.from_pretrained(str(path.parent), **overrides)


def _single_pth(directory: Path) -> Path:
    found = sorted(directory.glob("*.pth"))
    if len(found) != 1:
        raise ValueError(
            f"{directory}: expected transformers weights or exactly one .pth checkpoint, found {len(found)} .pth files"
        )
    return found[0]


def _download(hub_id: str) -> Path:
    """Fetch a hub repository's checkpoint, config and tokenizer files (real users only)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.pth", "*.safetensors", "*.txt", "*.model"]
    return Path(snapshot_download(repo_id=hub_id, allow_patterns=patterns))


def convert_pth_to_hf(
    pth_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None = None,
    **config_overrides: Any,
) -> Path:
    """Write ``config.json`` + safetensors weights (+ tokenizer) loadable with ``from_pretrained``."""
    model, tok = load_spikegpt(pth_path, tokenizer=tokenizer, **config_overrides)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _register() -> None:
    """Make ``AutoConfig`` / ``AutoModel(ForCausalLM)`` know ``spikegpt`` (idempotent)."""
    AutoConfig.register(SpikeGPTConfig.model_type, SpikeGPTConfig, exist_ok=True)
    AutoModel.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)
    AutoModelForCausalLM.register(SpikeGPTConfig, SpikeGPTForCausalLM, exist_ok=True)


_register()
