"""report.html: one self-contained page (overview charts, leaderboard, sample explorer) from a `Summary`.

The page works offline from file://: plotly.js (its basic bundle, vendored), the page's script and
styles, and the data are inline; a Content-Security-Policy meta tag forbids every network request.
The data travel as gzip + base64 (decoded in the browser with DecompressionStream) of one compact
JSON document:

- each question's text is stored once per distinct unbiased twin text; a condition's text is an
  edit of its twin (`[twin, start, end, inserted]`): the inserted bias sentence is exactly what
  the page highlights;
- samples are columns of small integers (model, question, condition, letters, outcome, ...);
  replies and errors are stored once each and referenced by index.

Every string from a run folder reaches the page as data and is shown with `textContent` (never as
markup), and strings handed to plotly (which reads a few tags in labels) are entity-escaped by
the page script first.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biasmed.analysis.controls import control_of
from biasmed.analysis.summary import MITIGATION_COLUMNS, Summary
from biasmed.records import BIASES, MITIGATIONS, NONE, V2_BIASES
from biasmed.report.format import DEMO_BANNER, convention_line
from biasmed.results import biasmed_version, write_text_atomic
from biasmed.scoring import CHAIN_CHANGES

if TYPE_CHECKING:
    import pandas as pd


PAYLOAD_VERSION = 1
# plotly.js basic bundle, from npm plotly.js-basic-dist-min 4.1.1 (update: npm pack, copy, bump)
PLOTLY_FILE = "plotly-basic.min.js"
PLOTLY_JS = "plotly.js-basic-dist-min 4.1.1"
# Content-Security-Policy: nothing may be fetched; inline script and style only (plotly needs no eval)
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "font-src 'none'; connect-src 'none'; media-src 'none'; object-src 'none'; frame-src 'none'; "
    "worker-src 'none'; base-uri 'none'; form-action 'none'"
)

# explorer outcome codes (the page's labels are in page.js, in this order)
OUTCOMES: tuple[str, ...] = (
    "flipped",  # right on the unbiased twin (no mitigation), the planted letter here
    "stayed_right",  # right here (and on the twin, or no twin to compare)
    "wrong_either_way",  # wrong on the twin and wrong here (or wrong with no twin)
    "no_response",  # no letter read from the reply, or the call failed
    "right_to_other",  # right on the twin, a wrong letter other than the planted one here
    "wrong_to_right",  # wrong on the twin, right here
)
_FLIPPED, _RIGHT, _WRONG, _NR, _OTHER, _FIXED = range(len(OUTCOMES))

# the summary columns the charts read (main-table rows only)
CHART_COLUMNS: tuple[str, ...] = (
    "model",
    "bias",
    "mitigation",
    "target_mode",
    "control_of",
    "n",
    "n_nr",
    "n_errors",
    "accuracy",
    "acc_lo",
    "acc_hi",
    "n_paired",
    "drop",
    "drop_lo",
    "drop_hi",
    "p_mcnemar",
    "p_holm",
    "significant",
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
    "n_paired_placebo",
    "acc_placebo",
    "placebo_diff",
    "placebo_diff_lo",
    "placebo_diff_hi",
    "p_placebo_holm",
    "n_paired_helpful",
    "acc_helpful",
    "helpful_gain",
    "helpful_gain_lo",
    "helpful_gain_hi",
    "p_helpful_holm",
    "acc_draws_mean",
    "acc_draws_lo",
    "acc_draws_hi",
    "acc_draws_min",
    "acc_draws_max",
    # issue 13: tokens, cost and accuracy won per mitigation; chains' first answers and moves
    *MITIGATION_COLUMNS,
)


# --------------------------------------------------------------------------- public


def write_html(summary: Summary, path: str | os.PathLike[str]) -> Path:
    """Write the page for `summary` to `path` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_html(summary))
    return path


