"""biasmed.evaluate(): the library's run contract, the same files as `biasmed run`, typed stops, and
the README's Library code blocks run as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import biasmed
from biasmed.errors import RetryableError

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"latency_s", "cached", "cost_usd"}


def _samples(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text("utf-8").splitlines()]
    return {r["sample_id"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def first_letter_of_hash(messages):
    """A deterministic stand-in model: a letter chosen by the prompt's text."""
    return "ABCDE"[sum(map(ord, messages[-1]["content"])) % 5]


@pytest.mark.slow
def test_evaluate_smollm2_on_medqa_and_the_cli_write_the_same_samples(medqa_dir, tmp_path, run_cli_process):
    result = biasmed.evaluate("smollm2", medqa=str(medqa_dir), limit=3, mode="logprob", out=tmp_path / "lib",
                              cache_dir=str(tmp_path / "cache"))
    assert result.status == "complete" and len(result.samples) == 24
    acc = result.summary.table.set_index("bias")["accuracy"]
    assert set(acc.index) == {"none", *biasmed.BIASES} and acc.between(0, 1).all()
    assert result.totals["samples"] == 24 and result.stats.done == 24
    res = run_cli_process("run", "--model", "smollm2", "--medqa", medqa_dir, "--limit", "3", "--mode", "logprob",
                          "--out", tmp_path / "cli", "--cache-dir", tmp_path / "cache", "--quiet")
    assert res.exit_code == 0, res.stderr
    assert _samples(tmp_path / "cli") == _samples(tmp_path / "lib")
    lib_meta = json.loads((tmp_path / "lib" / "run.json").read_text())
    cli_meta = json.loads((tmp_path / "cli" / "run.json").read_text())
    for key in ("model", "params", "dataset_sha256", "template_sha256", "seed", "biases", "mitigations", "status"):
        assert lib_meta[key] == cli_meta[key], key


def test_a_plain_function_is_a_model(tmp_path):
    result = biasmed.evaluate(first_letter_of_hash, limit=3, out=tmp_path / "fn")
    assert result.status == "complete" and len(result.samples) == 24
    assert set(result.samples["model"]) == {"python:tests.test_evaluate.first_letter_of_hash"} or \
        set(result.samples["model"]) == {"python:test_evaluate.first_letter_of_hash"}
    # scored by the one verdict function: a one-letter reply is that letter
    assert (result.samples["extracted"] == result.samples["response"]).all()
    assert "accuracy" in result.summary.table and len(result.summary.table) == 8
    # resuming a complete folder asks nothing again
    again = biasmed.evaluate(first_letter_of_hash, limit=3, out=tmp_path / "fn")
    assert again.stats.done == 0 and again.totals["samples"] == 24


def test_evaluate_inside_a_running_event_loop_and_async_functions(tmp_path):
    calls: list[int] = []

    async def async_model(messages):
        calls.append(1)
        await asyncio.sleep(0)
        return "B"

    async def notebook_cell():
        # a Jupyter cell runs inside a loop: evaluate() must not call asyncio.run() on it
        sync = biasmed.evaluate(first_letter_of_hash, limit=2, out=tmp_path / "in-loop")
        awaited = await biasmed.evaluate_async(async_model, limit=2, out=tmp_path / "async")
        return sync, awaited

    sync, awaited = asyncio.run(notebook_cell())
    assert len(sync.samples) == 16 and len(awaited.samples) == 16
    assert set(awaited.samples["response"]) == {"B"} and len(calls) == 16


def test_bad_settings_raise_input_error_and_write_nothing(tmp_path):
    out = tmp_path / "never"
    for kw in ({"limit": 0}, {"temperature": float("nan")}, {"mode": "chat"}, {"biases": []},
               {"no_such_setting": 1}, {"concurrency": 0}):
        with pytest.raises(biasmed.InputError):
            biasmed.evaluate(first_letter_of_hash, out=out, **kw)
        assert not out.exists(), kw
    with pytest.raises(biasmed.InputError, match="logprob"):
        biasmed.evaluate(first_letter_of_hash, mode="logprob", limit=1, out=out)


def test_a_stop_is_a_typed_exception_carrying_the_result(tmp_path):
    def flaky(messages):
        if "self-diagnos" in messages[-1]["content"].lower() or "convinced" in messages[-1]["content"]:
            raise RetryableError("503 busy")
        return "A"

    with pytest.raises(biasmed.RunIncomplete) as exc:
        biasmed.evaluate(flaky, limit=2, out=tmp_path / "r", max_retries=0, backoff=0)
    result = exc.value.result
    assert isinstance(result, biasmed.EvalResult) and result.status == "incomplete"
    assert 0 < result.totals["samples"] < 16 and result.stats.failed == 16 - result.totals["samples"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "incomplete"
    assert exc.value.exit_code == 1


def _library_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("## Library\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_library_blocks_run(tmp_path):
    blocks = _library_blocks()
    assert len(blocks) >= 3
    env = {**os.environ, "BIASMED_CACHE_DIR": os.environ.get("BIASMED_CACHE_DIR", str(Path.home() / ".cache" / "biasmed"))}
    for i, code in enumerate(blocks):
        if "smollm2" in code and not os.environ.get("CI"):
            continue  # the embedded model's block: run in CI (slow), and by test_evaluate_smollm2 above
        if i == 1 or "smollm2" in code:
            code = "import biasmed\n" + code
        proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"README Library block {i + 1} failed:\n{code}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "results" / "always-a" / "samples.jsonl").is_file()


def test_chosen_biases_keep_their_unbiased_twin_and_expand_like_the_cli(tmp_path):
    result = biasmed.evaluate(first_letter_of_hash, limit=2, biases=["recency"], out=tmp_path / "one")
    assert sorted(set(result.samples["bias"])) == ["none", "recency"] and len(result.samples) == 4
    both = biasmed.evaluate(first_letter_of_hash, limit=1, biases="default,placebo", out=tmp_path / "pl")
    biases = set(both.samples["bias"])
    assert "none" in biases and set(biasmed.BIASES) <= biases and len(biases) > len(biasmed.BIASES) + 1
