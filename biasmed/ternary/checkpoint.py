"""Tiny random HGRN-bit checkpoints in the published layout (tests, demos, offline runs).

``make_tiny_hgrn_checkpoint(path)`` writes what ``ridger/MMfreeLM-*`` ships, at toy size:

* ``config.json`` with the published fields (``model_type: hgrn_bit``, ``HGRNBitForCausalLM``);
* ``model.safetensors`` whose tensors carry the published key names (listed by
  :func:`published_keys`), written directly from that list rather than from our modules, so a
  load proves that our module tree matches the published one;
* ``generation_config.json``;
* a small byte-pair tokenizer (``<unk>``=0, ``<s>``=1, ``</s>``=2, ``▁`` word prefix, BOS added
  like the Llama tokenizer of the real checkpoints) that ``AutoTokenizer.from_pretrained(path)``
  loads offline.
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = (
    "A 45-year-old man presents to the emergency department with chest pain and shortness of breath. "
    "The patient reports fever, cough and fatigue for three days. Which of the following is the most "
    "likely diagnosis? Which of the following is the best next step in management? Answer: A B C D E. "
    "The physician examines the heart, lungs and abdomen; blood pressure is 120/80 mm Hg, pulse 88/min. "
    "Laboratory studies show anemia, elevated creatinine and normal liver enzymes. "
    "She was treated with antibiotics and recovered. The infant has a rash on the face and hands. "
    "the of and to in is was for with on as by at from that this which patient patients treatment "
    "0 1 2 3 4 5 6 7 8 9 ( ) [ ] , . ; : ? ! ' \" - + = % / * # & @"
)


def published_keys(num_hidden_layers: int) -> list[str]:
    """Tensor names of a published HGRN-bit checkpoint (no short conv, with lower bounds)."""
    keys = ["model.embeddings.weight", "model.lower_bounds"]
    for layer in range(num_hidden_layers):
        base = f"model.layers.{layer}"
        keys += [f"{base}.attn_norm.weight", f"{base}.mlp_norm.weight", f"{base}.attn.g_norm.weight"]
        for proj in ("i_proj", "f_proj", "g_proj", "o_proj"):
            keys += [f"{base}.attn.{proj}.weight", f"{base}.attn.{proj}.norm.weight"]
        for proj in ("gate_proj", "down_proj"):
            keys += [f"{base}.mlp.{proj}.weight", f"{base}.mlp.{proj}.norm.weight"]
    keys += ["model.norm.weight", "lm_head.weight", "lm_head.norm.weight"]
    return keys


def _shapes(config: dict) -> dict[str, tuple[int, ...]]:
    hidden = config["hidden_size"]
    inner = hidden * config["expand_ratio"]
    inter = config["intermediate_size"]
    if inter is None:
        raw = int(hidden * config["hidden_ratio"] * 2 / 3)
        inter = 256 * ((raw + 255) // 256)
    out: dict[str, tuple[int, ...]] = {}
    for key in published_keys(config["num_hidden_layers"]):
        if key == "model.embeddings.weight":
            shape: tuple[int, ...] = (config["vocab_size"], hidden)
        elif key == "model.lower_bounds":
            shape = (config["num_hidden_layers"], hidden)
        elif key == "lm_head.weight":
            shape = (config["vocab_size"], hidden)
        elif key.endswith(("i_proj.weight", "f_proj.weight", "g_proj.weight")):
            shape = (inner, hidden)
        elif key.endswith("o_proj.weight"):
            shape = (hidden, inner)
        elif key.endswith("gate_proj.weight"):
            shape = (2 * inter, hidden)
        elif key.endswith("down_proj.weight"):
            shape = (hidden, inter)
        elif key.endswith(("o_proj.norm.weight", "g_norm.weight")):
            shape = (inner,)
        elif key.endswith("down_proj.norm.weight"):
            shape = (inter,)
        else:  # the other norms act on hidden_size
            shape = (hidden,)
        out[key] = shape
    return out


def _write_tokenizer(path: Path, vocab_size: int) -> int:
    """Train a tiny deterministic BPE tokenizer; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set(_CORPUS) - {" "}) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        padding_side="left",  # recurrent model: prompts end at the last position
    )
    fast.save_pretrained(str(path))
    return tok.get_vocab_size()


def make_tiny_hgrn_checkpoint(
    path: str | Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    vocab_size: int = 384,
    intermediate_size: int | None = None,
    expand_ratio: int = 1,
    seed: int = 0,
    dtype: str = "bfloat16",
    with_tokenizer: bool = True,
) -> Path:
    """Write a random HGRN-bit checkpoint in the published layout to ``path``; return it.

    Latent weights are random normal (the layer output does not depend on their scale beyond
    ``mean|W|``); norms and lower bounds are randomised too so that every published parameter
    matters.  ``intermediate_size=None`` keeps the published rule (a multiple of 256).
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if with_tokenizer:
        got = _write_tokenizer(path, vocab_size)
        if got > vocab_size:
            raise ValueError(f"tokenizer has {got} pieces, more than vocab_size={vocab_size}")
    config = {
        "architectures": ["HGRNBitForCausalLM"],
        "attn_mode": "fused_recurrent",
        "bos_token_id": 1,
        "conv_size": 4,
        "eos_token_id": 2,
        "expand_ratio": expand_ratio,
        "fuse_cross_entropy": True,
        "hidden_act": "swish",
        "hidden_ratio": 4,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 2048,
        "model_type": "hgrn_bit",
        "num_heads": 1,
        "num_hidden_layers": num_hidden_layers,
        "rms_norm_eps": 1e-06,
        "share_conv_kernel": True,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_lower_bound": True,
        "use_short_conv": False,
        "vocab_size": vocab_size,
    }
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in _shapes(config).items():
        if key == "model.embeddings.weight":
            t = torch.randn(shape, generator=gen)
        elif key == "model.lower_bounds":
            t = torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # norm weights around 1
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        tensors[key] = t.to(getattr(torch, dtype)).contiguous()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": 1, "eos_token_id": 2}
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return path
