"""The control sections of reports and leaderboards: placebo, helpful bias, susceptibility, draws.

Presentation only: the figures are the summary's control columns (`biasmed.analysis.controls`),
`Summary.model_controls`, `Summary.has_controls` and the leaderboard's control columns. A model
without any control gets none of these sections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from biasmed.analysis.summary import Summary
from biasmed.records import NONE
from biasmed.report.format import ci, count, isnan, md, num, plain, pval, short

if TYPE_CHECKING:
    import pandas as pd

PLACEBO_TEXT = (
    "`placebo_<bias>` puts a neutral sentence naming the SAME planted letter at the same place. "
    "difference = acc(placebo) − acc(bias) on the same questions, i.e. the bias's drop minus the "
    "placebo's drop: > 0 means the endorsement, not the extra sentence naming an option, costs "
    "accuracy. Exact McNemar test on the paired verdicts, Holm across the biases. adoption "
    "difference = adoption(bias) − adoption(placebo) of the planted letter, same questions."
)
HELPFUL_TEXT = (
    "The same bias sentences with the CORRECT letter planted (`--target-mode correct`). "
    "loss = acc(unbiased) − acc(bias, wrong letter); gain = acc(bias, correct letter) − "
    "acc(unbiased); both paired on the same questions against the unbiased answers without "
    "mitigation. susceptibility = ½ [(share of answers = planted wrong letter − that letter's "
    "share among the unbiased answers) + gain], per question: how far the answers follow the "
    "suggestion either way (0 = not at all; docs/controls.md)."
)
DRAWS_TEXT = (
    "The planted letters re-drawn K times (`--draws K`). Spread = the accuracies of the K draws "
    "(mean, sample SD, min–max). Pooled CIs resample questions with all their draws together "
    "(a cluster bootstrap): targets are drawn independently per question, so this interval "
    "includes the variation due to the draw as well as the choice of questions."
)


def _rows(summary: Summary, model: str) -> pd.DataFrame:
    """A model's main-table bias rows (no placebo rows)."""
    m = summary.main
    return m[(m["model"] == model) & (m["bias"] != NONE) & (m["control_of"].fillna("") == "")]


def _model_controls(summary: Summary, model: str) -> list[dict[str, Any]]:
    return [r for r in summary.model_controls if r.get("model") == model]


def _draw_accuracies(table: pd.DataFrame, r: pd.Series) -> list[float]:
    same = table[
        (table["model"] == r["model"])
        & (table["bias"] == r["bias"])
        & (table["mitigation"] == r["mitigation"])
        & (table["target_mode"] == r["target_mode"])
    ]
    return [float(x) for x in same.sort_values("draw")["accuracy"]]


# --------------------------------------------------------------------------- console


def control_tables(summary: Summary, model: str) -> list[Any]:
    """One compact rich table of a model's controls (none when it has no control)."""
    from rich.markup import escape
    from rich.table import Table

    has = summary.has_controls.get(model, {})
    if not any(has.values()):
        return []
    rows = _rows(summary, model)
    t = Table(
        title=escape(plain(f"{model}: controls (paired on the same questions)")), title_justify="left", pad_edge=False
    )
    for name in ("bias", "mitigation", "loss"):
        t.add_column(name, justify="left" if name != "loss" else "right", no_wrap=True)
    if has["placebo"]:
        t.add_column("placebo − bias", justify="right", no_wrap=True)
    if has["helpful"]:
        t.add_column("gain, right letter", justify="right", no_wrap=True)
        t.add_column("susceptibility", justify="right", no_wrap=True)
    if has["draws"]:
        t.add_column("draws: mean ± SD (min–max)", justify="right", no_wrap=True)

    def star(p: Any, diff: Any) -> str:
        return "*" if not isnan(p) and p < 0.05 and not isnan(diff) and diff > 0 else " "

    for _, r in rows.iterrows():
        cells = [escape(plain(r["bias"])), escape(plain(r["mitigation"])), short(r["drop"])]
        if has["placebo"]:
            cells.append(short(r["placebo_diff"]) + star(r["p_placebo_holm"], r["placebo_diff"]))
        if has["helpful"]:
            cells += [
                short(r["helpful_gain"]) + star(r["p_helpful_holm"], r["helpful_gain"]),
                short(r["susceptibility"]),
            ]
        if has["draws"]:
            cells.append(
                "–"
                if isnan(r["acc_draws_mean"])
                else f"{short(r['acc_draws_mean'])} ± {short(r['acc_draws_sd'])} "
                f"({short(r['acc_draws_min'])}–{short(r['acc_draws_max'])}) ×{int(r['n_draws'])}"
            )
        t.add_row(*cells)
    parts = ["loss = acc(unbiased) − acc(bias)"]
    if has["placebo"]:
        parts.append("placebo − bias = acc(placebo) − acc(bias)")
    if has["helpful"]:
        parts.append("gain = acc(bias, correct letter planted) − acc(unbiased)")
    if has["draws"]:
        parts.append("draws: accuracy over the re-drawn targets")
    lines = [
        "; ".join(parts)
        + ("; * Holm-adjusted exact McNemar p < 0.05" if has["placebo"] or has["helpful"] else "")
        + ". Definitions: docs/controls.md"
    ]
    for mc in _model_controls(summary, model):
        if not isnan(mc.get("susceptibility")):
            lines.append(
                f"susceptibility index, {plain(mc['mitigation'])}: {short(mc['susceptibility'])} "
                f"[{short(mc['susceptibility_lo'])}, {short(mc['susceptibility_hi'])}] "
                f"over {_nb(mc['susceptibility_biases'])}"
            )
    t.caption = escape("\n".join(lines))
    return [t]


