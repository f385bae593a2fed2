#!/usr/bin/env bash
# Install samflow and its test dependencies into ./.venv (or the active venv with --venv-active).
# torch and torchvision are installed first at their exact pins, so no resolver step pulls other CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--venv-active" ]]; then
  [[ -d .venv ]] || python3 -m venv .venv
  . .venv/bin/activate
  python -m pip install --quiet --upgrade pip
fi
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"
# Meta's SAM 2 for bench/peers.py: its source release, built without its CUDA extension and without
# build isolation (an isolated build would install another torch); then its two runtime needs.
python -m pip install --quiet "setuptools>=70.1"
SAM2_BUILD_CUDA=0 python -m pip install --quiet --no-build-isolation --no-deps "sam2==1.1.0"
python -m pip install --quiet "hydra-core==1.3.8" "iopath==0.1.10"
# TrackEval, which the MOT export test reads its output with: without its declared dependencies,
# which ask for a numpy (>= 2.3.2) that label-studio-sdk's OpenCV (< 2.3) excludes; its readers
# need only numpy and scipy, both here already.
python -m pip install --quiet --no-deps "trackeval==1.3.0"
# Headless Chromium for the preview page tests (Debian's package; no browser download of a tool's own).
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "setup: could not install chromium; page tests will be skipped" >&2
  else
    echo "setup: chromium not found (apt-get install chromium); page tests will be skipped" >&2
  fi
fi
