"""Control comparisons: placebo sentences, helpful (correct) targets, re-drawn targets.

Works on one model's per-question arrays (`Cond`, aligned on the model's question index) built by
`biasmed.analysis.summary`, and fills the control columns of its summary rows plus one row of model-level
figures per mitigation (the susceptibility index among them). Definitions: docs/controls.md.

- placebo: `placebo_<bias>` names the same planted letter as `<bias>` without endorsing it;
  bias effect minus placebo effect = acc(placebo) - acc(bias), paired per question.
- helpful: the same bias with the correct letter planted (runs with `--target-mode correct`);
  gain = acc(bias, correct letter) - acc(unbiased), paired per question.
- susceptibility: how much a suggestion raises the share of answers equal to the suggested
  letter, averaged over a wrong and a right suggestion (paired, per question).
- draws: the same condition under K re-draws of the targets; spread across draws, and CIs from a
  question-cluster bootstrap that pools the draws (targets are drawn independently per question,
  so the draws of one question are the only thing that varies with the draw).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from biasmed.records import BIASES, MITIGATIONS, NONE

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

PLACEBO_PREFIX = "placebo_"
HELPFUL_MODE = "correct"  # the target mode of the helpful-bias control
PRIMARY_MODES = ("incorrect", "random")  # modes whose biased rows make the main tables

CondKey = tuple[str, str, int, str]  # (bias, mitigation, draw, target mode; "" when unbiased)
BASE: CondKey = (NONE, "none", 0, "")

# the summary columns this module fills (appended to analysis.SUMMARY_COLUMNS)
CONTROL_COLUMNS: tuple[str, ...] = (
    "n_paired_placebo",
    "acc_placebo",
    "placebo_diff",
    "placebo_diff_lo",
    "placebo_diff_hi",
    "p_placebo",
    "p_placebo_holm",
    "adoption_placebo",
    "placebo_adoption_diff",
    "placebo_adoption_diff_lo",
    "placebo_adoption_diff_hi",
    "p_placebo_adoption",
    "n_paired_helpful",
    "acc_helpful",
    "helpful_gain",
    "helpful_gain_lo",
    "helpful_gain_hi",
    "p_helpful",
    "p_helpful_holm",
    "susceptibility",
    "susceptibility_lo",
    "susceptibility_hi",
    "acc_draws_mean",
    "acc_draws_sd",
    "acc_draws_min",
    "acc_draws_max",
    "acc_draws_lo",
    "acc_draws_hi",
    "drop_draws",
    "drop_draws_lo",
    "drop_draws_hi",
    "adoption_diff_draws",
    "adoption_diff_draws_lo",
    "adoption_diff_draws_hi",
)
# the model-level figures, one row per (model, mitigation): Summary.model_controls, controls.csv
MODEL_CONTROL_COLUMNS: tuple[str, ...] = (
    "model",
    "mitigation",
    "target_mode",
    "placebo_biases",
    "placebo_n",
    "mean_placebo_diff",
    "mean_placebo_diff_lo",
    "mean_placebo_diff_hi",
    "helpful_biases",
    "helpful_n",
    "mean_helpful_gain",
    "mean_helpful_gain_lo",
    "mean_helpful_gain_hi",
    "susceptibility_biases",
    "susceptibility_n",
    "susceptibility",
    "susceptibility_lo",
    "susceptibility_hi",
    "follow_wrong",
    "follow_right",
    "draws",
    "draws_biases",
    "draws_n",
    "mean_biased_acc_draws",
    "mean_biased_acc_draws_lo",
    "mean_biased_acc_draws_hi",
)


def control_of(bias: str) -> str:
    """The bias a placebo condition controls for ("" for anything else)."""
    return bias[len(PLACEBO_PREFIX) :] if bias.startswith(PLACEBO_PREFIX) else ""


@dataclass
class Cond:
    """One condition's per-question arrays, aligned on the model's question index."""

    correct: np.ndarray  # float: 1/0, NaN where the question is absent
    letter: np.ndarray  # int: 0..4 letter, -1 no letter, -2 absent
    target: np.ndarray  # int: planted letter 0..4, -1 none, -2 absent

    def present(self) -> np.ndarray:
        import numpy as np

        return ~np.isnan(self.correct)


def follows(c: Cond, target: np.ndarray) -> np.ndarray:
    """1.0 where the answer is `target`, 0.0 where it is not (no letter counts as not), NaN where
    the question is absent from `c` or has no target."""
    import numpy as np

    out = (c.letter == target).astype(float)
    out[(c.letter == -2) | (target < 0)] = np.nan
    return out


def susceptibility_values(wrong: Cond, right: Cond, base: Cond) -> np.ndarray:
    """Per question: 1/2 [(follows wrong suggestion - baseline share of that letter)
    + (follows right suggestion - baseline share of that letter)]; NaN unless all three are there."""
    return 0.5 * (
        (follows(wrong, wrong.target) - follows(base, wrong.target))
        + (follows(right, right.target) - follows(base, right.target))
    )


def complete_mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Per question, the mean over `arrays`; NaN where any of them is NaN (complete cases only)."""
    import numpy as np

    stack = np.vstack([np.asarray(a, dtype=float) for a in arrays])
    return stack.mean(axis=0)  # NaN propagates: a question missing anywhere drops out


