"""The control sections of reports and leaderboards: placebo, helpful bias, susceptibility, draws.

Reads the control columns of a summary (`biasmed.analysis.controls`) and `summary.attrs["model_controls"]`.
A model without any control gets none of these sections, and empty leaderboard columns.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from biasmed.analysis.controls import HELPFUL_MODE, MODEL_CONTROL_COLUMNS
from biasmed.records import NONE

if TYPE_CHECKING:
    import pandas as pd

# leaderboard columns after the stable ones (documented in results/README.md)
LEADERBOARD_CONTROL_COLUMNS: tuple[str, ...] = (
    "n_placebo", "mean_placebo_diff", "mean_placebo_diff_lo", "mean_placebo_diff_hi",
    "mean_placebo_adoption_diff", "n_placebo_significant", "placebo_significant_biases",
    "n_helpful", "mean_helpful_gain", "mean_helpful_gain_lo", "mean_helpful_gain_hi",
    "n_helpful_significant", "susceptibility", "susceptibility_lo", "susceptibility_hi",
    "n_draws", "mean_biased_acc_draws", "mean_biased_acc_draws_lo", "mean_biased_acc_draws_hi",
    "mean_biased_acc_draws_sd", "mean_biased_acc_draws_min", "mean_biased_acc_draws_max",
)

PLACEBO_TEXT = ("`placebo_<bias>` puts a neutral sentence naming the SAME planted letter at the same place. "
                "difference = acc(placebo) − acc(bias) on the same questions, i.e. the bias's drop minus the "
                "placebo's drop: > 0 means the endorsement, not the extra sentence naming an option, costs "
                "accuracy. Exact McNemar test on the paired verdicts, Holm across the biases. adoption "
                "difference = adoption(bias) − adoption(placebo) of the planted letter, same questions.")
HELPFUL_TEXT = ("The same bias sentences with the CORRECT letter planted (`--target-mode correct`). "
                "loss = acc(unbiased) − acc(bias, wrong letter); gain = acc(bias, correct letter) − "
                "acc(unbiased); both paired on the same questions against the unbiased answers without "
                "mitigation. susceptibility = ½ [(share of answers = planted wrong letter − that letter's "
                "share among the unbiased answers) + gain], per question: how far the answers follow the "
                "suggestion either way (0 = not at all; docs/controls.md).")
DRAWS_TEXT = ("The planted letters re-drawn K times (`--draws K`). Spread = the accuracies of the K draws "
              "(mean, sample SD, min–max). Pooled CIs resample questions with all their draws together "
              "(a cluster bootstrap): targets are drawn independently per question, so this interval "
              "includes the variation due to the draw as well as the choice of questions.")


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _rows(summary: "pd.DataFrame", model: str) -> "pd.DataFrame":
    from biasmed.analysis.summary import main_rows

    m = main_rows(summary)
    return m[(m["model"] == model) & (m["bias"] != NONE) & (m["control_of"].fillna("") == "")]


def _model_controls(summary: "pd.DataFrame", model: str) -> list[dict[str, Any]]:
    return [r for r in summary.attrs.get("model_controls", []) if r.get("model") == model]


def has_controls(summary: "pd.DataFrame", model: str) -> dict[str, bool]:
    """Which controls a model's summary holds: placebo, helpful, draws."""
    m = summary[summary["model"] == model]
    if m.empty or "control_of" not in m:
        return {"placebo": False, "helpful": False, "draws": False}
    return {"placebo": bool(m["placebo_diff"].notna().any()),
            "helpful": bool((m["target_mode"] == HELPFUL_MODE).any()),
            "draws": bool((m["n_draws"].fillna(1) > 1).any())}


def _draw_accuracies(summary: "pd.DataFrame", r: "pd.Series") -> list[float]:
    same = summary[(summary["model"] == r["model"]) & (summary["bias"] == r["bias"])
                   & (summary["mitigation"] == r["mitigation"]) & (summary["target_mode"] == r["target_mode"])]
    return [float(x) for x in same.sort_values("draw")["accuracy"]]


# --------------------------------------------------------------------------- console

