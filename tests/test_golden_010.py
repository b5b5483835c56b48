"""Golden test (issue 9): a run folder written by biasmed 0.1.0 reports exactly as 0.1.0 reported it.

tests/fixtures/run-0.1.0 is a real 0.1.0 run (180 samples: 6 demo questions x 15 conditions x 2
mitigations, two target draws, replies in every shape, NR and failed samples) and
tests/fixtures/run-0.1.0-expected holds what 0.1.0's `biasmed report --n-boot 200` and
`biasmed leaderboard --n-boot 200` wrote from it. tests/fixtures/make_run_010.py made both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import biasmed.report
from biasmed.analysis.summary import load_run
from biasmed.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "run-0.1.0"
EXPECTED = FIXTURES / "run-0.1.0-expected"


def test_the_010_folder_loads() -> None:
    df = load_run(RUN)
    assert len(df) == 180 and set(df["schema"].fillna(1)) == {1}
    assert df["choices"].isna().all() and df["options"].isna().all()  # 0.1.0 samples carry neither


@pytest.mark.parametrize("convention", ["robust", "paper"])
def test_report_cli_writes_the_same_summary_csv(convention: str, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(RUN), "--out", str(out), "--n-boot", "200", "--seed", "0",
                                   "--convention", convention, "--no-plots", "--no-html"])
    assert res.exit_code == 0, res.output
    assert (out / "summary.csv").read_bytes() == (EXPECTED / f"summary-{convention}.csv").read_bytes()
    assert (out / "controls.csv").read_bytes() == (EXPECTED / f"controls-{convention}.csv").read_bytes()


def test_library_report_writes_the_same_files(tmp_path: Path) -> None:
    summary = biasmed.report(RUN, tmp_path / "rep", n_boot=200, seed=0, plots=False, html=False)
    assert [p.name for p in summary.written] == ["summary.csv", "report.md", "controls.csv"]
    assert (tmp_path / "rep" / "summary.csv").read_bytes() == (EXPECTED / "summary-robust.csv").read_bytes()
    # the Summary handed back is the one the files were written from
    assert summary.convention == "robust" and summary.n_boot == 200 and summary.is_demo
    assert len(summary.table) == len((EXPECTED / "summary-robust.csv").read_text().splitlines()) - 1


def test_leaderboard_cli_writes_the_same_csv(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["leaderboard", str(RUN), "--n-boot", "200", "--out", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lb.csv").read_bytes() == (EXPECTED / "leaderboard.csv").read_bytes()
