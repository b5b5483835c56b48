"""The leaderboard: one row per (model, mitigation), computed once by `summarize()` (`Summary.leaderboard`).

Columns: LEADERBOARD_COLUMNS, documented in results/README.md (the stable ones first, then the
control columns of issue 6, docs/controls.md). Rows sorted by mean biased accuracy, best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from biasmed.records import BIASES, NONE, V2_BIASES

if TYPE_CHECKING:
    import pandas as pd

LEADERBOARD_BIASES: tuple[str, ...] = BIASES + V2_BIASES
# after the stable columns, in this order (do not reorder lightly: results/README.md)
LEADERBOARD_CONTROL_COLUMNS: tuple[str, ...] = (
    "n_placebo",
    "mean_placebo_diff",
    "mean_placebo_diff_lo",
    "mean_placebo_diff_hi",
    "mean_placebo_adoption_diff",
    "n_placebo_significant",
    "placebo_significant_biases",
    "n_helpful",
    "mean_helpful_gain",
    "mean_helpful_gain_lo",
    "mean_helpful_gain_hi",
    "n_helpful_significant",
    "susceptibility",
    "susceptibility_lo",
    "susceptibility_hi",
    "n_draws",
    "mean_biased_acc_draws",
    "mean_biased_acc_draws_lo",
    "mean_biased_acc_draws_hi",
    "mean_biased_acc_draws_sd",
    "mean_biased_acc_draws_min",
    "mean_biased_acc_draws_max",
)
# issue 13 (docs/mitigations.md): mean recovery over the core biases (against the unbiased
# accuracy without a mitigation / under the same one), tokens and list-price cost per answer
# (every condition of the row, weighted by its answers), accuracy won per 1,000 extra tokens, and
# for chains how often the final answer changed, moved to or away from the planted letter
LEADERBOARD_MITIGATION_COLUMNS: tuple[str, ...] = (
    "mean_recovery",
    "mean_recovery_same_mit",
    "tokens_per_answer",
    "cost_per_answer",
    "mean_recovered_per_1k_tokens",
    "changed_rate",
    "toward_rate",
    "away_rate",
)
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "rank",
    "model",
    "mitigation",
    "convention",
    "n_questions",
    "acc_unbiased",
    "acc_unbiased_mit",
    *(f"acc_{b}" for b in LEADERBOARD_BIASES),
    "n_biases",
    "mean_biased_acc",
    "mean_drop",
    "worst_drop",
    "worst_bias",
    "mean_adoption",
    "mean_adoption_base",
    "n_significant",
    "significant_biases",
    "is_demo",
    "dataset_sha256",
    *LEADERBOARD_CONTROL_COLUMNS,
    *LEADERBOARD_MITIGATION_COLUMNS,
)


def leaderboard_frame(
    table: pd.DataFrame, main: pd.DataFrame, model_controls: Sequence[dict[str, Any]], convention: str
) -> pd.DataFrame:
    """One row per (model, mitigation) of `main` (the main-table rows of `table`), best first.

    Means run over the seven core biases present (the _v2 variants have their own columns but
    stay out of the means, so every row averages the same biases when all are there).
    """
    import numpy as np
    import pandas as pd

    rows = []
    for (model, mit), m in main.groupby(["model", "mitigation"], sort=False):
        by_bias = m.set_index("bias")
        base = main[(main["model"] == model) & (main["bias"] == NONE) & (main["mitigation"] == "none")]
        row: dict[str, Any] = {"model": model, "mitigation": mit, "convention": convention}
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
            row.update(
                mean_biased_acc=np.nan,
                mean_drop=np.nan,
                worst_drop=np.nan,
                worst_bias="",
                mean_adoption=np.nan,
                mean_adoption_base=np.nan,
                n_significant=0,
                significant_biases="",
            )
        row["is_demo"] = bool(m["is_demo"].any())
        row["dataset_sha256"] = ",".join(sorted({s for v in m["dataset_sha256"] for s in str(v).split(",") if s}))
        mc = next((r for r in model_controls if r.get("model") == model and r.get("mitigation") == mit), {})
        row.update(_control_columns(table, str(model), str(mit), core, mc))
        row.update(_mitigation_columns(m, core))
        rows.append(row)
    lb = pd.DataFrame(rows)
    if lb.empty:
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    lb = lb.sort_values(
        ["mean_biased_acc", "acc_unbiased", "model", "mitigation"],
        ascending=[False, False, True, True],
        na_position="last",
    ).reset_index(drop=True)
    lb["rank"] = np.arange(1, len(lb) + 1)
    return lb[list(LEADERBOARD_COLUMNS)]


def _control_columns(
    table: pd.DataFrame, model: str, mitigation: str, core: pd.DataFrame, mc: dict[str, Any]
) -> dict[str, Any]:
    """The control columns of one row; `core` = the row's core-bias summary rows, by bias;
    `mc` = the (model, mitigation)'s model-level control figures."""
    import numpy as np

    from biasmed.analysis.stats import spread  # numpy: not at import time

    nan = float("nan")
    out: dict[str, Any] = {c: nan for c in LEADERBOARD_CONTROL_COLUMNS}
    if "placebo_diff" not in core:
        out.update(
            n_placebo=0,
            n_placebo_significant=0,
            placebo_significant_biases="",
            n_helpful=0,
            n_helpful_significant=0,
            n_draws=1,
        )
        return out
    pl = core[core["placebo_diff"].notna()]
    sig = [b for b in pl.index if pl.loc[b, "p_placebo_holm"] < 0.05 and pl.loc[b, "placebo_diff"] > 0]
    out.update(
        n_placebo=len(pl),
        n_placebo_significant=len(sig),
        placebo_significant_biases=";".join(sig),
        mean_placebo_adoption_diff=float(pl["placebo_adoption_diff"].mean()) if len(pl) else nan,
    )
    hp = core[core["helpful_gain"].notna()]
    out.update(
        n_helpful=len(hp), n_helpful_significant=int(((hp["p_helpful_holm"] < 0.05) & (hp["helpful_gain"] > 0)).sum())
    )
    for col in ("mean_placebo_diff", "mean_helpful_gain", "susceptibility", "mean_biased_acc_draws"):
        for suffix in ("", "_lo", "_hi"):
            out[col + suffix] = mc.get(col + suffix, nan)
    k = int(mc.get("draws") or 1)
    out["n_draws"] = k
    if k >= 2:
        biases = [b for b in str(mc.get("draws_biases", "")).split(";") if b]
        m = table[
            (table["model"] == model)
            & (table["mitigation"] == mitigation)
            & (table["target_mode"] == mc.get("target_mode"))
            & table["bias"].isin(biases)
        ]
        per_draw = m.groupby("draw")["accuracy"].mean()
        sp = spread(per_draw.to_numpy(dtype=float))
        out.update(mean_biased_acc_draws_sd=sp.sd, mean_biased_acc_draws_min=sp.min, mean_biased_acc_draws_max=sp.max)
    return {k2: (v if not isinstance(v, np.floating) else float(v)) for k2, v in out.items()}


