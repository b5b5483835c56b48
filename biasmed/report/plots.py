"""PNG plots of a summary (matplotlib, Agg backend: no display needed).

- `accuracy_<model>.png`: accuracy per bias with 95% CI bars, one bar per mitigation;
- `radar_<mitigation>.png`: the paper-style radar, accuracy on each bias axis, one polygon per model;
- `adoption_<model>.png`: adoption of the planted letter per bias and mitigation, with its
  paired baseline (the same letter's share among the unbiased answers).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from biasmed.analysis.summary import Summary
from biasmed.records import BIASES, MITIGATIONS, NONE, V2_BIASES
from biasmed.report.format import plain

if TYPE_CHECKING:
    import pandas as pd

_LABELS = {
    NONE: "unbiased",
    "self_diagnosis": "self-diagnosis",
    "recency": "recency",
    "confirmation": "confirmation",
    "frequency": "frequency",
    "cultural": "cultural",
    "status_quo": "status quo",
    "false_consensus": "false consensus",
    "confirmation_v2": "confirmation v2",
    "false_consensus_v2": "false consensus v2",
}
_ORDER = (NONE, *BIASES, *V2_BIASES)
_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def slug(name: str) -> str:
    """A model or mitigation name as a file name part (run folders name them: untrusted)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _subtitle(summary: Summary) -> str:
    demo = "  |  DEMO SET, not MedQA" if summary.is_demo else ""
    return f"convention: {summary.convention}{demo}"


def _label(name: str) -> str:
    """Untrusted text in a title or label: one line, and no mathtext ($...$ would be parsed)."""
    return plain(name).replace("$", r"\$")


def _biases(m: pd.DataFrame) -> list[str]:
    present = set(m["bias"])
    return [b for b in _ORDER if b in present] + sorted(present - set(_ORDER))


def _mitigations(m: pd.DataFrame) -> list[str]:
    present = set(m["mitigation"])
    return [x for x in MITIGATIONS if x in present] + sorted(present - set(MITIGATIONS))


def accuracy_figure(summary: Summary, model: str):
    """Accuracy per bias (x) with one bar per mitigation and 95% Wilson CI bars."""
    import numpy as np

    plt = _pyplot()
    main = summary.main
    m = main[main["model"] == model]
    biases, mits = _biases(m), _mitigations(m)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(biases) + 2), 4.6))
    width = 0.8 / max(1, len(mits))
    x = np.arange(len(biases))
    for j, mit in enumerate(mits):
        acc, lo, hi = [], [], []
        for b in biases:
            r = m[(m["bias"] == b) & (m["mitigation"] == mit)]
            if r.empty:
                acc.append(np.nan)
                lo.append(0.0)
                hi.append(0.0)
                continue
            r = r.iloc[0]
            acc.append(r["accuracy"])
            lo.append(max(0.0, r["accuracy"] - r["acc_lo"]) if not math.isnan(r["acc_lo"]) else 0.0)
            hi.append(max(0.0, r["acc_hi"] - r["accuracy"]) if not math.isnan(r["acc_hi"]) else 0.0)
        ax.bar(
            x + (j - (len(mits) - 1) / 2) * width,
            acc,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=_label(mit),
            error_kw={"elinewidth": 0.8},
        )
    base = m[(m["bias"] == NONE) & (m["mitigation"] == "none")]
    if len(base):
        ax.axhline(float(base["accuracy"].iloc[0]), color="0.3", lw=0.8, ls="--", label="unbiased, no mitigation")
    ax.set_xticks(x, [_LABELS.get(b, _label(b)) for b in biases], rotation=30, ha="right")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{_label(model)}: accuracy per bias and mitigation\n{_subtitle(summary)}", fontsize=10)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    return fig


def _save(fig, path: str | os.PathLike[str]) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return Path(path)


def plot_accuracy(summary: Summary, model: str, path: str | os.PathLike[str]) -> Path:
    return _save(accuracy_figure(summary, model), path)


