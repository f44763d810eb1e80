#!/usr/bin/env bash
# Set up everything napari-cellquant needs on a fresh Debian machine (Python 3.11, no GPU):
# a virtual environment in .venv with torch (CPU wheel, installed first so the resolver does not
# pull CUDA packages) and the package with its test extras. Safe to run again: it only adds
# what is missing. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
if ! "$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    "$VPY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
fi
"$VPY" -m pip install --quiet --disable-pip-version-check -e ".[testing]"