def _rng(seed: int, model: str, *keys: object):
    from biasmed.analysis.stats import rng_for

    return rng_for(seed, model, *keys)


def _paired(x: np.ndarray, y: np.ndarray, n_boot: int, rng) -> Any:
    """paired_diff on the questions where both are present (floats 1/0/NaN); CI NaN without resamples."""
    import dataclasses

    import numpy as np

    from biasmed.analysis.stats import paired_diff

    ok = ~np.isnan(x) & ~np.isnan(y)
    d = paired_diff(x[ok] > 0, y[ok] > 0, n_boot, rng)
    if n_boot <= 0:
        d = dataclasses.replace(d, lo=float("nan"), hi=float("nan"))
    return d


# --------------------------------------------------------------------------- per-row columns


def fill_columns(
    rows: Sequence[dict[str, Any]], conds: Mapping[CondKey, Cond], model: str, n_boot: int, seed: int
) -> None:
    """Fill CONTROL_COLUMNS (NaN where a control is absent) and n_draws in a model's rows."""
    from biasmed.analysis.stats import bootstrap_mean

    nan = float("nan")
    by_key = {(r["bias"], r["mitigation"], r["draw"], r["target_mode"]): r for r in rows}
    draws_of: dict[tuple[str, str, str], list[int]] = {}
    for b, mit, d, tm in conds:
        draws_of.setdefault((b, mit, tm), []).append(d)
    base = conds.get(BASE)
    for r in rows:
        for c in CONTROL_COLUMNS:
            r.setdefault(c, nan)
        bias, mit, draw, tm = r["bias"], r["mitigation"], r["draw"], r["target_mode"]
        r["n_draws"] = len(draws_of.get((bias, mit, tm), [])) or 1
        me = conds.get((bias, mit, draw, tm))
        if bias == NONE or me is None:
            continue
        key = (bias, mit, draw, tm)
        if not control_of(bias):
            _placebo(
                r,
                me,
                conds.get((PLACEBO_PREFIX + bias, mit, draw, tm)),
                n_boot,
                lambda what, key=key: _rng(seed, model, *key, what),
            )
            if tm == "incorrect" and base is not None:
                right = conds.get((bias, mit, draw, HELPFUL_MODE)) or conds.get((bias, mit, 0, HELPFUL_MODE))
                if right is not None:
                    g = _paired(right.correct, base.correct, n_boot, _rng(seed, model, *key, "helpful"))
                    r.update(
                        n_paired_helpful=g.n,
                        acc_helpful=g.mean_x,
                        helpful_gain=g.diff,
                        helpful_gain_lo=g.lo,
                        helpful_gain_hi=g.hi,
                        p_helpful=g.p,
                    )
                    s = bootstrap_mean(
                        susceptibility_values(me, right, base), n_boot, _rng(seed, model, *key, "susceptibility")
                    )
                    r.update(susceptibility=s.mean, susceptibility_lo=s.lo, susceptibility_hi=s.hi)
        ks = sorted(draws_of.get((bias, mit, tm), []))
        if draw == 0 and len(ks) >= 2 and base is not None:
            _draw_columns(
                r,
                [conds[(bias, mit, k, tm)] for k in ks],
                [by_key[(bias, mit, k, tm)]["accuracy"] for k in ks if (bias, mit, k, tm) in by_key],
                base,
                n_boot,
                lambda what, key=key: _rng(seed, model, *key, what),
            )


