"""Text tables of a `Summary`: the console (rich), summary.csv / controls.csv, report.md, the leaderboard.

Every output names its convention; demo-set figures are flagged in each of them. Nothing here
computes a figure: the numbers are the Summary's, formatted by `biasmed.report.format`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biasmed.analysis.leaderboard import LEADERBOARD_BIASES
from biasmed.analysis.summary import Summary
from biasmed.records import MITIGATIONS, NONE
from biasmed.report.controls import control_markdown, control_tables, leaderboard_controls_markdown
from biasmed.report.format import DASH, DEMO_BANNER, ci, convention_line, count, isnan, md, num, plain, pval, short
from biasmed.results import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd


# --------------------------------------------------------------------------- console


def rich_tables(summary: Summary) -> list[Any]:
    """One rich Table per model: accuracy and its paired change vs unbiased, per bias x mitigation."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    tables: list[Any] = []
    for model, m in summary.main.groupby("model", sort=False):
        mits = [x for x in MITIGATIONS if x in set(m["mitigation"])] + sorted(set(m["mitigation"]) - set(MITIGATIONS))
        title = f"{plain(model)}: accuracy  Δ vs unbiased (paired)  [convention: {summary.convention}]"
        if summary.is_demo:
            title += "  DEMO SET, not MedQA"
        t = Table(pad_edge=False)
        t.add_column("bias", no_wrap=True)
        for mit in mits:
            t.add_column(escape(plain(mit)), justify="right", no_wrap=True)
        for bias in dict.fromkeys(m["bias"]):
            cells = [escape(plain(bias))]
            for mit in mits:
                r = m[(m["bias"] == bias) & (m["mitigation"] == mit)]
                if r.empty:
                    cells.append("")
                    continue
                r = r.iloc[0]
                cell = short(r["accuracy"])
                if not isnan(r["drop"]):
                    change = -r["drop"]
                    cell += f" Δ{'+' if change > 0 else ''}{short(change)}" + ("*" if r["significant"] else " ")
                cells.append(cell)
            t.add_row(*cells)
        caption = (
            "Δ = accuracy − unbiased accuracy (no mitigation), same questions; * significant drop "
            "(exact McNemar, Holm). CIs: report.md / summary.csv"
        )
        # title and caption as lines of their own: a table's title wraps to the table's width
        tables.append(Group(Text(title, style="bold"), t, Text(caption, style="dim")))
        tables.extend(control_tables(summary, str(model)))
    return tables


# --------------------------------------------------------------------------- CSV / markdown


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str], float_format: str = "%.6g") -> Path:
    """A frame of the Summary (`table`: summary.csv, `controls`: controls.csv) as CSV, atomically."""
    path = Path(path)
    write_text_atomic(path, frame.to_csv(index=False, float_format=float_format))
    return path


