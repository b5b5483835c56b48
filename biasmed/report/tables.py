"""Tables from a summary (see `biasmed.analysis.summarize`): console, CSV, markdown, leaderboard.

Every output names its convention; demo-set figures are flagged in each of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biasmed.records import BIASES, MITIGATIONS, NONE, V2_BIASES
from biasmed.report.controls import (
    LEADERBOARD_CONTROL_COLUMNS,
    control_markdown,
    control_tables,
    leaderboard_controls,
    leaderboard_controls_markdown,
    model_controls_frame,
)

if TYPE_CHECKING:
    import pandas as pd

DEMO_BANNER = ("DEMO SET: these runs used biasmed's illustrative demo questions, not MedQA; "
               "the figures are not BiasMedQA results.")
CONVENTION_TEXT = {
    "robust": ("robust: every reply re-read with biasmed's robust extraction rule; "
               "no response (NR) counts as wrong; accuracy = correct / n"),
    "paper": ("paper: the published logs' own verdicts as the paper's script counted them "
              "(re-judged ae_ files preferred), over n for the OpenAI models and over n - NR for the "
              "others; biasmed runs: the first-character rule over n"),
}
# the leaderboard's columns, in order (documented in results/README.md; do not reorder lightly)
LEADERBOARD_BIASES: tuple[str, ...] = BIASES + V2_BIASES
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "rank", "model", "mitigation", "convention", "n_questions", "acc_unbiased", "acc_unbiased_mit",
    *(f"acc_{b}" for b in LEADERBOARD_BIASES),
    "n_biases", "mean_biased_acc", "mean_drop", "worst_drop", "worst_bias", "mean_adoption",
    "mean_adoption_base", "n_significant", "significant_biases", "is_demo", "dataset_sha256",
    # additions (issue 6), after the stable columns: controls and re-drawn targets (docs/controls.md)
    *LEADERBOARD_CONTROL_COLUMNS,
)


def convention_line(convention: str) -> str:
    return f"Convention: {CONVENTION_TEXT.get(convention, convention)}."


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _ci(row: Any, key: str, lo: str, hi: str) -> str:
    if row[key] is None or (isinstance(row[key], float) and math.isnan(row[key])):
        return "–"
    if isinstance(row[lo], float) and math.isnan(row[lo]):
        return _fmt(row[key])
    return f"{row[key]:.3f} [{row[lo]:.3f}, {row[hi]:.3f}]"


def _n(x: Any) -> str:
    """A count that pandas may hold as a float (NaN elsewhere in its column)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return str(int(x))