def _placebo(r: dict[str, Any], me: Cond, pl: Cond | None, n_boot: int, rng) -> None:
    if pl is None:
        return
    d = _paired(pl.correct, me.correct, n_boot, rng("placebo"))
    r.update(
        n_paired_placebo=d.n,
        acc_placebo=d.mean_x,
        placebo_diff=d.diff,
        placebo_diff_lo=d.lo,
        placebo_diff_hi=d.hi,
        p_placebo=d.p,
    )
    a = _paired(follows(me, me.target), follows(pl, pl.target), n_boot, rng("placebo-adopt"))
    if a.n:
        r.update(
            adoption_placebo=a.mean_y,
            placebo_adoption_diff=a.diff,
            placebo_adoption_diff_lo=a.lo,
            placebo_adoption_diff_hi=a.hi,
            p_placebo_adoption=a.p,
        )


def _draw_columns(
    r: dict[str, Any], per_draw: Sequence[Cond], accuracies: Sequence[float], base: Cond, n_boot: int, rng
) -> None:
    from biasmed.analysis.stats import bootstrap_mean, spread

    sp = spread(accuracies)
    r.update(acc_draws_mean=sp.mean, acc_draws_sd=sp.sd, acc_draws_min=sp.min, acc_draws_max=sp.max)
    acc_q = complete_mean([c.correct for c in per_draw])
    a = bootstrap_mean(acc_q, n_boot, rng("draws-acc"))
    r.update(acc_draws_lo=a.lo, acc_draws_hi=a.hi)
    d = bootstrap_mean(base.correct - acc_q, n_boot, rng("draws-drop"))
    r.update(drop_draws=d.mean, drop_draws_lo=d.lo, drop_draws_hi=d.hi)
    adopt_q = complete_mean([follows(c, c.target) - follows(base, c.target) for c in per_draw])
    ad = bootstrap_mean(adopt_q, n_boot, rng("draws-adopt"))
    r.update(adoption_diff_draws=ad.mean, adoption_diff_draws_lo=ad.lo, adoption_diff_draws_hi=ad.hi)


# --------------------------------------------------------------------------- model level


def primary_mode(modes: Sequence[str]) -> str | None:
    """The target mode whose biased rows are the benchmark: incorrect, else random (never correct)."""
    return next((m for m in PRIMARY_MODES if m in set(modes)), None)