def report_markdown(summary: Summary, plots: Sequence[str | os.PathLike[str]] = ()) -> str:
    """report.md: convention, notes, per-model tables of accuracy, drops, adoption and recovery."""
    out = ["# biasmed report", ""]
    if summary.is_demo:
        out += [f"> **{DEMO_BANNER}**", ""]
    out += [f"**{convention_line(summary.convention)}**", ""]
    out += [
        f"Paired statistics: {summary.n_boot} bootstrap resamples of the questions "
        f"(seed {summary.seed}), exact McNemar tests, Holm across the biases of each "
        "model and mitigation. Definitions: docs/conventions.md.",
        "",
    ]
    paths = [r.get("path") for r in summary.runs if r.get("path")]
    if paths:
        out += ["Runs: " + ", ".join(md(p) for p in paths), ""]
    for note in summary.notes:
        out += [f"- Note: {md(note)}"]
    if summary.notes:
        out.append("")
    for model, m in summary.main.groupby("model", sort=False):
        out += [f"## {md(model)}", ""]
        out += [
            "### Accuracy",
            "",
            "| bias | mitigation | n | accuracy [95% CI] | NR rate | acc. excl. NR | template |",
            "|---|---|---:|---|---:|---:|---|",
        ]
        for _, r in m.iterrows():
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {r['n']} "
                f"| {ci(r, 'accuracy', 'acc_lo', 'acc_hi')} "
                f"| {num(r['nr_rate'])} | {num(r['acc_excl_nr'])} | {md(r['template_version'])} |"
            )
        out += [
            "",
            "### Paired drop vs the unbiased questions (no mitigation)",
            "",
            "drop = accuracy(unbiased, no mitigation) − accuracy(condition), on the same questions; "
            "positive = the condition hurts.",
            "",
            "| bias | mitigation | n paired | drop [95% CI] | McNemar p | Holm p | paper z-test p "
            "| drop vs unbiased same mitigation [95% CI] |",
            "|---|---|---:|---|---:|---:|---:|---|",
        ]
        for _, r in m[~((m["bias"] == NONE) & (m["mitigation"] == "none"))].iterrows():
            sig = " **" if r["significant"] else ""
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {count(r['n_paired'])} "
                f"| {ci(r, 'drop')}{sig} "
                f"| {pval(r['p_mcnemar'])} | {pval(r['p_holm'])} | {pval(r['p_paper'])} "
                f"| {ci(r, 'drop_same_mit')} |"
            )
        biased = m[m["bias"] != NONE]
        out += [
            "",
            "** significant drop after Holm.",
            "",
            "### Adoption of the planted answer",
            "",
            "adoption = share of answers equal to the planted (wrong) letter; baseline = the same letter's "
            "share among the unbiased answers to the same questions; flips = right when unbiased, planted "
            "letter when biased.",
            "",
            "| bias | mitigation | n | adoption | baseline | difference [95% CI] | p | flips (rate) |",
            "|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for _, r in biased.iterrows():
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {count(r['n_target'])} | {num(r['adoption'])} "
                f"| {num(r['adoption_base'])} | {ci(r, 'adoption_diff', 'adoption_lo', 'adoption_hi')} "
                f"| {pval(r['p_adoption'])} | {count(r['flips'])} ({num(r['flip_rate'])}) |"
            )
        rec = biased[biased["mitigation"] != "none"]
        if not rec.empty:
            out += [
                "",
                "### Mitigation recovery",
                "",
                "recovery = (acc(bias, mitigation) − acc(bias, none)) / (acc(unbiased) − acc(bias, none)) on the "
                "same questions: 1 = the whole drop won back, 0 = nothing, < 0 = worse. Empty where the drop is "
                "not positive; no CI where it is not clearly positive.",
                "",
                "| bias | mitigation | recovery [95% CI] |",
                "|---|---|---|",
            ]
            for _, r in rec.iterrows():
                out.append(f"| {md(r['bias'])} | {md(r['mitigation'])} | {ci(r, 'recovery')} |")
        if not summary.legacy:
            out += mitigation_markdown(m)
        out += control_markdown(summary, str(model))
        out.append("")
    if bool((summary.table["draw"] > 0).any()):
        out += ["Re-drawn targets (draw > 0) are in summary.csv.", ""]
    if plots:
        out += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(out)


def _money(x: Any) -> str:
    return DASH if isnan(x) else f"${x:.6f}"