def radar_figure(summary: Summary, mitigation: str):
    """Accuracy on each axis (unbiased + biases), one polygon per model, like the paper's figure."""
    import numpy as np

    plt = _pyplot()
    main = summary.main
    m = main[main["mitigation"] == mitigation]
    # the unbiased axis is always the no-mitigation baseline, as in the paper's radar charts
    axes = [b for b in _ORDER if b in set(m["bias"]) or b == NONE]
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False)
    fig = plt.figure(figsize=(8.2, 6.6))
    ax = fig.add_axes((0.1, 0.08, 0.58, 0.76), projection="polar")
    # models with at least one biased condition under this mitigation (meditron has none)
    for model in sorted(set(m.loc[m["bias"] != NONE, "model"])):
        vals = []
        for b in axes:
            src = main[
                (main["model"] == model)
                & (main["bias"] == b)
                & (main["mitigation"] == ("none" if b == NONE else mitigation))
            ]
            vals.append(float(src["accuracy"].iloc[0]) if len(src) else np.nan)
        v = np.array(vals + vals[:1])
        a = np.concatenate([angles, angles[:1]])
        ax.plot(a, v, marker="o", ms=3, lw=1.2, label=_label(model))
        ax.fill(a, np.nan_to_num(v), alpha=0.08)
    ax.set_xticks(angles, [_LABELS.get(b, _label(b)) for b in axes], fontsize=8)
    ax.tick_params(axis="x", pad=8)
    ax.set_ylim(0, 1)
    fig.suptitle(
        f"Accuracy per bias, mitigation: {_label(mitigation)} (unbiased axis: no mitigation)\n{_subtitle(summary)}",
        fontsize=10,
    )
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="center left", bbox_to_anchor=(0.74, 0.5))
    return fig


def plot_radar(summary: Summary, mitigation: str, path: str | os.PathLike[str]) -> Path:
    return _save(radar_figure(summary, mitigation), path)


def adoption_figure(summary: Summary, model: str):
    """Adoption of the planted letter per bias (bars per mitigation) with its paired baseline (ticks)."""
    import numpy as np

    plt = _pyplot()
    main = summary.main
    m = main[(main["model"] == model) & (main["bias"] != NONE)]
    biases, mits = _biases(m), _mitigations(m)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(biases) + 2), 4.6))
    width = 0.8 / max(1, len(mits))
    x = np.arange(len(biases))
    for j, mit in enumerate(mits):
        vals, base = [], []
        for b in biases:
            r = m[(m["bias"] == b) & (m["mitigation"] == mit)]
            vals.append(float(r["adoption"].iloc[0]) if len(r) else np.nan)
            base.append(float(r["adoption_base"].iloc[0]) if len(r) else np.nan)
        xs = x + (j - (len(mits) - 1) / 2) * width
        ax.bar(xs, vals, width, label=_label(mit))
        ax.scatter(
            xs,
            base,
            marker="_",
            s=140,
            color="black",
            zorder=3,
            label="baseline (same letter, unbiased answers)" if j == 0 else None,
        )
    ax.set_xticks(x, [_LABELS.get(b, _label(b)) for b in biases], rotation=30, ha="right")
    ax.set_ylabel("share of answers = planted letter")
    ax.set_ylim(0, 1)
    ax.set_title(f"{_label(model)}: adoption of the planted wrong answer\n{_subtitle(summary)}", fontsize=10)
    ax.legend(fontsize=8, ncol=2, loc="upper right")
    fig.tight_layout()
    return fig


def plot_adoption(summary: Summary, model: str, path: str | os.PathLike[str]) -> Path:
    return _save(adoption_figure(summary, model), path)


