"""Shared fixtures: where the read-only shared data lives, the paper's logs unpacked once per
session, and helpers that run the `biasmed` CLI in process or in a fresh process.

Shared data is found through `BIASMED_SHARED` (default: the `shared` folder beside the repository).
Tests that need it skip, saying so, only when it is truly absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests never touch the network: make `datasets` / `huggingface_hub` fail fast instead of trying
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the Triton kernel tests run interpreted on CPU; the flag must be set before ANY test imports
# triton (torch, vLLM and the exports may import it first), so it is set here, at collection start
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
# the archives unpacked for the fidelity tests (others are read in place by the tests that need them)
PAPER_ARCHIVES = ("gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1")
FIDELITY_MODELS = ("gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1")


def _shared_path() -> Path:
    env = os.environ.get("BIASMED_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path} (set BIASMED_SHARED to its location)")
    return path


@pytest.fixture(scope="session")
def medqa_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "medqa" / "US"
    if not (path / "test.jsonl").is_file():
        pytest.skip(f"MedQA not found at {path}")
    return path


@pytest.fixture(scope="session")
def medqa_test(medqa_dir: Path):
    from biasmed.dataset.medqa import load_medqa

    return load_medqa(medqa_dir, "test", 5)


@pytest.fixture(scope="session")
def medqa_dev(medqa_dir: Path):
    from biasmed.dataset.medqa import load_medqa

    return load_medqa(medqa_dir, "dev", 5)


@pytest.fixture(scope="session")
def paper_archives_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "biasmedqa_logs"
    if not path.is_dir():
        pytest.skip(f"the paper's logs not found at {path}")
    return path


@pytest.fixture(scope="session")
def paper_logs_dir(paper_archives_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archives in PAPER_ARCHIVES, unpacked once per session (one folder per model)."""
    out = tmp_path_factory.mktemp("paper_logs")
    for name in PAPER_ARCHIVES:
        archive = paper_archives_dir / f"{name}.tar.xz"
        if not archive.is_file():
            pytest.skip(f"{archive} not found")
        with tarfile.open(archive, "r:xz") as tf:
            try:
                tf.extractall(out, filter="data")
            except TypeError:  # Python without extraction filters (< 3.10.12)
                tf.extractall(out)
    return out


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _run_in_process(args: list[str], env: Mapping[str, str | None] | None = None) -> CliResult:
    from typer.testing import CliRunner

    from biasmed.cli import app

    result = CliRunner(env=dict(env) if env else None).invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def _run_subprocess(args: list[str], env: Mapping[str, str | None] | None = None,
                    cwd: Path | None = None) -> CliResult:
    full_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    proc = subprocess.run(
        [sys.executable, "-c", "from biasmed.cli import main; main()", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., CliResult]:
    """run_cli(*args, env={...}) runs `biasmed ARGS` in this process (typer's CliRunner).

    `env` values of None remove a variable for the call. An unexpected exception is re-raised.
    """
    def run(*args: object, env: Mapping[str, str | None] | None = None) -> CliResult:
        return _run_in_process([str(a) for a in args], env)

    return run


@pytest.fixture(scope="session")
def run_cli_process() -> Callable[..., CliResult]:
    """Like run_cli, in a fresh Python process (for cross-process determinism checks)."""
    def run(*args: object, env: Mapping[str, str | None] | None = None, cwd: Path | None = None) -> CliResult:
        return _run_subprocess([str(a) for a in args], env, cwd)

    return run


@pytest.fixture(scope="session")
def paper_runs(paper_logs_dir: Path, medqa_dir: Path, tmp_path_factory: pytest.TempPathFactory,
               run_cli: Callable[..., CliResult]) -> dict[str, Path]:
    """gpt-3.5-turbo-0613 and mixtral logs imported once with `biasmed import-logs` (one run each)."""
    out = tmp_path_factory.mktemp("paper_runs")
    res = run_cli("import-logs", *(paper_logs_dir / m for m in FIDELITY_MODELS),
                  "--medqa", medqa_dir, "--out", out)
    assert res.exit_code == 0, res.stderr
    return {m: out / f"paper-{m}" for m in FIDELITY_MODELS}


@pytest.fixture(scope="session")
def paper_samples(paper_runs: dict[str, Path]) -> dict[str, list[dict]]:
    """The samples of `paper_runs`, read once."""
    from biasmed.results import read_samples

    return {m: read_samples(run) for m, run in paper_runs.items()}
