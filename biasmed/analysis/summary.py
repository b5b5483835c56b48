"""Runs as pandas frames, scored under a convention, and summarised per (model, bias, mitigation).

Public entry points: `load_run(dir)` and `summarize(runs_or_frames, convention=..., n_boot=...,
seed=...)`. Definitions of every column are in docs/conventions.md and results/README.md.

Conventions (every output says which one it used):
- "robust" (default): the robust extraction rule re-applied to every reply; NR counts as wrong;
  accuracy = correct / n. Re-judged (`ae`) copies of paper logs are ignored (same replies).
- "paper": the paper's own figures. For imported paper logs, the LOGGED verdicts as the
  published script counted them (re-judged `ae_` files preferred where a condition has one),
  over the total for the OpenAI models and over (total - NR) for the others. For biasmed's own
  runs, the paper's first-character rule over the total.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from biasmed.analysis.controls import (
    BASE,
    CONTROL_COLUMNS,
    HELPFUL_MODE,
    Cond,
    CondKey,
    control_of,
    controls_frame,
    controls_present,
    fill_columns,
    model_rows,
    primary_mode,
)
from biasmed.analysis.leaderboard import LEADERBOARD_MITIGATION_COLUMNS, leaderboard_frame
from biasmed.errors import InputError
from biasmed.records import BIASES, MITIGATIONS, NONE, V2_BIASES, Sample
from biasmed.results import RUN_JSON, SAMPLES, read_run_json, read_samples
from biasmed.scoring import chain_change, extract_paper, paper_log_counts, verdict

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CONVENTIONS: tuple[str, ...] = ("robust", "paper")
DEFAULT_CONVENTION = "robust"
PAPER_LOGS_KIND = "paper-logs"
_LETTERS = "ABCDE"

RunLike = Union[str, os.PathLike, "pd.DataFrame"]

# per condition (docs/mitigations.md): recovery against the unbiased accuracy under the SAME
# mitigation (`recovery` is against the unbiased accuracy without one); tokens (all turns, input +
# output) and list-price cost per answer; the accuracy it wins over the same bias without a
# mitigation, per 1,000 extra tokens per answer; for chains (reflect): the first answer's accuracy
# and how the final answer moved (toward / away from the planted letter)
MITIGATION_COLUMNS: tuple[str, ...] = (
    "recovery_same_mit",
    "recovery_same_mit_lo",
    "recovery_same_mit_hi",
    "tokens_per_answer",
    "output_tokens_per_answer",
    "cost_per_answer",
    "acc_gain",
    "extra_tokens_per_answer",
    "recovered_per_1k_tokens",
    "n_chain",
    "acc_first",
    "changed_rate",
    "toward",
    "away",
    "toward_rate",
    "away_rate",
)
SUMMARY_COLUMNS: tuple[str, ...] = (
    "convention",
    "model",
    "bias",
    "mitigation",
    "draw",
    "template_version",
    "n",
    "correct",
    "n_nr",
    "n_errors",
    "acc_den",
    "accuracy",
    "acc_lo",
    "acc_hi",
    "nr_rate",
    "acc_excl_nr",
    "n_paired",
    "drop",
    "drop_lo",
    "drop_hi",
    "p_mcnemar",
    "p_holm",
    "significant",
    "n_paired_same_mit",
    "drop_same_mit",
    "drop_same_mit_lo",
    "drop_same_mit_hi",
    "p_same_mit",
    "n_target",
    "adoption",
    "adoption_base",
    "adoption_diff",
    "adoption_lo",
    "adoption_hi",
    "p_adoption",
    "flips",
    "flip_rate",
    "recovery",
    "recovery_lo",
    "recovery_hi",
    "z_paper",
    "p_paper",
    "is_demo",
    "dataset_sha256",
    # additions (issue 6): controls and re-drawn targets; docs/controls.md
    "target_mode",
    "control_of",
    "n_draws",
    *CONTROL_COLUMNS,
    # additions (issue 13): what a mitigation costs and wins back; docs/mitigations.md
    *MITIGATION_COLUMNS,
)


# --------------------------------------------------------------------------- loading


def load_run(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """A run folder's samples as a DataFrame (one row per sample).

    Columns: every Sample field, plus `run`, `run_kind`, `dataset_sha256`, `dataset_source`,
    `is_demo`, and the paper-log fields lifted out of `extra` (`ae`, `log_file`, `log_index`,
    `logged_is_correct`, `logged_is_correct_raw`). `df.attrs["run"]` holds run.json.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if not (run_dir / RUN_JSON).is_file():
        raise InputError(f"{run_dir / RUN_JSON}: missing (is {run_dir} a biasmed run folder?)")
    meta = read_run_json(run_dir)
    rows = read_samples(run_dir)
    cols = list(Sample.__dataclass_fields__)
    df = pd.DataFrame.from_records(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    for i, rec in enumerate(rows):
        missing = [k for k in ("sample_id", "bias", "mitigation", "answer_idx", "model") if rec.get(k) in (None, "")]
        if missing:
            raise InputError(f"{run_dir / SAMPLES}: sample {i + 1}: {missing[0]}: missing")
    ds = meta.get("dataset") or {}
    df["run"] = str(run_dir)
    df["run_kind"] = meta.get("kind", "run")
    df["dataset_sha256"] = ds.get("sha256")
    df["dataset_source"] = ds.get("source")
    df["is_demo"] = bool(ds.get("is_demo", False))
    # the paper-log fields, lifted out of `extra` in one pass
    extras = [e if isinstance(e, dict) else {} for e in (r.get("extra") for r in rows)]
    df["ae"] = [bool(e.get("ae", False)) for e in extras]
    df["log_file"] = [e.get("log_file") for e in extras]
    df["log_index"] = [e.get("log_index") for e in extras]
    df["logged_is_correct"] = [e.get("logged_is_correct") for e in extras]
    df["logged_is_correct_raw"] = [e.get("logged_is_correct_raw", e.get("logged_is_correct")) for e in extras]
    df["draw"] = df["draw"].fillna(0).astype(int)
    # the run's list price (USD per 1M tokens): the cost of an answer whether or not this run paid it
    price = meta.get("price")
    price = price if isinstance(price, dict) else {}
    df["price_in_1m"] = _float_or_nan(price.get("input_per_1m"))
    df["price_out_1m"] = _float_or_nan(price.get("output_per_1m"))
    # small on purpose: pandas deep-copies attrs on every operation
    df.attrs["run"] = {
        "path": str(run_dir),
        "kind": meta.get("kind", "run"),
        "model": meta.get("model"),
        "dataset": dict(ds),
        "created_at": meta.get("created_at"),
        "biasmed_version": meta.get("biasmed_version"),
    }
    return df


def _float_or_nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _as_frames(runs_or_frames: RunLike | Sequence[RunLike]) -> list[pd.DataFrame]:
    """Frames of run folders (paths, or anything with a `.path`: an EvalResult) and `load_run` frames."""
    import pandas as pd

    items = runs_or_frames if isinstance(runs_or_frames, (list, tuple)) else [runs_or_frames]
    if not items:
        raise InputError("no runs given")
    frames = [x if isinstance(x, pd.DataFrame) else load_run(_folder(x)) for x in items]
    for f in frames:
        if not len(f):
            where = f.attrs.get("run", {}).get("path")
            raise InputError(f"{Path(where) / SAMPLES if where else 'a run frame'}: no samples (nothing to report)")
    return frames


def _folder(x: Any) -> str | os.PathLike[str]:
    """A run folder given as a path or as something with a `.path` (an EvalResult)."""
    path = getattr(x, "path", x)
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"not a run folder, frame or result: {type(x).__name__}")
    return path


