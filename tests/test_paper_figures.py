"""The paper's published accuracies, reproduced from its raw logs: `biasmed import-logs` then
`biasmed report --convention paper` (docs/conventions.md explains every choice).

Needs the shared folder (BIASMED_SHARED, default ../shared): the logs and MedQA's test split.
gpt-3.5-turbo-0613 and mixtral are imported whole (conftest's `paper_runs`); for the other models a
few files each are taken out of their archives (importing every archive takes about a minute).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from biasmed.cli import app

# shared data comes from conftest's fixtures (BIASMED_SHARED, default ../shared; they skip when absent)

# The acceptance figures of issue 4 (the paper's table; confirmation = the 2023 wording).
ACCEPTANCE = [
    ("gpt-3.5-turbo-0613", "none", "none", 0.497),
    ("gpt-3.5-turbo-0613", "self_diagnosis", "none", 0.288),
    ("gpt-3.5-turbo-0613", "recency", "none", 0.333),
    ("gpt-3.5-turbo-0613", "frequency", "none", 0.274),
    ("gpt-3.5-turbo-0613", "cultural", "none", 0.277),
    ("gpt-3.5-turbo-0613", "status_quo", "none", 0.361),
    ("gpt-3.5-turbo-0613", "false_consensus", "none", 0.239),
    ("gpt-3.5-turbo-0613", "confirmation", "none", 0.407),
    ("gpt-3.5-turbo-0613", "self_diagnosis", "education", 0.448),
    ("gpt-3.5-turbo-0613", "recency", "education", 0.391),
    ("gpt-3.5-turbo-0613", "frequency", "education", 0.370),
    ("mixtral-8x7b-instruct-v0.1", "none", "none", 0.518),
    ("mixtral-8x7b-instruct-v0.1", "self_diagnosis", "none", 0.460),
    ("mixtral-8x7b-instruct-v0.1", "frequency", "none", 0.373),
    # also in the paper's table: the script's quirks make these (an "NR" inside a reply's first line
    # counted as no response) — 537/1273 would print .422
    ("mixtral-8x7b-instruct-v0.1", "cultural", "none", 0.421),
]

# Other models: the files taken from each archive, and paper-table cells they reproduce.
SUBSETS = {
    "gpt-4-0613": ["bias_output_gpt-4-0613.txt", "bias_output_false_consensus_v2_gpt-4-0613.txt"],
    "text-bison-001": ["bias_output_text-bison-001.txt", "bias_output_frequency_text-bison-001.txt",
                       "bias_output_confirmation_v2_text-bison-001.txt"],
    "llama-2-70b-chat": ["ae_bias_output_llama-2-70b-chat.txt", "bias_output_llama-2-70b-chat.txt",
                         "ae_bias_output_recency_llama-2-70b-chat.txt",
                         "bias_output_false_consensus_v2_llama-2-70b-chat.txt"],
    "pmc-llama-13b": ["ae_bias_output_pmc-llama-13b.txt", "bias_output_pmc-llama-13b.txt",
                      "ae_bias_output_cultural_bias_pmc-llama-13b.txt"],
    "meditron": ["bias_output_meditron-7b.txt", "bias_output_meditron-70b.txt"],
}
OTHER_FIGURES = [
    ("gpt-4-0613", "none", "none", 0.727),
    ("gpt-4-0613", "false_consensus_v2", "none", 0.640),
    # PaLM-2 over (total - NR): the logs print "RESPONSE: NR" for an empty reply
    ("text-bison-001", "none", "none", 0.429),
    ("text-bison-001", "frequency", "none", 0.167),
    ("text-bison-001", "confirmation_v2", "none", 0.358),
    # Llama-2: the re-judged ae_ file over (total - NR); .141 needs the script's carried "skip"
    ("llama-2-70b-chat", "none", "none", 0.357),
    ("llama-2-70b-chat", "recency", "none", 0.141),
    ("llama-2-70b-chat", "false_consensus_v2", "none", 0.090),
    ("pmc-llama-13b", "none", "none", 0.334),
    ("pmc-llama-13b", "cultural", "none", 0.278),
]


def _invoke(args: list[str]) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output


def _report(runs: list[Path], out: Path, convention: str) -> pd.DataFrame:
    _invoke(["report", *map(str, runs), "--convention", convention, "--out", str(out), "--n-boot", "0",
             "--no-plots"])
    return pd.read_csv(out / "summary.csv")


@pytest.fixture(scope="module")
def main_runs(paper_runs: dict[str, Path]) -> list[Path]:
    """gpt-3.5-turbo-0613 and mixtral, imported whole with `biasmed import-logs` (conftest)."""
    return [paper_runs[m] for m in sorted(paper_runs)]


@pytest.fixture(scope="module")
def other_runs(paper_archives_dir: Path, medqa_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("paper-files")
    for archive, names in SUBSETS.items():
        with tarfile.open(paper_archives_dir / f"{archive}.tar.xz") as tf:
            for m in tf:
                if m.isfile() and os.path.basename(m.name) in names:
                    (src / os.path.basename(m.name)).write_bytes(tf.extractfile(m).read())
    assert len(list(src.iterdir())) == sum(len(v) for v in SUBSETS.values())
    out = tmp_path_factory.mktemp("paper-other")
    _invoke(["import-logs", str(src), "--medqa", str(medqa_dir), "--out", str(out)])
    return out


def _acc(s: pd.DataFrame, model: str, bias: str, mit: str) -> float:
    r = s[(s["model"] == model) & (s["bias"] == bias) & (s["mitigation"] == mit) & (s["draw"] == 0)]
    assert len(r) == 1, f"{model} {bias} {mit}: {len(r)} rows"
    return float(r["accuracy"].iloc[0])


@pytest.fixture(scope="module")
def main_paper(main_runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _report(main_runs, tmp_path_factory.mktemp("rep-main"), "paper")


@pytest.mark.parametrize("model,bias,mit,expected", ACCEPTANCE)
def test_acceptance_figures(main_paper: pd.DataFrame, model: str, bias: str, mit: str, expected: float) -> None:
    assert round(_acc(main_paper, model, bias, mit), 3) == expected
    assert set(main_paper["convention"]) == {"paper"}


def test_main_runs_have_every_condition(main_paper: pd.DataFrame) -> None:
    for model in ("gpt-3.5-turbo-0613", "mixtral-8x7b-instruct-v0.1"):
        m = main_paper[main_paper["model"] == model]
        assert len(m) == 29  # 29 log files per model
        assert (m["n"] == 1273).all()
        assert m["accuracy"].between(0, 1).all()


@pytest.fixture(scope="module")
def other_paper(other_runs: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return _report(sorted(other_runs.iterdir()), tmp_path_factory.mktemp("rep-other"), "paper")


@pytest.mark.parametrize("model,bias,mit,expected", OTHER_FIGURES)
def test_other_models_paper_figures(other_paper: pd.DataFrame, model: str, bias: str, mit: str,
                                    expected: float) -> None:
    assert round(_acc(other_paper, model, bias, mit), 3) == expected


def test_other_models_run_under_the_robust_convention(other_paper: pd.DataFrame, other_runs: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    runs = sorted(other_runs.iterdir())
    s = _report(runs, tmp_path_factory.mktemp("rep-robust"), "robust")
    models = {"gpt-4-0613", "text-bison-001", "llama-2-70b-chat", "pmc-llama-13b", "meditron-7b", "meditron-70b"}
    assert set(s["model"]) == set(other_paper["model"]) == models
    assert s["accuracy"].between(0, 1).all() and other_paper["accuracy"].between(0, 1).all()
    # robust reads each reply once: the ae_ copies are not counted twice
    assert _row_n(s, "llama-2-70b-chat", "none") == 1273
    assert _row_n(s, "meditron-7b", "none") == 500
    _invoke(["leaderboard", *map(str, runs), "--out", str(tmp_path_factory.mktemp("lb") / "lb.csv")])


def _row_n(s: pd.DataFrame, model: str, bias: str) -> int:
    return int(s[(s["model"] == model) & (s["bias"] == bias) & (s["mitigation"] == "none")]["n"].iloc[0])