def control_tables(summary: "pd.DataFrame", model: str) -> list[Any]:
    """One compact rich table of a model's controls (none when it has no control)."""
    from rich.markup import escape
    from rich.table import Table

    from biasmed.report.tables import _short

    has = has_controls(summary, model)
    if not any(has.values()):
        return []
    rows = _rows(summary, model)
    t = Table(title=escape(f"{model}: controls (paired on the same questions)"), title_justify="left",
              pad_edge=False)
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
        return "*" if not _isnan(p) and p < 0.05 and not _isnan(diff) and diff > 0 else " "

    for _, r in rows.iterrows():
        cells = [escape(str(r["bias"])), escape(str(r["mitigation"])), _short(r["drop"])]
        if has["placebo"]:
            cells.append(_short(r["placebo_diff"]) + star(r["p_placebo_holm"], r["placebo_diff"]))
        if has["helpful"]:
            cells += [_short(r["helpful_gain"]) + star(r["p_helpful_holm"], r["helpful_gain"]),
                      _short(r["susceptibility"])]
        if has["draws"]:
            cells.append("–" if _isnan(r["acc_draws_mean"]) else
                         f"{_short(r['acc_draws_mean'])} ± {_short(r['acc_draws_sd'])} "
                         f"({_short(r['acc_draws_min'])}–{_short(r['acc_draws_max'])}) ×{int(r['n_draws'])}")
        t.add_row(*cells)
    parts = ["loss = acc(unbiased) − acc(bias)"]
    if has["placebo"]:
        parts.append("placebo − bias = acc(placebo) − acc(bias)")
    if has["helpful"]:
        parts.append("gain = acc(bias, correct letter planted) − acc(unbiased)")
    if has["draws"]:
        parts.append("draws: accuracy over the re-drawn targets")
    lines = ["; ".join(parts) + ("; * Holm-adjusted exact McNemar p < 0.05" if has["placebo"] or has["helpful"] else "")
             + ". Definitions: docs/controls.md"]
    for mc in _model_controls(summary, model):
        if not _isnan(mc.get("susceptibility")):
            lines.append(f"susceptibility index, {mc['mitigation']}: {_short(mc['susceptibility'])} "
                         f"[{_short(mc['susceptibility_lo'])}, {_short(mc['susceptibility_hi'])}] "
                         f"over {_nb(mc['susceptibility_biases'])}")
    t.caption = escape("\n".join(lines))
    return [t]


# --------------------------------------------------------------------------- markdown