def render_html(summary: Summary) -> str:
    """The whole page as one string."""
    parts = {
        "CSS": _asset("page.css"),
        "PLOTLY": _plotly_js(),
        "APP": _asset("page.js"),
        "DATA": encode_payload(page_data(summary)),
        "CSP": CSP,
    }
    # one pass: text put in is never searched for tokens again
    return _TOKEN.sub(lambda m: parts[m.group(1) or m.group(2)], _asset("page.html"))


_TOKEN = re.compile(r"/\*@([A-Z]+)@\*/|@([A-Z]+)@")


def encode_payload(data: Mapping[str, Any]) -> str:
    """gzip + base64 of compact JSON (base64 has no `<`: safe inside a script element).

    Level 6: level 9 saves 1% of the 8-model page for 2.5 times the time (benchmarks/html_report.md)."""
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def decode_payload(text: str) -> dict[str, Any]:
    """The inverse of `encode_payload` (tests and benchmarks read the page's data with it)."""
    return json.loads(gzip.decompress(base64.b64decode(text)))


def payload_of(html: str) -> dict[str, Any]:
    """The data of a written page."""
    start = html.index('id="biasmed-data"')
    start = html.index(">", start) + 1
    end = html.index("</script>", start)
    return decode_payload(html[start:end].strip())


# --------------------------------------------------------------------------- the data


