"""Token prices as data (`data/prices.toml`, user-overridable) and the cost of a request.

A model name matches its exact entry first, then the longest entry it starts with followed by a
'-' (dated or variant names: "gpt-4o-mini-2024-07-18" -> "gpt-4o-mini", but "gpt-4o" never falls
back to "gpt-4"). Unknown models cost 0 and are flagged, so `--max-cost` can refuse them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib

from biasmed import _paths

PRICES_ENV = "BIASMED_PRICES"
# providers that run on the user's own hardware: never a price
LOCAL_PROVIDERS = frozenset({"hf", "vllm", "smollm2", "replay", "mmfree", "spikegpt", "python"})


def default_prices_file() -> Path:
    return _paths.data_dir() / "prices.toml"


@dataclass(frozen=True)
class Price:
    """US dollars per 1M tokens."""

    input: float
    output: float
    matched: str  # the table entry used

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


def _load_table(path: Path) -> dict[str, tuple[float, float]]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: cannot read the price table: {e}") from None
    out: dict[str, tuple[float, float]] = {}
    for name, entry in (data.get("models") or {}).items():
        try:
            inp, outp = float(entry["input"]), float(entry["output"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: models.{name}: needs numeric 'input' and 'output' (USD per 1M tokens)") from None
        if inp < 0 or outp < 0:
            raise ValueError(f"{path}: models.{name}: prices must be >= 0")
        out[name] = (inp, outp)
    return out


def load_prices(user_file: str | os.PathLike[str] | None = None) -> dict[str, tuple[float, float]]:
    """The default table, overlaid by `user_file` (or $BIASMED_PRICES when not given)."""
    table = _load_table(default_prices_file()) if default_prices_file().is_file() else {}
    user = user_file or os.environ.get(PRICES_ENV)
    if user:
        p = Path(user)
        if not p.is_file():
            raise ValueError(f"{p}: price file not found")
        table.update(_load_table(p))
    return table


def find_price(table: dict[str, tuple[float, float]], provider: str, model: str) -> Price | None:
    """The price of `model` served by `provider`; None when unknown (local models: zero price)."""
    if provider in LOCAL_PROVIDERS:
        return Price(0.0, 0.0, "local")
    name = model.rsplit("/", 1)[-1]  # "openai/gpt-4o" (routers) -> "gpt-4o"
    for key in (f"{provider}:{name}", name):
        if key in table:
            return Price(*table[key], matched=key)
    best = max((k for k in table if name.startswith(k + "-")), key=len, default=None)
    return Price(*table[best], matched=best) if best else None


def estimate_tokens(text: str) -> int:
    """A cheap input-token estimate, ~4 characters a token (English prose with BPE tokenizers).

    Used for --dry-run, --tpm pacing and --max-cost reservations; real usage from the responses
    replaces it in the accounting. (tiktoken is deliberately not used: loading an encoding may
    download it, and a dry run must work offline and instantly.)
    """
    return max(1, (len(text) + 3) // 4)