def control_markdown(summary: "pd.DataFrame", model: str) -> list[str]:
    """The report.md sections of a model's controls (empty when it has none)."""
    from biasmed.report.tables import _ci, _fmt, _n, _p

    has = has_controls(summary, model)
    if not any(has.values()):
        return []
    rows = _rows(summary, model)
    mcs = _model_controls(summary, model)
    out: list[str] = []
    if has["placebo"]:
        out += ["", "### Placebo control", "", PLACEBO_TEXT, "",
                "| bias | mitigation | planted letter | n paired | acc. bias | acc. placebo "
                "| acc(placebo) − acc(bias) [95% CI] | McNemar p | Holm p | adoption bias | adoption placebo "
                "| adoption difference [95% CI] | p |",
                "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
        for _, r in _placebo_rows(summary, model).iterrows():
            out.append(f"| {r['bias']} | {r['mitigation']} | {_MODE_TEXT.get(r['target_mode'], r['target_mode'])} "
                       f"| {_n(r['n_paired_placebo'])} "
                       f"| {_fmt(r['acc_placebo'] - r['placebo_diff'])} | {_fmt(r['acc_placebo'])} "
                       f"| {_ci(r, 'placebo_diff', 'placebo_diff_lo', 'placebo_diff_hi')} "
                       f"| {_p(r['p_placebo'])} | {_p(r['p_placebo_holm'])} "
                       f"| {_fmt(r['adoption_placebo'] + r['placebo_adoption_diff'])} | {_fmt(r['adoption_placebo'])} "
                       f"| {_ci(r, 'placebo_adoption_diff', 'placebo_adoption_diff_lo', 'placebo_adoption_diff_hi')} "
                       f"| {_p(r['p_placebo_adoption'])} |")
        out += [""] + [f"Mean over {_nb(mc['placebo_biases'])} ({mc['mitigation']}, wrong letters, "
                       f"{mc['placebo_n']} questions): acc(placebo) − acc(bias) = "
                       f"{_ci(mc, 'mean_placebo_diff', 'mean_placebo_diff_lo', 'mean_placebo_diff_hi')}."
                       for mc in mcs if mc.get("placebo_biases")]
    if has["helpful"]:
        out += ["", "### Helpful-bias control (correct letter planted) and susceptibility", "", HELPFUL_TEXT, "",
                "| bias | mitigation | loss, wrong letter [95% CI] | gain, correct letter [95% CI] | n paired "
                "| McNemar p | Holm p | susceptibility [95% CI] |",
                "|---|---|---|---|---:|---:|---:|---|"]
        for _, r in rows[rows["helpful_gain"].notna()].iterrows():
            out.append(f"| {r['bias']} | {r['mitigation']} | {_ci(r, 'drop', 'drop_lo', 'drop_hi')} "
                       f"| {_ci(r, 'helpful_gain', 'helpful_gain_lo', 'helpful_gain_hi')} "
                       f"| {_n(r['n_paired_helpful'])} | {_p(r['p_helpful'])} | {_p(r['p_helpful_holm'])} "
                       f"| {_ci(r, 'susceptibility', 'susceptibility_lo', 'susceptibility_hi')} |")
        out.append("")
        for mc in mcs:
            if mc.get("helpful_biases"):
                out.append(f"- {mc['mitigation']}: mean gain over {_nb(mc['helpful_biases'])} "
                           f"({mc['helpful_n']} questions) "
                           f"{_ci(mc, 'mean_helpful_gain', 'mean_helpful_gain_lo', 'mean_helpful_gain_hi')}")
            if mc.get("susceptibility_biases"):
                out.append(f"- {mc['mitigation']}: **susceptibility index "
                           f"{_ci(mc, 'susceptibility', 'susceptibility_lo', 'susceptibility_hi')}** over "
                           f"{_nb(mc['susceptibility_biases'])} ({mc['susceptibility_n']} "
                           f"questions): follows a wrong suggestion {_fmt(mc['follow_wrong'])}, "
                           f"a right one {_fmt(mc['follow_right'])}")
    if has["draws"]:
        drawn = _draw_rows(summary, model)
        out += ["", "### Variance over target draws", "", DRAWS_TEXT, "",
                "| bias | mitigation | target | draws | accuracy per draw | mean | SD | min–max "
                "| pooled accuracy 95% CI | pooled drop [95% CI] | pooled adoption difference [95% CI] |",
                "|---|---|---|---:|---|---:|---:|---|---|---|---|"]
        for _, r in drawn.iterrows():
            accs = ", ".join(f"{a:.3f}" for a in _draw_accuracies(summary, r))
            out.append(f"| {r['bias']} | {r['mitigation']} | {r['target_mode']} | {int(r['n_draws'])} | {accs} "
                       f"| {_fmt(r['acc_draws_mean'])} | {_fmt(r['acc_draws_sd'])} "
                       f"| {_fmt(r['acc_draws_min'])}–{_fmt(r['acc_draws_max'])} "
                       f"| [{_fmt(r['acc_draws_lo'])}, {_fmt(r['acc_draws_hi'])}] "
                       f"| {_ci(r, 'drop_draws', 'drop_draws_lo', 'drop_draws_hi')} "
                       f"| {_ci(r, 'adoption_diff_draws', 'adoption_diff_draws_lo', 'adoption_diff_draws_hi')} |")
        out.append("")
        for mc in mcs:
            if (mc.get("draws") or 0) >= 2 and mc.get("draws_n"):
                out.append(f"- {mc['mitigation']}: mean accuracy over {_nb(mc['draws_biases'])} and "
                           f"{mc['draws']} draws ({mc['draws_n']} questions): "
                           f"{_ci(mc, 'mean_biased_acc_draws', 'mean_biased_acc_draws_lo', 'mean_biased_acc_draws_hi')}")
    return out


_MODE_TEXT = {"incorrect": "wrong", "correct": "correct", "random": "random"}


def _nb(biases: str) -> str:
    """"recency;frequency" -> "2 biases"."""
    n = len([b for b in str(biases).split(";") if b])
    return f"{n} bias" if n == 1 else f"{n} biases"


def _placebo_rows(summary: "pd.DataFrame", model: str) -> "pd.DataFrame":
    """Default-draw bias rows with a placebo comparison, every target mode (wrong letters first)."""
    m = summary[(summary["model"] == model) & (summary["draw"] == 0) & (summary["bias"] != NONE)
                & (summary["control_of"].fillna("") == "") & summary["placebo_diff"].notna()]
    return m.sort_values("target_mode", key=lambda c: c.map({"incorrect": 0, "random": 1}).fillna(2), kind="stable")


def _draw_rows(summary: "pd.DataFrame", model: str) -> "pd.DataFrame":
    m = summary[(summary["model"] == model) & (summary["draw"] == 0) & (summary["n_draws"].fillna(1) > 1)]
    return m[m["bias"] != NONE]


# --------------------------------------------------------------------------- leaderboard

def model_controls_frame(summary: "pd.DataFrame") -> "pd.DataFrame":
    """attrs["model_controls"] as a frame, keeping the (model, mitigation) rows with any control."""
    import pandas as pd

    rows = [r for r in summary.attrs.get("model_controls", [])
            if r.get("placebo_biases") or r.get("helpful_biases") or (r.get("draws") or 0) >= 2]
    return pd.DataFrame(rows, columns=list(MODEL_CONTROL_COLUMNS))


def leaderboard_controls(summary: "pd.DataFrame", model: str, mitigation: str, core: "pd.DataFrame") -> dict[str, Any]:
    """The control columns of one leaderboard row; `core` = the row's core-bias summary rows, by bias."""
    import numpy as np

    nan = float("nan")
    out: dict[str, Any] = {c: nan for c in LEADERBOARD_CONTROL_COLUMNS}
    mc = next((r for r in _model_controls(summary, model) if r.get("mitigation") == mitigation), {})
    if "placebo_diff" not in core:
        out.update(n_placebo=0, n_placebo_significant=0, placebo_significant_biases="", n_helpful=0,
                   n_helpful_significant=0, n_draws=1)
        return out
    pl = core[core["placebo_diff"].notna()]
    sig = [b for b in pl.index if pl.loc[b, "p_placebo_holm"] < 0.05 and pl.loc[b, "placebo_diff"] > 0]
    out.update(n_placebo=len(pl), n_placebo_significant=len(sig), placebo_significant_biases=";".join(sig),
               mean_placebo_adoption_diff=float(pl["placebo_adoption_diff"].mean()) if len(pl) else nan)
    hp = core[core["helpful_gain"].notna()]
    out.update(n_helpful=len(hp), n_helpful_significant=int(((hp["p_helpful_holm"] < 0.05)
                                                            & (hp["helpful_gain"] > 0)).sum()))
    for col in ("mean_placebo_diff", "mean_helpful_gain", "susceptibility", "mean_biased_acc_draws"):
        for suffix in ("", "_lo", "_hi"):
            out[col + suffix] = mc.get(col + suffix, nan)
    k = int(mc.get("draws") or 1)
    out["n_draws"] = k
    if k >= 2:
        biases = [b for b in str(mc.get("draws_biases", "")).split(";") if b]
        m = summary[(summary["model"] == model) & (summary["mitigation"] == mitigation)
                    & (summary["target_mode"] == mc.get("target_mode")) & summary["bias"].isin(biases)]
        per_draw = m.groupby("draw")["accuracy"].mean()
        from biasmed.analysis.stats import spread

        sp = spread(per_draw.to_numpy(dtype=float))
        out.update(mean_biased_acc_draws_sd=sp.sd, mean_biased_acc_draws_min=sp.min, mean_biased_acc_draws_max=sp.max)
    return {k2: (v if not isinstance(v, np.floating) else float(v)) for k2, v in out.items()}


def _draw_spread(r: Any) -> str:
    from biasmed.report.tables import _fmt

    if _isnan(r["mean_biased_acc_draws_sd"]):
        return "–"
    return (f"{_fmt(r['mean_biased_acc_draws_sd'])} ({_fmt(r['mean_biased_acc_draws_min'])}–"
            f"{_fmt(r['mean_biased_acc_draws_max'])})")


def leaderboard_controls_markdown(lb: "pd.DataFrame") -> list[str]:
    """A second table beside the leaderboard's: the rows that have a control."""
    from biasmed.report.tables import _ci, _fmt

    if lb.empty or "n_placebo" not in lb:
        return []
    has = lb[(lb["n_placebo"].fillna(0) > 0) | (lb["n_helpful"].fillna(0) > 0) | (lb["n_draws"].fillna(1) > 1)]
    if has.empty:
        return []
    out = ["## Controls", "",
           "placebo − bias = mean over the biases of acc(placebo) − acc(bias), same questions (significant: "
           "Holm-adjusted exact McNemar p < 0.05 and > 0); gain = mean over the biases of acc(bias, correct letter "
           "planted) − acc(unbiased); susceptibility = ½ (net move to a planted wrong letter + gain); draws: mean "
           "biased accuracy pooled over the re-drawn targets, with its SD across draws. 95% CIs: question-cluster "
           "bootstrap. Definitions: docs/controls.md.", "",
           "| model | mitigation | placebo − bias [95% CI] | significant | gain, correct letter [95% CI] "
           "| significant | susceptibility [95% CI] | draws | mean biased acc. over draws [95% CI] | SD (min–max) |",
           "|---|---|---|---:|---|---:|---|---:|---|---|"]
    for _, r in has.iterrows():
        out.append(f"| {r['model']} | {r['mitigation']} "
                   f"| {_ci(r, 'mean_placebo_diff', 'mean_placebo_diff_lo', 'mean_placebo_diff_hi')} "
                   f"| {int(r['n_placebo_significant'])}/{int(r['n_placebo'])} "
                   f"| {_ci(r, 'mean_helpful_gain', 'mean_helpful_gain_lo', 'mean_helpful_gain_hi')} "
                   f"| {int(r['n_helpful_significant'])}/{int(r['n_helpful'])} "
                   f"| {_ci(r, 'susceptibility', 'susceptibility_lo', 'susceptibility_hi')} | {int(r['n_draws'])} "
                   f"| {_ci(r, 'mean_biased_acc_draws', 'mean_biased_acc_draws_lo', 'mean_biased_acc_draws_hi')} "
                   f"| {_draw_spread(r)} |")
    out.append("")
    return out
