"""API throughput: biasmed's runner vs a bare asyncio + openai SDK loop, same server, same run.

The loopback server (tests/fakeapi.py, a separate process) answers every request after a fixed
latency (default 200 ms). At concurrency 32 the ideal is 32 / 0.2 s = 160 requests/s; the target
for the runner is >= 85% of it (136 req/s). Measured, in the same process, one after the other:

1. `bare`: asyncio + AsyncOpenAI + a semaphore, `chat.completions.create` (the SDK's parsed models);
2. `runner`: biasmed.run.runner.Runner with the `openai:` adapter, writing samples.jsonl and the
   SQLite response cache (both fresh), exactly what `biasmed run` does after start-up;
3. `cli` (with --cli): `biasmed run` end to end in a subprocess (start-up included in its wall
   time; the in-run rate is read from run.json).

    python benchmarks/api_throughput.py [--requests 1000] [--concurrency 32] [--latency 0.2] [--cli]

Prompts: the first N/8 MedQA test questions x 8 conditions when $BIASMED_MEDQA_DIR or the shared
MedQA copy exists, else the demo set with several mitigations (fewer prompts; said in the output).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakeapi.py"), "--latency", str(latency)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[1])  # type: ignore[union-attr]
    return p, f"http://127.0.0.1:{port}"


def medqa_source() -> str | None:
    env = os.environ.get("BIASMED_MEDQA_DIR")
    if env:
        return env
    shared = REPO.parent / "shared" / "data" / "medqa" / "US"
    return str(shared) if (shared / "test.jsonl").is_file() else None


def load_prompts(n: int) -> tuple[list, str, list[str]]:
    from biasmed.dataset.build import build_benchmark
    from biasmed.dataset.sources import load_sources

    src = medqa_source()
    if src:
        mits = ["none"]
        qs, pool, tpl = load_sources(src, "test", 5, mits, "paper-2024")
        bench = build_benchmark(qs, None, tpl, 0, mits, pool, limit=(n + 7) // 8)
        return bench.prompts()[:n], f"MedQA {src}", ["--medqa", src, "--limit", str((n + 7) // 8)]
    mits = ["none", "one-shot", "few-shot"]
    qs, pool, tpl = load_sources("demo", "test", 5, mits, "paper-2024")
    bench = build_benchmark(qs, None, tpl, 0, mits, pool)
    return bench.prompts()[:n], "demo set (MedQA not found)", ["--medqa", "demo", "--mitigations", ",".join(mits)]


async def bare_loop(url: str, texts: list[str], conc: int) -> float:
    import openai

    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=url + "/v1", max_retries=0)
    sem = asyncio.Semaphore(conc)

    async def one(text: str) -> str | None:
        async with sem:
            r = await client.chat.completions.create(model="gpt-bench", max_tokens=16, temperature=0,
                                                     messages=[{"role": "system", "content": text}])
            return r.choices[0].message.content

    t0 = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    dt = time.perf_counter() - t0
    await client.close()
    return dt


def runner_run(url: str, prompts: list, conc: int, tmp: Path) -> tuple[float, dict]:
    from biasmed.run.cache import ResponseCache
    from biasmed.models import GenParams, resolve_model
    from biasmed.results import SamplesWriter
    from biasmed.run.runner import RunConfig, Runner

    os.environ["OPENAI_API_KEY"] = "sk-bench"
    model = resolve_model("openai:gpt-bench", base_url=url + "/v1", concurrency=conc)
    cache = ResponseCache(tmp / "cache.sqlite")
    writer = SamplesWriter(tmp / "run" / "samples.jsonl")
    runner = Runner(model, GenParams(), writer, cache=cache, config=RunConfig(concurrency=conc))

    async def go():
        try:
            return await runner.run(prompts)
        finally:
            await model.aclose()

    t0 = time.perf_counter()
    res = asyncio.run(go())
    dt = time.perf_counter() - t0
    writer.close()
    cache.close()
    assert res.status == "complete" and res.stats.done == len(prompts), res
    return dt, res.stats.as_dict()


def cli_run(url: str, args: list[str], conc: int, tmp: Path) -> tuple[float, float]:
    out = tmp / "cli-run"
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "BIASMED_CACHE_DIR": str(tmp / "cli-cache")}
    cmd = [sys.executable, "-c", "from biasmed.cli import main; main()", "run", "--model", "openai:gpt-bench",
           "--base-url", url + "/v1", "--concurrency", str(conc), "--out", str(out), "--quiet", *args]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    inv = json.loads((out / "run.json").read_text())["invocations"][-1]
    return wall, inv["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--cli", action="store_true", help="also time `biasmed run` end to end")
    args = ap.parse_args()

    prompts, source, cli_args = load_prompts(args.requests)
    n = len(prompts)
    distinct = len({p.sha256 for p in prompts})
    ideal = args.concurrency / args.latency
    server, url = start_server(args.latency)
    try:
        print(f"prompts: {n} ({distinct} distinct) from {source}; concurrency {args.concurrency}; "
              f"latency {args.latency * 1000:.0f} ms; ideal {ideal:.0f} req/s; load avg {os.getloadavg()[0]:.1f}")
        asyncio.run(bare_loop(url, [f"warm-up {i}" for i in range(args.concurrency)], args.concurrency))
        cpu0 = time.process_time()
        dt = asyncio.run(bare_loop(url, [p.text for p in prompts], args.concurrency))
        cpu = (time.process_time() - cpu0) / n * 1000
        print(f"bare asyncio+openai loop: {n / dt:6.1f} req/s  ({n / dt / ideal:5.1%} of ideal, {dt:.2f} s; "
              f"client CPU {cpu:.2f} ms/request)")
        with tempfile.TemporaryDirectory() as d:
            cpu0 = time.process_time()
            dt, stats = runner_run(url, prompts, args.concurrency, Path(d))
            cpu = (time.process_time() - cpu0) / n * 1000  # includes the cache writer thread
            print(f"biasmed runner          : {stats['requests'] / dt:6.1f} req/s  "
                  f"({stats['requests'] / dt / ideal:5.1%} of ideal, {dt:.2f} s; client CPU {cpu:.2f} ms/request; "
                  f"{stats['done']} samples written, cache + samples.jsonl on)")
            if args.cli:
                wall, inner = cli_run(url, cli_args, args.concurrency, Path(d))
                print(f"biasmed run (CLI)       : {stats['requests'] / inner:6.1f} req/s in-run ({inner:.2f} s, "
                      f"SDK import included), {wall:.2f} s wall with start-up")
        print(f"load avg after: {os.getloadavg()[0]:.1f}")
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(10)


if __name__ == "__main__":
    main()