# --------------------------------------------------------------------------- scoring a frame


@dataclass
class Scored:
    """A scored frame plus what happened on the way (surfaced in every report)."""

    frame: pd.DataFrame
    convention: str
    notes: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Summary:
    """Everything a report needs about a set of runs, computed once by `summarize()`.

    Writers (CSV, markdown, plots, HTML, leaderboard) take a Summary and compute nothing it holds.
    """

    table: pd.DataFrame  # SUMMARY_COLUMNS: one row per (model, bias, mitigation, draw, target mode)
    main: pd.DataFrame  # the rows of the main tables (`main_rows(table)`)
    model_controls: list[dict[str, Any]]  # biasmed.analysis.controls.MODEL_CONTROL_COLUMNS rows
    samples: pd.DataFrame  # the scored samples (s_letter, s_correct, s_nr, ...), one row each
    convention: str
    notes: list[str]
    runs: list[dict[str, Any]]  # per run folder: path, kind, model, dataset, created_at
    is_demo: bool
    n_boot: int
    seed: int
    controls_boot: int
    # controls.csv: the model_controls rows of the (model, mitigation) pairs that have a control
    controls: pd.DataFrame
    # one row per (model, mitigation), best first: biasmed.analysis.leaderboard.LEADERBOARD_COLUMNS
    leaderboard: pd.DataFrame
    # per model, which controls it has: {"placebo": bool, "helpful": bool, "draws": bool}
    has_controls: dict[str, dict[str, bool]]
    # the files `biasmed.report()` wrote from this summary (empty until then)
    written: list[Path] = field(default_factory=list, repr=False)
    # every run folder was written by biasmed 0.1.0: its CSVs keep 0.1.0's columns
    legacy: bool = False

    def table_csv(self) -> pd.DataFrame:
        """summary.csv: the table; a summary of 0.1.0 folders only leaves out MITIGATION_COLUMNS,
        so such a folder reports exactly as 0.1.0 reported it."""
        return self.table.drop(columns=list(MITIGATION_COLUMNS)) if self.legacy else self.table

    def leaderboard_csv(self) -> pd.DataFrame:
        """leaderboard.csv: the leaderboard (0.1.0 folders only: without the issue-13 columns)."""
        return self.leaderboard.drop(columns=list(LEADERBOARD_MITIGATION_COLUMNS)) if self.legacy else self.leaderboard

    @property
    def models(self) -> list[str]:
        """The models, in the table's order."""
        return [str(m) for m in dict.fromkeys(self.table["model"])] if len(self.table) else []

    def __len__(self) -> int:
        return len(self.table)


