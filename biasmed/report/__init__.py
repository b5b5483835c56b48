"""report stage: the files and tables of a `biasmed.Summary`.

`biasmed.report(runs_or_results, out=DIR, ...)` writes what `biasmed report` writes and returns the
Summary (`.written`: the paths). Modules: format (numbers, CIs, escaping of untrusted text),
tables (console, CSV, report.md, leaderboard), controls (their control sections), plots (PNG),
write (`report`, `write_report`); html (report.html, issue 11).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from biasmed.report.write import report, write_report

__all__ = ["report", "write_report"]


class _CallableModule(types.ModuleType):
    """`biasmed.report(...)` calls `report()` although `biasmed.report` is also this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
