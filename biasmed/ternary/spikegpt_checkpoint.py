"""Tiny random SpikeGPT checkpoints in the published layout, for tests and offline demos.

:func:`make_tiny_spikegpt_checkpoint` writes a directory with

- ``SpikeGPT-tiny.pth``: a ``torch.save``'d state dict with exactly the keys and shapes of the
  released ``SpikeGPT-216M.pth`` (``emb.weight``, ``blocks.{i}.att.time_mix_k`` of shape
  (1, 1, C), ``blocks.0.ln0.*``, ``head.weight``, ...), float32;
- ``config.json``: a ``spikegpt`` config (so ``load_spikegpt(dir)`` knows the semantics);
- ``tokenizer.json`` & co: a byte-level BPE tokenizer with no merges (every byte is a token)
  whose special ids mirror GPT-NeoX: 0 ``<|endoftext|>``, 1 ``<|padding|>``. It needs no network.

Weights are scaled so that the LIF neurons actually fire (roughly a fifth to a half of them per
step), otherwise spike-pattern tests would compare silent networks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from biasmed.ternary.spikegpt import SpikeGPTConfig, published_keys

__all__ = ["TINY_PTH_NAME", "make_tiny_spikegpt_checkpoint", "make_tiny_tokenizer"]

TINY_PTH_NAME = "SpikeGPT-tiny.pth"
_SPECIAL_TOKENS = ("<|endoftext|>", "<|padding|>")
# Output-projection gains: LIF input currents of a few units, so that neurons fire often.
_ATT_OUT_GAIN = 8.0
_FFN_OUT_GAIN = 6.0


def make_tiny_tokenizer():
    """A byte-level tokenizer: ids 0/1 special (as in GPT-NeoX), then the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS)}
    vocab.update({symbol: len(_SPECIAL_TOKENS) + i for i, symbol in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|padding|>",
    )


def _random_state_dict(config: SpikeGPTConfig, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    c, f, v = config.hidden_size, config.intermediate_size, config.vocab_size

    def normal(*shape: int, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std + mean

    def uniform(*shape: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(*shape, generator=gen) * (high - low) + low

    def branch_gain(key: str) -> float:
        # Undo the inference script's 2^-(i // rescale_every) so deep layers fire as well.
        every = config.rescale_every
        return 2.0 ** (int(key.split(".")[1]) // every) if every > 0 else 1.0

    tensors: dict[str, torch.Tensor] = {}
    for key in published_keys(config.num_hidden_layers):
        if key == "emb.weight":
            t = normal(v, c, std=1.0)
        elif key == "head.weight":
            t = normal(v, c, std=c**-0.5)
        elif key.endswith(("ln0.weight", "ln1.weight", "ln2.weight", "ln_out.weight")):
            t = normal(c, std=0.1, mean=1.0)
        elif key.endswith(".bias"):
            t = normal(c, std=0.1)
        elif key.endswith("time_decay"):
            t = uniform(c, low=-3.0, high=1.5)  # per-token decay exp(-exp(.)) from ~0.95 to ~0.01
        elif key.endswith("time_first"):
            t = normal(c, std=0.5, mean=math.log(0.3))
        elif ".time_mix_" in key:
            t = uniform(1, 1, c, low=0.0, high=1.0)
        elif key.endswith("att.output.weight"):
            t = normal(c, c, std=_ATT_OUT_GAIN * branch_gain(key) * c**-0.5)
        elif key.endswith("ffn.key.weight"):
            t = normal(f, c, std=c**-0.5)
        elif key.endswith("ffn.value.weight"):
            t = normal(c, f, std=_FFN_OUT_GAIN * branch_gain(key) * f**-0.5)
        elif key.endswith("weight"):  # remaining square projections
            t = normal(c, c, std=c**-0.5)
        else:  # pragma: no cover - published_keys and this table must stay in step
            raise KeyError(f"no initializer for {key!r}")
        tensors[key] = t.float().contiguous()
    return tensors


def make_tiny_spikegpt_checkpoint(
    path: str | os.PathLike[str],
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 4,
    intermediate_size: int | None = None,
    rescale_every: int = 2,
    seed: int = 0,
) -> Path:
    """Write a tiny random SpikeGPT checkpoint directory; returns the ``.pth`` path.

    ``rescale_every`` defaults to 2 so that a 4-layer model exercises the inference script's
    halving (the released 18-layer model uses 6). The vocabulary is the tiny tokenizer's (258).
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    config = SpikeGPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        intermediate_size=intermediate_size,
        ctx_len=256,
        rescale_every=rescale_every,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    pth = out / TINY_PTH_NAME
    torch.save(_random_state_dict(config, seed), pth)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return pth
