"""SpikeGPT: published .pth layout, equations, RNN vs parallel mode, generate, Auto classes.

All on a tiny random checkpoint written in the published key layout (no network).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from biasmed.ternary.spikegpt import (
    STATE_WKV_MAX,
    SpikeGPTConfig,
    SpikeGPTForCausalLM,
    convert_pth_to_hf,
    load_spikegpt,
    load_tokenizer,
    read_pth_state_dict,
    state_shape,
)
from biasmed.ternary.spikegpt_checkpoint import TINY_PTH_NAME, make_tiny_spikegpt_checkpoint

PROMPT = "A 45-year-old man has crushing chest pain."
LAYERS, HIDDEN = 4, 32


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matrices: OpenMP threads only add contention on a shared machine (15x slower here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spikegpt_tiny")
    make_tiny_spikegpt_checkpoint(out, hidden_size=HIDDEN, num_hidden_layers=LAYERS, rescale_every=2, seed=0)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    return load_spikegpt(tiny_dir)


@pytest.fixture(scope="module")
def prompt_ids(loaded) -> torch.Tensor:
    _, tokenizer = loaded
    return tokenizer(PROMPT, return_tensors="pt").input_ids


# --------------------------------------------------------------------------------------------
# An independent, deliberately naive implementation of the inference script's equations:
# float64, one token at a time, WKV as the explicit weighted sums over all earlier tokens,
# rescaling applied to the weights at load as run.py / model_run.py do.
# --------------------------------------------------------------------------------------------


def _reference(
    sd: dict[str, torch.Tensor], tokens: list[int], *, rescale_every: int, spiking_embedding: bool = False
) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    w = {k: v.double() for k, v in sd.items()}
    n_layer = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    if rescale_every > 0:
        for i in range(n_layer):
            for key in (f"blocks.{i}.att.output.weight", f"blocks.{i}.ffn.value.weight"):
                w[key] = w[key] / 2 ** (i // rescale_every)

    def ln(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean()
        var = ((x - mean) ** 2).mean()
        return (x - mean) / torch.sqrt(var + 1e-5) * w[name + ".weight"] + w[name + ".bias"]

    hist_k: list[list[torch.Tensor]] = [[] for _ in range(n_layer)]
    hist_v: list[list[torch.Tensor]] = [[] for _ in range(n_layer)]
    prev_att = [torch.zeros_like(w["ln_out.bias"]) for _ in range(n_layer)]
    prev_ffn = [torch.zeros_like(w["ln_out.bias"]) for _ in range(n_layer)]
    membrane = [[torch.zeros_like(w["ln_out.bias"]) for _ in range(2)] for _ in range(n_layer)]
    all_logits, all_spikes = [], []

    def lif(i: int, j: int, current: torch.Tensor) -> torch.Tensor:
        v = membrane[i][j] + (current - membrane[i][j]) / 2.0  # tau 2, v_reset 0
        spike = (v >= 1.0).double()
        membrane[i][j] = v * (1 - spike)  # hard reset to 0
        return spike

    for token in tokens:
        x = w["emb.weight"][token]
        if spiking_embedding:
            x = (x >= 0).double()
        step_spikes = []
        for i in range(n_layer):
            p = f"blocks.{i}."
            if i == 0:
                x = ln(x, p + "ln0")
            h = ln(x, p + "ln1")
            mix = {c: w[p + f"att.time_mix_{c}"].flatten() for c in "kvr"}
            xk = h * mix["k"] + prev_att[i] * (1 - mix["k"])
            xv = h * mix["v"] + prev_att[i] * (1 - mix["v"])
            xr = h * mix["r"] + prev_att[i] * (1 - mix["r"])
            prev_att[i] = h
            r = torch.sigmoid(w[p + "att.receptance.weight"] @ xr)
            k = w[p + "att.key.weight"] @ xk
            v = w[p + "att.value.weight"] @ xv
            decay = -torch.exp(w[p + "att.time_decay"])
            bonus = w[p + "att.time_first"]
            past = len(hist_k[i])
            num = torch.exp(bonus + k) * v
            den = torch.exp(bonus + k)
            for j in range(past):  # token j is (past - 1 - j) steps older than the previous token
                weight = torch.exp((past - 1 - j) * decay + hist_k[i][j])
                num = num + weight * hist_v[i][j]
                den = den + weight
            hist_k[i].append(k)
            hist_v[i].append(v)
            s_att = lif(i, 0, w[p + "att.output.weight"] @ (r * num / den))
            x = x + s_att
            h = ln(x, p + "ln2")
            mk, mr = w[p + "ffn.time_mix_k"].flatten(), w[p + "ffn.time_mix_r"].flatten()
            xk = h * mk + prev_ffn[i] * (1 - mk)
            xr = h * mr + prev_ffn[i] * (1 - mr)
            prev_ffn[i] = h
            r = torch.sigmoid(w[p + "ffn.receptance.weight"] @ xr)
            kv = w[p + "ffn.value.weight"] @ torch.relu(w[p + "ffn.key.weight"] @ xk) ** 2
            s_ffn = lif(i, 1, r * kv)
            x = x + s_ffn
            if rescale_every > 0 and (i + 1) % rescale_every == 0:
                x = x / 2
            step_spikes.append(torch.stack([s_att, s_ffn]))
        all_logits.append(w["head.weight"] @ ln(x, "ln_out"))
        all_spikes.append(step_spikes)
    return torch.stack(all_logits), all_spikes


def _model_spikes(out, layer: int) -> torch.Tensor:
    return out.spikes[layer][0].double()  # (T, 2, C) of the first sequence


# --------------------------------------------------------------------------------------------


def test_tiny_checkpoint_is_in_published_layout(tiny_dir: Path) -> None:
    sd = torch.load(tiny_dir / TINY_PTH_NAME, map_location="cpu", weights_only=True)
    assert len(sd) == 4 + 2 + 18 * LAYERS  # emb, ln_out(2), head; ln0(2); 18 tensors per block
    assert sd["emb.weight"].shape == sd["head.weight"].shape == (258, HIDDEN)
    assert sd["blocks.0.ln0.weight"].shape == (HIDDEN,)
    assert "blocks.1.ln0.weight" not in sd
    assert sd["blocks.3.att.time_mix_k"].shape == (1, 1, HIDDEN)
    assert sd["blocks.3.att.time_decay"].shape == sd["blocks.3.att.time_first"].shape == (HIDDEN,)
    assert sd["blocks.2.ffn.key.weight"].shape == (4 * HIDDEN, HIDDEN)
    assert sd["blocks.2.ffn.value.weight"].shape == (HIDDEN, 4 * HIDDEN)
    assert all(t.dtype == torch.float32 for t in sd.values())


@pytest.mark.parametrize(
    ("rescale_every", "spiking_embedding"),
    [(2, False), (0, False), (0, True)],
    ids=["inference-script", "no-rescale", "training-code"],
)
def test_logits_and_spikes_equal_reference(
    tiny_dir: Path, prompt_ids: torch.Tensor, rescale_every: int, spiking_embedding: bool
) -> None:
    model, _ = load_spikegpt(tiny_dir, rescale_every=rescale_every, spiking_embedding=spiking_embedding)
    sd = torch.load(tiny_dir / TINY_PTH_NAME, map_location="cpu", weights_only=True)
    tokens = prompt_ids[0].tolist()
    ref_logits, ref_spikes = _reference(sd, tokens, rescale_every=rescale_every, spiking_embedding=spiking_embedding)
    with torch.no_grad():
        out = model(prompt_ids, output_spikes=True)
    assert out.logits.dtype == torch.float32
    torch.testing.assert_close(out.logits[0].double(), ref_logits, atol=1e-4, rtol=0)
    total = 0.0
    for layer in range(LAYERS):
        expected = torch.stack([step[layer] for step in ref_spikes])  # (T, 2, C)
        got = _model_spikes(out, layer)
        assert torch.equal(got, expected), f"spike pattern differs in layer {layer}"
        total += got.mean().item()
    assert 0.05 < total / LAYERS < 0.8  # the neurons really fire (and not all the time)


def test_rnn_mode_equals_parallel_mode(loaded, prompt_ids: torch.Tensor) -> None:
    model, _ = loaded
    with torch.no_grad():
        parallel = model(prompt_ids, output_spikes=True)
        state, logits, spikes = None, [], []
        for t in range(prompt_ids.shape[1]):
            step = model(prompt_ids[:, t : t + 1], rnn_state=state, output_spikes=True)
            state = step.rnn_state
            logits.append(step.logits[:, 0])
            spikes.append(torch.stack([s[:, 0] for s in step.spikes]))  # (L, B, 2, C)
    torch.testing.assert_close(torch.stack(logits, dim=1), parallel.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(state, parallel.rnn_state, atol=1e-4, rtol=1e-5)
    rnn_spikes = torch.stack(spikes, dim=2)  # (L, B, T, 2, C)
    assert torch.equal(rnn_spikes, torch.stack(parallel.spikes))
    # step() is the same RNN mode
    logits_step, _ = model.step(prompt_ids[:, 0])
    torch.testing.assert_close(logits_step, parallel.logits[:, 0], atol=1e-5, rtol=0)


def test_state_layout_and_chunked_prompt(loaded, prompt_ids: torch.Tensor) -> None:
    model, _ = loaded
    with torch.no_grad():
        full = model(prompt_ids)
        first = model(prompt_ids[:, :13])
        second = model(prompt_ids[:, 13:], rnn_state=first.rnn_state)
    assert full.rnn_state.shape == (LAYERS, 1, *state_shape(model.config)) == (LAYERS, 1, 7, HIDDEN)
    assert full.rnn_state.dtype == torch.float32
    fresh = model.init_state(3)
    assert torch.all(fresh[:, :, STATE_WKV_MAX] == -1e38) and fresh[:, :, :STATE_WKV_MAX].abs().sum() == 0
    torch.testing.assert_close(second.logits, full.logits[:, 13:], atol=1e-4, rtol=0)
    torch.testing.assert_close(second.rnn_state, full.rnn_state, atol=1e-4, rtol=1e-5)


def test_padded_batch_scores_like_single_prompts(loaded) -> None:
    model, tokenizer = loaded
    prompts = ["Chest pain.", PROMPT, "Fever and cough for three days"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert not bool(batch.attention_mask.all())
    with torch.no_grad():
        batched = model.next_token_logits(batch.input_ids, batch.attention_mask)
        for row, prompt in enumerate(prompts):
            single = model.next_token_logits(tokenizer(prompt, return_tensors="pt").input_ids)
            torch.testing.assert_close(batched[row], single[0], atol=1e-4, rtol=0)


def test_incremental_generate_equals_full_sequence_argmax(loaded, prompt_ids: torch.Tensor) -> None:
    model, _ = loaded
    fed_lengths: list[int] = []
    hook = model.emb.register_forward_hook(lambda _m, args, _o: fed_lengths.append(args[0].shape[1]))
    try:
        generated = model.generate(prompt_ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    finally:
        hook.remove()
    n_prompt = prompt_ids.shape[1]
    new_tokens = generated[0, n_prompt:]
    assert len(new_tokens) == 12
    # One forward over the prompt, then one token per step: the recurrent state carries the rest.
    assert fed_lengths == [n_prompt] + [1] * 11
    with torch.no_grad():
        full = model(generated).logits[0]
    assert torch.equal(full[n_prompt - 1 : -1].argmax(-1), new_tokens)


def test_auto_classes_and_converted_from_pretrained(tiny_dir: Path, loaded, prompt_ids, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model, _ = loaded
    out = convert_pth_to_hf(tiny_dir / TINY_PTH_NAME, tmp_path / "hf")
    config = AutoConfig.from_pretrained(out)
    assert isinstance(config, SpikeGPTConfig) and config.rescale_every == 2
    auto = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(auto, SpikeGPTForCausalLM)
    direct = SpikeGPTForCausalLM.from_pretrained(out)
    with torch.no_grad():
        expected = model(prompt_ids).logits
        assert torch.equal(auto(prompt_ids).logits, expected)
        assert torch.equal(direct(prompt_ids).logits, expected)
    again, tokenizer = load_spikegpt(out)  # converted directory through the one-call loader
    assert isinstance(again, SpikeGPTForCausalLM)
    assert AutoTokenizer.from_pretrained(out).decode(tokenizer(PROMPT).input_ids) == PROMPT
    bf16 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert bf16.blocks[1].att.time_decay.dtype == torch.float32  # exponentiated twice: kept fp32
    assert bf16.blocks[1].att.key.weight.dtype == torch.bfloat16


def test_from_pth_infers_sizes_and_default_semantics(tiny_dir: Path) -> None:
    model = SpikeGPTForCausalLM.from_pth(tiny_dir / TINY_PTH_NAME)  # no config.json consulted
    cfg = model.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (
        258, HIDDEN, LAYERS, 4 * HIDDEN,
    )  # fmt: skip
    assert cfg.rescale_every == 6 and not cfg.spiking_embedding  # the released 216M inference script
    assert (cfg.lif_tau, cfg.lif_threshold, cfg.lif_reset) == (2.0, 1.0, 0.0)
    by_file, _ = load_spikegpt(tiny_dir / TINY_PTH_NAME)  # the config.json beside the file wins
    assert by_file.config.rescale_every == 2
    sd = read_pth_state_dict(tiny_dir / TINY_PTH_NAME)
    bf16 = SpikeGPTForCausalLM.from_pth(tiny_dir / TINY_PTH_NAME, dtype=torch.bfloat16)
    assert torch.equal(bf16.blocks[2].att.time_decay, sd["blocks.2.att.time_decay"])  # exact float32
    assert bf16.blocks[2].att.output.weight.dtype == torch.bfloat16
    defaults = SpikeGPTConfig()
    assert (defaults.vocab_size, defaults.hidden_size, defaults.num_hidden_layers, defaults.ctx_len) == (
        50277, 768, 18, 1024,
    )  # fmt: skip


def test_tokenizer_from_published_file_name(tiny_dir: Path, tmp_path: Path) -> None:
    # SpikeGPT's repository ships the GPT-NeoX tokenizer as 20B_tokenizer.json beside the .pth.
    (tmp_path / "20B_tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    tokenizer = load_tokenizer(model_dir=tmp_path)
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 1
    assert tokenizer.decode(tokenizer(PROMPT).input_ids) == PROMPT


def test_bad_checkpoints_fail_with_the_file_and_key(tiny_dir: Path, tmp_path: Path) -> None:
    sd = read_pth_state_dict(tiny_dir / TINY_PTH_NAME)
    broken = dict(sd)
    del broken["blocks.1.att.time_first"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*blocks\.1\.att\.time_first"):
        read_pth_state_dict(tmp_path / "missing.pth")
    variant = dict(sd, **{"blocks.0.ffnPre.key.weight": torch.zeros(1)})
    torch.save(variant, tmp_path / "ffnpre.pth")
    with pytest.raises(ValueError, match=r"ffnpre\.pth.*ffnPre"):
        SpikeGPTForCausalLM.from_pth(tmp_path / "ffnpre.pth")
    wrong = SpikeGPTConfig(vocab_size=258, hidden_size=HIDDEN, num_hidden_layers=LAYERS, intermediate_size=64)
    with pytest.raises(ValueError, match=r"blocks\.0\.ffn\.key\.weight"):
        SpikeGPTForCausalLM.from_pth(tiny_dir / TINY_PTH_NAME, config=wrong)


def test_reference_wkv_matches_recurrence_sanity() -> None:
    # Guards the naive reference itself: for a single channel the explicit sum over two past
    # tokens equals the hand-expanded formula.
    decay, bonus = -math.exp(0.3), 0.2
    k, v = [0.5, -1.0, 0.25], [1.0, 2.0, -3.0]
    num = math.exp(bonus + k[2]) * v[2] + math.exp(decay + k[0]) * v[0] + math.exp(k[1]) * v[1]
    den = math.exp(bonus + k[2]) + math.exp(decay + k[0]) + math.exp(k[1])
    from biasmed.ternary.spikegpt import _wkv

    out, *_ = _wkv(
        torch.tensor([decay]), torch.tensor([bonus]), torch.tensor([[[x] for x in k]]),
        torch.tensor([[[x] for x in v]]), torch.zeros(1, 1), torch.zeros(1, 1), torch.full((1, 1), -1e38), None,
    )  # fmt: skip
    assert out[0, 2, 0].item() == pytest.approx(num / den, rel=1e-6)
