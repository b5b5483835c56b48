"""Benchmark: build BiasMedQA and render every prompt, 1273 questions x 8 conditions x 4 mitigations.

    python benchmarks/build_render.py [--medqa PATH] [--repeat 3] [--write]

Times, per repetition (the best is reported): loading MedQA test + dev, building the items
(targets drawn), rendering all 40,736 prompts, and with --write also writing the JSONL records +
manifest (what `biasmed build --mitigations none,education,one-shot,few-shot` does).
Target: under 10 s on a 2-core machine. Exits 1 when the best total misses the target.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 10.0
MITIGATIONS = ["none", "education", "one-shot", "few-shot"]


def _default_medqa() -> str:
    from biasmed._paths import shared_dir

    return os.environ.get("BIASMED_MEDQA_DIR") or str(shared_dir() / "data" / "medqa" / "US")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, load average {load:.1f} at start")


def one_run(medqa: str, write: bool) -> dict[str, float]:
    from biasmed.dataset.build import build_benchmark, write_benchmark
    from biasmed.dataset.medqa import load_medqa

    t0 = time.perf_counter()
    c0 = time.process_time()
    test, dev = load_medqa(medqa, "test"), load_medqa(medqa, "dev")
    t1 = time.perf_counter()
    bench = build_benchmark(test, None, "paper-2024", 0, MITIGATIONS, dev)
    t2 = time.perf_counter()
    prompts = bench.prompts()
    t3 = time.perf_counter()
    out = {"load_s": t1 - t0, "build_s": t2 - t1, "render_s": t3 - t2, "prompts": len(prompts)}
    if write:
        with tempfile.TemporaryDirectory() as d:
            write_benchmark(bench, Path(d) / "biasmedqa.jsonl")
        out["write_s"] = time.perf_counter() - t3
    out["total_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medqa", default=None, help="MedQA US folder (default: $BIASMED_MEDQA_DIR or ../shared)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="also write the JSONL records (as biasmed build does)")
    args = ap.parse_args(argv)
    medqa = args.medqa or _default_medqa()
    print(f"machine: {machine()}")
    runs = [one_run(medqa, args.write) for _ in range(args.repeat)]
    for i, r in enumerate(runs, 1):
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k.endswith("_s"))
        print(f"run {i}: {r['prompts']} prompts; {parts}")
    best = min(runs, key=lambda r: r["total_s"])
    ok = best["total_s"] < TARGET_S
    print(f"best total: {best['total_s']:.2f} s for {best['prompts']} prompts "
          f"({best['prompts'] / best['render_s']:.0f} prompts/s rendering); target < {TARGET_S:.0f} s: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