def paper_denominator(model: str, run_kind: str) -> str:
    """ "total" or "answered": how the paper divided (see docs/conventions.md)."""
    if run_kind == PAPER_LOGS_KIND and not str(model).lower().startswith("gpt-"):
        return "answered"
    return "total"


def combine(frames: Sequence[pd.DataFrame], allow_mixed: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Concatenate runs; refuse mixed datasets unless allowed; drop repeated samples."""
    import pandas as pd

    notes: list[str] = []
    if not frames:
        raise InputError("no runs given")
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    hashes = sorted({h for f in frames for h in f["dataset_sha256"].dropna().unique()})
    if len(hashes) > 1:
        where = "; ".join(
            f"{f.attrs.get('run', {}).get('path', '?')}: {str(h)[:12]}"
            for f in frames
            for h in f["dataset_sha256"].dropna().unique()
        )
        if not allow_mixed:
            raise InputError(f"runs were built from different datasets ({where}); pass --allow-mixed to combine them")
        notes.append(f"MIXED DATASETS combined on request (--allow-mixed): {where}")
    df = df.assign(tmode=target_modes(df))
    # a helpful-bias run (--target-mode correct) repeats the sample ids of the main run
    key = ["model", "sample_id", "tmode"]
    dup = df.duplicated(key, keep="first")
    if dup.any():
        n_none = int((dup & (df["bias"] == NONE)).sum())
        if int(dup.sum()) > n_none:
            notes.append(
                f"{int(dup.sum()) - n_none} biased samples repeated across runs were dropped (first occurrence kept)"
            )
        if n_none:
            notes.append(
                f"{n_none} unbiased samples repeated across runs were dropped (first occurrence kept; "
                "a run of the helpful-bias control repeats the unbiased questions)"
            )
        df = df[~dup].reset_index(drop=True)
    return df, notes


def target_modes(df: pd.DataFrame) -> list[str]:
    """Each sample's target mode: "" when unbiased, else as recorded ("incorrect" when missing)."""
    modes = df["target_mode"].tolist() if "target_mode" in df else [None] * len(df)
    return [
        "" if b == NONE else (m if isinstance(m, str) and m else "incorrect")
        for b, m in zip(df["bias"].tolist(), modes, strict=True)
    ]


def _select_rows(df: pd.DataFrame, convention: str) -> pd.DataFrame:
    """robust: plain rows (ae copies only where no plain copy exists); paper: ae preferred per condition."""
    if "tmode" not in df:
        df = df.assign(tmode=target_modes(df))
    if not df["ae"].any():
        return df
    cond = ["model", "bias", "mitigation", "draw", "tmode"]
    has_ae = df.groupby(cond)["ae"].transform("any")
    has_plain = df.groupby(cond)["ae"].transform(lambda s: (~s).any())
    if convention == "paper":
        keep = df["ae"] | ~has_ae
    else:
        keep = ~df["ae"] | ~has_plain
    return df[keep].reset_index(drop=True)


def _strs(col: pd.Series) -> list[str | None]:
    """A column as str-or-None (pandas turns a missing string into NaN)."""
    return [v if isinstance(v, str) else None for v in col.tolist()]


def score_frame(df: pd.DataFrame, convention: str = DEFAULT_CONVENTION) -> pd.DataFrame:
    """Add the convention's per-sample score columns.

    s_letter, s_rule, s_correct, s_nr: the per-sample verdict (NR counts as not correct);
    w_correct, w_total, w_nr: what the sample adds to the condition's counters (1/1/0-1 except
    where the paper's script counted a logged record 0 or 2 times); den_mode: "total"|"answered".
    """
    import numpy as np

    if convention not in CONVENTIONS:
        raise InputError(f"convention must be one of {', '.join(CONVENTIONS)}, not {convention!r}")
    # positions, not labels, index the per-row lists below
    df = _select_rows(df, convention).reset_index(drop=True)
    n = len(df)
    letters: list[str | None] = [None] * n
    rules: list[str] = [""] * n
    correct = np.zeros(n, dtype=bool)
    nr = np.zeros(n, dtype=bool)
    wc = np.zeros(n, dtype=np.int64)
    wt = np.ones(n, dtype=np.int64)
    wn = np.zeros(n, dtype=np.int64)
    resp = _strs(df["response"])
    gold = _strs(df["answer_idx"])
    modes = df["mode"].fillna("generate").tolist()
    lps = df["logprobs"].tolist()
    nopt = df["n_options"].fillna(5).astype(int).tolist()
    choices = df["choices"].tolist()
    opts = df["options"].tolist()
    schema = df["schema"].fillna(1).astype(int).tolist()
    kinds = df["run_kind"].tolist()
    stored = (_strs(df["extracted"]), _strs(df["rule"]), df["correct"].tolist(), df["nr"].tolist())
    logged = _strs(df["logged_is_correct_raw"])
    extras = [e if isinstance(e, dict) else {} for e in df["extra"].tolist()] if "extra" in df else [{}] * n
    targets = _strs(df["bias_target"])
    first_letters: list[str | None] = [None] * n
    changes: list[str | None] = [None] * n
    chain = np.zeros(n, dtype=bool)
    is_log = (df["run_kind"] == PAPER_LOGS_KIND).to_numpy() & df["logged_is_correct"].notna().to_numpy()

    if convention == "paper" and is_log.any():
        # the published script read each file top to bottom: emulate it per log file, in order
        sub = df[is_log]
        for _, grp in sub.groupby(["model", "log_file"], sort=False):
            order = grp.sort_values("log_index").index.to_numpy()
            counts = paper_log_counts((resp[i], logged[i]) for i in order)
            for i, c in zip(order, counts, strict=True):
                wc[i], wt[i], wn[i] = c.correct, c.total, c.nr
                correct[i], nr[i] = c.correct > 0, c.nr > 0
                ex = extract_paper(resp[i], _LETTERS[: nopt[i]])
                letters[i], rules[i] = ex.letter, "logged"
    for i in range(n):
        if convention == "paper" and is_log[i]:
            continue
        if convention == "robust" and schema[i] < 2 and kinds[i] != PAPER_LOGS_KIND and stored[1][i]:
            # a 0.1.0 run folder: its samples carry no options, but their stored verdicts were
            # made by this same rule WITH the options at run time
            letters[i], rules[i] = stored[0][i], str(stored[1][i])
            nr[i] = bool(stored[3][i])
            correct[i] = letters[i] is not None and letters[i] == gold[i]
        else:
            ch = choices[i]
            lets = "".join(ch) if isinstance(ch, list) and ch else _LETTERS[: nopt[i]]
            options = opts[i] if isinstance(opts[i], dict) else None
            # a reasoning reply is read by its final answer under either convention
            fmt = extras[i].get("answer_format")
            v = verdict(
                mode=modes[i],
                response=resp[i],
                logprobs=lps[i],
                answer_idx=gold[i],
                letters=lets,
                options=options,
                rule=convention,
                answer_format=fmt if isinstance(fmt, str) else "letter",
            )
            letters[i], rules[i], correct[i], nr[i] = v.letter, v.rule, v.correct, v.nr
            turns = extras[i].get("turns")
            if isinstance(turns, list) and turns and isinstance(turns[0], dict):
                chain[i] = True
                # a chain: its first answer, read as the first turn asked for it
                ffmt = turns[0].get("format")
                first = verdict(
                    mode=modes[i],
                    response=turns[0].get("response"),
                    logprobs=None,
                    answer_idx=gold[i],
                    letters=lets,
                    options=options,
                    rule=convention,
                    answer_format=ffmt if isinstance(ffmt, str) else "letter",
                )
                first_letters[i] = first.letter
                if len(turns) >= 2:
                    changes[i] = chain_change(first.letter, v.letter, targets[i])
        wc[i], wn[i] = int(correct[i]), int(nr[i])
    df["s_letter"] = letters
    df["s_first_letter"] = first_letters
    df["s_change"] = changes
    df["s_chain"] = chain
    df["s_rule"] = rules
    df["s_correct"] = correct
    df["s_nr"] = nr
    df["w_correct"] = wc
    df["w_total"] = wt
    df["w_nr"] = wn
    if convention == "paper":
        df["den_mode"] = [paper_denominator(m, k) for m, k in zip(df["model"], df["run_kind"], strict=True)]
    else:
        df["den_mode"] = "total"
    return df


def prepare(
    runs_or_frames: RunLike | Sequence[RunLike], convention: str = DEFAULT_CONVENTION, allow_mixed: bool = False
) -> Scored:
    """Load, combine and score runs; errors (failed API calls) are set aside and counted."""
    frames = _as_frames(runs_or_frames)
    runs = [f.attrs.get("run", {}) for f in frames]
    df, notes = combine(frames, allow_mixed)
    df.attrs = {}
    failed = df["error"].notna() & df["response"].isna()
    df = df.assign(failed=failed)
    scored = score_frame(df, convention)
    legacy_logs = (scored["run_kind"] == PAPER_LOGS_KIND) & (scored["schema"].fillna(1) < 2)
    if convention == "robust" and bool(legacy_logs.any()):
        notes.append(
            "paper logs imported by biasmed 0.1.0 carry no option texts: the robust rule read "
            "letters only for them (import them again to enable the option-text rules)"
        )
    n_unmatched = int(scored["question_id"].isna().sum())
    if n_unmatched:
        notes.append(
            f"{n_unmatched} samples have no question id (unmatched log records): "
            "counted in accuracies, left out of paired statistics"
        )
    if bool(scored["is_demo"].any()):
        notes.insert(
            0,
            "DEMO SET: runs on biasmed's illustrative demo questions, not MedQA; "
            "these figures are not BiasMedQA results",
        )
    return Scored(scored, convention, notes, runs)


# --------------------------------------------------------------------------- summary


def summarize(
    runs_or_frames: RunLike | Sequence[RunLike] | Scored,
    convention: str = DEFAULT_CONVENTION,
    n_boot: int = 10_000,
    seed: int = 0,
    allow_mixed: bool = False,
    controls_boot: int | None = None,
) -> Summary:
    """Statistics per (model, bias, mitigation[, draw][, target mode]) as a `Summary`.

    Accepts run folders, frames from `load_run`, or a `Scored` from `prepare`. `table` has
    SUMMARY_COLUMNS; `model_controls` one dict per (model, mitigation) of model-level control
    figures (`biasmed.analysis.controls.MODEL_CONTROL_COLUMNS`), bootstrapped `controls_boot`
    times (default n_boot); `notes` what happened on the way (demo set, dropped duplicates, ...).
    """
    import pandas as pd

    sc = runs_or_frames if isinstance(runs_or_frames, Scored) else prepare(runs_or_frames, convention, allow_mixed)
    cboot = n_boot if controls_boot is None else controls_boot
    rows: list[dict[str, Any]] = []
    model_controls: list[dict[str, Any]] = []
    for model, mdf in sc.frame.groupby("model", sort=True):
        conds, mrows = _model_rows(str(model), mdf, sc.convention, n_boot, seed)
        rows.extend(mrows)
        model_controls.extend(model_rows(str(model), conds, cboot, seed))
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    out = _holm_by_family(out)
    out = out.sort_values(["model", "mitigation", "draw", "bias", "target_mode"], key=_order_key).reset_index(drop=True)
    main = main_rows(out)
    return Summary(
        table=out,
        main=main,
        model_controls=model_controls,
        samples=sc.frame,
        convention=sc.convention,
        notes=list(sc.notes),
        runs=list(sc.runs),
        is_demo=bool(sc.frame["is_demo"].any()) if len(sc.frame) else False,
        n_boot=n_boot,
        seed=seed,
        controls_boot=cboot,
        controls=controls_frame(model_controls),
        leaderboard=leaderboard_frame(out, main, model_controls, sc.convention),
        has_controls={str(m): controls_present(out, str(m)) for m in dict.fromkeys(out["model"])},
        legacy=bool(sc.runs) and all(_written_by_010(r) for r in sc.runs),
    )


def _written_by_010(run: Mapping[str, Any]) -> bool:
    return str(run.get("biasmed_version") or "").startswith("0.1.")


def main_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the main tables: the default draw, and per model its primary target mode
    (wrong letters planted; `random` only where no `incorrect` run was given). The helpful-bias
    rows (correct letter planted) and the re-draws are reported as controls."""
    if "target_mode" not in summary or summary.empty:
        return summary[summary["draw"] == 0] if "draw" in summary else summary
    keep = summary["draw"] == 0
    tm = summary["target_mode"].fillna("")
    for model, modes in tm.groupby(summary["model"]):
        pm = primary_mode(list(modes))
        keep &= ~((summary["model"] == model) & (tm != "") & (tm != (pm or "")))
    return summary[keep]


def _order_key(col: pd.Series) -> pd.Series:
    if col.name == "bias":
        order = {b: i for i, b in enumerate((NONE, *BIASES, *V2_BIASES))}
        # a placebo sorts right after the bias it controls for
        return col.map(lambda b: (order.get(control_of(b) or b, 99), control_of(b) or b, bool(control_of(b)), b))
    if col.name == "mitigation":
        order = {m: i for i, m in enumerate(MITIGATIONS)}
        return col.map(lambda m: (order.get(m, 99), m))
    if col.name == "target_mode":
        order = {"": 0, "incorrect": 1, "random": 2, HELPFUL_MODE: 3}
        return col.map(lambda m: (order.get(m, 9), m))
    return col


def _letter_codes(values: Iterable[Any]) -> np.ndarray:
    import numpy as np

    return np.array([_LETTERS.find(v) if isinstance(v, str) and len(v) == 1 else -1 for v in values], dtype=np.int64)


def _model_rows(
    model: str, mdf: pd.DataFrame, convention: str, n_boot: int, seed: int
) -> tuple[dict[CondKey, Cond], list[dict[str, Any]]]:
    import numpy as np

    from biasmed.analysis import stats  # numpy

    live = mdf[~mdf["failed"]]
    qcodes, quniq = live["question_id"].factorize() if len(live) else (np.array([], dtype=int), [])
    q_n = len(quniq)
    live = live.assign(_q=qcodes)
    group = ["bias", "mitigation", "draw", "tmode"]
    conds: dict[CondKey, Cond] = {}
    base_rows: dict[CondKey, dict[str, Any]] = {}
    for key, g in live.groupby(group, sort=False):
        g = g[g["_q"] >= 0]
        corr = np.full(q_n, np.nan)
        let = np.full(q_n, -2, dtype=np.int64)
        tgt = np.full(q_n, -2, dtype=np.int64)
        qi = g["_q"].to_numpy()
        corr[qi] = g["s_correct"].to_numpy(dtype=float)
        let[qi] = _letter_codes(g["s_letter"])
        tgt[qi] = _letter_codes(g["bias_target"])
        conds[(key[0], key[1], int(key[2]), key[3])] = Cond(corr, let, tgt)
    rows = []
    for key, g in mdf.groupby(group, sort=False):
        bias, mit, draw, tmode = key
        ok = g[~g["failed"]]
        den_mode = ok["den_mode"].iloc[0] if len(ok) else "total"
        k, t, nr = int(ok["w_correct"].sum()), int(ok["w_total"].sum()), int(ok["w_nr"].sum())
        den = t - nr if den_mode == "answered" else t
        lo, hi = stats.wilson_ci(k, den)
        versions = ",".join(sorted({str(v) for v in ok["template_version"].dropna().unique()}))
        shas = sorted({str(v) for v in ok["dataset_sha256"].dropna().unique()})
        row: dict[str, Any] = dict(
            convention=convention,
            model=model,
            bias=bias,
            mitigation=mit,
            draw=int(draw),
            template_version=versions,
            n=len(ok),
            correct=k,
            n_nr=nr,
            n_errors=int(g["failed"].sum()),
            acc_den=den,
            accuracy=k / den if den else np.nan,
            acc_lo=float(lo),
            acc_hi=float(hi),
            nr_rate=nr / t if t else np.nan,
            acc_excl_nr=k / (t - nr) if t - nr > 0 else np.nan,
            is_demo=bool(ok["is_demo"].any()),
            dataset_sha256=",".join(shas),
            target_mode=tmode,
            control_of=control_of(bias),
        )
        row.update(_cost_columns(ok))
        row.update(_chain_columns(ok, biased=bias != NONE))
        base_rows[(bias, mit, int(draw), tmode)] = row
        rows.append(row)
    for row in rows:
        _paired_columns(row, conds, base_rows, model, n_boot, seed)
        _gain_columns(row, base_rows)
    fill_columns(rows, conds, model, n_boot, seed)
    return conds, rows


def _cost_columns(ok: pd.DataFrame) -> dict[str, float]:
    """Tokens (every turn, input + output) and list-price cost per answer, over the answers that
    recorded their usage (paper logs did not: NaN). A cached answer counts what it cost when asked."""
    import numpy as np

    tin, tout = [], []
    for u in ok["usage"].tolist():
        if isinstance(u, dict) and (u.get("input_tokens") or u.get("output_tokens")):
            tin.append(float(u.get("input_tokens") or 0))
            tout.append(float(u.get("output_tokens") or 0))
        else:
            tin.append(np.nan)
            tout.append(np.nan)
    a_in, a_out = np.array(tin, dtype=float), np.array(tout, dtype=float)
    has = ~np.isnan(a_in)
    nan = float("nan")
    if not has.any():
        return {"tokens_per_answer": nan, "output_tokens_per_answer": nan, "cost_per_answer": nan}
    pin = ok["price_in_1m"].to_numpy(dtype=float) if "price_in_1m" in ok else np.full(len(ok), np.nan)
    pout = ok["price_out_1m"].to_numpy(dtype=float) if "price_out_1m" in ok else np.full(len(ok), np.nan)
    cost = (a_in * pin + a_out * pout) / 1e6
    priced = has & ~np.isnan(cost)
    return {
        "tokens_per_answer": float((a_in + a_out)[has].mean()),
        "output_tokens_per_answer": float(a_out[has].mean()),
        "cost_per_answer": float(cost[priced].mean()) if priced.any() else nan,
    }


def _chain_columns(ok: pd.DataFrame, biased: bool) -> dict[str, float]:
    """A chain's (reflect's) first answer and how the final one moved from it; NaN without chains.
    toward/away: the final answer is / the first answer was the planted letter (biased rows only)."""
    nan = float("nan")
    if "s_chain" not in ok or not bool(ok["s_chain"].any()):
        return {}
    c = ok[ok["s_chain"]]
    n = len(c)
    moved = c["s_change"]
    toward = int((moved == "toward").sum()) if biased else nan
    away = int((moved == "away").sum()) if biased else nan
    return {
        "n_chain": n,
        "acc_first": float((c["s_first_letter"] == c["answer_idx"]).mean()),
        "changed_rate": float((moved.notna() & (moved != "kept")).sum() / n),
        "toward": toward,
        "away": away,
        "toward_rate": toward / n if biased else nan,
        "away_rate": away / n if biased else nan,
    }


def _gain_columns(row: dict[str, Any], base_rows: Mapping[CondKey, dict[str, Any]]) -> None:
    """What a mitigation wins over the same condition without one, and per 1,000 extra tokens."""
    import numpy as np

    ref = base_rows.get((row["bias"], "none", row["draw"], row["target_mode"]))
    if row["mitigation"] == "none" or ref is None:
        return
    row["acc_gain"] = row["accuracy"] - ref["accuracy"]
    extra = row["tokens_per_answer"] - ref["tokens_per_answer"]
    row["extra_tokens_per_answer"] = extra
    if row["bias"] != NONE and not np.isnan(extra) and extra > 0:
        row["recovered_per_1k_tokens"] = row["acc_gain"] / (extra / 1000)


def _rng_keys(row: dict[str, Any]) -> tuple[Any, ...]:
    """(bias, mitigation, draw[, target mode]): the wrong-target keys are the ones used before
    target modes existed, so their bootstrap draws did not move."""
    keys = (row["bias"], row["mitigation"], row["draw"])
    return keys if row["target_mode"] in ("", "incorrect") else (*keys, row["target_mode"])


def _paired_columns(
    row: dict[str, Any],
    conds: Mapping[CondKey, Cond],
    base_rows: Mapping[CondKey, dict[str, Any]],
    model: str,
    n_boot: int,
    seed: int,
) -> None:
    import numpy as np

    from biasmed.analysis import stats  # numpy

    bias, mit, draw, tm = row["bias"], row["mitigation"], row["draw"], row["target_mode"]
    rk = _rng_keys(row)
    me = conds.get((bias, mit, draw, tm))
    base = conds.get(BASE)
    nan = np.nan
    row.update({c: nan for c in SUMMARY_COLUMNS if c not in row})
    row["significant"] = False
    if me is None or base is None:
        return
    is_base = (bias, mit, draw, tm) == BASE
    if not is_base:
        both = ~np.isnan(me.correct) & ~np.isnan(base.correct)
        d = stats.paired_diff(
            base.correct[both] > 0, me.correct[both] > 0, n_boot, stats.rng_for(seed, model, *rk, "drop")
        )
        row.update(n_paired=d.n, drop=d.diff, drop_lo=d.lo, drop_hi=d.hi, p_mcnemar=d.p)
        b = base_rows[BASE]
        z, p = stats.two_proportion_z(b["correct"], b["acc_den"], row["correct"], row["acc_den"])
        row.update(z_paper=z, p_paper=p)
    same = conds.get((NONE, mit, 0, ""))
    if bias != NONE and mit != "none" and same is not None:
        both = ~np.isnan(me.correct) & ~np.isnan(same.correct)
        d = stats.paired_diff(
            same.correct[both] > 0, me.correct[both] > 0, n_boot, stats.rng_for(seed, model, *rk, "drop-same")
        )
        row.update(
            n_paired_same_mit=d.n, drop_same_mit=d.diff, drop_same_mit_lo=d.lo, drop_same_mit_hi=d.hi, p_same_mit=d.p
        )
    if bias != NONE:
        has = (me.target >= 0) & (base.letter > -2) & (me.letter > -2)
        if has.any():
            adopted = me.letter[has] == me.target[has]
            before = base.letter[has] == me.target[has]
            d = stats.paired_diff(adopted, before, n_boot, stats.rng_for(seed, model, *rk, "adopt"))
            flips = int(((base.correct[has] > 0) & adopted).sum())
            row.update(
                n_target=d.n,
                adoption=d.mean_x,
                adoption_base=d.mean_y,
                adoption_diff=d.diff,
                adoption_lo=d.lo,
                adoption_hi=d.hi,
                p_adoption=d.p,
                flips=flips,
                flip_rate=flips / d.n,
            )
        unmit = conds.get((bias, "none", draw, tm))
        if mit != "none" and unmit is not None:

            def recovery(ceiling: Cond, what: str) -> stats.Recovery:
                """How much of the drop from `ceiling` (unbiased) to `unmit` this mitigation won back."""
                all3 = ~np.isnan(me.correct) & ~np.isnan(ceiling.correct) & ~np.isnan(unmit.correct)
                return stats.recovery(
                    ceiling.correct[all3] > 0,
                    unmit.correct[all3] > 0,
                    me.correct[all3] > 0,
                    n_boot,
                    stats.rng_for(seed, model, *rk, what),
                )

            r = recovery(base, "recovery")
            row.update(recovery=r.value, recovery_lo=r.lo, recovery_hi=r.hi)
            if same is not None:
                # against the unbiased accuracy under the SAME mitigation (a mitigation that also
                # changes the unbiased answers, like reasoning, is measured against its own ceiling)
                r = recovery(same, "recovery-same")
                row.update(recovery_same_mit=r.value, recovery_same_mit_lo=r.lo, recovery_same_mit_hi=r.hi)


def _holm_by_family(out: pd.DataFrame) -> pd.DataFrame:
    """Holm across the biases of one (model, mitigation, draw): the drops vs the unbiased baseline.

    Controls are families of their own: the placebo conditions, and each other target mode
    (helpful-bias rows), so adding a control never changes a bias's adjusted p-value. The
    placebo and helpful-bias comparisons of the biases are adjusted across the biases too.
    """
    from biasmed.analysis.stats import holm

    if out.empty:
        return out
    out = out.copy()
    fam = out["bias"] != NONE
    out["_control"] = out["control_of"].fillna("") != ""
    for key, idx in out[fam].groupby(["model", "mitigation", "draw", "target_mode", "_control"]).groups.items():
        out.loc[idx, "p_holm"] = holm(out.loc[idx, "p_mcnemar"].to_numpy(dtype=float))
        if not key[-1]:
            out.loc[idx, "p_placebo_holm"] = holm(out.loc[idx, "p_placebo"].to_numpy(dtype=float))
            out.loc[idx, "p_helpful_holm"] = holm(out.loc[idx, "p_helpful"].to_numpy(dtype=float))
    out["significant"] = (out["p_holm"] < 0.05) & (out["drop"] > 0)
    return out.drop(columns="_control")