def controls_figure(summary: Summary, model: str, mitigation: str = "none"):
    """Per bias, the accuracy change against the unbiased questions (paired, 95% bootstrap CIs):
    with a wrong letter planted, with the placebo sentence, with the correct letter planted;
    dots = the change in each re-draw of the wrong targets."""
    import numpy as np

    plt = _pyplot()
    main = summary.main
    m = main[
        (main["model"] == model)
        & (main["mitigation"] == mitigation)
        & (main["bias"] != NONE)
        & (main["control_of"].fillna("") == "")
    ]
    biases = _biases(m)
    by_bias = m.set_index("bias")
    placebo = main[(main["model"] == model) & (main["mitigation"] == mitigation)].set_index("bias")
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(biases) + 2), 4.6))
    x = np.arange(len(biases))
    series = [
        ("wrong letter planted (bias)", lambda b: _neg(_val(by_bias, b, "drop"))),
        ("placebo sentence, same letter", lambda b: _neg(_val(placebo, "placebo_" + b, "drop"))),
        ("correct letter planted", lambda b: _val(by_bias, b, "helpful_gain")),
    ]
    width = 0.8 / len(series)
    for j, (label, get) in enumerate(series):
        vals = [get(b) for b in biases]
        v = np.array([t[0] for t in vals])
        err = np.array(
            [
                [max(0.0, t[0] - t[1]) if not np.isnan(t[1]) else 0.0 for t in vals],
                [max(0.0, t[2] - t[0]) if not np.isnan(t[2]) else 0.0 for t in vals],
            ]
        )
        ax.bar(
            x + (j - 1) * width, v, width, yerr=np.nan_to_num(err), capsize=2, label=label, error_kw={"elinewidth": 0.8}
        )
    table = summary.table
    base = table[
        (table["model"] == model) & (table["bias"] == NONE) & (table["mitigation"] == "none") & (table["draw"] == 0)
    ]
    ref = float(base["accuracy"].iloc[0]) if len(base) else float("nan")
    dots = False
    for i, b in enumerate(biases):
        if b not in by_bias.index:
            continue
        redraws = table[
            (table["model"] == model)
            & (table["bias"] == b)
            & (table["mitigation"] == mitigation)
            & (table["target_mode"] == by_bias.loc[b, "target_mode"])
        ]
        if len(redraws) > 1:
            ax.scatter(
                np.full(len(redraws), x[i] - width),
                redraws["accuracy"].to_numpy(dtype=float) - ref,
                s=9,
                color="black",
                zorder=3,
                label=None if dots else "each re-draw of the wrong letters",
            )
            dots = True
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, [_LABELS.get(b, _label(b)) for b in biases], rotation=30, ha="right")
    ax.set_ylabel("accuracy − unbiased accuracy (95% CI)")
    ax.set_title(
        f"{_label(model)}: bias effect and its controls, mitigation: {_label(mitigation)}\n{_subtitle(summary)}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _neg(v: tuple[float, float, float]) -> tuple[float, float, float]:
    return -v[0], -v[2], -v[1]


def _val(frame: pd.DataFrame, bias: str, col: str) -> tuple[float, float, float]:
    nan = float("nan")
    if bias not in frame.index or col not in frame.columns:
        return nan, nan, nan
    r = frame.loc[bias]
    if getattr(r, "ndim", 1) > 1:  # several rows (another target mode): the first is the main one
        r = r.iloc[0]
    return float(r[col]), float(r[f"{col}_lo"]), float(r[f"{col}_hi"])


def plot_controls(summary: Summary, model: str, path: str | os.PathLike[str], mitigation: str = "none") -> Path:
    return _save(controls_figure(summary, model, mitigation), path)


def write_plots(summary: Summary, out_dir: str | os.PathLike[str]) -> list[Path]:
    """The PNGs of the module doc into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = summary.table
    paths: list[Path] = []
    for model in summary.models:
        paths.append(plot_accuracy(summary, model, out / f"accuracy_{slug(model)}.png"))
    for mit in _mitigations(table):
        if (table[table["mitigation"] == mit]["bias"] != NONE).any():
            paths.append(plot_radar(summary, mit, out / f"radar_{slug(mit)}.png"))
    for model in summary.models:
        if (table[table["model"] == model]["bias"] != NONE).any():
            paths.append(plot_adoption(summary, model, out / f"adoption_{slug(model)}.png"))
    for model in summary.models:
        if any(summary.has_controls.get(model, {}).values()):
            paths.append(plot_controls(summary, model, out / f"controls_{slug(model)}.png"))
    return paths
