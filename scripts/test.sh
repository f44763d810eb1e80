#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up the environment and the virtual display,
# then run pytest under Xvfb with Mesa so napari's GUI tests get a real OpenGL context.
# Extra arguments go to pytest. Usage: bash scripts/test.sh [-k expr]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_display.sh
export QT_QPA_PLATFORM=xcb
# CI has 2 cores; torch threads beyond that only contend.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
set +e
xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
exit $status
