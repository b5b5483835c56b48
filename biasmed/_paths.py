"""Where biasmed's data folders live: the source checkout, or <prefix>/share/biasmed for a wheel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent


def _first_existing(*candidates: Path) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def prompts_dir() -> Path:
    """Folder of the template files (`BIASMED_PROMPTS_DIR` overrides)."""
    env = os.environ.get("BIASMED_PROMPTS_DIR")
    if env:
        return Path(env)
    return _first_existing(_REPO / "prompts", Path(sys.prefix) / "share" / "biasmed" / "prompts")


def data_dir() -> Path:
    """biasmed's top-level `data/` folder: the checkout, or <prefix>/share/biasmed/data (wheel)."""
    for c in (_REPO / "data", Path(sys.prefix) / "share" / "biasmed" / "data"):
        if (c / "prices.toml").is_file():
            return c
    return _REPO / "data"


def demo_dir() -> Path:
    """Folder of the embedded demo set (original vignettes, not MedQA)."""
    return _first_existing(_REPO / "data" / "demo", Path(sys.prefix) / "share" / "biasmed" / "data" / "demo")


def shared_dir() -> Path:
    """The read-only `shared/` folder beside the repository (`BIASMED_SHARED` overrides)."""
    env = os.environ.get("BIASMED_SHARED")
    return Path(env) if env else _REPO.parent / "shared"


CACHE_ENV = "BIASMED_CACHE_DIR"


def cache_root() -> Path:
    """biasmed's cache folder: `$BIASMED_CACHE_DIR`, else the user cache dir (XDG on Linux)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    if os.environ.get("XDG_CACHE_HOME"):
        base = Path(os.environ["XDG_CACHE_HOME"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path.home() / ".cache"
    return base / "biasmed"
