#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up the environment and the virtual display,
# check style and types (ruff check, ruff format --check, mypy on core/: the same hooks as
# .pre-commit-config.yaml), then run pytest under Xvfb with Mesa so napari's GUI tests get a
# real OpenGL context. A violation fails the run after pytest has run too.
# Extra arguments go to pytest. Usage: bash scripts/test.sh [-k expr]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_display.sh
export QT_QPA_PLATFORM=xcb
# CI has 2 cores; torch threads beyond that only contend.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
set +e
lint=0
.venv/bin/ruff check src tests benchmarks scripts || lint=1
.venv/bin/ruff format --check src tests benchmarks scripts || lint=1
.venv/bin/mypy || lint=1  # files = core/, from pyproject.toml
xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" -eq 0 ] && [ "$lint" -ne 0 ]; then
    echo "style or type check failed (see above)" >&2
    status=1
fi
exit $status
