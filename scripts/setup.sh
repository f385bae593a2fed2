#!/usr/bin/env bash
# Install samflow and its test dependencies into ./.venv (or the active venv with --venv-active).
# torch is installed first, pinned to the CPU build, so no resolver step pulls CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--venv-active" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
  python -m pip install --quiet --upgrade pip
fi
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test]"