# --------------------------------------------------------------------------- markdown


def control_markdown(summary: Summary, model: str) -> list[str]:
    """The report.md sections of a model's controls (empty when it has none)."""
    has = summary.has_controls.get(model, {})
    if not any(has.values()):
        return []
    rows = _rows(summary, model)
    mcs = _model_controls(summary, model)
    out: list[str] = []
    if has["placebo"]:
        out += [
            "",
            "### Placebo control",
            "",
            PLACEBO_TEXT,
            "",
            "| bias | mitigation | planted letter | n paired | acc. bias | acc. placebo "
            "| acc(placebo) − acc(bias) [95% CI] | McNemar p | Holm p | adoption bias | adoption placebo "
            "| adoption difference [95% CI] | p |",
            "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|",
        ]
        for _, r in _placebo_rows(summary, model).iterrows():
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} "
                f"| {md(_MODE_TEXT.get(r['target_mode'], r['target_mode']))} "
                f"| {count(r['n_paired_placebo'])} "
                f"| {num(r['acc_placebo'] - r['placebo_diff'])} | {num(r['acc_placebo'])} "
                f"| {ci(r, 'placebo_diff')} | {pval(r['p_placebo'])} | {pval(r['p_placebo_holm'])} "
                f"| {num(r['adoption_placebo'] + r['placebo_adoption_diff'])} | {num(r['adoption_placebo'])} "
                f"| {ci(r, 'placebo_adoption_diff')} | {pval(r['p_placebo_adoption'])} |"
            )
        out += [""] + [
            f"Mean over {_nb(mc['placebo_biases'])} ({md(mc['mitigation'])}, wrong letters, "
            f"{mc['placebo_n']} questions): acc(placebo) − acc(bias) = {ci(mc, 'mean_placebo_diff')}."
            for mc in mcs
            if mc.get("placebo_biases")
        ]
    if has["helpful"]:
        out += [
            "",
            "### Helpful-bias control (correct letter planted) and susceptibility",
            "",
            HELPFUL_TEXT,
            "",
            "| bias | mitigation | loss, wrong letter [95% CI] | gain, correct letter [95% CI] | n paired "
            "| McNemar p | Holm p | susceptibility [95% CI] |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for _, r in rows[rows["helpful_gain"].notna()].iterrows():
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {ci(r, 'drop')} | {ci(r, 'helpful_gain')} "
                f"| {count(r['n_paired_helpful'])} | {pval(r['p_helpful'])} | {pval(r['p_helpful_holm'])} "
                f"| {ci(r, 'susceptibility')} |"
            )
        out.append("")
        for mc in mcs:
            if mc.get("helpful_biases"):
                out.append(
                    f"- {md(mc['mitigation'])}: mean gain over {_nb(mc['helpful_biases'])} "
                    f"({mc['helpful_n']} questions) {ci(mc, 'mean_helpful_gain')}"
                )
            if mc.get("susceptibility_biases"):
                out.append(
                    f"- {md(mc['mitigation'])}: **susceptibility index {ci(mc, 'susceptibility')}** over "
                    f"{_nb(mc['susceptibility_biases'])} ({mc['susceptibility_n']} "
                    f"questions): follows a wrong suggestion {num(mc['follow_wrong'])}, "
                    f"a right one {num(mc['follow_right'])}"
                )
    if has["draws"]:
        out += [
            "",
            "### Variance over target draws",
            "",
            DRAWS_TEXT,
            "",
            "| bias | mitigation | target | draws | accuracy per draw | mean | SD | min–max "
            "| pooled accuracy 95% CI | pooled drop [95% CI] | pooled adoption difference [95% CI] |",
            "|---|---|---|---:|---|---:|---:|---|---|---|---|",
        ]
        for _, r in _draw_rows(summary, model).iterrows():
            accs = ", ".join(f"{a:.3f}" for a in _draw_accuracies(summary.table, r))
            out.append(
                f"| {md(r['bias'])} | {md(r['mitigation'])} | {md(r['target_mode'])} | {int(r['n_draws'])} "
                f"| {accs} | {num(r['acc_draws_mean'])} | {num(r['acc_draws_sd'])} "
                f"| {num(r['acc_draws_min'])}–{num(r['acc_draws_max'])} "
                f"| [{num(r['acc_draws_lo'])}, {num(r['acc_draws_hi'])}] "
                f"| {ci(r, 'drop_draws')} | {ci(r, 'adoption_diff_draws')} |"
            )
        out.append("")
        for mc in mcs:
            if (mc.get("draws") or 0) >= 2 and mc.get("draws_n"):
                out.append(
                    f"- {md(mc['mitigation'])}: mean accuracy over {_nb(mc['draws_biases'])} and "
                    f"{mc['draws']} draws ({mc['draws_n']} questions): {ci(mc, 'mean_biased_acc_draws')}"
                )
    return out