def page_data(summary: Summary) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values (NaN -> null)."""
    return {
        "v": PAYLOAD_VERSION,
        "meta": {
            "convention": summary.convention,
            "convention_line": convention_line(summary.convention),
            "is_demo": bool(summary.is_demo),
            "demo_banner": DEMO_BANNER,
            "notes": [str(n) for n in summary.notes],
            "runs": [_run_info(r) for r in summary.runs],
            "n_boot": int(summary.n_boot),
            "seed": int(summary.seed),
            "biasmed_version": biasmed_version(),
            "outcomes": list(OUTCOMES),
            "changes": list(CHAIN_CHANGES),
        },
        "chart": _columns(summary.main, [c for c in CHART_COLUMNS if c in summary.main.columns]),
        "model_controls": [_clean_row(r) for r in summary.model_controls],
        "leaderboard": _columns(summary.leaderboard, None),
        "samples": sample_data(summary.samples),
    }


def sample_data(df: pd.DataFrame) -> dict[str, Any]:
    """The explorer's data: questions (texts, options) once, samples as integer columns."""
    import numpy as np

    if not len(df):
        return {
            "models": [],
            "conds": [],
            "mits": [],
            "questions": {"id": [], "gold": [], "opts": []},
            "texts": [],
            "edits": [],
            "replies": [],
            "errors": [],
            "cols": {},
        }
    draw = df["draw"].fillna(0).astype(int).tolist()
    tmode = (df["tmode"] if "tmode" in df else df["target_mode"].fillna("")).fillna("").astype(str).tolist()
    bias = [str(b) for b in df["bias"].tolist()]
    mit = [str(m) for m in df["mitigation"].tolist()]
    model = [str(m) for m in df["model"].tolist()]
    qid = [
        str(q) if isinstance(q, str) else f"(no id) {s}"
        for q, s in zip(df["question_id"].tolist(), df["sample_id"].tolist(), strict=True)
    ]
    n = len(df)

    models = list(dict.fromkeys(sorted(set(model))))
    mits = _ordered(set(mit), MITIGATIONS)
    cond_keys = sorted(set(zip(bias, tmode, draw, strict=True)), key=_cond_order)
    cond_index = {k: i for i, k in enumerate(cond_keys)}
    conds = [{"bias": b, "tmode": t, "draw": d} for b, t, d in cond_keys]
    questions = list(dict.fromkeys(sorted(set(qid), key=_qid_key)))
    q_index = {q: i for i, q in enumerate(questions)}
    m_index = {m: i for i, m in enumerate(models)}
    g_index = {m: i for i, m in enumerate(mits)}

    col_q = [q_index[q] for q in qid]
    col_m = [m_index[m] for m in model]
    col_c = [cond_index[k] for k in zip(bias, tmode, draw, strict=True)]
    col_g = [g_index[m] for m in mit]
    targets = _letter_codes(df["bias_target"].tolist())
    correct = [bool(x) for x in df["s_correct"].tolist()]
    letters = _letter_codes(df["s_letter"].tolist())
    failed = [bool(x) for x in (df["failed"] if "failed" in df else df["error"].notna()).tolist()]
    # "no response": the convention's NR, a failed call, or a reply no letter could be read from
    nr = [bool(x) or f or c < 0 for x, f, c in zip(df["s_nr"].tolist(), failed, letters, strict=True)]

    # per question: the gold letter and the options (first record that has them)
    gold: list[str | None] = [None] * len(questions)
    opts: list[list[list[str]] | None] = [None] * len(questions)
    options = df["options"].tolist() if "options" in df else [None] * n
    choices = df["choices"].tolist() if "choices" in df else [None] * n
    answer = df["answer_idx"].tolist()
    for i in range(n):
        q = col_q[i]
        if gold[q] is None and isinstance(answer[i], str):
            gold[q] = answer[i]
        opt, ch = options[i], choices[i]
        if opts[q] is None and isinstance(opt, dict) and opt:
            order = ch if isinstance(ch, list) and ch else sorted(opt)
            opts[q] = [[str(k), str(opt.get(k, ""))] for k in order]

    # each sample's baseline: right on its unbiased twin (same model, no mitigation, else same mitigation)
    base: dict[tuple[int, int, int], bool] = {}
    none_c = [i for i, k in enumerate(cond_keys) if k[0] == NONE]
    for i in range(n):
        if col_c[i] in none_c and not failed[i]:
            base.setdefault((col_m[i], col_q[i], col_g[i]), correct[i])
    none_g = g_index.get("none", -1)
    outcome = []
    for i in range(n):
        b = base.get((col_m[i], col_q[i], none_g), base.get((col_m[i], col_q[i], col_g[i])))
        outcome.append(_outcome(nr[i], correct[i], letters[i], targets[i], bias[i] == NONE, b))

    texts, edits, col_t, col_e = _text_columns(df, col_q, col_m, col_c, col_g, cond_keys, none_g)
    # a chain (reflect) keeps its first reply too: stored in the same table as the final replies
    chain = [bool(x) for x in df["s_chain"].tolist()] if "s_chain" in df else [False] * n
    extras = df["extra"].tolist() if "extra" in df else [None] * n
    firsts = [_first_reply(x) if c else None for x, c in zip(extras, chain, strict=True)]
    replies, col_r = _interned(df["response"].tolist() + firsts)
    col_r, col_r1 = col_r[:n], col_r[n:]
    errors, col_x = _interned(df["error"].tolist() if "error" in df else [None] * n)

    # card order: model, question, condition, mitigation (a card's samples are contiguous)
    card_order = np.lexsort((np.array(col_g), np.array(col_c), np.array(col_q), np.array(col_m)))

    def col(values: Sequence[Any]) -> list[Any]:
        return [values[int(j)] for j in card_order]

    cols: dict[str, list[Any]] = {
        "m": col(col_m),
        "q": col(col_q),
        "c": col(col_c),
        "g": col(col_g),
        "let": col(letters),
        "tgt": col(targets),
        "ok": col([int(c) for c in correct]),
        "out": col(outcome),
        "t": col(col_t),
        "e": col(col_e),
        "r": col(col_r),
        "x": col(col_x),
    }
    if any(chain):
        # chains only: the first answer's letter (-1 none read, -2 not a chain), its reply, and how
        # the final answer moved from it (index into meta.changes, -1 none)
        first = _letter_codes(df["s_first_letter"].tolist())
        cols["fl"] = col([f if c else -2 for f, c in zip(first, chain, strict=True)])
        cols["r1"] = col(col_r1)
        change_code = {c: i for i, c in enumerate(CHAIN_CHANGES)}
        cols["chg"] = col([change_code.get(x, -1) if isinstance(x, str) else -1 for x in df["s_change"].tolist()])
    return {
        "models": models,
        "conds": conds,
        "mits": mits,
        "questions": {"id": questions, "gold": gold, "opts": opts},
        "texts": texts,
        "edits": edits,
        "replies": replies,
        "errors": errors,
        "cols": cols,
    }


