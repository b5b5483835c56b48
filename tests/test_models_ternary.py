"""`biasmed run` end to end on tiny MatMul-free (HGRN-bit) and SpikeGPT checkpoints, offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from biasmed.ternary.checkpoint import make_tiny_hgrn_checkpoint  # noqa: E402
from biasmed.ternary.spikegpt_checkpoint import make_tiny_spikegpt_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    mm = make_tiny_hgrn_checkpoint(root / "mmfree")
    sp = make_tiny_spikegpt_checkpoint(root / "spikegpt")
    return {"mmfree": str(mm), "spikegpt": str(sp.parent if sp.is_file() else sp)}


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BIASMED_CACHE_DIR": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("BIASMED_MEDQA_DIR", None)  # the embedded demo set: offline on any machine
    return subprocess.run([sys.executable, "-m", "biasmed.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["mmfree", "spikegpt"])
@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_run_end_to_end(tiny: dict[str, str], tmp_path: Path, family: str, mode: str) -> None:
    out = tmp_path / "run"
    spec = f"{family}:{tiny[family]}"
    limit = 5 if family == "mmfree" else 2  # the issue's `--limit 5`; SpikeGPT's byte tokenizer is slow
    args = ["run", "--model", spec, "--limit", str(limit), "--biases", "recency,confirmation", "--mode", mode,
            "--max-tokens", "3", "--out", str(out), "--quiet"]
    r = _run(args, tmp_path)
    assert r.returncode == 0, r.stderr
    samples = _samples(out)
    assert len(samples) == limit * 3  # questions x (none + 2 biases)
    assert len({s["sample_id"] for s in samples}) == len(samples)
    for s in samples:
        assert s["model"] == spec and s["mode"] == mode and s["error"] is None
        assert s["usage"]["input_tokens"] > 100
        if mode == "logprob":
            lp = s["logprobs"]
            assert sorted(lp) == list("ABCDE")
            assert all(v <= 0 and math.isfinite(v) for v in lp.values())
            assert s["extracted"] == max(lp, key=lp.get)
            assert s["correct"] == (s["extracted"] == s["answer_idx"])
        else:
            assert isinstance(s["response"], str) and s["usage"]["output_tokens"] <= 3
    meta = json.loads((out / "run.json").read_text())
    assert meta["is_demo"] is True
    if (family, mode) != ("mmfree", "logprob"):
        return
    # the same command again resumes: nothing new to do, nothing duplicated
    r2 = _run(args, tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert len(_samples(out)) == len(samples)


def test_packed_and_latent_mmfree_answer_alike(tiny: dict[str, str], tmp_path: Path) -> None:
    """The packed 2-bit path and the latent fake-quant path give the same letter log-probs."""
    outs = []
    for packed in ("true", "false"):
        out = tmp_path / f"run-{packed}"
        r = _run(["run", "--model", f"mmfree:{tiny['mmfree']}", "--limit", "2", "--mode", "logprob",
                  "--biases", "recency", "--dtype", "float32", "--no-cache", "--out", str(out), "--quiet",
                  "--model-option", f"packed={packed}"], tmp_path)
        if r.returncode == 2 and "--model-option" in r.stderr:
            pytest.skip("this build has no --model-option flag")
        assert r.returncode == 0, r.stderr
        outs.append({s["sample_id"]: s["logprobs"] for s in _samples(out)})
    assert outs[0].keys() == outs[1].keys()
    for sid in outs[0]:
        for letter, v in outs[0][sid].items():
            assert v == pytest.approx(outs[1][sid][letter], abs=1e-3)
