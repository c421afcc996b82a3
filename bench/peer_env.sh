#!/usr/bin/env bash
# Create (idempotently) the isolated virtual environment used by
# bench/peer_llmcompressor.py and print the path of its python.
#
# torch is installed first and pinned so that resolving llmcompressor never
# replaces it (an unpinned torch would pull the CUDA build and its wheels).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEER_VENV:-$HERE/.venv-llmcompressor}"
PY="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"
LLMC_SPEC="llmcompressor==0.14.0.1"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# Constraint file: keeps torch at the pinned version during every later resolve.
CONSTRAINTS="$VENV/peer-constraints.txt"
echo "$TORCH_SPEC" > "$CONSTRAINTS"

have() {
    "$VPY" - "$1" "$2" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
name, want = sys.argv[1], sys.argv[2]
try:
    got = version(name)
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if got.split("+")[0] == want else 1)
PYEOF
}

if ! have torch 2.13.0; then
    "$VPY" -m pip install --disable-pip-version-check -q "$TORCH_SPEC"
fi
if ! have llmcompressor 0.14.0.1; then
    "$VPY" -m pip install --disable-pip-version-check -q -c "$CONSTRAINTS" "$LLMC_SPEC"
fi

"$VPY" -c 'import torch, transformers, llmcompressor; print("torch", torch.__version__, "transformers", transformers.__version__, "llmcompressor", llmcompressor.__version__)' >&2
echo "$VPY"
