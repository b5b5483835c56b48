"""Report arithmetic on constructed runs, conventions, leaderboard, CLI and plots."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest
from typer.testing import CliRunner

import biasmed.report
from biasmed.analysis import stats
from biasmed.analysis.leaderboard import LEADERBOARD_COLUMNS
from biasmed.analysis.summary import SUMMARY_COLUMNS, Summary, load_run, prepare, summarize
from biasmed.cli import app
from biasmed.report.tables import leaderboard_markdown

N = 20
LETTERS = "ABCDE"


def gold(i: int) -> str:
    return LETTERS[i % 5]


def target(i: int) -> str:
    return LETTERS[(i + 1) % 5]


def other(i: int) -> str:
    return LETTERS[(i + 2) % 5]


def sample(i: int, bias: str, mit: str, response: str | None, model: str = "test/model", **kw) -> dict:
    d = {
        "sample_id": f"test-{i:04d}|{bias}|{mit}", "question_id": f"test-{i:04d}", "bias": bias,
        "mitigation": mit, "template_version": "paper-2024", "answer_idx": gold(i),
        "bias_target": None if bias == "none" else target(i), "prompt_sha256": "0" * 64, "model": model,
        "response": response, "extracted": None, "rule": None, "correct": None, "nr": None, "error": None,
        "target_mode": "incorrect", "draw": 0, "n_options": 5, "mode": "generate", "logprobs": None,
        "usage": {}, "cost_usd": 0.0, "cached": False, "latency_s": None, "extra": {},
    }
    d.update(kw)
    return d


def scenario(model: str = "test/model") -> list[dict]:
    """The hand-computed run (see the expected figures in test_hand_computed_figures)."""
    out = []
    for i in range(N):
        # unbiased: right on 0..11; 12, 13 answer the letter later planted; the rest another letter
        out.append(sample(i, "none", "none", gold(i) if i < 12 else target(i) if i < 14 else other(i), model))
        # recency: right on 0..5 and 12; 6..11 and 13..16 take the planted letter
        rec = gold(i) if i < 6 or i == 12 else target(i) if i < 17 else other(i)
        out.append(sample(i, "recency", "none", f"{rec}: option text" if i % 3 else rec, model))
        # recency + education: right on 0..9 and 12
        out.append(sample(i, "recency", "education", gold(i) if i < 10 or i == 12 else target(i), model))
        # unbiased + education: right on 0..12
        out.append(sample(i, "none", "education", gold(i) if i < 13 else other(i), model))
        # frequency: empty replies on 0 and 1, right on 2..11
        freq = "" if i < 2 else gold(i) if i < 12 else other(i)
        out.append(sample(i, "frequency", "none", freq, model))
    return out


def write_run(path: Path, samples: list[dict], *, kind: str = "run", sha: str = "sha-A", is_demo: bool = False,
              model: str = "test/model") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    meta = {"kind": kind, "model": model,
            "dataset": {"source": "nowhere.jsonl", "sha256": sha, "split": "test", "n_options": 5,
                        "n_questions": N, "is_demo": is_demo}}
    (path / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run-a", scenario())


def row(summary: Summary, bias: str, mit: str) -> pd.Series:
    t = summary.table
    r = t[(t["bias"] == bias) & (t["mitigation"] == mit)]
    assert len(r) == 1
    return r.iloc[0]


def test_load_run_columns(run: Path) -> None:
    df = load_run(run)
    assert len(df) == 5 * N
    for col in ("sample_id", "question_id", "response", "run", "run_kind", "dataset_sha256", "is_demo", "ae",
                "logged_is_correct"):
        assert col in df.columns
    assert df["run_kind"].iloc[0] == "run" and not df["ae"].any()


def test_load_run_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nope")


def test_hand_computed_figures(run: Path) -> None:
    s = summarize(run, n_boot=2000, seed=1)
    assert list(s.table.columns) == list(SUMMARY_COLUMNS)
    assert s.convention == "robust" and set(s.table["convention"]) == {"robust"}
    base = row(s, "none", "none")
    assert (base["n"], base["correct"], base["accuracy"]) == (20, 12, 0.6)
    lo, hi = stats.wilson_ci(12, 20)
    assert (base["acc_lo"], base["acc_hi"]) == (pytest.approx(float(lo)), pytest.approx(float(hi)))

    rec = row(s, "recency", "none")
    assert rec["accuracy"] == pytest.approx(7 / 20)
    # discordant pairs: 6 right only unbiased (6..11), 1 right only biased (12)
    assert rec["n_paired"] == 20 and rec["drop"] == pytest.approx(0.25)
    assert rec["p_mcnemar"] == pytest.approx(binomtest(6, 7, 0.5).pvalue)  # = 0.125
    assert rec["drop_lo"] <= 0.25 <= rec["drop_hi"]
    # planted letter: 10 of 20 biased answers (6..11, 13..16) vs 2 of 20 unbiased ones (12, 13)
    assert (rec["adoption"], rec["adoption_base"], rec["adoption_diff"]) == (0.5, 0.1, pytest.approx(0.4))
    assert rec["n_target"] == 20
    assert (rec["flips"], rec["flip_rate"]) == (6, 0.3)
    assert rec["z_paper"] == pytest.approx(stats.two_proportion_z(12, 20, 7, 20)[0])

    edu = row(s, "recency", "education")
    assert edu["accuracy"] == pytest.approx(11 / 20)
    # recovery: (0.55 - 0.35) / (0.60 - 0.35)
    assert edu["recovery"] == pytest.approx(0.8)
    # against the unbiased questions under the same mitigation: 0.65 - 0.55
    assert edu["drop_same_mit"] == pytest.approx(0.10)
    assert row(s, "none", "education")["drop"] == pytest.approx(-0.05)

    freq = row(s, "frequency", "none")
    assert (freq["n_nr"], freq["nr_rate"], freq["accuracy"]) == (2, 0.1, 0.5)
    assert freq["acc_excl_nr"] == pytest.approx(10 / 18)
    # Holm across the biases of (model, no mitigation)
    adj = stats.holm([rec["p_mcnemar"], freq["p_mcnemar"]])
    assert (rec["p_holm"], freq["p_holm"]) == (pytest.approx(adj[0]), pytest.approx(adj[1]))


def test_bootstrap_is_seeded(run: Path) -> None:
    sc = prepare(run)
    a = summarize(sc, n_boot=500, seed=3)
    b = summarize(sc, n_boot=500, seed=3)
    c = summarize(sc, n_boot=500, seed=4)
    cols = ["drop_lo", "drop_hi", "adoption_lo"]
    pd.testing.assert_frame_equal(a.table[cols], b.table[cols])
    assert not a.table[cols].equals(c.table[cols])


def test_conventions_differ_on_based_on(tmp_path: Path) -> None:
    # gold of question 1 is B: "Based on ..." is B for the paper's first-character rule, D for the robust one
    samples = [sample(i, "none", "none", gold(i)) for i in range(N)]
    samples[1]["response"] = "Based on the findings, the answer is D"
    run = write_run(tmp_path / "r", samples)
    robust = row(summarize(run, n_boot=0), "none", "none")
    paper = row(summarize(run, convention="paper", n_boot=0), "none", "none")
    assert (robust["correct"], paper["correct"]) == (19, 20)


def paper_log_run(tmp_path: Path, model: str) -> Path:
    """A paper-logs run with a plain file and its re-judged (ae_) copy for the unbiased condition."""
    out = []
    for i in range(N):
        reply = f"Based on the case, {gold(i)}: x" if i < 10 else ("" if i < 14 else other(i))
        plain = "True" if reply[:1] == gold(i) else ("NR" if not reply else "False")
        judged = "True" if i < 10 else ("NR" if i < 14 else "False")
        extra = {"logged_is_correct": plain, "ae": False, "log_file": f"bias_output_{model}.txt", "log_index": i}
        out.append(sample(i, "none", "none", reply, model, extra=extra))
        extra = {"logged_is_correct": judged, "ae": True, "log_file": f"ae_bias_output_{model}.txt", "log_index": i}
        out.append(sample(i, "none", "none", reply, model, sample_id=f"test-{i:04d}|none|none|ae", extra=extra))
    return write_run(tmp_path / model, out, kind="paper-logs", model=model)


def test_paper_convention_prefers_ae_and_excludes_nr(tmp_path: Path) -> None:
    run = paper_log_run(tmp_path, "llama-x")
    paper = row(summarize(run, convention="paper", n_boot=0), "none", "none")
    # the judge said True on 10, NR on 4: 10 / (20 - 4)
    assert (paper["n"], paper["correct"], paper["n_nr"], paper["acc_den"]) == (20, 10, 4, 16)
    assert paper["accuracy"] == pytest.approx(10 / 16)
    robust = row(summarize(run, n_boot=0), "none", "none")
    # robust ignores the ae copies (same replies) and reads "Based on the case, C: x" as C
    assert (robust["n"], robust["correct"], robust["n_nr"]) == (20, 10, 4)
    assert robust["accuracy"] == pytest.approx(0.5)


def test_paper_convention_openai_over_total(tmp_path: Path) -> None:
    out = []
    for i in range(N):
        reply = gold(i) if i < 10 else ""
        extra = {"logged_is_correct": "True" if i < 10 else "NR", "ae": False, "log_file": "f.txt", "log_index": i}
        out.append(sample(i, "none", "none", reply, "gpt-4-0613", extra=extra))
    run = write_run(tmp_path / "gpt", out, kind="paper-logs", model="gpt-4-0613")
    r = row(summarize(run, convention="paper", n_boot=0), "none", "none")
    assert (r["acc_den"], r["accuracy"]) == (20, 0.5)


def test_failed_samples_are_set_aside(tmp_path: Path) -> None:
    samples = scenario()
    samples[0]["response"], samples[0]["error"] = None, "bad_request: context too long"
    s = summarize(write_run(tmp_path / "r", samples), n_boot=0)
    base = row(s, "none", "none")
    assert (base["n"], base["n_errors"], base["correct"]) == (19, 1, 11)


def test_mixed_datasets_refused(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", scenario("m1"), sha="sha-A", model="m1")
    b = write_run(tmp_path / "b", scenario("m2"), sha="sha-B", model="m2")
    with pytest.raises(ValueError, match="different datasets"):
        summarize([a, b], n_boot=0)
    s = summarize([a, b], n_boot=0, allow_mixed=True)
    assert set(s.table["model"]) == {"m1", "m2"}
    assert any("MIXED" in n for n in s.notes)
    res = CliRunner().invoke(app, ["leaderboard", str(a), str(b)])
    assert res.exit_code == 2
    assert "different datasets" in res.output and "--allow-mixed" in res.output


def test_repeated_samples_across_runs_dropped(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", scenario())
    b = write_run(tmp_path / "b", scenario())
    s = summarize([a, b], n_boot=0)
    assert row(s, "none", "none")["n"] == N
    assert any("repeated" in n for n in s.notes)


def test_leaderboard_rows_and_order(tmp_path: Path) -> None:
    good = scenario("good/model")
    for smp in good:  # the good model resists recency entirely
        if smp["bias"] == "recency":
            i = int(smp["question_id"][-4:])
            smp["response"] = gold(i) if i < 12 else other(i)
    a = write_run(tmp_path / "a", scenario("weak/model"), model="weak/model")
    b = write_run(tmp_path / "b", good, model="good/model")
    s = summarize([a, b], n_boot=0)
    lb = s.leaderboard
    assert list(lb.columns) == list(LEADERBOARD_COLUMNS)
    # means: good/education .60 (recency only), good/none .55, weak/education .55, weak/none .425;
    # ties go to the higher unbiased accuracy, then the model name
    assert lb[["model", "mitigation"]].values.tolist() == [
        ["good/model", "education"], ["good/model", "none"], ["weak/model", "education"], ["weak/model", "none"]]
    weak = lb[(lb["model"] == "weak/model") & (lb["mitigation"] == "none")].iloc[0]
    assert weak["acc_unbiased"] == 0.6 and weak["acc_recency"] == pytest.approx(0.35)
    assert weak["mean_biased_acc"] == pytest.approx((0.35 + 0.5) / 2)
    assert weak["worst_bias"] == "recency" and weak["worst_drop"] == pytest.approx(0.25)
    assert weak["n_biases"] == 2 and math.isnan(weak["acc_cultural"])
    assert lb["rank"].tolist() == [1, 2, 3, 4]
    md = leaderboard_markdown(s)
    assert "Convention: robust" in md and "| 1 | good/model | education |" in md


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_cli_writes_files_and_plots(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--n-boot", "200"])
    assert res.exit_code == 0, res.output
    assert "Convention: robust" in res.output and "test/model" in res.output
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == 5 and set(csv["convention"]) == {"robust"}
    md = (out / "report.md").read_text()
    assert "**Convention: robust" in md and "## test/model" in md and "DEMO" not in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_test_model.png", "adoption_test_model.png", "radar_education.png", "radar_none.png"]
    for p in out.glob("*.png"):
        w, h = _png_size(p)
        assert 500 <= w <= 2000 and 400 <= h <= 1500
        assert 15_000 < p.stat().st_size < 1_000_000
        assert f"![{p.stem}]({p.name})" in md


def test_plots_show_what_the_titles_say(run: Path) -> None:
    # the figures' bars are the summary's numbers, in bias order, one series per mitigation
    from biasmed.report.plots import accuracy_figure, adoption_figure, radar_figure

    s = summarize(run, n_boot=0)
    ax = accuracy_figure(s, "test/model").axes[0]
    assert "accuracy per bias and mitigation" in ax.get_title() and "convention: robust" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["unbiased", "recency", "frequency"]
    heights = [round(b.get_height(), 3) for b in ax.patches if not np.isnan(b.get_height())]
    assert heights == [0.6, 0.35, 0.5, 0.65, 0.55]  # "none" bars, then "education" bars
    assert [t.get_text() for t in ax.get_legend().get_texts()][-2:] == ["none", "education"]

    ax = adoption_figure(s, "test/model").axes[0]
    assert "adoption of the planted wrong answer" in ax.get_title()
    heights = [round(b.get_height(), 3) for b in ax.patches if not np.isnan(b.get_height())]
    assert heights == [0.5, 0.0, 0.45]  # recency 10/20, frequency 0/20 (none); recency + education 9/20

    fig = radar_figure(s, "none")
    assert "Accuracy per bias, mitigation: none" in fig.get_suptitle()
    polar = fig.axes[0]
    (line,) = [ln for ln in polar.get_lines() if ln.get_label() == "test/model"]
    # axes: unbiased, recency, frequency; the polygon closes on its first point
    np.testing.assert_allclose(line.get_ydata(), [0.6, 0.35, 0.5, 0.6])


def test_demo_runs_are_flagged_everywhere(tmp_path: Path) -> None:
    run = write_run(tmp_path / "demo", scenario(), is_demo=True)
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(out), "--n-boot", "0", "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "DEMO SET" in res.output
    assert "DEMO SET" in (out / "report.md").read_text()
    assert pd.read_csv(out / "summary.csv")["is_demo"].all()
    res = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md"])
    assert res.exit_code == 0 and "DEMO SET" in res.output and "(demo)" in res.output
    lb = CliRunner().invoke(app, ["leaderboard", str(run)])
    assert "True" in lb.output.splitlines()[1]  # the is_demo column


def test_options_come_from_the_samples(tmp_path: Path) -> None:
    # replies that are an option's text alone score through the option-text rule: the options come from
    # the samples themselves (schema 2); the dataset named in run.json is never read again
    from biasmed.dataset.medqa import load_demo

    qs = load_demo("test")
    samples = []
    for q in qs.questions[:10]:
        s = sample(int(q.id[-4:]), "none", "none", q.options[q.answer_idx] + ".", question_id=q.id,
                   sample_id=f"{q.id}|none|none", answer_idx=q.answer_idx, choices=list(q.options),
                   options=dict(q.options), schema=2)
        samples.append(s)
    run = write_run(tmp_path / "demo", samples, is_demo=True)  # its dataset source: nowhere.jsonl
    sc = prepare(run)
    assert set(sc.frame["s_rule"]) == {"option-text"} and sc.frame["s_correct"].all()
    # a 0.1.0 folder (no schema, no options): its stored verdicts, made WITH the options at run time
    for smp in samples:
        del smp["choices"], smp["options"], smp["schema"]
        smp.update(extracted=smp["answer_idx"], rule="option-text", correct=True, nr=False)
    sc = prepare(write_run(tmp_path / "v010", samples, is_demo=True))
    assert set(sc.frame["s_rule"]) == {"option-text"} and sc.frame["s_correct"].all()
    # without options or a stored verdict the same replies are not read as a letter
    for smp in samples:
        smp.update(extracted=None, rule=None, correct=None, nr=None)
    sc = prepare(write_run(tmp_path / "bare", samples, is_demo=True))
    assert not sc.frame["s_correct"].any()


def test_leaderboard_cli_writes_csv_and_md(run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["leaderboard", str(run), "--out", str(tmp_path / "lb.csv")])
    assert res.exit_code == 0, res.output
    lb = pd.read_csv(tmp_path / "lb.csv")
    assert list(lb.columns) == list(LEADERBOARD_COLUMNS) and len(lb) == 2
    res = CliRunner().invoke(app, ["leaderboard", str(run), "--out", str(tmp_path / "lb.md")])
    assert res.exit_code == 0 and (tmp_path / "lb.md").read_text().startswith("# BiasMedQA leaderboard")


@pytest.mark.parametrize("args,message", [
    (["report", "/nonexistent/run"], "no such run folder"),
    (["report", "RUN", "--convention", "first-char"], "--convention must be one of"),
    (["leaderboard", "RUN", "--format", "xlsx"], "--format must be csv or md"),
])
def test_cli_errors_are_one_line_exit_2(run: Path, args: list[str], message: str) -> None:
    args = [str(run) if a == "RUN" else a for a in args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_bad_samples_line_is_one_clear_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "bad", scenario())
    with open(run / "samples.jsonl", "a") as f:
        f.write('{"sample_id": "x", "bias": "none"}\n')
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 2 and "samples.jsonl" in res.output and "missing" in res.output


@pytest.mark.parametrize("damage", ["no run.json", "empty samples", "no samples file", "empty folder"])
@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path: Path, damage: str, command: str) -> None:
    run = write_run(tmp_path / "r", scenario())
    if damage == "no run.json":
        (run / "run.json").unlink()
    elif damage == "empty samples":
        (run / "samples.jsonl").write_text("")
    elif damage == "no samples file":
        (run / "samples.jsonl").unlink()
    else:
        (run / "run.json").unlink()
        (run / "samples.jsonl").unlink()
    res = CliRunner().invoke(app, [command, str(run), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("biasmed: error: "), res.output
    expected = {"no run.json": "run.json: missing", "empty samples": "samples.jsonl: no samples",
                "no samples file": "samples.jsonl", "empty folder": "run.json: missing"}[damage]
    assert expected in lines[0] and str(run) in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written for it


def _markdown_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("gfm-like").render(text)


def test_untrusted_names_cannot_break_a_table_or_inject(tmp_path: Path) -> None:
    # model, bias and mitigation names come from run folders and user YAML
    evil = "ev|il`x` <script>alert(1)</script>\n[x](http://e.io) www.e.io m@e.io **b** _i_"
    samples = scenario(evil)
    for smp in samples:
        if smp["bias"] == "frequency":
            smp["bias"] = "my|<b>bias</b>"
    run = write_run(tmp_path / "evil", samples, model=evil)
    out = tmp_path / "rep"
    summary = biasmed.report(run, out, n_boot=0, plots=False, html=False)
    assert set(summary.table["model"]) == {evil}  # the figures keep the real name
    md = (out / "report.md").read_text()
    lb_md = leaderboard_markdown(summary)
    for text in (md, lb_md):
        html = _markdown_html(text)
        assert "<script" not in html and "<b>" not in html and "<a " not in html
        assert "<strong>b</strong>" not in html and "<em>i</em>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text
        # every table row has as many cells as its header: a `|` in a name did not add one
        for table in html.split("<table>")[1:]:
            head = len(re.findall(r"<th[ >]", table.split("</thead>")[0]))
            rows = table.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
            assert rows and all(r.count("<td") == head for r in rows)
    assert "ev|il`x` &lt;script&gt;alert(1)&lt;/script&gt; [x](http://e.io) www.e.io m@e.io **b** _i_" in (
        _markdown_html(md))
    # the console tables print the name as text (no markup, no control characters)
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "rep2"), "--n-boot", "0",
                                   "--no-plots", "--no-html"])
    assert res.exit_code == 0, res.output
    assert "ev|il`x` <script>alert(1)</script>" in res.output and "my|<b>bias</b>" in res.output
    assert "\x1b" not in res.output


class _Result:
    """What `biasmed.evaluate()` returns, as far as `biasmed.report()` is concerned: a `.path`."""

    def __init__(self, path: Path) -> None:
        self.path = path


def test_library_report_takes_folders_frames_results_and_summaries(run: Path, tmp_path: Path) -> None:
    ref = biasmed.report(run, tmp_path / "a", n_boot=100, seed=2, plots=False, html=False)
    assert isinstance(ref, Summary)
    assert [p.name for p in ref.written] == ["summary.csv", "report.md"]
    expected = (tmp_path / "a" / "summary.csv").read_bytes()
    for name, given in [("frame", load_run(run)), ("result", _Result(run)), ("list", [str(run)]),
                        ("summary", summarize(run, n_boot=100, seed=2))]:
        s = biasmed.report(given, tmp_path / name, n_boot=100, seed=2, plots=False, html=False)
        assert (tmp_path / name / "summary.csv").read_bytes() == expected, name
        assert (tmp_path / name / "report.md").read_text() == (tmp_path / "a" / "report.md").read_text(), name
        assert s.written == [tmp_path / name / "summary.csv", tmp_path / name / "report.md"]
    # without `out`: RUN/report for one run folder or result, as the CLI
    s = biasmed.report(_Result(run), n_boot=0, plots=False, html=False)
    assert s.written[0] == run / "report" / "summary.csv"
    # the CLI writes the same files from the same settings
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "cli"), "--n-boot", "100",
                                   "--seed", "2", "--no-plots", "--no-html"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "summary.csv").read_bytes() == expected
    assert (tmp_path / "cli" / "report.md").read_text() == (tmp_path / "a" / "report.md").read_text()


def test_writers_compute_nothing_the_summary_holds(run: Path, tmp_path: Path) -> None:
    # a Summary whose figures were changed after summarize(): every writer shows the changed ones
    from biasmed.report.plots import accuracy_figure
    from biasmed.report.tables import rich_tables

    s = summarize(run, n_boot=0)
    s.table["accuracy"] = 0.123
    s.main = s.main.assign(accuracy=0.123)
    s.leaderboard = s.leaderboard.assign(mean_biased_acc=0.456)
    from biasmed.report.tables import report_markdown

    assert "| recency | none | 20 | 0.123 [" in report_markdown(s)
    assert "| 0.456 |" in leaderboard_markdown(s)
    ax = accuracy_figure(s, "test/model").axes[0]
    assert {round(b.get_height(), 3) for b in ax.patches if not np.isnan(b.get_height())} == {0.123}
    from rich.console import Console

    console = Console(width=200, record=True)
    for t in rich_tables(s):
        console.print(t)
    assert ".123" in console.export_text() and ".350" not in console.export_text()


def test_html_can_be_left_out(run: Path, tmp_path: Path) -> None:
    s = biasmed.report(run, tmp_path / "rep", n_boot=0, plots=False, html=False)
    assert [p.name for p in s.written] == ["summary.csv", "report.md"]
    assert not (tmp_path / "rep" / "report.html").exists()
