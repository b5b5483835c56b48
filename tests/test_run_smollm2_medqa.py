"""Issue 3 acceptance: `smollm2` in logprob mode scores 50 MedQA test questions offline through
`biasmed run`, and `hf:<the converted folder>` gives the same answers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path


def _run(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, "-m", "biasmed", *args], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]


def _samples(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    return {r["sample_id"]: r for r in rows}


def test_smollm2_then_hf_on_50_medqa_questions(medqa_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BIASMED_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("BIASMED_MODELS_DIR", None)
    common = ["--mode", "logprob", "--medqa", str(medqa_dir), "--biases", "none", "--limit", "50", "--quiet"]
    _run(["run", "--model", "smollm2", *common, "--out", str(tmp_path / "smol")], env)
    converted = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert (converted / "config.json").is_file() and list(converted.glob("*.safetensors"))
    _run(["run", "--model", f"hf:{converted}", *common, "--out", str(tmp_path / "hf")], env)

    smol, hf = _samples(tmp_path / "smol"), _samples(tmp_path / "hf")
    assert len(smol) == 50 and smol.keys() == hf.keys()
    assert {s["question_id"] for s in smol.values()} == {f"test-{i:04d}" for i in range(50)}
    for sid, s in smol.items():
        assert s["error"] is None and s["mode"] == "logprob" and s["model"] == "smollm2"
        lp = s["logprobs"]
        assert sorted(lp) == list("ABCDE") and all(math.isfinite(v) and v < 0 for v in lp.values())
        assert s["extracted"] == max(lp, key=lp.get) and s["rule"] == "logprob"
        assert s["correct"] == (s["extracted"] == s["answer_idx"])
        assert hf[sid]["extracted"] == s["extracted"]
        assert all(abs(hf[sid]["logprobs"][k] - v) < 1e-4 for k, v in lp.items())
    meta = json.loads((tmp_path / "smol" / "run.json").read_text())
    assert meta["is_demo"] is False and meta["dataset"]["sha256"]
