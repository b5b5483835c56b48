"""End-to-end CPU figures for the MatMul-free models against dense bf16 models of the same shape.

In one process, contenders interleaved and repeated (the machine may be shared: report medians):

* greedy decode, 16-token prompt + 48 new tokens (``generate``, ``min_new_tokens`` so that no
  EOS stops it early): HGRN-bit 370M-shaped (random weights, packed, native kernel) vs a dense
  Llama of the same shape (hidden 1024, 24 layers, intermediate 2816, vocab 32000) in bf16;
  decode tokens/s = 47 / (time of the 48-token call - time of a 1-token call);
* prefill of a 256-token prompt (one forward that keeps the recurrent state / KV cache);
* SpikeGPT 216M-shaped (18 layers, 768, vocab 50277) vs its dense equivalent, transformers'
  RWKV-4 of the same shape (SpikeGPT without the spiking neurons), both bf16.

    python benchmarks/ternary_e2e.py --repeats 5 [--threads 1] [--json out.json]

``--threads`` sets torch's intra-op threads for both contenders (the native kernel runs on one
thread either way, see ``biasmed.ternary.native``).  On a shared, oversubscribed machine use 1:
with 2, every parallel region of the dense model waits for a descheduled worker thread, which
measured the dense decode at under 1 token/s and flattered the ternary model 24x.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch


def hgrn_370m(packed: bool = True) -> torch.nn.Module:
    from biasmed.ternary.hgrn_bit import HGRNBitConfig, HGRNBitForCausalLM

    torch.manual_seed(0)
    model = HGRNBitForCausalLM(HGRNBitConfig(hidden_size=1024, num_hidden_layers=24, vocab_size=32000))
    if packed:
        model.to_ternary()
    return model.eval()


def llama_370m() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                         num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def spikegpt_216m() -> torch.nn.Module:
    from biasmed.ternary.spikegpt import SpikeGPTConfig, SpikeGPTForCausalLM

    torch.manual_seed(0)
    return SpikeGPTForCausalLM(SpikeGPTConfig()).to(torch.bfloat16).eval()


def rwkv_216m() -> torch.nn.Module:
    from transformers import RwkvConfig, RwkvForCausalLM

    torch.manual_seed(0)
    config = RwkvConfig(vocab_size=50277, hidden_size=768, num_hidden_layers=18, intermediate_size=3072,
                        context_length=1024, rescale_every=0)
    return RwkvForCausalLM(config).to(torch.bfloat16).eval()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _generate(model: torch.nn.Module, ids: torch.Tensor, new: int) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)


def decode_tps(model: torch.nn.Module, ids: torch.Tensor, new: int = 48) -> tuple[float, torch.Tensor]:
    one = _timed(lambda: _generate(model, ids, 1))
    out: list[torch.Tensor] = []
    full = _timed(lambda: out.append(_generate(model, ids, new)))
    return (new - 1) / max(full - one, 1e-9), out[0]


def prefill_tps(model: torch.nn.Module, ids: torch.Tensor) -> float:
    return ids.shape[1] / _timed(lambda: model(input_ids=ids, use_cache=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-spikegpt", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="write the raw figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = {"hgrn-vs-llama": (hgrn_370m, llama_370m, 32000)}
    if not args.skip_spikegpt:
        pairs["spikegpt-vs-rwkv"] = (spikegpt_216m, rwkv_216m, 50277)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, list[float]]] = {}
    with torch.no_grad():
        for name, (make_a, make_b, vocab) in pairs.items():
            models = {"ternary": make_a(), "dense": make_b()}
            for m in models.values():
                m.generation_config.eos_token_id = None
            prompt = torch.randint(3, vocab, (1, 16), generator=gen)
            long = torch.randint(3, vocab, (1, 256), generator=gen)
            figures = {f"{k}_{what}": [] for k in models for what in ("decode_tps", "prefill_tps")}
            for m in models.values():  # warm-up
                decode_tps(m, prompt, 4)
                prefill_tps(m, long[:, :32])
            for _ in range(args.repeats):
                for key, m in models.items():  # interleaved: both see the same machine load
                    tps, _ = decode_tps(m, prompt)
                    figures[f"{key}_decode_tps"].append(tps)
                    figures[f"{key}_prefill_tps"].append(prefill_tps(m, long))
            for what in ("decode_tps", "prefill_tps"):
                ratios = [a / b for a, b in zip(figures[f"ternary_{what}"], figures[f"dense_{what}"])]
                figures[f"ratio_{what}"] = ratios
            results[name] = figures
            med = {k: statistics.median(v) for k, v in figures.items()}
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
            del models
    meta = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "repeats": args.repeats}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