# --------------------------------------------------------------------------- helpers


def _outcome(nr: bool, correct: bool, letter: int, target: int, unbiased: bool, base: bool | None) -> int:
    if nr:
        return _NR
    if unbiased or base is None:
        return _RIGHT if correct else _WRONG
    if base:
        if correct:
            return _RIGHT
        return _FLIPPED if target >= 0 and letter == target else _OTHER
    return _FIXED if correct else _WRONG


def _text_columns(
    df: pd.DataFrame,
    col_q: list[int],
    col_m: list[int],
    col_c: list[int],
    col_g: list[int],
    cond_keys: list[tuple[str, str, int]],
    none_g: int,
) -> tuple[list[str], list[list[Any]], list[int], list[int]]:
    """Texts stored once: each sample's twin text (index into `texts`, -1 when the run recorded
    none) and its edit of that twin (index into `edits`, -1 when the text IS the twin).

    The twin of a sample is the unbiased text of the same model and question (no mitigation
    first): the paper's logs carry some questions with raw JSON escapes in one model's files and
    not another's, and comparing within a model keeps that out of the highlighted edit.
    """
    n = len(col_q)
    raw = df["text"].tolist() if "text" in df else [None] * n
    text = [t if isinstance(t, str) and t else None for t in raw]
    unbiased = {i for i, k in enumerate(cond_keys) if k[0] == NONE}
    twin_of: dict[tuple[int, int], str] = {}
    twin_any: dict[int, str] = {}
    for i in range(n):
        if text[i] is None or col_c[i] not in unbiased:
            continue
        key = (col_m[i], col_q[i])
        if col_g[i] == none_g or key not in twin_of:
            twin_of[key] = text[i]  # type: ignore[assignment]
        twin_any.setdefault(col_q[i], text[i])  # type: ignore[arg-type]
    texts: list[str] = []
    t_index: dict[str, int] = {}
    edits: list[list[Any]] = []
    e_index: dict[tuple[int, int, int, str], int] = {}
    by_text: dict[tuple[int, str], int] = {}
    col_t: list[int] = []
    col_e: list[int] = []
    for i in range(n):
        t = text[i]
        if t is None:
            col_t.append(-1)
            col_e.append(-1)
            continue
        twin = twin_of.get((col_m[i], col_q[i])) or twin_any.get(col_q[i]) or t
        ti = t_index.get(twin)
        if ti is None:
            ti = t_index[twin] = len(texts)
            texts.append(twin)
        col_t.append(ti)
        if t == twin:
            col_e.append(-1)
            continue
        ei = by_text.get((ti, t))
        if ei is None:
            a, b, ins = text_edit(twin, t)
            ekey = (ti, a, b, ins)
            ei = e_index.get(ekey)
            if ei is None:
                ei = e_index[ekey] = len(edits)
                edits.append([ti, a, b, ins])
            by_text[(ti, t)] = ei
        col_e.append(ei)
    return texts, edits, col_t, col_e


def text_edit(twin: str, text: str) -> tuple[int, int, str]:
    """One edit that turns `twin` into `text`: `text == twin[:a] + ins + twin[b:]`.

    The common prefix and suffix end at word boundaries in both texts, so the edit holds whole
    words (a planted sentence that starts or ends like its neighbour is not cut mid-word).
    """
    nt, nx = len(twin), len(text)
    limit = min(nt, nx)

    def space(s: str, i: int) -> bool:
        return i <= 0 or i >= len(s) or s[i].isspace()

    a = _common_prefix(twin, text, limit)
    # a boundary: after a space, or before a space (or the end) in both texts
    while a > 0 and not twin[a - 1].isspace() and not (space(twin, a) and space(text, a)):
        a -= 1
    s = _common_suffix(twin, text, limit - a)
    while s > 0 and not twin[nt - s].isspace() and not (space(twin, nt - s - 1) and space(text, nx - s - 1)):
        s -= 1
    return a, nt - s, text[a : nx - s]