def model_rows(model: str, conds: Mapping[CondKey, Cond], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per mitigation: means over the seven core biases of the placebo difference, the helpful gain,
    the susceptibility index, and the biased accuracy pooled over draws, each with a
    question-cluster bootstrap CI (questions present in every condition involved)."""
    import numpy as np

    from biasmed.analysis.stats import bootstrap_mean

    base = conds.get(BASE)
    pm = primary_mode([k[3] for k in conds])
    mode = pm or ""  # "" only where no bias has a primary mode: `core` is empty and no closure runs
    mits = {k[1] for k in conds}
    out: list[dict[str, Any]] = []
    if base is None:
        return out
    for mit in [m for m in MITIGATIONS if m in mits] + sorted(mits - set(MITIGATIONS)):
        row: dict[str, Any] = {c: float("nan") for c in MODEL_CONTROL_COLUMNS}
        row.update(model=model, mitigation=mit, target_mode=pm or "")
        core = [b for b in BIASES if pm and (b, mit, 0, pm) in conds]

        # the closures below run within this iteration; defaults bind its row and mitigation
        def agg(group: str, value: str, biases: list[str], per_bias, row: dict[str, Any] = row, mit: str = mit) -> None:
            row.update({f"{group}_biases": ";".join(biases), f"{group}_n": 0})
            if biases:
                m = bootstrap_mean(
                    complete_mean([per_bias(b) for b in biases]), n_boot, _rng(seed, model, mit, "model", group)
                )
                row.update({f"{group}_n": m.n, value: m.mean, f"{value}_lo": m.lo, f"{value}_hi": m.hi})

        # the move to a planted wrong letter, net of its baseline share
        def wrong(b: str, mit: str = mit) -> np.ndarray:
            c = conds[(b, mit, 0, mode)]
            return follows(c, c.target) - follows(base, c.target)

        # the move to the planted correct letter (the gain)
        def right(b: str, mit: str = mit) -> np.ndarray:
            c = conds[(b, mit, 0, HELPFUL_MODE)]
            return follows(c, c.target) - follows(base, c.target)

        agg(
            "placebo",
            "mean_placebo_diff",
            [b for b in core if (PLACEBO_PREFIX + b, mit, 0, mode) in conds],
            lambda b, mit=mit: conds[(PLACEBO_PREFIX + b, mit, 0, mode)].correct - conds[(b, mit, 0, mode)].correct,
        )
        helpful = [b for b in BIASES if (b, mit, 0, HELPFUL_MODE) in conds]
        agg(
            "helpful",
            "mean_helpful_gain",
            helpful,
            lambda b, mit=mit: conds[(b, mit, 0, HELPFUL_MODE)].correct - base.correct,
        )
        both = [b for b in core if pm == "incorrect" and b in helpful]
        agg("susceptibility", "susceptibility", both, lambda b: 0.5 * (wrong(b) + right(b)))
        if both:
            w, rt = complete_mean([wrong(b) for b in both]), complete_mean([right(b) for b in both])
            ok = ~(np.isnan(w) | np.isnan(rt))
            if ok.any():
                row.update(follow_wrong=float(w[ok].mean()), follow_right=float(rt[ok].mean()))
        _model_draws(row, core, conds, mit, pm, n_boot, _rng(seed, model, mit, "model-draws"))
        out.append(row)
    return out


def _model_draws(
    row: dict[str, Any], core: list[str], conds: Mapping[CondKey, Cond], mit: str, pm: str | None, n_boot: int, rng
) -> None:
    """Mean accuracy over the core biases and the draws they all have, pooled per question."""
    from biasmed.analysis.stats import bootstrap_mean

    if not core or pm is None:
        row.update(draws=0, draws_biases="", draws_n=0)
        return
    common = set.intersection(*({k[2] for k in conds if k[0] == b and k[1] == mit and k[3] == pm} for b in core))
    ks = sorted(common)
    row.update(draws=len(ks), draws_biases=";".join(core))
    if len(ks) < 2:
        row["draws_n"] = 0
        return
    m = bootstrap_mean(complete_mean([conds[(b, mit, k, pm)].correct for b in core for k in ks]), n_boot, rng)
    row.update(draws_n=m.n, mean_biased_acc_draws=m.mean, mean_biased_acc_draws_lo=m.lo, mean_biased_acc_draws_hi=m.hi)


# --------------------------------------------------------------------------- what a summary holds


def controls_present(table: pd.DataFrame, model: str) -> dict[str, bool]:
    """Which controls a model's summary rows hold: placebo, helpful, draws."""
    m = table[table["model"] == model]
    if m.empty or "control_of" not in m:
        return {"placebo": False, "helpful": False, "draws": False}
    return {
        "placebo": bool(m["placebo_diff"].notna().any()),
        "helpful": bool((m["target_mode"] == HELPFUL_MODE).any()),
        "draws": bool((m["n_draws"].fillna(1) > 1).any()),
    }


def controls_frame(model_controls: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """controls.csv: the model-level rows of the (model, mitigation) pairs with any control."""
    import pandas as pd

    rows = [
        r for r in model_controls if r.get("placebo_biases") or r.get("helpful_biases") or (r.get("draws") or 0) >= 2
    ]
    return pd.DataFrame(rows, columns=list(MODEL_CONTROL_COLUMNS))