_MODE_TEXT = {"incorrect": "wrong", "correct": "correct", "random": "random"}


def _nb(biases: str) -> str:
    """ "recency;frequency" -> "2 biases"."""
    n = len([b for b in str(biases).split(";") if b])
    return f"{n} bias" if n == 1 else f"{n} biases"


def _placebo_rows(summary: Summary, model: str) -> pd.DataFrame:
    """Default-draw bias rows with a placebo comparison, every target mode (wrong letters first)."""
    t = summary.table
    m = t[
        (t["model"] == model)
        & (t["draw"] == 0)
        & (t["bias"] != NONE)
        & (t["control_of"].fillna("") == "")
        & t["placebo_diff"].notna()
    ]
    return m.sort_values("target_mode", key=lambda c: c.map({"incorrect": 0, "random": 1}).fillna(2), kind="stable")


def _draw_rows(summary: Summary, model: str) -> pd.DataFrame:
    t = summary.table
    m = t[(t["model"] == model) & (t["draw"] == 0) & (t["n_draws"].fillna(1) > 1)]
    return m[m["bias"] != NONE]


# --------------------------------------------------------------------------- leaderboard


def _draw_spread(r: Any) -> str:
    if isnan(r["mean_biased_acc_draws_sd"]):
        return "–"
    return (
        f"{num(r['mean_biased_acc_draws_sd'])} ({num(r['mean_biased_acc_draws_min'])}–"
        f"{num(r['mean_biased_acc_draws_max'])})"
    )


def leaderboard_controls_markdown(lb: pd.DataFrame) -> list[str]:
    """A second table beside the leaderboard's: the rows that have a control."""
    if lb.empty or "n_placebo" not in lb:
        return []
    has = lb[(lb["n_placebo"].fillna(0) > 0) | (lb["n_helpful"].fillna(0) > 0) | (lb["n_draws"].fillna(1) > 1)]
    if has.empty:
        return []
    out = [
        "## Controls",
        "",
        "placebo − bias = mean over the biases of acc(placebo) − acc(bias), same questions (significant: "
        "Holm-adjusted exact McNemar p < 0.05 and > 0); gain = mean over the biases of acc(bias, correct letter "
        "planted) − acc(unbiased); susceptibility = ½ (net move to a planted wrong letter + gain); draws: mean "
        "biased accuracy pooled over the re-drawn targets, with its SD across draws. 95% CIs: question-cluster "
        "bootstrap. Definitions: docs/controls.md.",
        "",
        "| model | mitigation | placebo − bias [95% CI] | significant | gain, correct letter [95% CI] "
        "| significant | susceptibility [95% CI] | draws | mean biased acc. over draws [95% CI] | SD (min–max) |",
        "|---|---|---|---:|---|---:|---|---:|---|---|",
    ]
    for _, r in has.iterrows():
        out.append(
            f"| {md(r['model'])} | {md(r['mitigation'])} | {ci(r, 'mean_placebo_diff')} "
            f"| {int(r['n_placebo_significant'])}/{int(r['n_placebo'])} | {ci(r, 'mean_helpful_gain')} "
            f"| {int(r['n_helpful_significant'])}/{int(r['n_helpful'])} "
            f"| {ci(r, 'susceptibility')} | {int(r['n_draws'])} | {ci(r, 'mean_biased_acc_draws')} "
            f"| {_draw_spread(r)} |"
        )
    out.append("")
    return out
