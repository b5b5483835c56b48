"""Local logprob throughput: biasmed's `smollm2` adapter vs a plain PyTorch loop (on demand).

(a) one condition: the first N unbiased MedQA test prompts (default 200);
(b) all 8 bias conditions of the first Q questions (default 100 -> 800 prompts), where prefix
    sharing runs each question's shared prefix once;
(c) dtype: float32 vs bfloat16 on (a)'s prompts, for the plain loop and for biasmed (speed,
    log-prob differences, argmax agreement).

The plain loops do one forward pass per prompt (batch 1, no padding, tokenization excluded from
their time), in the same process and dtype:
  plain-default: a separately loaded model with transformers' defaults (sdpa attention, the
                 model-dtype vocabulary head), `model(ids).logits[0, -1]` -- what one writes first;
  plain-keep1:   the adapter's own loaded model (eager attention, float32 head) with
                 `logits_to_keep=1` -- the strongest simple loop, and the reference that prefix
                 sharing must reproduce (letter log-probs within 1e-3).
biasmed's time includes tokenization, the chat template and the asyncio/thread hand-off, with
prompts passed in runner-sized chunks (256, question-major). The contenders take turns chunk by
chunk, so on a shared machine they all see the same load.

    python benchmarks/local_logprob.py --parts a,b,c --threads 1 --out /tmp/local_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _machine() -> dict[str, Any]:
    import torch
    import transformers

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}


def _busy() -> list[str]:
    """The other processes eating CPU right now (the machine is shared)."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:8]
    except (OSError, subprocess.SubprocessError):
        return []
    me = os.getpid()
    return [line.strip()[:110] for line in out if float(line.split()[0]) >= 5 and int(line.split()[1]) != me]


def _prompts(medqa: Path, limit: int, biases: str | None):
    from biasmed.dataset.build import build_benchmark
    from biasmed.dataset.medqa import load_medqa

    return build_benchmark(load_medqa(medqa, "test", 5), biases=biases, limit=limit).prompts()


def _letters_lp(lsm, tokenizer, letters, cache: dict) -> dict[str, float]:
    import torch

    from biasmed.models.hf import letter_token_ids

    out = {}
    for k in letters:
        ids = cache.get(k) or cache.setdefault(k, list(letter_token_ids(tokenizer, k)))
        out[k] = float(torch.logsumexp(lsm[ids], 0))
    return out


