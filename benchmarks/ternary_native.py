"""The native CPU kernel (``biasmed.ternary.native``) vs ``torch.matmul`` in bf16, one run.

For each MMfreeLM layer shape (370M / 1.3B / 2.7B: the four token-mixer projections share the
``h->h`` shape, then the GLU's ``h->2i`` and ``i->h``, and the ``h->32000`` head) and batch 1,
8, 64: the time of a bf16 ``torch.matmul`` against the same weight, and of the native BitLinear
from float32 activations (quantization, the exact int8 x ternary product and the epilogue, all
included).  Contenders alternate within each repeat and the figures are medians, so a shared,
busy machine affects both alike.  Every shape is checked exact against the PyTorch reference.

    python benchmarks/ternary_native.py --repeats 15 [--threads 1] [--json out.json]

The native column also gives the kernel's rate in GMAC/s, and the run starts by measuring the
ceiling of that rate on this core: the best of 200 short loops of independent AVX-512
``vpdpbusd`` (64 multiply-adds each), or with ``--isa avx2`` of ``vpmaddubsw`` + ``vpaddw`` (32).

``--isa avx2`` (or ``scalar``) measures a lower instruction set than the CPU's best, e.g. the
AVX2 path that CPUs without AVX-512 get.

``--baseline REV`` adds the native kernel of an older git revision (its ``_native_source.py``,
built with the same flags, run at the same ISA) as a third contender, interleaved in the same
repeats, for before/after figures that share the machine's state.

``--threads`` sets torch's threads for the bf16 matmul (the native kernel uses one thread by
default); 1 gives both contenders one core, which is what a shared 2-core machine can promise.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from biasmed.ternary import native
from biasmed.ternary.kernels import bitlinear
from biasmed.ternary.packing import pack_weight, repack

SHAPES = {  # (K, N) per model: h->h, h->2i (gate+value), i->h, h->vocab
    "370M": [(1024, 1024), (1024, 5632), (2816, 1024), (1024, 32000)],
    "1.3B": [(2048, 2048), (2048, 11264), (5632, 2048), (2048, 32000)],
    "2.7B": [(2560, 2560), (2560, 13824), (6912, 2560), (2560, 32000)],
}


def _ms(fn, inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) * 1e3 / inner


def peak_gmacs(kernel: native.NativeKernel, trials: int = 200, iters: int = 20000) -> float | None:
    """Best rate of 12 independent multiply-add chains of the kernel's ISA over ``trials`` short
    runs: AVX-512 ``vpdpbusd`` (64 multiply-adds each), AVX2 ``vpmaddubsw`` + ``vpaddw`` (32);
    None for the scalar path."""
    if kernel.isa_name == "avx512-vnni":
        fn, macs = kernel.lib.bt_vnni_peak, 64
    elif kernel.isa_name == "avx2":
        fn, macs = kernel.lib.bt_maddubs_peak, 32
    else:
        return None
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        fn(iters)
        best = max(best, iters * 12 * macs / (time.perf_counter() - start) / 1e9)
    return best


def baseline_kernel(rev: str, isa: int) -> native.NativeKernel:
    """The kernel of git revision ``rev`` (its ``_native_source.py``, same flags and compiler), at
    ``isa``: a third contender in the same process, for before/after figures."""
    repo = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{rev}:biasmed/ternary/_native_source.py"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout
    tree = ast.parse(text)
    source = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SOURCE")
    path = native.build(source=source)
    lib = ctypes.CDLL(str(path))
    lib.bt_linear_f32.restype = ctypes.c_int
    lib.bt_linear_f32.argtypes = native.load().lib.bt_linear_f32.argtypes  # type: ignore[union-attr]
    return native.NativeKernel(lib=lib, isa=isa, path=path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--models", default="370M,1.3B,2.7B")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--isa", choices=native.ISA_NAMES, help="force the kernel's instruction set (default: the CPU's best)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the native kernel of this git revision (same ISA), interleaved")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.isa:
        os.environ[native.ENV_ISA] = args.isa  # before the first load(): every native call uses it
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel = native.load()
    if kernel is None:
        raise SystemExit("the native kernel is not available here")
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    peak = peak_gmacs(kernel)
    base = baseline_kernel(args.baseline, kernel.isa) if args.baseline else None
    extra = (" baseline ms | vs baseline |", "---:|---:|") if base else ("", "")
    print(f"isa {kernel.isa_name}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"multiply-add ceiling {peak or 0:.0f} GMAC/s")
    print(f"| model | K->N | batch | bf16 ms | native ms | native GMAC/s | speed-up |{extra[0]}\n"
          f"|---|---|---:|---:|---:|---:|---:|{extra[1]}")
    gen = torch.Generator().manual_seed(0)
    for model in args.models.split(","):
        for k, n in SHAPES[model]:
            latent = torch.randn(n, k, generator=gen)
            w_bf16 = latent.to(torch.bfloat16)
            packed = pack_weight(latent)
            blocked = repack(packed, "block256")
            del latent
            for m in batches:
                x = torch.randn(m, k, generator=gen)
                x_bf16 = x.to(torch.bfloat16)
                assert torch.equal(bitlinear(x, blocked, "native"), bitlinear(x, packed, "reference"))
                if base:
                    assert torch.equal(base.linear_f32(x, blocked), kernel.linear_f32(x, blocked))
                inner = max(1, int(2e7 // (m * k * n)))  # ~ >= 1 ms of work per sample
                dense, tern, old = [], [], []
                torch.matmul(x_bf16, w_bf16.t())
                kernel.linear_f32(x, blocked)
                for _ in range(args.repeats):
                    dense.append(_ms(lambda a=x_bf16, b=w_bf16: torch.matmul(a, b.t()), inner))
                    tern.append(_ms(lambda a=x, b=blocked: kernel.linear_f32(a, b), inner))
                    if base:  # after a bf16 matmul too, so it finds the caches as the new kernel did
                        _ms(lambda a=x_bf16, b=w_bf16: torch.matmul(a, b.t()), inner)
                        old.append(_ms(lambda a=x, b=blocked: base.linear_f32(a, b), inner))
                ratios = [d / t for d, t in zip(dense, tern)]
                row = {"model": model, "k": k, "n": n, "batch": m, "bf16_ms": statistics.median(dense),
                       "native_ms": statistics.median(tern), "speedup": statistics.median(ratios)}
                rows.append(row)
                row["native_gmacs"] = m * k * n / row["native_ms"] / 1e6
                cells = ""
                if base:
                    row["baseline_ms"] = statistics.median(old)
                    row["vs_baseline"] = statistics.median([o / t for o, t in zip(old, tern)])
                    cells = f" {row['baseline_ms']:.3f} | {row['vs_baseline']:.2f}x |"
                print(f"| {model} | {k}->{n} | {m} | {row['bf16_ms']:.3f} | {row['native_ms']:.3f} | "
                      f"{row['native_gmacs']:.0f} | {row['speedup']:.2f}x |{cells}", flush=True)
    if args.json:
        meta = {"machine": platform.machine(), "isa": kernel.isa_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "peak_gmacs": peak,
                "baseline": args.baseline}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
