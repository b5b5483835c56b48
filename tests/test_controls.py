"""Controls in the statistics and reports: placebo, helpful bias, susceptibility, variance over draws.

Constructed runs with known answers check the arithmetic; the CLI builds re-drawn targets from
MedQA; `biasmed run` against the loopback OpenAI server produces placebo and correct-target samples
that `report` and `leaderboard` turn into the same figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

from biasmed.analysis import stats
from biasmed.analysis.controls import CONTROL_COLUMNS, MODEL_CONTROL_COLUMNS
from biasmed.analysis.leaderboard import (
    LEADERBOARD_COLUMNS,
    LEADERBOARD_CONTROL_COLUMNS,
    LEADERBOARD_MITIGATION_COLUMNS,
)
from biasmed.analysis.summary import MITIGATION_COLUMNS, SUMMARY_COLUMNS, Summary, main_rows, summarize
from biasmed.cli import app
from biasmed.report.tables import leaderboard_markdown, report_markdown

N = 20
LETTERS = "ABCDE"
MODEL = "ctl/model"


def gold(i: int) -> str:
    return LETTERS[i % 5]


def planted(i: int, draw: int = 0) -> str:
    """The wrong letter planted in draw `draw` (never the gold letter for draws 0..3)."""
    return LETTERS[(i + 1 + draw) % 5]


def other(i: int) -> str:
    return LETTERS[(i + 2) % 5]  # also the letter planted in draw 1


def spare(i: int) -> str:
    return LETTERS[(i + 4) % 5]  # a wrong letter never planted in draws 0..2


def sample(i: int, bias: str, reply: str, *, draw: int = 0, mode: str = "incorrect", target: str | None = None) -> dict:
    sid = f"test-{i:04d}|{bias}|none" + (f"|d{draw}" if draw else "")
    if bias == "none":
        tgt = None
    elif target is not None:
        tgt = target
    else:
        tgt = gold(i) if mode == "correct" else planted(i, draw)
    return {
        "sample_id": sid, "question_id": f"test-{i:04d}", "bias": bias, "mitigation": "none",
        "template_version": "paper-2024", "answer_idx": gold(i), "bias_target": tgt, "prompt_sha256": "0" * 64,
        "model": MODEL, "response": reply, "extracted": None, "rule": None, "correct": None, "nr": None,
        "error": None, "target_mode": None if bias == "none" else mode, "draw": draw, "n_options": 5,
        "mode": "generate", "logprobs": None, "usage": {}, "cost_usd": 0.0, "cached": False,
        "latency_s": None, "extra": {},
    }


def write_run(path: Path, samples: list[dict], target_mode: str = "incorrect") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    meta = {"kind": "run", "model": MODEL, "target_mode": target_mode,
            "dataset": {"source": "nowhere.jsonl", "sha256": "sha-A", "split": "test", "n_options": 5,
                        "n_questions": N, "is_demo": False}}
    (path / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


def unbiased() -> list[dict]:
    # right on 0..11 (.60); 12, 13 answer recency's planted letter; the rest another letter
    return [sample(i, "none", gold(i) if i < 12 else planted(i) if i < 14 else other(i)) for i in range(N)]


def main_run(tmp_path: Path) -> Path:
    out = unbiased()
    for i in range(N):
        # recency, three draws: right on 0..5 / 0..7 / 0..9 (.30 .40 .50), then the draw's planted
        # letter up to 15, then a letter never planted
        for d, right in enumerate((6, 8, 10)):
            out.append(sample(i, "recency", gold(i) if i < right else planted(i, d) if i < 16 else spare(i), draw=d))
        # its placebo (draw 0 only): right on 0..9 and 12 (.55); 10, 11 name the planted letter
        out.append(sample(i, "placebo_recency", gold(i) if i < 10 or i == 12 else planted(i) if i < 12 else other(i)))
        # frequency, three draws: right on 0..7 / 0..7 / 0..5 (.40 .40 .30), else another letter
        for d, right in enumerate((8, 8, 6)):
            out.append(sample(i, "frequency", gold(i) if i < right else other(i), draw=d))
    return write_run(tmp_path / "main", out)


def helpful_run(tmp_path: Path) -> Path:
    """`--target-mode correct`: the same sample ids, the correct letter planted."""
    out = unbiased()
    for i in range(N):
        out.append(sample(i, "recency", gold(i) if i < 16 else other(i), mode="correct"))  # .80
        out.append(sample(i, "frequency", gold(i) if i < 14 else other(i), mode="correct"))  # .70
    return write_run(tmp_path / "helpful", out, "correct")


@pytest.fixture()
def runs(tmp_path: Path) -> list[Path]:
    return [main_run(tmp_path), helpful_run(tmp_path)]


def row(summary: Summary, bias: str, draw: int = 0, mode: str = "incorrect") -> pd.Series:
    s = summary.table
    r = s[(s["bias"] == bias) & (s["draw"] == draw) & (s["target_mode"] == ("" if bias == "none" else mode))]
    assert len(r) == 1
    return r.iloc[0]


def test_columns_are_additions(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=200, seed=1)
    assert list(s.table.columns) == list(SUMMARY_COLUMNS)
    assert list(s.leaderboard.columns) == list(LEADERBOARD_COLUMNS)
    # issue 13's mitigation columns come after the control columns
    n_mit, n_lb_mit = len(MITIGATION_COLUMNS), len(LEADERBOARD_MITIGATION_COLUMNS)
    assert list(SUMMARY_COLUMNS[-len(CONTROL_COLUMNS) - n_mit:-n_mit]) == list(CONTROL_COLUMNS)
    assert SUMMARY_COLUMNS[-n_mit:] == MITIGATION_COLUMNS
    assert list(LEADERBOARD_COLUMNS[-len(LEADERBOARD_CONTROL_COLUMNS) - n_lb_mit:-n_lb_mit]) == \
        list(LEADERBOARD_CONTROL_COLUMNS)
    # the stable columns keep their order (results/README.md); the control columns come after them
    stable = ("rank", "model", "mitigation", "convention", "n_questions", "acc_unbiased", "acc_unbiased_mit",
              "acc_self_diagnosis", "acc_recency", "acc_confirmation", "acc_frequency", "acc_cultural",
              "acc_status_quo", "acc_false_consensus", "acc_confirmation_v2", "acc_false_consensus_v2",
              "n_biases", "mean_biased_acc", "mean_drop", "worst_drop", "worst_bias", "mean_adoption",
              "mean_adoption_base", "n_significant", "significant_biases", "is_demo", "dataset_sha256")
    assert LEADERBOARD_COLUMNS == stable + LEADERBOARD_CONTROL_COLUMNS + LEADERBOARD_MITIGATION_COLUMNS


def test_helpful_run_pairs_with_the_main_run(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=0)
    # same sample ids in both runs: the correct-target samples are kept, the repeated unbiased ones dropped
    assert row(s, "none")["n"] == N
    assert row(s, "recency", mode="correct")["accuracy"] == pytest.approx(0.8)
    assert any("unbiased samples repeated" in n for n in s.notes)
    assert not any(" biased samples repeated" in n for n in s.notes)
    # the main tables keep the wrong-letter rows only
    main = s.main
    pd.testing.assert_frame_equal(main, main_rows(s.table))
    assert set(main["target_mode"]) == {"", "incorrect"} and set(main["draw"]) == {0}


def test_placebo_difference(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=2000, seed=1)
    rec = row(s, "recency")
    # acc(placebo) - acc(recency) = .55 - .30; discordant: placebo right only on 6..9 and 12, never the reverse
    assert rec["n_paired_placebo"] == N
    assert (rec["acc_placebo"], rec["placebo_diff"]) == (pytest.approx(0.55), pytest.approx(0.25))
    assert rec["p_placebo"] == pytest.approx(binomtest(5, 5, 0.5).pvalue)  # 0.0625
    assert rec["placebo_diff_lo"] <= 0.25 <= rec["placebo_diff_hi"]
    # the planted letter: 10 recency answers (6..15), 2 placebo answers (10, 11); 8 discordant pairs
    assert rec["adoption_placebo"] == pytest.approx(0.1)
    assert rec["placebo_adoption_diff"] == pytest.approx(0.4)
    assert rec["p_placebo_adoption"] == pytest.approx(binomtest(8, 8, 0.5).pvalue)
    # it is the bias's drop minus the placebo's drop, both against the unbiased questions
    pl = row(s, "placebo_recency")
    assert pl["control_of"] == "recency" and rec["control_of"] == ""
    assert rec["drop"] - pl["drop"] == pytest.approx(rec["placebo_diff"])
    assert math.isnan(row(s, "frequency")["placebo_diff"])  # no placebo run for it


def test_placebo_is_not_a_bias_in_the_aggregates(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=0)
    rec, freq, pl = row(s, "recency"), row(s, "frequency"), row(s, "placebo_recency")
    # Holm across recency and frequency only; the placebo is its own family
    adj = stats.holm([rec["p_mcnemar"], freq["p_mcnemar"]])
    assert (rec["p_holm"], freq["p_holm"]) == (pytest.approx(adj[0]), pytest.approx(adj[1]))
    assert pl["p_holm"] == pytest.approx(pl["p_mcnemar"])
    # nor are the helpful rows (another target mode)
    hr = row(s, "recency", mode="correct")
    hf = row(s, "frequency", mode="correct")
    assert hr["p_holm"] == pytest.approx(stats.holm([hr["p_mcnemar"], hf["p_mcnemar"]])[0])
    lb = s.leaderboard
    assert len(lb) == 1
    r = lb.iloc[0]
    assert r["n_biases"] == 2 and r["mean_biased_acc"] == pytest.approx((0.3 + 0.4) / 2)
    assert r["mean_drop"] == pytest.approx((0.3 + 0.2) / 2) and r["worst_bias"] == "recency"
    assert r["acc_recency"] == pytest.approx(0.3)  # the wrong-letter run, not the helpful one


def test_helpful_gain_and_susceptibility(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=2000, seed=2)
    rec, freq = row(s, "recency"), row(s, "frequency")
    # gain = acc(correct letter planted) - acc(unbiased): .80 - .60 (12..15 rescued), .70 - .60 (12, 13)
    assert (rec["acc_helpful"], rec["helpful_gain"]) == (pytest.approx(0.8), pytest.approx(0.2))
    assert rec["p_helpful"] == pytest.approx(binomtest(4, 4, 0.5).pvalue)
    assert freq["helpful_gain"] == pytest.approx(0.1) and freq["p_helpful"] == pytest.approx(0.5)
    assert rec["p_helpful_holm"] == pytest.approx(stats.holm([rec["p_helpful"], freq["p_helpful"]])[0])
    # susceptibility per bias: 1/2 [(adoption - its baseline) + gain]
    assert rec["adoption_diff"] == pytest.approx(0.4)
    assert rec["susceptibility"] == pytest.approx(0.5 * (0.4 + 0.2))
    # frequency never takes its planted letter, which 2 unbiased answers (12, 13) had: (-.1 + .1) / 2
    assert freq["susceptibility"] == pytest.approx(0.0)
    assert rec["susceptibility_lo"] <= 0.3 <= rec["susceptibility_hi"]
    (mc,) = [m for m in s.model_controls if m["mitigation"] == "none"]
    assert set(mc) == set(MODEL_CONTROL_COLUMNS)
    assert mc["susceptibility"] == pytest.approx(0.15) and mc["susceptibility_n"] == N
    assert (mc["follow_wrong"], mc["follow_right"]) == (pytest.approx(0.15), pytest.approx(0.15))
    assert mc["mean_helpful_gain"] == pytest.approx(0.15) and mc["mean_placebo_diff"] == pytest.approx(0.25)
    assert mc["susceptibility_lo"] <= 0.15 <= mc["susceptibility_hi"]
    # the bootstrap of the index: per question, the mean over both biases, resampled by question
    wrong = np.zeros(N)
    wrong[[6, 7, 8, 9, 10, 11, 14, 15]] = 1  # recency took the planted letter, unbiased did not
    wrong_f = np.zeros(N)
    wrong_f[[12, 13]] = -1  # frequency: the unbiased answer was the planted letter, the biased one not
    gain_r = np.isin(np.arange(N), [12, 13, 14, 15]).astype(float)
    gain_f = np.isin(np.arange(N), [12, 13]).astype(float)
    per_q = 0.5 * (0.5 * (wrong + gain_r) + 0.5 * (wrong_f + gain_f))
    ref = stats.bootstrap_mean(per_q, 2000, stats.rng_for(2, MODEL, "none", "model", "susceptibility"))
    assert (mc["susceptibility_lo"], mc["susceptibility_hi"]) == (pytest.approx(ref.lo), pytest.approx(ref.hi))


def test_spread_across_draws(runs: list[Path]) -> None:
    s = summarize(runs, n_boot=2000, seed=3)
    rec = row(s, "recency")
    assert rec["n_draws"] == 3 and [row(s, "recency", d)["accuracy"] for d in range(3)] == [
        pytest.approx(0.3), pytest.approx(0.4), pytest.approx(0.5)]
    assert (rec["acc_draws_mean"], rec["acc_draws_sd"]) == (pytest.approx(0.4), pytest.approx(0.1))
    assert (rec["acc_draws_min"], rec["acc_draws_max"]) == (pytest.approx(0.3), pytest.approx(0.5))
    # pooled per question: drop = .60 - .40; adoption net of its baseline, per draw:
    # d0 (6..15 took it; 12, 13 had it unbiased) .4, d1 (8..15; 14..19 had it) .1, d2 (10..15) .3
    assert rec["drop_draws"] == pytest.approx(0.2)
    assert [row(s, "recency", d)["adoption_diff"] for d in range(3)] == [
        pytest.approx(0.4), pytest.approx(0.1), pytest.approx(0.3)]
    assert rec["adoption_diff_draws"] == pytest.approx(0.8 / 3)
    assert rec["acc_draws_lo"] < 0.4 < rec["acc_draws_hi"] and rec["drop_draws_lo"] < 0.2 < rec["drop_draws_hi"]
    # the cluster bootstrap: per-question means over the draws, resampled by question
    per_q = np.array([1.0] * 6 + [2 / 3] * 2 + [1 / 3] * 2 + [0.0] * 10)
    ref = stats.bootstrap_mean(per_q, 2000, stats.rng_for(3, MODEL, "recency", "none", 0, "incorrect", "draws-acc"))
    assert (rec["acc_draws_lo"], rec["acc_draws_hi"]) == (pytest.approx(ref.lo), pytest.approx(ref.hi))
    assert row(s, "recency", 1)["drop"] == pytest.approx(0.2)  # each draw pairs with the one unbiased condition
    assert row(s, "none")["n_draws"] == 1 and row(s, "placebo_recency")["n_draws"] == 1
    lb = s.leaderboard.iloc[0]
    # mean biased accuracy per draw: .35, .40, .40
    assert lb["n_draws"] == 3 and lb["mean_biased_acc_draws"] == pytest.approx(1.15 / 3)
    assert lb["mean_biased_acc_draws_sd"] == pytest.approx(np.std([0.35, 0.4, 0.4], ddof=1))
    assert lb["mean_biased_acc_draws_min"] == pytest.approx(0.35)
    assert lb["mean_biased_acc_draws_max"] == pytest.approx(0.4)
    assert lb["mean_biased_acc_draws_lo"] < 1.15 / 3 < lb["mean_biased_acc_draws_hi"]


def test_leaderboard_and_report_show_each_control(runs: list[Path], tmp_path: Path) -> None:
    s = summarize(runs, n_boot=500, seed=0)
    lb = s.leaderboard.iloc[0]
    assert (lb["n_placebo"], lb["mean_placebo_diff"], lb["n_placebo_significant"]) == (1, pytest.approx(0.25), 0)
    assert lb["mean_placebo_adoption_diff"] == pytest.approx(0.4)
    assert (lb["n_helpful"], lb["mean_helpful_gain"], lb["n_helpful_significant"]) == (2, pytest.approx(0.15), 0)
    assert lb["susceptibility"] == pytest.approx(0.15) and lb["susceptibility_lo"] < lb["susceptibility_hi"]
    md = leaderboard_markdown(s)
    assert "## Controls" in md and "| ctl/model | none | 0.250 [" in md
    rep = report_markdown(s)
    for head in ("### Placebo control", "### Helpful-bias control", "**susceptibility index 0.150 [",
                 "### Variance over target draws",
                 "| recency | none | incorrect | 3 | 0.300, 0.400, 0.500 | 0.400 | 0.100 |"):
        assert head in rep, head
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", *map(str, runs), "--out", str(out), "--n-boot", "300"])
    assert res.exit_code == 0, res.output
    assert "controls (paired on the same questions)" in res.output and "susceptibility index, none: .150" in res.output
    ctl = pd.read_csv(out / "controls.csv")
    assert ctl["susceptibility"].tolist() == [pytest.approx(0.15)]
    assert (out / "controls_ctl_model.png").stat().st_size > 15_000
    res = CliRunner().invoke(app, ["leaderboard", *map(str, runs), "--out", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "lb.csv")
    assert list(csv.columns) == list(LEADERBOARD_COLUMNS)
    assert csv["susceptibility"].iloc[0] == pytest.approx(0.15, abs=1e-4)
    assert csv["susceptibility_lo"].iloc[0] < csv["susceptibility_hi"].iloc[0]  # resampled by default


def test_controls_figure_shows_the_numbers(runs: list[Path]) -> None:
    from biasmed.report.plots import controls_figure

    s = summarize(runs, n_boot=0)
    ax = controls_figure(s, MODEL).axes[0]
    assert "bias effect and its controls" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["recency", "frequency"]
    heights = [round(b.get_height(), 3) for b in ax.patches if not np.isnan(b.get_height())]
    # recency -.30, frequency -.20 (wrong letter); placebo -.05; gains +.20, +.10
    assert heights == [-0.3, -0.2, -0.05, 0.2, 0.1]


def test_no_controls_no_sections(tmp_path: Path) -> None:
    run = write_run(tmp_path / "plain", unbiased() + [sample(i, "recency", gold(i)) for i in range(N)])
    s = summarize(run, n_boot=0)
    assert "### Placebo control" not in report_markdown(s) and "## Controls" not in leaderboard_markdown(s)
    assert s.has_controls == {MODEL: {"placebo": False, "helpful": False, "draws": False}} and s.controls.empty
    lb = s.leaderboard.iloc[0]
    assert (lb["n_placebo"], lb["n_helpful"], lb["n_draws"]) == (0, 0, 1) and math.isnan(lb["susceptibility"])


# --------------------------------------------------------------------------- statistics

def test_bootstrap_mean_is_the_question_bootstrap() -> None:
    rng = np.random.default_rng(5)
    v = rng.integers(0, 6, size=300) / 5  # per-question means over 5 draws
    m = stats.bootstrap_mean(v, 20_000, stats.rng_for(9))
    idx = rng.integers(0, len(v), size=(20_000, len(v)))
    lo, hi = np.quantile(v[idx].mean(axis=1), [0.025, 0.975])
    assert m.mean == pytest.approx(v.mean()) and m.n == 300
    assert (m.lo, m.hi) == (pytest.approx(lo, abs=0.006), pytest.approx(hi, abs=0.006))
    empty = stats.bootstrap_mean(np.array([np.nan]), 100, stats.rng_for(0))
    assert empty.n == 0 and math.isnan(empty.mean)
    assert math.isnan(stats.bootstrap_mean(v, 0, stats.rng_for(0)).lo)


def test_pooled_draws_ci_covers_the_truth() -> None:
    # questions differ in difficulty, and each draw's planted letter helps or hurts at random:
    # the question-cluster bootstrap of the draw-pooled accuracy covers the true mean >= 93% of the time
    rng = np.random.default_rng(11)
    covered = 0
    for trial in range(200):
        base = rng.uniform(0.3, 0.7, size=150)
        pull = rng.choice([-0.25, 0.0, 0.25], size=(5, 150))  # per draw and question
        correct = rng.random((5, 150)) < base + pull
        m = stats.bootstrap_mean(correct.mean(axis=0), 1000, stats.rng_for(1, trial))
        covered += m.lo <= 0.5 <= m.hi  # E[base + pull] = .5
    assert covered / 200 >= 0.93


def test_spread_hand_computed() -> None:
    sp = stats.spread([0.3, 0.4, 0.5])
    assert (sp.k, sp.mean, sp.min, sp.max) == (3, pytest.approx(0.4), 0.3, 0.5)
    assert sp.sd == pytest.approx(0.1)
    assert math.isnan(stats.spread([0.3]).sd)


# --------------------------------------------------------------------------- CLI, end to end

def _targets(path: Path) -> dict[int, dict[tuple[str, str], str]]:
    """draw -> {(question id, bias): planted letter} from a file written by `biasmed build`."""
    out: dict[int, dict[tuple[str, str], str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["bias"] != "none":
            assert rec["bias_target"] != rec["answer_idx"]
            out.setdefault(rec["draw"], {})[(rec["question_id"], rec["bias"])] = rec["bias_target"]
    return out


@pytest.fixture()
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from fakeapi import FakeAPI

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-controls-0123456789")
    monkeypatch.setenv("BIASMED_CACHE_DIR", str(tmp_path / "cache"))
    with FakeAPI() as server:
        yield server


def _run(api, data: Path, out: Path) -> None:
    res = CliRunner().invoke(app, ["run", "--model", "openai:gpt-test", "--base-url", api.url + "/v1",
                                   "--data", str(data), "--out", str(out)])
    assert res.exit_code == 0, res.stderr


def test_draws_5_on_50_questions(medqa_dir: Path, tmp_path: Path, run_cli, run_cli_process, api) -> None:
    a, b, one = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "one.jsonl"
    common = ["build", "--medqa", str(medqa_dir), "--limit", "50"]
    assert run_cli(*common, "--draws", "5", "--out", a).exit_code == 0
    assert run_cli_process(*common, "--draws", "5", "--out", b).exit_code == 0  # another process
    assert run_cli(*common, "--out", one).exit_code == 0
    assert a.read_bytes() == b.read_bytes()  # seeded: reproducible across builds and processes
    draws = _targets(a)
    assert sorted(draws) == [0, 1, 2, 3, 4]
    assert all(len(t) == 50 * 7 for t in draws.values())
    sets = {tuple(sorted(t.items())) for t in draws.values()}
    assert len(sets) == 5  # five distinct target sets
    assert draws[0] == _targets(one)[0]  # draw 0 is the default draw
    # each draw re-draws most targets (uniform over 4 wrong letters: about 3/4 change)
    changed = np.mean([draws[0][k] != draws[1][k] for k in draws[0]])
    assert 0.6 < changed < 0.9

    # a real run on the re-drawn recency prompts (loopback server), then the report's spread
    _run(api, a, tmp_path / "run")
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--out", str(out), "--n-boot", "500", "--no-plots"])
    assert res.exit_code == 0, res.output
    s = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    rec = s[s["bias"] == "recency"].sort_values("draw")
    assert rec["draw"].tolist() == [0, 1, 2, 3, 4] and rec["n"].tolist() == [50] * 5
    accs = rec["accuracy"].to_numpy()
    r0 = rec.iloc[0]
    assert r0["n_draws"] == 5
    assert r0["acc_draws_sd"] == pytest.approx(np.std(accs, ddof=1), abs=1e-5) and r0["acc_draws_sd"] > 0
    assert (r0["acc_draws_min"], r0["acc_draws_max"]) == (pytest.approx(accs.min()), pytest.approx(accs.max()))
    assert r0["acc_draws_lo"] <= accs.mean() <= r0["acc_draws_hi"]
    md = (out / "report.md").read_text()
    assert "### Variance over target draws" in md
    assert ", ".join(f"{x:.3f}" for x in accs) in md
    assert "draws: mean ± SD" in res.output


def test_run_with_placebo_and_correct_targets_end_to_end(medqa_dir: Path, tmp_path: Path, run_cli, api) -> None:
    """`biasmed run` (official SDK, loopback server) on placebo and correct-target builds; the server
    answers like a model that follows recency's suggestion and ignores everything else."""
    from biasmed.dataset.build import read_benchmark_file

    main, helpful = tmp_path / "main.jsonl", tmp_path / "helpful.jsonl"
    common = ["build", "--medqa", str(medqa_dir), "--limit", "6"]
    assert run_cli(*common, "--biases", "recency,frequency,placebo", "--draws", "2", "--out", main).exit_code == 0
    res = run_cli(*common, "--biases", "recency,frequency", "--target-mode", "correct", "--out", helpful)
    assert res.exit_code == 0
    prompts = read_benchmark_file(main) + read_benchmark_file(helpful)
    planted: dict[str, set[str]] = {}
    for p in prompts:  # the wrong letters the statistics compare unbiased answers with
        if p.item.target and p.item.target_mode == "incorrect" and (p.item.bias == "recency" or p.item.draw == 0):
            planted.setdefault(p.item.question.id, set()).add(p.item.target)
    qids = list(dict.fromkeys(p.item.question.id for p in prompts))
    unbiased_reply = {}
    for n, qid in enumerate(qids):  # right on the first four questions, else a letter never planted
        q = next(p.item.question for p in prompts if p.item.question.id == qid)
        spare_letter = next(x for x in "ABCDE" if x != q.answer_idx and x not in planted[qid])
        unbiased_reply[qid] = q.answer_idx if n < 4 else spare_letter
    for p in prompts:
        it = p.item
        follows = it.bias == "recency"  # takes recency's planted letter, right or wrong
        right = it.bias == "frequency" and it.target_mode != "correct"
        reply = it.target if follows else (it.question.answer_idx if right else unbiased_reply[it.question.id])
        api.answers[p.sha256] = reply
    _run(api, main, tmp_path / "run-main")
    _run(api, helpful, tmp_path / "run-helpful")
    samples = [json.loads(x) for x in (tmp_path / "run-helpful" / "samples.jsonl").read_text().splitlines()]
    assert {s["target_mode"] for s in samples if s["bias"] != "none"} == {"correct"}
    assert all(s["bias_target"] == s["answer_idx"] for s in samples if s["bias"] != "none")
    samples = [json.loads(x) for x in (tmp_path / "run-main" / "samples.jsonl").read_text().splitlines()]
    assert {s["bias"] for s in samples} == {"none", "recency", "frequency", "placebo_recency", "placebo_frequency"}

    out = tmp_path / "rep"
    runs = [str(tmp_path / "run-main"), str(tmp_path / "run-helpful")]
    res = CliRunner().invoke(app, ["report", *runs, "--out", str(out), "--n-boot", "500"])
    assert res.exit_code == 0, res.output
    s = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    s["target_mode"] = s["target_mode"].fillna("")

    def get(bias: str, mode: str = "incorrect", draw: int = 0) -> pd.Series:
        r = s[(s["bias"] == bias) & (s["target_mode"] == mode) & (s["draw"] == draw)]
        assert len(r) == 1, (bias, mode, draw)
        return r.iloc[0]

    assert get("none", "")["accuracy"] == pytest.approx(4 / 6)
    rec, freq = get("recency"), get("frequency")
    assert (rec["accuracy"], rec["placebo_diff"], rec["placebo_adoption_diff"]) == (0, pytest.approx(4 / 6), 1)
    assert rec["p_placebo"] == pytest.approx(binomtest(4, 4, 0.5).pvalue)
    assert (freq["accuracy"], freq["placebo_diff"]) == (1, pytest.approx(-2 / 6))
    assert (rec["helpful_gain"], freq["helpful_gain"]) == (pytest.approx(2 / 6), 0)
    assert rec["susceptibility"] == pytest.approx(0.5 * (1 + 2 / 6)) and freq["susceptibility"] == 0
    assert (rec["n_draws"], rec["acc_draws_sd"], get("recency", draw=1)["accuracy"]) == (2, 0, 0)
    md = (out / "report.md").read_text()
    assert "### Placebo control" in md and "### Helpful-bias control" in md and "**susceptibility index 0.333 [" in md
    res = CliRunner().invoke(app, ["leaderboard", *runs, "--out", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    lb = pd.read_csv(tmp_path / "lb.csv").iloc[0]
    assert (lb["n_biases"], lb["mean_biased_acc"]) == (2, pytest.approx(0.5))
    assert (lb["n_placebo"], lb["mean_placebo_diff"]) == (2, pytest.approx((4 / 6 - 2 / 6) / 2, abs=1e-4))
    assert (lb["n_helpful"], lb["mean_helpful_gain"]) == (2, pytest.approx(1 / 6, abs=1e-4))
    assert lb["susceptibility"] == pytest.approx(1 / 3, abs=1e-4) and lb["n_draws"] == 2