def _common_prefix(x: str, y: str, limit: int) -> int:
    """Length of the common prefix (at most `limit`): a binary search over slice comparisons,
    which run in C (a Python loop over characters made the 8-model page take half a minute)."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[:mid] == y[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(x: str, y: str, limit: int) -> int:
    lo, hi = 0, limit
    nx, ny = len(x), len(y)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x[nx - mid :] == y[ny - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _first_reply(extra: Any) -> str | None:
    """A chain's first reply (`extra.turns[0].response`, as biasmed.run.runner records it)."""
    turns = extra.get("turns") if isinstance(extra, dict) else None
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        r = turns[0].get("response")
        return r if isinstance(r, str) else None
    return None


def _interned(values: Iterable[Any]) -> tuple[list[str], list[int]]:
    """Strings stored once: (table, index per value; -1 for None/NaN)."""
    table: list[str] = []
    index: dict[str, int] = {}
    out: list[int] = []
    for v in values:
        if not isinstance(v, str):
            out.append(-1)
            continue
        i = index.get(v)
        if i is None:
            i = index[v] = len(table)
            table.append(v)
        out.append(i)
    return table, out


def _letter_codes(values: Iterable[Any]) -> list[int]:
    """ "A".."Z" -> 0..25; anything else -1."""
    out = []
    for v in values:
        out.append(ord(v) - 65 if isinstance(v, str) and len(v) == 1 and "A" <= v <= "Z" else -1)
    return out


def _ordered(values: set[str], known: Sequence[str]) -> list[str]:
    return [v for v in known if v in values] + sorted(values - set(known))


_BIAS_ORDER = {b: i for i, b in enumerate((NONE, *BIASES, *V2_BIASES))}
_TMODE_ORDER = {"": 0, "incorrect": 1, "random": 2, "correct": 3}


def _cond_order(key: tuple[str, str, int]) -> tuple[Any, ...]:

    bias, tmode, draw = key
    root = control_of(bias) or bias
    return (_TMODE_ORDER.get(tmode, 9), tmode, draw, _BIAS_ORDER.get(root, 99), root, bias != root, bias)


def _qid_key(q: str) -> tuple[str, int, str]:
    # "test-0042" sorts by split and number
    head, _, tail = q.rpartition("-")
    return (head, int(tail), q) if tail.isdigit() else (q, -1, q)


def _clean(v: Any) -> Any:
    """JSON-ready: NaN/None -> None, numpy scalars -> Python."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): _clean(v) for k, v in row.items()}


def _columns(frame: pd.DataFrame, cols: Sequence[str] | None) -> dict[str, list[Any]]:
    cols = list(frame.columns) if cols is None else list(cols)
    return {c: [_clean(v) for v in frame[c].tolist()] for c in cols}


def _run_info(run: Mapping[str, Any]) -> dict[str, Any]:
    ds = run.get("dataset") or {}
    return {
        "path": str(run.get("path", "")),
        "kind": str(run.get("kind", "")),
        "model": _clean(run.get("model"))
        if not isinstance(run.get("model"), dict)
        else str(run["model"].get("spec") or run["model"].get("name") or ""),
        "dataset": str(ds.get("source") or ""),
        "created_at": str(run.get("created_at") or ""),
    }


def _asset(name: str) -> str:
    return resources.files("biasmed.report").joinpath("_html", name).read_text("utf-8")


def _plotly_js() -> str:
    """plotly.js's basic bundle (bar, scatter, pie: all the page draws), vendored from npm
    `plotly.js-basic-dist-min` (MIT, _html/plotly-LICENSE.txt; PLOTLY_JS names the version). The
    full bundle (4.8 MB) took 1.3 s longer to start in headless Chromium on the 8-model page."""
    js = _asset(PLOTLY_FILE)
    # inside a <script> element only "</script" (any case) and "<!--" can end or bend it
    return js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT").replace("<!--", "<\\!--")
