"""Packed ternary matmul benchmark: memory and speed against bf16, with correctness checks.

CPU (``--device cpu``): for each layer shape and batch, the bytes of the weight in bf16 vs packed
2-bit, and the time of ``torch.matmul`` in bf16 vs the PyTorch reference int8 x packed-ternary
kernel (``biasmed.ternary.kernels``: unpacks row blocks, accumulates in int32), best of
``--repeats`` runs.  The ternary time starts from int8 activations (quantization excluded).

GPU (``--device cuda``, needs triton): the Triton kernel, which reads the packed bytes directly,
vs ``torch.matmul`` in bf16 (``triton.testing.do_bench``).

Every row checks, in the same run, the kernel's int32 output against an independent int64
product of the unpacked trits (``exact``) and its dequantized output against a float32 matmul of
the fake-quantized operands (``rel err``); the script exits non-zero on any mismatch.

Shapes: ``small`` = MMfreeLM-370M (1024->2816, 2816->1024, 1024->32000), ``2.7b`` =
MMfreeLM-2.7B (2560->6912, 6912->2560, 2560->32000), ``tiny`` = 256->512 (smoke tests).
``--e2e SIZE`` also writes a random checkpoint of a published size to a temporary directory and
times, through ``load_mmfree(packed=True)``: load+pack, scoring a 300-token prompt
(``next_token_logits``) and greedy decoding after a 50-token prompt (tokens per second).

    python benchmarks/ternary.py --threads 1           # CPU (about 1 min on 2 busy cores)
    python benchmarks/ternary.py --threads 1 --shapes tiny --e2e 370M   # + a whole random model
    python benchmarks/ternary.py --device cuda --shapes 2.7b
    TRITON_INTERPRET=1 python benchmarks/ternary.py --device interpret --shapes tiny --batches 1,8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from biasmed.ternary.kernels import ternary_linear, ternary_matmul_reference
from biasmed.ternary.packing import PackedTernary, pack_weight
from biasmed.ternary.quant import quantize_activations

SHAPE_SETS: dict[str, list[tuple[int, int]]] = {  # (in_features K, out_features N)
    "tiny": [(256, 512)],
    "small": [(1024, 2816), (2816, 1024), (1024, 32000)],
    "2.7b": [(2560, 6912), (6912, 2560), (2560, 32000)],
}
MODEL_DIMS = {"370M": (24, 1024, 2816), "1.3B": (24, 2048, 5632), "2.7B": (32, 2560, 6912)}  # layers, hidden, inter


@dataclass
class Row:
    device: str
    shape: str
    batch: int
    bf16_bytes: int
    packed_bytes: int
    bf16_ms: float
    ternary_ms: float
    speedup: float
    exact: bool
    max_rel_err_vs_fp32: float


def _best_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Best (minimum) milliseconds over ``repeats`` runs after one warm-up.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def _cuda_ms(fn: Callable[[], object], repeats: int) -> float:
    try:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=max(100, 10 * repeats)))
    except ImportError:
        return _best_ms(fn, repeats, torch.cuda.synchronize)


@dataclass
class _Case:
    latent: torch.Tensor  # bf16 [N, K]
    packed: PackedTernary
    x: torch.Tensor  # float32 [M, K]
    x_q: torch.Tensor
    x_scale: torch.Tensor
    exact: torch.Tensor  # int32 [M, N], from int64 arithmetic
    fp32: torch.Tensor  # float32 [M, N], fake-quantized operands


def _case(latent: torch.Tensor, packed: PackedTernary, m: int, gen: torch.Generator) -> _Case:
    x = torch.randn(m, latent.shape[1], generator=gen)
    x_q, x_scale = quantize_activations(x)
    exact = (x_q.long() @ packed.unpack().long().T).to(torch.int32)
    fp32 = torch.nn.functional.linear(x_q.float() / x_scale, packed.dequantize())
    return _Case(latent, packed, x, x_q, x_scale, exact, fp32)


def _cpu_row(c: _Case, repeats: int) -> Row:
    x_bf16 = c.x.to(torch.bfloat16)
    acc = ternary_matmul_reference(c.x_q, c.packed)
    out = ternary_linear(c.x_q, c.x_scale, c.packed, backend="reference")
    bf16_ms = _best_ms(lambda: torch.matmul(x_bf16, c.latent.T), repeats)
    tern_ms = _best_ms(lambda: ternary_linear(c.x_q, c.x_scale, c.packed, backend="reference"), repeats)
    return _row("cpu (reference)", c, bf16_ms, tern_ms, acc, out)


def _triton_row(c: _Case, repeats: int, dev: torch.device) -> Row:
    from biasmed.ternary.triton_kernel import ternary_linear_triton, ternary_matmul_triton

    w_bf16 = c.latent.to(dev)
    x_bf16 = c.x.to(dev, torch.bfloat16)
    w = PackedTernary(c.packed.data.to(dev), c.packed.scale.to(dev), c.packed.in_features, c.packed.out_features)
    x_q, x_scale = c.x_q.to(dev), c.x_scale.to(dev)
    acc = ternary_matmul_triton(x_q, w).cpu()
    out = ternary_linear_triton(x_q, x_scale, w).cpu()
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        bf16_ms = _cuda_ms(lambda: torch.matmul(x_bf16, w_bf16.T), repeats)
        tern_ms = _cuda_ms(lambda: ternary_linear_triton(x_q, x_scale, w), repeats)
    else:  # the interpreter: checks the script and the kernel, the times mean nothing
        name = "cpu (triton interpreter)"
        bf16_ms = _best_ms(lambda: torch.matmul(x_bf16, w_bf16.T), 1)
        tern_ms = _best_ms(lambda: ternary_linear_triton(x_q, x_scale, w), 1)
    return _row(name, c, bf16_ms, tern_ms, acc, out)


def _row(device: str, c: _Case, bf16_ms: float, tern_ms: float, acc: torch.Tensor, out: torch.Tensor) -> Row:
    rel = ((out - c.fp32).abs().max() / c.fp32.abs().max().clamp(min=1e-12)).item()
    return Row(
        device=device,
        shape=f"{c.packed.in_features}->{c.packed.out_features}",
        batch=c.x.shape[0],
        bf16_bytes=c.latent.numel() * c.latent.element_size(),
        packed_bytes=c.packed.nbytes,
        bf16_ms=round(bf16_ms, 3),
        ternary_ms=round(tern_ms, 3),
        speedup=round(bf16_ms / tern_ms, 3),
        exact=torch.equal(acc, c.exact),
        max_rel_err_vs_fp32=rel,
    )


def bench_shape(k: int, n: int, batches: list[int], device: str, repeats: int) -> list[Row]:
    gen = torch.Generator().manual_seed(k * 7 + n)
    latent = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    packed = pack_weight(latent)
    rows = []
    for m in batches:
        c = _case(latent, packed, m, gen)
        if device == "cpu":
            rows.append(_cpu_row(c, repeats))
        else:
            rows.append(_triton_row(c, repeats, torch.device("cuda" if device == "cuda" else "cpu")))
    return rows


def model_memory() -> list[dict[str, object]]:
    """Bytes of all BitLinear weights (lm_head included) of the published sizes, bf16 vs packed."""
    out = []
    for name, (layers, hidden, inter) in MODEL_DIMS.items():
        per_layer = [(hidden, hidden)] * 4 + [(hidden, 2 * inter), (inter, hidden)]  # i, f, g, o, gate, down
        all_shapes = per_layer * layers + [(hidden, 32000)]  # + lm_head
        bf16 = sum(2 * k * n for k, n in all_shapes)
        packed = sum(n * ((k + 3) // 4) + 4 for k, n in all_shapes)
        out.append(
            {"model": f"MMfreeLM-{name}", "bf16_GB": bf16 / 1e9, "packed_GB": packed / 1e9, "ratio": bf16 / packed}
        )
    return out


def bench_model(hidden: int, layers: int, prompt_len: int = 300, new_tokens: int = 20) -> dict[str, float]:
    """End to end on a random checkpoint of a published size: load+pack, scoring, generation."""
    import tempfile

    from biasmed.ternary import load_mmfree
    from biasmed.ternary.checkpoint import make_tiny_hgrn_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        make_tiny_hgrn_checkpoint(tmp, hidden_size=hidden, num_hidden_layers=layers, vocab_size=32000)
        start = time.perf_counter()
        model, _ = load_mmfree(tmp, packed=True)
        load_s = time.perf_counter() - start
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 32000, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = time.perf_counter()
        model.next_token_logits(ids)
        score_s = time.perf_counter() - start
        short = ids[:, :50]
        model.generate(short, max_new_tokens=1, do_sample=False)  # prefill alone
        start = time.perf_counter()
        prefill = model.generate(short, max_new_tokens=1, do_sample=False)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(prefill[:, :50], max_new_tokens=new_tokens + 1, do_sample=False)
        decode_s = time.perf_counter() - start - prefill_s
    memory = model.ternary_memory()
    return {
        "load_and_pack_s": load_s,
        f"score_{prompt_len}_tokens_s": score_s,
        "decode_tokens_per_s": new_tokens / decode_s,
        "packed_MB": memory["packed"] / 2**20,
        "bf16_MB": memory["bf16"] / 2**20,
    }


def markdown(rows: list[Row]) -> str:
    lines = [
        "| device | shape (K->N) | batch | bf16 MB | packed MB | bf16 ms | ternary ms | speed-up | exact "
        "| rel err vs fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.device} | {r.shape} | {r.batch} | {r.bf16_bytes / 2**20:.1f} | {r.packed_bytes / 2**20:.2f} "
            f"| {r.bf16_ms:.3f} | {r.ternary_ms:.3f} | {r.speedup:.2f}x | {r.exact} | {r.max_rel_err_vs_fp32:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "interpret", "auto"], default="auto")
    parser.add_argument("--shapes", default="small,2.7b", help="comma list of: " + ", ".join(SHAPE_SETS))
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--e2e", choices=["370M", "1.3B", "2.7B"], help="also time a random model of this size")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"# ternary benchmark: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {device}"
    )
    rows: list[Row] = []
    for name in args.shapes.split(","):
        for k, n in SHAPE_SETS[name]:
            rows.extend(bench_shape(k, n, batches, device, args.repeats))
            print(f"  done {k}->{n}", file=sys.stderr, flush=True)
    print(markdown(rows))
    print()
    for item in model_memory():
        print(
            f"{item['model']}: BitLinear weights {item['bf16_GB']:.2f} GB bf16 -> "
            f"{item['packed_GB']:.3f} GB packed ({item['ratio']:.2f}x smaller)"
        )
    e2e = None
    if args.e2e:
        layers, hidden, _ = MODEL_DIMS[args.e2e]
        e2e = bench_model(hidden, layers)
        print(f"\nrandom MMfreeLM-{args.e2e}-shaped model, packed, CPU reference kernels:")
        for key, value in e2e.items():
            print(f"  {key}: {value:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            payload = {"device": device, "rows": [asdict(r) for r in rows], "models": model_memory(), "e2e": e2e}
            json.dump(payload, fh, indent=2)
    if not all(r.exact and r.max_rel_err_vs_fp32 < 1e-4 for r in rows):
        raise SystemExit("MISMATCH: a ternary kernel differs from the exact integer product")


if __name__ == "__main__":
    main()
