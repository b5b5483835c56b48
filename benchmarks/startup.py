"""Start-up: from launching `biasmed run` to its first request reaching the (loopback) server.

Target: <= 3 s. The process loads the MedQA test split (or the demo set), builds the prompts,
opens the response cache and the run folder, imports the provider's SDK and sends. Each run
uses a fresh run folder and cache, so nothing is skipped.

    python benchmarks/startup.py [--repeat 5] [--medqa PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from fakeapi import FakeAPI  # noqa: E402


def biasmed_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("biasmed")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("biasmed")
    return [found] if found else [sys.executable, "-c", "from biasmed.cli import main; main()"]


def time_to_first_request(spec: str, url: str, medqa: str | None, api: FakeAPI, tmp: Path) -> float:
    out, cache = tempfile.mkdtemp(dir=tmp), tempfile.mkdtemp(dir=tmp)
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "ANTHROPIC_API_KEY": "sk-ant-bench",
           "BIASMED_CACHE_DIR": cache}
    cmd = [*biasmed_cmd(), "run", "--model", spec, "--base-url", url, "--limit", "1", "--out", out, "--quiet"]
    if medqa:
        cmd += ["--medqa", medqa]
    api.first_request_at = None
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while api.first_request_at is None:
        if p.poll() is not None:
            raise RuntimeError(f"{spec}: exited before sending: {p.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.002)
    first = api.first_request_at - t0
    p.wait(60)
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--medqa", default=None, help="MedQA path (default: the shared copy if present, else demo)")
    args = ap.parse_args()
    medqa = args.medqa
    shared = REPO.parent / "shared" / "data" / "medqa" / "US"
    if medqa is None and (shared / "test.jsonl").is_file():
        medqa = str(shared)
    t0 = time.monotonic()
    subprocess.run([*biasmed_cmd(), "--help"], capture_output=True, check=True)
    help_s = time.monotonic() - t0
    print(f"data: {medqa or 'demo set'}; load avg {os.getloadavg()[0]:.1f}; `biasmed --help`: {help_s:.2f} s")
    with FakeAPI() as api, tempfile.TemporaryDirectory() as d:
        for spec, url in (("openai:gpt-bench", api.url + "/v1"), ("openai-compatible:m", api.url + "/v1"),
                          ("anthropic:claude-bench", api.url)):
            times = [time_to_first_request(spec, url, medqa, api, Path(d)) for _ in range(args.repeat)]
            print(f"{spec:24s} start-up to first request: median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})")
    print(f"load avg after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