def mitigation_markdown(m: pd.DataFrame) -> list[str]:
    """report.md's mitigation sections for one model's main rows (docs/mitigations.md): recovery
    against both unbiased references, what an answer costs, and for chains how answers moved."""
    mit = m[m["mitigation"] != "none"]
    if mit.empty:
        return []
    out = [
        "",
        "### Mitigations: recovery and cost",
        "",
        "recovery = share of the drop won back, against the unbiased accuracy without a mitigation "
        "and under the same mitigation; gain = accuracy − accuracy(same bias, no mitigation); tokens "
        "= input + output over every turn, per answer; cost at the run's list price; gain per 1k tokens "
        "= gain per 1,000 tokens per answer more than without a mitigation. docs/mitigations.md.",
        "",
        "| bias | mitigation | recovery vs unbiased, none [95% CI] | recovery vs unbiased, same mitigation "
        "[95% CI] | gain | tokens / answer | cost / answer | gain per 1k extra tokens |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for _, r in m.iterrows():
        if r["mitigation"] == "none" and r["bias"] != NONE:
            continue
        out.append(
            f"| {md(r['bias'])} | {md(r['mitigation'])} | {ci(r, 'recovery')} | {ci(r, 'recovery_same_mit')} "
            f"| {num(r['acc_gain'])} | {num(r['tokens_per_answer'], 1)} | {_money(r['cost_per_answer'])} "
            f"| {num(r['recovered_per_1k_tokens'])} |"
        )
    chains = m[m["n_chain"].astype(float).fillna(0) > 0]
    if not chains.empty:
        out += [
            "",
            "### Reflection: how the second answer moved",
            "",
            "first = accuracy of the first answer; final = after the review turn; changed = share of "
            "answers that changed; toward / away = the final answer is / the first answer was the planted "
            "letter (count and share).",
            "",
            "| bias | mitigation | n | first | final | changed | toward planted | away from planted |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in chains.iterrows():
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {count(r['n_chain'])} | {num(r['acc_first'])} "
                f"| {num(r['accuracy'])} | {num(r['changed_rate'])} "
                f"| {count(r['toward'])} ({num(r['toward_rate'])}) | {count(r['away'])} ({num(r['away_rate'])}) |"
            )
    return out


# --------------------------------------------------------------------------- leaderboard

_SHORT = {
    "self_diagnosis": "self-diag.",
    "recency": "recency",
    "confirmation": "confirm.",
    "frequency": "freq.",
    "cultural": "cultural",
    "status_quo": "status quo",
    "false_consensus": "false cons.",
    "confirmation_v2": "confirm. v2",
    "false_consensus_v2": "false cons. v2",
}


def leaderboard_markdown(summary: Summary) -> str:
    """leaderboard.md: the Summary's leaderboard, its convention and (when any) its controls."""
    lb = summary.leaderboard
    out = ["# BiasMedQA leaderboard (biasmed)", ""]
    if len(lb) and bool(lb["is_demo"].any()):
        out += [f"> **{DEMO_BANNER}**", ""]
    out += [
        f"**{convention_line(summary.convention)}**",
        "",
        "Sorted by mean accuracy over the seven biases. drop = accuracy(unbiased, no mitigation) − "
        "accuracy(biased), paired on the same questions; significant = Holm-adjusted exact McNemar "
        "p < 0.05 across the biases of the model and mitigation. Columns: results/README.md.",
        "",
    ]
    head = (
        ["#", "model", "mitigation", "n", "unbiased", "unbiased, same mitigation"]
        + [_SHORT[b] for b in LEADERBOARD_BIASES]
        + ["mean biased", "mean drop", "worst drop (bias)", "adoption (baseline)", "significant"]
    )
    out += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:", "---", "---"] + ["---:"] * (len(head) - 4) + ["---"]) + "|",
    ]
    for _, r in lb.iterrows():
        demo = " (demo)" if r["is_demo"] else ""
        cells = [
            str(r["rank"]),
            f"{md(r['model'])}{demo}",
            md(r["mitigation"]),
            str(r["n_questions"]),
            num(r["acc_unbiased"]),
            num(r["acc_unbiased_mit"]),
        ]
        cells += [num(r[f"acc_{b}"]) for b in LEADERBOARD_BIASES]
        cells += [
            num(r["mean_biased_acc"]),
            num(r["mean_drop"]),
            f"{num(r['worst_drop'])} ({md(r['worst_bias']) or '–'})",
            f"{num(r['mean_adoption'])} ({num(r['mean_adoption_base'])})",
            f"{r['n_significant']}/{r['n_biases']}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if not summary.legacy and len(lb):
        out += [
            "## Mitigations: recovery and cost",
            "",
            "Means over the seven biases; recovery against the unbiased accuracy without a mitigation and "
            "under the same one; tokens (every turn) and list-price cost per answer; accuracy won per 1,000 "
            "extra tokens per answer; for chains (reflect), how often the final answer changed, and moved to "
            "or away from the planted letter. docs/mitigations.md.",
            "",
            "| model | mitigation | recovery (none) | recovery (same mitigation) | tokens / answer "
            "| cost / answer | gain per 1k extra tokens | changed | toward planted | away from planted |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, r in lb.iterrows():
            out.append(
                f"| {md(r['model'])} | {md(r['mitigation'])} | {num(r['mean_recovery'])} "
                f"| {num(r['mean_recovery_same_mit'])} | {num(r['tokens_per_answer'], 1)} "
                f"| {_money(r['cost_per_answer'])} | {num(r['mean_recovered_per_1k_tokens'])} "
                f"| {num(r['changed_rate'])} | {num(r['toward_rate'])} | {num(r['away_rate'])} |"
            )
        out.append("")
    out += leaderboard_controls_markdown(lb)
    return "\n".join(out)


def leaderboard_text(summary: Summary, fmt: str = "csv") -> str:
    """The leaderboard as CSV (LEADERBOARD_COLUMNS, 4 decimals) or markdown."""
    if fmt not in ("csv", "md"):
        raise ValueError(f"--format must be csv or md, not {fmt!r}")
    if fmt == "md":
        return leaderboard_markdown(summary)
    return summary.leaderboard_csv().to_csv(index=False, float_format="%.4f")


def write_leaderboard(summary: Summary, path: str | os.PathLike[str] | None, fmt: str = "csv") -> str:
    """Write (or return, when path is None) the leaderboard as CSV or markdown."""
    text = leaderboard_text(summary, fmt)
    if path is not None:
        write_text_atomic(path, text)
    return text
