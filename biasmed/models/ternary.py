"""`mmfree:` and `spikegpt:` specs: MatMul-free (HGRN-bit) and SpikeGPT models behind the local
adapter. Both are recurrent, so the adapter's KV-cache prefix sharing switches itself off; their
loaders (packing the ternary weights, reading SpikeGPT's `.pth`) replace transformers' Auto load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biasmed.models.base import FatalRunError
from biasmed.models.hf import LocalCausalLM, _common_options, folder_identity, resolve_device, resolve_dtype


@dataclass(eq=False)
class RecurrentLM(LocalCausalLM):
    """A local adapter whose weights come from one of biasmed.ternary's loaders."""

    family: str = "mmfree"  # "mmfree" | "spikegpt"
    packed: bool = True  # mmfree: ternarize and pack 2 bits per weight at load

    def cache_identity(self) -> dict[str, Any]:
        ident = super().cache_identity()
        if self.family == "mmfree":
            ident["packed"] = self.packed
        return ident

    def _load(self):  # type: ignore[override]
        try:
            import torch
        except ImportError:
            raise FatalRunError(f"{self.spec} needs torch: pip install torch") from None
        device = resolve_device(self.device)
        dtype_name = resolve_dtype(self.dtype, device)
        try:
            if self.family == "mmfree":
                from biasmed.ternary import load_mmfree

                model, tok = load_mmfree(self.source, device=device, dtype=dtype_name, packed=self.packed)
            else:
                from biasmed.ternary.spikegpt import load_spikegpt

                model, tok = load_spikegpt(self.source, dtype=getattr(torch, dtype_name), device=device)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FatalRunError(f"{self.spec}: cannot load {self.source}: {first}") from None
        model.eval()
        st = self._finish_load(model, tok, device, dtype_name)
        # recurrent: no positions, so no hard context limit (ctx_len is only the training length)
        st.max_len = None
        return st


def _source(prefix: str, rest: str) -> tuple[str, dict[str, Any]]:
    source = rest.strip()
    if not source:
        raise ValueError(f"{prefix}: needs a checkpoint folder, file or hub id, e.g. {prefix}:ridger/MMfreeLM-370M")
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve()), folder_identity(path.resolve())
    if path.is_file():
        st = path.stat()
        return str(path.resolve()), {"model": str(path.resolve()), "weights": f"file:{st.st_size}:{st.st_mtime_ns}"}
    if source.startswith((".", "/", "~")):
        raise ValueError(f"{prefix}:{rest}: no such checkpoint")
    return source, {"model": source}


def make_mmfree(rest: str, **opts: Any) -> RecurrentLM:
    """`mmfree:<folder or hub id>`; options as `hf:` plus `packed` (default true)."""
    source, identity = _source("mmfree", rest)
    packed = str(opts.get("packed", True)).lower() not in ("0", "false", "no")
    return RecurrentLM(
        spec=f"mmfree:{rest}", source=source, identity=identity, family="mmfree", packed=packed, **_common_options(opts)
    )


def make_spikegpt(rest: str, **opts: Any) -> RecurrentLM:
    """`spikegpt:<folder, .pth file or hub id>`; options as `hf:`."""
    source, identity = _source("spikegpt", rest)
    return RecurrentLM(
        spec=f"spikegpt:{rest}", source=source, identity=identity, family="spikegpt", **_common_options(opts)
    )