def _short(x: Any) -> str:
    """0.288 -> .288 (console tables are narrow)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    text = f"{x:+.3f}" if x < 0 else f"{x:.3f}"
    return text.replace("0.", ".", 1)


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _main(summary: "pd.DataFrame") -> "pd.DataFrame":
    """The default draw and the wrong-letter target mode (controls have their own sections)."""
    from biasmed.analysis.summary import main_rows

    return main_rows(summary)


# --------------------------------------------------------------------------- console

def rich_tables(summary: "pd.DataFrame") -> list[Any]:
    """One rich Table per model: accuracy and its paired change vs unbiased, per bias x mitigation."""
    from rich.markup import escape
    from rich.table import Table

    tables = []
    conv = summary.attrs.get("convention", summary["convention"].iloc[0] if len(summary) else "?")
    demo = bool(summary["is_demo"].any()) if len(summary) else False
    for model, m in _main(summary).groupby("model", sort=False):
        mits = [x for x in MITIGATIONS if x in set(m["mitigation"])] + sorted(set(m["mitigation"]) - set(MITIGATIONS))
        title = f"{model}: accuracy  Δ vs unbiased (paired)  [convention: {conv}]"
        if demo:
            title += "  DEMO SET, not MedQA"
        t = Table(title=escape(title), title_justify="left", pad_edge=False)
        t.add_column("bias", no_wrap=True)
        for mit in mits:
            t.add_column(mit, justify="right", no_wrap=True)
        for bias in dict.fromkeys(m["bias"]):
            cells = [escape(str(bias))]
            for mit in mits:
                r = m[(m["bias"] == bias) & (m["mitigation"] == mit)]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                cell = _short(r["accuracy"])
                if not (isinstance(r["drop"], float) and math.isnan(r["drop"])):
                    cell += f" Δ{_short(-r['drop'])}" + ("*" if r["significant"] else " ")
                cells.append(cell)
            t.add_row(*cells)
        t.caption = ("Δ = accuracy − unbiased accuracy (no mitigation), same questions; * significant drop "
                     "(exact McNemar, Holm). CIs: report.md / summary.csv")
        tables.append(t)
        tables.extend(control_tables(summary, str(model)))
    return tables


# --------------------------------------------------------------------------- CSV / markdown

def write_csv(summary: "pd.DataFrame", path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(path, index=False, float_format="%.6g")
    return path


def report_markdown(summary: "pd.DataFrame", plots: Sequence[str] = ()) -> str:
    """report.md: convention, notes, per-model tables of accuracy, drops, adoption and recovery."""
    conv = summary.attrs.get("convention", "?")
    out = ["# biasmed report", ""]
    if summary.attrs.get("is_demo") or (len(summary) and bool(summary["is_demo"].any())):
        out += [f"> **{DEMO_BANNER}**", ""]
    out += [f"**{convention_line(conv)}**", ""]
    out += [f"Paired statistics: {summary.attrs.get('n_boot', '?')} bootstrap resamples of the questions "
            f"(seed {summary.attrs.get('seed', '?')}), exact McNemar tests, Holm across the biases of each "
            "model and mitigation. Definitions: docs/conventions.md.", ""]
    runs = summary.attrs.get("runs") or []
    if runs:
        out += ["Runs: " + ", ".join(f"`{r}`" for r in runs), ""]
    for note in summary.attrs.get("notes", []):
        out += [f"- Note: {note}"]
    if summary.attrs.get("notes"):
        out.append("")
    main = _main(summary)
    for model, m in main.groupby("model", sort=False):
        out += [f"## {model}", ""]
        out += ["### Accuracy", "",
                "| bias | mitigation | n | accuracy [95% CI] | NR rate | acc. excl. NR | template |",
                "|---|---|---:|---|---:|---:|---|"]
        for _, r in m.iterrows():
            out.append(f"| {r['bias']} | {r['mitigation']} | {r['n']} | {_ci(r, 'accuracy', 'acc_lo', 'acc_hi')} "
                       f"| {_fmt(r['nr_rate'])} | {_fmt(r['acc_excl_nr'])} | {r['template_version']} |")
        out += ["", "### Paired drop vs the unbiased questions (no mitigation)", "",
                "drop = accuracy(unbiased, no mitigation) − accuracy(condition), on the same questions; "
                "positive = the condition hurts.", "",
                "| bias | mitigation | n paired | drop [95% CI] | McNemar p | Holm p | paper z-test p "
                "| drop vs unbiased same mitigation [95% CI] |",
                "|---|---|---:|---|---:|---:|---:|---|"]
        for _, r in m[~((m["bias"] == NONE) & (m["mitigation"] == "none"))].iterrows():
            sig = " **" if r["significant"] else ""
            out.append(f"| {r['bias']} | {r['mitigation']} | {_n(r['n_paired'])} "
                       f"| {_ci(r, 'drop', 'drop_lo', 'drop_hi')}{sig} "
                       f"| {_p(r['p_mcnemar'])} | {_p(r['p_holm'])} | {_p(r['p_paper'])} "
                       f"| {_ci(r, 'drop_same_mit', 'drop_same_mit_lo', 'drop_same_mit_hi')} |")
        biased = m[m["bias"] != NONE]
        out += ["", "** significant drop after Holm.", "", "### Adoption of the planted answer", "",
                "adoption = share of answers equal to the planted (wrong) letter; baseline = the same letter's "
                "share among the unbiased answers to the same questions; flips = right when unbiased, planted "
                "letter when biased.", "",
                "| bias | mitigation | n | adoption | baseline | difference [95% CI] | p | flips (rate) |",
                "|---|---|---:|---:|---:|---|---:|---:|"]
        for _, r in biased.iterrows():
            out.append(f"| {r['bias']} | {r['mitigation']} | {_n(r['n_target'])} | {_fmt(r['adoption'])} "
                       f"| {_fmt(r['adoption_base'])} | {_ci(r, 'adoption_diff', 'adoption_lo', 'adoption_hi')} "
                       f"| {_p(r['p_adoption'])} | {_n(r['flips'])} ({_fmt(r['flip_rate'])}) |")
        rec = biased[biased["mitigation"] != "none"]
        if not rec.empty:
            out += ["", "### Mitigation recovery", "",
                    "recovery = (acc(bias, mitigation) − acc(bias, none)) / (acc(unbiased) − acc(bias, none)) on the "
                    "same questions: 1 = the whole drop won back, 0 = nothing, < 0 = worse. Empty where the drop is "
                    "not positive; no CI where it is not clearly positive.", "",
                    "| bias | mitigation | recovery [95% CI] |", "|---|---|---|"]
            for _, r in rec.iterrows():
                out.append(f"| {r['bias']} | {r['mitigation']} | {_ci(r, 'recovery', 'recovery_lo', 'recovery_hi')} |")
        out += control_markdown(summary, str(model))
        out.append("")
    if len(summary[summary["draw"] > 0]):
        out += ["Re-drawn targets (draw > 0) are in summary.csv.", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


# --------------------------------------------------------------------------- leaderboard

def leaderboard(summary: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (model, mitigation), sorted by mean biased accuracy (best first).

    Means run over the seven core biases present (the _v2 variants have their own columns but
    stay out of the means, so every row averages the same biases when all are there).
    """
    import numpy as np
    import pandas as pd

    conv = summary.attrs.get("convention", summary["convention"].iloc[0] if len(summary) else "")
    main = _main(summary)
    rows = []
    for (model, mit), m in main.groupby(["model", "mitigation"], sort=False):
        by_bias = m.set_index("bias")
        base = main[(main["model"] == model) & (main["bias"] == NONE) & (main["mitigation"] == "none")]
        row: dict[str, Any] = {"model": model, "mitigation": mit, "convention": conv}
        row["n_questions"] = int(base["n"].iloc[0]) if len(base) else int(m["n"].max())
        row["acc_unbiased"] = float(base["accuracy"].iloc[0]) if len(base) else np.nan
        # the unbiased questions under this mitigation, where they were run (one-shot demos change them)
        row["acc_unbiased_mit"] = float(by_bias.loc[NONE, "accuracy"]) if NONE in by_bias.index else np.nan
        for b in LEADERBOARD_BIASES:
            row[f"acc_{b}"] = float(by_bias.loc[b, "accuracy"]) if b in by_bias.index else np.nan
        core = by_bias.loc[[b for b in BIASES if b in by_bias.index]]
        row["n_biases"] = len(core)
        if len(core):
            row["mean_biased_acc"] = float(core["accuracy"].mean())
            row["mean_drop"] = float(core["drop"].mean())
            worst = core["drop"].astype(float)
            row["worst_drop"] = float(worst.max()) if worst.notna().any() else np.nan
            row["worst_bias"] = str(worst.idxmax()) if worst.notna().any() else ""
            row["mean_adoption"] = float(core["adoption"].mean())
            row["mean_adoption_base"] = float(core["adoption_base"].mean())
            sig = [b for b in core.index if bool(core.loc[b, "significant"])]
            row["n_significant"] = len(sig)
            row["significant_biases"] = ";".join(sig)
        else:
            row.update(mean_biased_acc=np.nan, mean_drop=np.nan, worst_drop=np.nan, worst_bias="",
                       mean_adoption=np.nan, mean_adoption_base=np.nan, n_significant=0, significant_biases="")
        row["is_demo"] = bool(m["is_demo"].any())
        row["dataset_sha256"] = ",".join(sorted({s for v in m["dataset_sha256"] for s in str(v).split(",") if s}))
        row.update(leaderboard_controls(summary, str(model), str(mit), core))
        rows.append(row)
    lb = pd.DataFrame(rows)
    if lb.empty:
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    lb = lb.sort_values(["mean_biased_acc", "acc_unbiased", "model", "mitigation"],
                        ascending=[False, False, True, True], na_position="last").reset_index(drop=True)
    lb["rank"] = np.arange(1, len(lb) + 1)
    lb = lb[list(LEADERBOARD_COLUMNS)]
    lb.attrs.update(summary.attrs)
    return lb