def plain_loop(model, tokenizer, prompts, seqs, keep1: bool) -> tuple[float, list[dict[str, float]]]:
    """One forward per prompt; returns (seconds, letter log-probs)."""
    import torch

    cache: dict = {}
    out = []
    kw = {"logits_to_keep": 1} if keep1 else {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        for p, s in zip(prompts, seqs):
            logits = model(torch.tensor([s]), **kw).logits[0, -1]
            out.append(_letters_lp(torch.log_softmax(logits.float(), -1), tokenizer, p.item.question.letters, cache))
        dt = time.perf_counter() - t0
    return dt, out


def biasmed_run(adapter, prompts) -> tuple[float, list[dict[str, float]]]:
    """One runner-sized chunk through the adapter; returns (seconds, letter log-probs)."""
    from biasmed.models.base import GenParams

    async def main():
        t0 = time.perf_counter()
        answers = await adapter.answer(prompts, GenParams(mode="logprob"))
        return time.perf_counter() - t0, answers

    dt, answers = asyncio.run(main())
    return dt, [a.logprobs for a in answers]


def interleaved(runners: dict[str, Any], prompts, chunk: int = 256) -> dict[str, tuple[float, list]]:
    """Each runner on each chunk in turn (the machine is shared: every contender sees the same
    load over time, instead of whoever runs last getting the quiet minutes)."""
    total = {name: [0.0, []] for name in runners}
    for i in range(0, len(prompts), chunk):
        for name, run in runners.items():
            dt, lps = run(i, i + chunk)
            total[name][0] += dt
            total[name][1] += lps
    return {name: (len(prompts) / t, lps) for name, (t, lps) in total.items()}


def _compare(a: list[dict[str, float]], b: list[dict[str, float]]) -> dict[str, Any]:
    diff = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)
    agree = sum(max(x, key=x.get) == max(y, key=y.get) for x, y in zip(a, b))
    return {"max_abs_diff": diff, "argmax_agree": f"{agree}/{len(a)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medqa", type=Path, default=None, help="MedQA US folder (default <shared>/data/medqa/US)")
    ap.add_argument("--parts", default="a,b", help="which of a,b,c to run")
    ap.add_argument("--n-single", type=int, default=200)
    ap.add_argument("--n-questions", type=int, default=100)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model-dir", type=Path, default=None, help="converted smollm2 (default: the cache dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from biasmed._paths import shared_dir
    from biasmed.models.hf import encode_prompt
    from biasmed.models.registry import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    medqa = args.medqa or shared_dir() / "data" / "medqa" / "US"
    parts = set(args.parts.split(","))
    opts: dict[str, Any] = {"dtype": args.dtype, "batch_size": args.batch_size}
    if args.model_dir:
        opts["model_dir"] = str(args.model_dir)
    adapter = resolve_model("smollm2", **opts)
    t0 = time.perf_counter()
    asyncio.run(adapter.prepare())
    st = adapter._state
    folder = adapter.resolve_folder()
    report: dict[str, Any] = {"machine": _machine(), "busy_at_start": _busy(), "load_s": time.perf_counter() - t0,
                              "dtype": st.dtype, "batch_size": args.batch_size, "command": " ".join(sys.argv)}
    print(json.dumps(report, indent=1), flush=True)
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, st.dtype)).eval()

    def measure(name: str, prompts) -> dict[str, Any]:
        seqs = [encode_prompt(st.tokenizer, st.use_template, p, "system") for p in prompts]
        r: dict[str, Any] = {"prompts": len(prompts), "tokens": sum(map(len, seqs))}
        biasmed_run(adapter, prompts[:2])  # warm-up, all three
        plain_loop(st.model, st.tokenizer, prompts[:1], seqs[:1], keep1=True)
        plain_loop(plain, st.tokenizer, prompts[:1], seqs[:1], keep1=False)
        got = interleaved({
            "biasmed": lambda i, j: biasmed_run(adapter, prompts[i:j]),
            "keep1": lambda i, j: plain_loop(st.model, st.tokenizer, prompts[i:j], seqs[i:j], keep1=True),
            "default": lambda i, j: plain_loop(plain, st.tokenizer, prompts[i:j], seqs[i:j], keep1=False),
        }, prompts)
        (ours, ours_lp), (keep1, keep1_lp), (default, default_lp) = got["biasmed"], got["keep1"], got["default"]
        floor = max(keep1, default)
        r.update({"biasmed_items_s": ours, "plain_keep1_items_s": keep1, "plain_default_items_s": default,
                  "speedup_vs_best_plain": ours / floor,
                  "vs_plain_keep1": _compare(ours_lp, keep1_lp), "vs_plain_default": _compare(ours_lp, default_lp)})
        print(name, json.dumps(r, indent=1), flush=True)
        return r

    if "a" in parts:
        report["a_single_condition"] = measure("(a)", _prompts(medqa, args.n_single, "none"))
    if "b" in parts:
        report["b_all_conditions"] = measure("(b)", _prompts(medqa, args.n_questions, None))
    if "c" in parts:
        prompts = _prompts(medqa, args.n_single, "none")
        seqs = [encode_prompt(st.tokenizer, st.use_template, p, "system") for p in prompts]
        plain_res, ours_res = {}, {}
        for dt in ("float32", "bfloat16"):
            m = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dt)).eval()
            other = adapter if dt == st.dtype else resolve_model("smollm2", **{**opts, "dtype": dt})
            biasmed_run(other, prompts[:2])
            got = interleaved({"plain": lambda i, j: plain_loop(m, st.tokenizer, prompts[i:j], seqs[i:j], False),
                               "biasmed": lambda i, j: biasmed_run(other, prompts[i:j])}, prompts, chunk=50)
            plain_res[dt], ours_res[dt] = got["plain"], got["biasmed"]
            del m
        report["c_dtype"] = {
            "plain_default_float32_items_s": plain_res["float32"][0],
            "plain_default_bfloat16_items_s": plain_res["bfloat16"][0],
            "plain_default_bf16_speedup": plain_res["bfloat16"][0] / plain_res["float32"][0],
            "plain_default_bf16_vs_fp32": _compare(plain_res["bfloat16"][1], plain_res["float32"][1]),
            "biasmed_float32_items_s": ours_res["float32"][0],
            "biasmed_bfloat16_items_s": ours_res["bfloat16"][0],
            "biasmed_bf16_speedup": ours_res["bfloat16"][0] / ours_res["float32"][0],
            "biasmed_bf16_vs_fp32": _compare(ours_res["bfloat16"][1], ours_res["float32"][1]),
            "biasmed_fp32_vs_plain_fp32": _compare(ours_res["float32"][1], plain_res["float32"][1]),
        }
        print("(c)", json.dumps(report["c_dtype"], indent=1), flush=True)
    report["loadavg_end"] = os.getloadavg()
    report["busy_at_end"] = _busy()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=lambda x: x if not isinstance(x, float) or
                                       math.isfinite(x) else None) + "\n")


if __name__ == "__main__":
    main()
