#!/usr/bin/env bash
# Protocol GPU (bench/gpu.py): bench/gpu.sh [--dry-run] [--out PATH] [--parts ...] [--nsamples N]
# PYTHON names the interpreter (default: python on PATH).
exec "${PYTHON:-python}" "$(dirname "$0")/gpu.py" "$@"