def leaderboard_markdown(lb: "pd.DataFrame") -> str:
    conv = lb.attrs.get("convention", lb["convention"].iloc[0] if len(lb) else "?")
    out = ["# BiasMedQA leaderboard (biasmed)", ""]
    if len(lb) and bool(lb["is_demo"].any()):
        out += [f"> **{DEMO_BANNER}**", ""]
    out += [f"**{convention_line(conv)}**", "",
            "Sorted by mean accuracy over the seven biases. drop = accuracy(unbiased, no mitigation) − "
            "accuracy(biased), paired on the same questions; significant = Holm-adjusted exact McNemar "
            "p < 0.05 across the biases of the model and mitigation. Columns: results/README.md.", ""]
    short = {"self_diagnosis": "self-diag.", "recency": "recency", "confirmation": "confirm.",
             "frequency": "freq.", "cultural": "cultural", "status_quo": "status quo",
             "false_consensus": "false cons.", "confirmation_v2": "confirm. v2",
             "false_consensus_v2": "false cons. v2"}
    head = (["#", "model", "mitigation", "n", "unbiased", "unbiased, same mitigation"]
            + [short[b] for b in LEADERBOARD_BIASES]
            + ["mean biased", "mean drop", "worst drop (bias)", "adoption (baseline)", "significant"])
    out += ["| " + " | ".join(head) + " |",
            "|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(head) - 4) + ["---"]) + "|"]
    for _, r in lb.iterrows():
        demo = " (demo)" if r["is_demo"] else ""
        cells = [str(r["rank"]), f"{r['model']}{demo}", r["mitigation"], str(r["n_questions"]), _fmt(r["acc_unbiased"]),
                 _fmt(r["acc_unbiased_mit"])]
        cells += [_fmt(r[f"acc_{b}"]) for b in LEADERBOARD_BIASES]
        cells += [_fmt(r["mean_biased_acc"]), _fmt(r["mean_drop"]),
                  f"{_fmt(r['worst_drop'])} ({r['worst_bias'] or '–'})",
                  f"{_fmt(r['mean_adoption'])} ({_fmt(r['mean_adoption_base'])})",
                  f"{r['n_significant']}/{r['n_biases']}"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out += leaderboard_controls_markdown(lb)
    return "\n".join(out)


def write_leaderboard(lb: "pd.DataFrame", path: str | os.PathLike[str] | None, fmt: str = "csv") -> str:
    """Write (or return, when path is None) the leaderboard as CSV or markdown."""
    if fmt not in ("csv", "md"):
        raise ValueError(f"--format must be csv or md, not {fmt!r}")
    text = lb.to_csv(index=False, float_format="%.4f") if fmt == "csv" else leaderboard_markdown(lb)
    if path is not None:
        from biasmed.results import write_text_atomic

        write_text_atomic(path, text)
    return text


def write_report(summary: "pd.DataFrame", out_dir: str | os.PathLike[str], plots: bool = True) -> list[Path]:
    """summary.csv, report.md and (optionally) the PNG plots into `out_dir`; returns the paths."""
    from biasmed.results import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv(summary, out / "summary.csv")]
    pngs: list[Path] = []
    if plots and len(summary):
        from biasmed.report.plots import write_plots

        pngs = write_plots(summary, out)
    md = out / "report.md"
    write_text_atomic(md, report_markdown(summary, [str(p) for p in pngs]))
    written.append(md)
    controls = model_controls_frame(summary)
    if len(controls):
        written.append(write_csv(controls, out / "controls.csv"))
    return written + pngs