def _mitigation_columns(m: pd.DataFrame, core: pd.DataFrame) -> dict[str, Any]:
    """The issue-13 columns of one row; `m` = the row's main-table rows, `core` = its core biases."""
    import numpy as np

    nan = float("nan")
    out: dict[str, Any] = dict.fromkeys(LEADERBOARD_MITIGATION_COLUMNS, nan)
    if "tokens_per_answer" not in m:
        return out

    def mean(col: str, rows: pd.DataFrame) -> float:
        v = rows[col].astype(float) if col in rows else None
        return float(v.mean()) if v is not None and v.notna().any() else nan

    out["mean_recovery"] = mean("recovery", core)
    out["mean_recovery_same_mit"] = mean("recovery_same_mit", core)
    out["mean_recovered_per_1k_tokens"] = mean("recovered_per_1k_tokens", core)
    for col in ("tokens_per_answer", "cost_per_answer"):
        v, w = m[col].astype(float), m["n"].astype(float)
        ok = v.notna() & (w > 0)
        out[col] = float(np.average(v[ok], weights=w[ok])) if ok.any() else nan
    n_all = m["n_chain"].astype(float).fillna(0)
    if n_all.sum() > 0:
        out["changed_rate"] = float((m["changed_rate"].astype(float).fillna(0) * n_all).sum() / n_all.sum())
        n_core = core["n_chain"].astype(float).fillna(0).sum()
        if n_core > 0:
            out["toward_rate"] = float(core["toward"].astype(float).fillna(0).sum() / n_core)
            out["away_rate"] = float(core["away"].astype(float).fillna(0).sum() / n_core)
    return out
