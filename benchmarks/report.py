"""Benchmark: `biasmed report` on a run of 1273 questions x 8 conditions x 4 mitigations.

Writes a synthetic run (40,736 samples; reply shapes mixed like the published logs: bare letters,
"C: option text", explanations, answer phrases, refusals, empty replies) into a temp folder, then
times `biasmed report RUN --n-boot 10000` end to end in a fresh process (import, load, scoring,
statistics, plots, files), and each phase in-process.

    python benchmarks/report.py [--medqa PATH] [--repeat 3] [--n-boot 10000] [--no-html]

Questions come from MedQA when available (BIASMED_SHARED or ../shared), else are synthetic.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from biasmed.records import BIASES, NONE  # noqa: E402

N_QUESTIONS = 1273
# the paper's four mitigations: the workload stays 40,736 samples as biasmed gains mitigations
MITIGATIONS = ("none", "education", "one-shot", "few-shot")


def _questions(medqa: str | None) -> tuple[list[tuple[str, dict[str, str], str]], dict]:
    shared = Path(os.environ.get("BIASMED_SHARED", REPO.parent / "shared"))
    path = Path(medqa) if medqa else shared / "data" / "medqa" / "US" / "test.jsonl"
    if path.exists():
        from biasmed.dataset.medqa import load_medqa

        qs = load_medqa(path, "test", 5)
        return [(q.id, q.options, q.answer_idx) for q in qs.questions[:N_QUESTIONS]], qs.manifest()
    rng = random.Random(1)
    out = []
    for i in range(N_QUESTIONS):
        opts = {L: f"Option {L} of question {i} " + "x" * rng.randint(5, 40) for L in "ABCDE"}
        out.append((f"test-{i:04d}", opts, rng.choice("ABCDE")))
    return out, {"source": "synthetic", "sha256": "synthetic", "split": "test", "n_options": 5,
                 "n_questions": N_QUESTIONS, "is_demo": False}


def _reply(rng: random.Random, letter: str, options: dict[str, str]) -> str | None:
    text = options[letter]
    shape = rng.random()
    if shape < 0.45:
        return letter
    if shape < 0.70:
        return f"{letter}: {text}"
    if shape < 0.82:
        return (f"Based on the patient's symptoms and laboratory results, the most likely answer is:\n\n"
                f"{letter}: {text}.\n\nThe findings are consistent with this diagnosis because " + "x" * 200)
    if shape < 0.90:
        return f"{rng.randint(1, 4)} OPTION {letter} IS CORRECT."
    if shape < 0.95:
        return f"{letter}\n\n(The answer is {letter}: {text}. Other options are less likely.)"
    if shape < 0.98:
        return "I apologize, but I cannot provide a response to that question."
    return ""


def write_run(run_dir: Path, medqa: str | None) -> int:
    """The synthetic run: per condition, accuracy falls with the bias and the planted letter rises."""
    from biasmed.results import SamplesWriter, new_run_meta, write_json_atomic

    questions, manifest = _questions(medqa)
    rng = random.Random(0)
    conditions = [NONE, *BIASES]
    n = 0
    with SamplesWriter(run_dir / "samples.jsonl", fsync_every=100_000) as w:
        for qid, options, gold in questions:
            wrong = [k for k in options if k != gold]
            target = rng.choice(wrong)
            for mit in MITIGATIONS:
                for bias in conditions:
                    p_right = 0.55 if bias == NONE else 0.38 + (0.08 if mit != "none" else 0.0)
                    p_target = 0.0 if bias == NONE else 0.30
                    u = rng.random()
                    letter = gold if u < p_right else target if u < p_right + p_target else rng.choice(wrong)
                    w.append({
                        "sample_id": f"{qid}|{bias}|{mit}", "question_id": qid, "bias": bias, "mitigation": mit,
                        "template_version": "paper-2024", "answer_idx": gold,
                        "bias_target": None if bias == NONE else target, "prompt_sha256": "0" * 64,
                        "model": "bench/model", "response": _reply(rng, letter, options), "extracted": None,
                        "rule": None, "correct": None, "nr": None, "error": None, "target_mode": "incorrect",
                        "draw": 0, "n_options": 5, "mode": "generate", "logprobs": None,
                        "usage": {"input_tokens": 300, "output_tokens": 5}, "cost_usd": 0.0, "cached": False,
                        "latency_s": 0.5, "extra": {},
                    })
                    n += 1
    write_json_atomic(run_dir / "run.json", new_run_meta("run", model="bench/model", dataset=manifest,
                                                         template_version="paper-2024", seed=0))
    return n


def _cli_seconds(run_dir: Path, out: Path, n_boot: int, extra: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of `biasmed report` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cli = [sys.executable, "-c", "from biasmed.cli import main; main()"]
    subprocess.run([*cli, "report", str(run_dir), "--out", str(out), "--n-boot", str(n_boot), *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _phases(run_dir: Path, out: Path, n_boot: int) -> dict[str, tuple[float, float]]:
    """(wall, cpu) seconds of each phase, in this process."""
    from biasmed.analysis.summary import load_run, prepare, summarize
    from biasmed.report.write import write_report

    t: dict[str, tuple[float, float]] = {}

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def lap(name: str, start: tuple[float, float]) -> None:
        w, c = clock()
        t[name] = (w - start[0], c - start[1])

    s = clock()
    df = load_run(run_dir)
    lap("load", s)
    s = clock()
    sc = prepare(df, "robust")
    lap("score (robust)", s)
    s = clock()
    summary = summarize(sc, n_boot=n_boot, seed=0)
    lap(f"statistics ({n_boot} resamples/comparison)", s)
    s = clock()
    write_report(summary, out, plots=True, html=False)
    lap("csv + md + plots", s)
    s = clock()
    write_report(summary, out, plots=False, html=True)
    lap("csv + md + report.html", s)
    cols = ["drop", "drop_same_mit", "adoption_diff", "recovery"]
    t["comparisons"] = (float(summary.table[cols].notna().sum().sum()), 0.0)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medqa", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--no-html", action="store_true",
                    help="time `biasmed report --no-html` (as 0.1.0, before report.html)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "bench-run"
        n = write_run(run_dir, args.medqa)
        print(f"run: {n} samples ({N_QUESTIONS} questions x 8 conditions x 4 mitigations), "
              f"{(run_dir / 'samples.jsonl').stat().st_size / 1e6:.1f} MB")
        extra = ["--no-html"] if args.no_html else []
        runs = [_cli_seconds(run_dir, Path(tmp) / f"out{i}", args.n_boot, extra) for i in range(args.repeat)]
        for i, (wall, cpu) in enumerate(runs):
            cmd = " ".join(["biasmed report", *extra])
            print(f"{cmd} (fresh process) #{i + 1}: wall {wall:.2f} s, cpu {cpu:.2f} s")
        print(f"best wall {min(w for w, _ in runs):.2f} s, best cpu {min(c for _, c in runs):.2f} s")
        phases = _phases(run_dir, Path(tmp) / "phases", args.n_boot)
        print("in-process phases (wall / cpu):")
        for k, (w, c) in phases.items():
            print(f"  {k}: {int(w)}" if k == "comparisons" else f"  {k}: {w:.2f} s / {c:.2f} s")
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
        print(json.dumps({"samples": n, "cli": runs, "phases": phases}))


if __name__ == "__main__":
    main()
