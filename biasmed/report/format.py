"""How every report shows a number, an interval, a p-value, and text it did not write.

The one place for formatting: markdown (report.md, leaderboard.md), the console tables and the
plots' titles use these; the HTML report may too. Untrusted text (model names, bias names, notes,
paths: they come from run folders and user YAML) goes through `md()` before it reaches markdown,
so a `|`, a backtick, `<script>`, a newline or `[x](y)` in a model name shows as itself instead
of breaking a table or becoming HTML or a link.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

DEMO_BANNER = (
    "DEMO SET: these runs used biasmed's illustrative demo questions, not MedQA; the figures are not BiasMedQA results."
)
CONVENTION_TEXT = {
    "robust": (
        "robust: every reply re-read with biasmed's robust extraction rule; "
        "no response (NR) counts as wrong; accuracy = correct / n"
    ),
    "paper": (
        "paper: the published logs' own verdicts as the paper's script counted them "
        "(re-judged ae_ files preferred), over n for the OpenAI models and over n - NR for the "
        "others; biasmed runs: the first-character rule over n"
    ),
}
DASH = "–"  # a missing figure


def convention_line(convention: str) -> str:
    return f"Convention: {CONVENTION_TEXT.get(convention, convention)}."


def isnan(x: Any) -> bool:
    """None or a float NaN (pandas holds a missing figure as either)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, digits: int = 3) -> str:
    """0.28812 -> "0.288"; a missing figure -> "–"; anything else as text."""
    if isnan(x):
        return DASH
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def count(x: Any) -> str:
    """A count that pandas may hold as a float (NaN elsewhere in its column)."""
    return DASH if isnan(x) else str(int(x))


def short(x: Any) -> str:
    """0.288 -> ".288", -0.05 -> "-.050" (console tables are narrow)."""
    if isnan(x):
        return DASH
    text = f"{x:+.3f}" if x < 0 else f"{x:.3f}"
    return text.replace("0.", ".", 1)


def pval(x: Any) -> str:
    return DASH if isnan(x) else ("<0.001" if x < 0.001 else f"{x:.3f}")


def ci(row: Mapping[str, Any], key: str, lo: str | None = None, hi: str | None = None) -> str:
    """row[key] with its 95% interval: "0.250 [0.100, 0.400]"; without an interval, the value alone.

    `lo`/`hi` default to `key + "_lo"` / `key + "_hi"`."""
    lo, hi = lo or f"{key}_lo", hi or f"{key}_hi"
    if isnan(row[key]):
        return DASH
    if isnan(row[lo]):
        return num(row[key])
    return f"{row[key]:.3f} [{row[lo]:.3f}, {row[hi]:.3f}]"


# --------------------------------------------------------------------------- untrusted text

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# characters with a meaning in (GitHub-flavoured) markdown inline or in a table row; `_` between
# two letters or digits has none (GFM), so `self_diagnosis` stays readable in the source
_MD_SPECIAL = re.compile(
    r"[\\`*\[\]|~<>&@]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|:(?=//)"
    r"|(?<=[A-Za-z0-9])\.(?=[A-Za-z])"
)
_MD_ENTITY = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def plain(text: Any) -> str:
    """One line of untrusted text: control characters (newlines, terminal escapes) become a space."""
    return _CONTROL.sub(" ", str(text)).strip()


def md(text: Any) -> str:
    """Untrusted text as literal markdown, safe in a table cell or a heading: one line; `|`,
    backticks, `*`, `_`, `~`, `[`, `]`, `@`, backslashes, the `:` of `://` and a `.` before a letter
    escaped (no link, and nothing a renderer could autolink as a URL, domain or e-mail); `<`, `>`,
    `&` as entities (no HTML); so no broken table row either."""
    return _MD_SPECIAL.sub(lambda m: _MD_ENTITY.get(m.group(0), "\\" + m.group(0)), plain(text))
