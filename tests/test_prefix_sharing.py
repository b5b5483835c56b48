"""Prefix sharing (biasmed.models.prefix) on a tiny random Llama built in memory.

The tree must cover every sequence exactly, save work where prompts share prefixes, and the
shared computation must give the letter log-probs (and greedy replies) of the unshared one.
"""

from __future__ import annotations

import asyncio
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from biasmed.dataset.build import build_benchmark  # noqa: E402
from biasmed.dataset.medqa import load_demo  # noqa: E402
from biasmed.models.base import GenParams  # noqa: E402
from biasmed.models.hf import LocalCausalLM  # noqa: E402
from biasmed.models.prefix import (  # noqa: E402
    Node,
    build_tree,
    forward_segments,
    probe_kv_cache,
    score_last,
    supports_sharing,
    tree_cost,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads fighting other processes
    run these small models 4-8x slower than one (measured); restored after the module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (nothing to train or download) and a chat
    template: 256 byte tokens + <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
    return tok


def tiny_llama(vocab_size: int = 259, dtype=None, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    # random init is nearly uniform: sharpen it so log-probs and greedy replies are not all ties
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.to(dtype or torch.float32)


def _family_seqs(seed: int = 1) -> list[list[int]]:
    """Token sequences shaped like a chunk of BiasMedQA prompts: a common head, per-question
    stems, a condition inserted early for one of 8 and late for the others, a prefix of another
    sequence and an exact duplicate."""
    rnd = random.Random(seed)
    tok = lambda n: [rnd.randrange(3, 259) for _ in range(n)]  # noqa: E731
    head = tok(30)
    seqs = []
    for _q in range(3):
        stem = head + tok(60)
        for b in range(8):
            ins = tok(rnd.randrange(0, 15))
            s = stem[:40] + ins + stem[40:] if b == 3 else stem + ins
            seqs.append(s + tok(rnd.randrange(5, 12)))
    seqs.append(seqs[0][:50])
    seqs.append(list(seqs[1]))
    return seqs


def _plain_last_logprobs(model, seqs):
    with torch.inference_mode():
        return torch.stack([torch.log_softmax(model(torch.tensor([s])).logits[0, -1].float(), -1) for s in seqs])


def _shared_last_logprobs(model, seqs, share, batch_size, min_saved=8):
    got = {}

    def on_last(ends, logits):
        for i in ends:
            got[i] = torch.log_softmax(logits, -1)

    with torch.inference_mode():
        score_last(model, seqs, batch_size, share, on_last=on_last, min_saved=min_saved)
    assert sorted(got) == list(range(len(seqs)))
    return torch.stack([got[i] for i in range(len(seqs))])


# --- the tree (pure Python) -----------------------------------------------------------------------

def _paths(node: Node, prefix: list[int], out: dict[int, list[int]]) -> None:
    here = prefix + node.tokens
    assert node.start == len(prefix)
    for i in node.ends:
        out[i] = here
    for c in node.children:
        _paths(c, here, out)


@pytest.mark.parametrize("share", [True, False])
def test_tree_covers_every_sequence_exactly(share):
    seqs = _family_seqs()
    root = build_tree(seqs, share, min_saved=8)
    paths: dict[int, list[int]] = {}
    _paths(root, [], paths)
    assert paths == dict(enumerate(seqs))
    assert root.n_seqs() == len(seqs)
    total = sum(map(len, seqs))
    if share:
        # 3 question families: the head once, each stem once, then the differing tails
        assert tree_cost(root) < total / 2.5
    else:
        assert tree_cost(root) == total - len(seqs[-1])  # the duplicate is computed once


def test_tree_prunes_sharing_too_small_to_pay():
    seqs = [[1, 2, 3, 10 + i, 20 + i] for i in range(4)]  # 3 shared tokens x 3 saved = 9
    kept = build_tree(seqs, True, min_saved=9)
    assert [len(c.tokens) for c in kept.children] == [3]
    pruned = build_tree(seqs, True, min_saved=10)
    assert len(pruned.children) == 4 and all(len(c.tokens) == 5 for c in pruned.children)


def test_tree_rejects_empty_sequence():
    with pytest.raises(ValueError):
        build_tree([[1, 2], []])


# --- shared == unshared == plain (float32: tight) -------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_shared_logprobs_equal_plain_forward(model, batch_size):
    seqs = _family_seqs()
    plain = _plain_last_logprobs(model, seqs)
    for share in (True, False):
        got = _shared_last_logprobs(model, seqs, share, batch_size)
        assert (got - plain).abs().max().item() < 1e-3, (share, batch_size)
    # and the shared tree really is different work from the flat one
    assert tree_cost(build_tree(seqs, True, 8)) < tree_cost(build_tree(seqs, False))


def test_shared_logprobs_bfloat16_eager_match_unshared():
    """bfloat16 with eager attention: how the sequence is split must not matter (±1e-3)."""
    m = tiny_llama(dtype=torch.bfloat16)
    m.config._attn_implementation = "eager"
    seqs = _family_seqs(seed=5)
    shared = _shared_last_logprobs(m, seqs, True, 4)
    flat = _shared_last_logprobs(m, seqs, False, 4)
    assert (shared - flat).abs().max().item() < 1e-3


def test_probe_and_support(model):
    assert supports_sharing(model)
    assert probe_kv_cache(model)


def test_forward_segments_returns_exact_row_caches(model):
    """A right-padded row's cache, cut to its length, continues exactly like its own cache."""
    a, b = [5, 6, 7, 8, 9, 10], [5, 6, 11]
    with torch.inference_mode():
        _, kv = forward_segments(model, [a, b], None, 0, True)
        from biasmed.models.prefix import slice_kv

        cont, _ = forward_segments(model, [[12, 13]], slice_kv(kv, 1, len(b)), len(b), False)
        whole = model(torch.tensor([b + [12, 13]])).logits[0, -1].float()
    assert torch.allclose(cont[0], whole, atol=1e-4)


# --- through the adapter: logprob and generate, sharing on/off ------------------------------------

@pytest.fixture(scope="module")
def adapter_pair(model):
    tok = byte_tokenizer()
    shared = LocalCausalLM.from_loaded("test:tiny", model, tok, batch_size=4)
    flat = LocalCausalLM.from_loaded("test:tiny", model, tok, batch_size=4, prefix_sharing=False)
    assert shared._state.sharing and not flat._state.sharing
    return shared, flat


@pytest.fixture(scope="module")
def demo_prompts():
    # 2 demo questions x (none + 7 biases): the shape of a real chunk
    return build_benchmark(load_demo("test"), limit=2).prompts()


def test_adapter_logprob_shared_equals_unshared(adapter_pair, demo_prompts):
    shared, flat = adapter_pair
    a = asyncio.run(shared.answer(demo_prompts, GenParams(mode="logprob")))
    b = asyncio.run(flat.answer(demo_prompts, GenParams(mode="logprob")))
    for x, y, p in zip(a, b, demo_prompts):
        assert x.logprobs.keys() == set(p.item.question.letters)
        assert max(abs(x.logprobs[k] - y.logprobs[k]) for k in x.logprobs) < 1e-3
        assert x.text == max(x.logprobs, key=x.logprobs.get)


def test_adapter_generate_shared_equals_unshared_and_hf_generate(adapter_pair, demo_prompts):
    shared, flat = adapter_pair
    params = GenParams(mode="generate", max_tokens=6)
    prompts = demo_prompts[:8]
    a = asyncio.run(shared.answer(prompts, params))
    b = asyncio.run(flat.answer(prompts, params))
    assert [x.text for x in a] == [y.text for y in b]
    assert all(x.usage["output_tokens"] > 0 for x in a)  # the sharpened model does write
    st = shared._state
    from biasmed.models.hf import encode_prompt

    for p, x in zip(prompts[:3], a):  # transformers' own greedy generate agrees
        ids = encode_prompt(st.tokenizer, st.use_template, p, "system")
        with torch.inference_mode():
            g = st.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=6, do_sample=False, eos_token_id=2, pad_token_id=0)
        new = [t for t in g[0, len(ids):].tolist()]
        if 2 in new:
            new = new[:new.index(2)]
        assert x.text == st.tokenizer.decode(new, skip_special_tokens=True)
        assert x.usage == {"input_tokens": len(ids), "output_tokens": len(new)}


def test_adapter_without_kv_cache_turns_sharing_off(demo_prompts):
    """A model whose cache cannot be split (here: one that ignores its past) fails the probe and
    is scored whole, one right-padded batch at a time, with the same numbers as plain calls."""
    base = tiny_llama(seed=3)

    class NoCache(torch.nn.Module):  # a stand-in for a recurrent model: forward takes no cache
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        @property
        def device(self):
            return self.inner.device

        def forward(self, input_ids, attention_mask=None, use_cache=False, **kw):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    m = LocalCausalLM.from_loaded("test:nocache", NoCache(base), byte_tokenizer(), batch_size=3,
                                  float32_head=False)
    assert not m._state.kv_ok and not m._state.sharing
    prompts = demo_prompts[:5]
    got = asyncio.run(m.answer(prompts, GenParams(mode="logprob")))
    ref = LocalCausalLM.from_loaded("test:ref", base, byte_tokenizer(), batch_size=1, prefix_sharing=False,
                                    float32_head=False)
    want = asyncio.run(ref.answer(prompts, GenParams(mode="logprob")))
    for x, y in zip(got, want):
        assert max(abs(x.logprobs[k] - y.logprobs[k]) for k in x.logprobs) < 1e-3
    gen = asyncio.run(m.answer(prompts[:2], GenParams(mode="generate", max_tokens=4)))
    gen_ref = asyncio.run(ref.answer(prompts[:2], GenParams(mode="generate", max_tokens=4)))
    assert [g.text for g in gen] == [g.text for g in gen_ref]
